"""`python -m diag run [diag options] -- COMMAND …`: command shapes, the derived pytest run, bad input, and the
command started only when every check passed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diag.launch import wrapper
from diag.launch.commands import CommandError, recognise
from diag.launch.wrapper import checks_dir, plan_run

LLAVA_HF = ["--model", "llava_hf", "--model_args", "pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "LOCAL_RANK",
                 "AUTO_SPLIT", "SLURM_NTASKS_PER_NODE", "SLURM_LOCALID"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def started(monkeypatch):
    """Record os.execvpe instead of replacing the test process."""
    calls = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append((file, list(args), env)))
    return calls


# -- command shapes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "kit", "processes", "eval_model"),
    [
        (["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", *LLAVA_HF], "lmms-eval", 2, "llava_hf"),
        (["accelerate", "launch", "--num_processes=8", "--main_process_port", "12345", "-m", "lmms_eval", "--model",
          "llava"], "lmms-eval", 8, "llava"),
        (["python", "-m", "lmms_eval", *LLAVA_HF, "--tasks", "mme"], "lmms-eval", None, "llava_hf"),
        (["python3.11", "-u", "-X", "dev", "-m", "lmms_eval", "--model", "qwen2_vl"], "lmms-eval", None, "qwen2_vl"),
        (["/venv/bin/lmms-eval", "--model", "internvl2"], "lmms-eval", None, "internvl2"),
        (["torchrun", "--nproc-per-node", "2", "run.py", "--data", "MME", "--model", "InternVL2-8B"], "vlmevalkit",
         2, "InternVL2-8B"),
        (["torchrun", "--nproc_per_node=4", "-m", "lmms_eval", "--model", "llava"], "lmms-eval", 4, "llava"),
        (["python", "-m", "torch.distributed.run", "--nproc-per-node", "2", "run.py", "--data", "MME", "--model",
          "cogvlm-chat"], "vlmevalkit", 2, "cogvlm-chat"),
        (["python", "run.py", "--data", "MME", "MMBench", "--model", "InternVL2-76B"], "vlmevalkit", None,
         "InternVL2-76B"),
        (["accelerate", "launch", "--num_processes", "2", "run.py", "--data", "MME", "--model", "Qwen2-VL-7B-Instruct"],
         "vlmevalkit", 2, "Qwen2-VL-7B-Instruct"),
    ],
)  # fmt: skip
def test_recognised_command_shapes(command, kit, processes, eval_model):
    found = recognise(command, {})
    assert found is not None
    assert (found.kit, found.processes, found.eval_model) == (kit, processes, eval_model)
    if "--model_args" in command:
        assert found.model_args == LLAVA_HF[-1]


def test_torchrun_one_process_per_gpu_counts_cuda_visible_devices():
    found = recognise(["torchrun", "--nproc-per-node", "gpu", "run.py", "--data", "MME", "--model", "x"],
                      {"CUDA_VISIBLE_DEVICES": "4,5,6"})  # fmt: skip
    assert found is not None and found.processes == 3
    found = recognise(["torchrun", "--nproc-per-node", "gpu", "run.py", "--data", "MME", "--model", "x"], {})
    assert found is not None and found.processes is None and "--nproc-per-node gpu" in found.notes[0]


def test_accelerate_without_num_processes_says_it_is_not_derived():
    found = recognise(["accelerate", "launch", "-m", "lmms_eval", "--model", "llava"], {})
    assert found is not None and found.processes is None
    assert "config file" in found.notes[0]


@pytest.mark.parametrize("command", [["bash", "eval.sh"], ["python", "-c", "print(1)"], ["python", "train.py"]])
def test_commands_diag_does_not_know_are_not_recognised(command):
    assert recognise(command, {}) is None


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["accelerate", "launch", "--num_processes", "x", "-m", "lmms_eval"], "invalid int value: 'x'"),
        (["accelerate", "launch", "--num_processes", "2"], "required: training_script"),
        (["torchrun", "--nproc-per-node"], "expected one argument"),
        (["python", "-m", "lmms_eval", "--model"], "lmms-eval options: argument --model: expected one argument"),
        (["python", "run.py", "--model", "InternVL2-8B"], "--data is required"),
        (["python", "-m"], "-m names no module"),
    ],
)
def test_options_that_do_not_parse_are_one_line_errors(command, words):
    with pytest.raises(CommandError) as raised:
        recognise(command, {})
    assert words in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "preset"),
    [("InternVL2-8B", "internvl2-8b"), ("InternVL2-76B", "internvl2-76b"), ("llava_next_yi_34b", "llava-v1.6-34b"),
     ("cogvlm-chat", "cogvlm-17b"), ("Qwen2-VL-7B-Instruct", "qwen2-vl-7b"), ("llava_v1.5_7b", "llava-1.5-7b")],
)  # fmt: skip
def test_vlmevalkit_model_names_map_to_presets(name, preset):
    plan = plan_run(["python", "run.py", "--data", "MME", "--model", name], [], {}, checks_dir())
    assert plan.error is None
    assert plan.options[plan.options.index("--model") + 1] == preset


def test_the_lmms_eval_checkpoint_maps_to_a_preset_and_the_users_options_win():
    command = ["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", *LLAVA_HF]
    plan = plan_run(command, [], {}, checks_dir())
    assert plan.options == ["--eval-kit", "lmms-eval", "--processes", "2", "--eval-model", "llava_hf",
                            "--model-args", LLAVA_HF[-1], "--model", "llava-1.5-7b"]  # fmt: skip
    mine = plan_run(command, ["--processes=1", "--model", "llava-1.5-13b"], {}, checks_dir())
    assert "--processes" not in mine.options and "--model" not in mine.options


# -- the run -----------------------------------------------------------------------------------------------------
def test_dry_run_prints_the_pytest_command_and_runs_nothing(capsys, monkeypatch, started):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--dry-run ran something"))
    code = wrapper.main(["--simulate", "8xA100-80GB", "--dry-run", "--", "torchrun", "--nproc-per-node", "2", "run.py",
                         "--data", "MME", "--model", "InternVL2-8B"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and not started
    assert out.strip() == " ".join([sys.executable, "-m", "pytest", str(checks_dir()), "-p", "diag.plugin",
                                    "-p", "no:cacheprovider", "--eval-kit", "vlmevalkit", "--processes", "2",
                                    "--model", "internvl2-8b", "--simulate", "8xA100-80GB"])  # fmt: skip
    assert "VLMEvalKit run.py slices: rank 0 GPUs 4,5; rank 1 GPUs 6,7" in err


def test_without_the_separator_it_is_a_usage_error(capsys, monkeypatch, started):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran something"))
    assert wrapper.main(["python", "-m", "lmms_eval"]) == 2
    assert "put the eval command after `--`" in capsys.readouterr().err and not started


def test_an_empty_command_still_runs_the_environment_checks_and_starts_nothing(capsys, monkeypatch, started):
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda argv, check: ran.append(argv) or subprocess.CompletedProcess(argv, 0))
    assert wrapper.main(["--simulate", "2xA100-80GB", "--"]) == 2
    assert ran and ran[0][3] == str(checks_dir() / "test_env.py") and len(ran) == 1
    assert "no COMMAND after `--`" in capsys.readouterr().err and not started


def _report(path):
    return {c["nodeid"].split("::")[-1]: c for c in json.loads(path.read_text())["checks"]}


def test_two_lmms_eval_processes_with_auto_fail_and_the_command_is_not_started(tmp_path, capsys, started):
    report = tmp_path / "r.json"
    command = ["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", *LLAVA_HF, "--tasks", "mme"]
    code = wrapper.main(["--simulate", "2xA100-80GB", "--diag-report", str(report), "-q", "--", *command])
    assert code == 1 and not started
    checks = _report(report)
    assert checks["test_lmms_eval_does_not_combine_processes_with_device_map_auto"]["code"] == "LAYOUT-002"
    assert "checks failed (pytest exit code 1): not starting accelerate launch" in capsys.readouterr().err


def test_one_lmms_eval_process_with_auto_passes_and_the_command_starts_unchanged(tmp_path, started):
    report = tmp_path / "r.json"
    command = ["python", "-m", "lmms_eval", *LLAVA_HF, "--tasks", "mme"]
    code = wrapper.main(["--simulate", "2xA100-80GB", "--gpus", "0,1", "--diag-report", str(report), "-q", "--",
                         *command])  # fmt: skip
    assert code == 0
    assert [(file, args) for file, args, _ in started] == [("python", command)]
    assert started[0][2]["CUDA_VISIBLE_DEVICES"] == "0,1" and started[0][2]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert _report(report)["test_lmms_eval_does_not_combine_processes_with_device_map_auto"]["outcome"] == "passed"


def test_vlmevalkit_torchrun_over_four_gpus_checks_two_slices(tmp_path, monkeypatch, capfd, started):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    report = tmp_path / "r.json"
    command = ["torchrun", "--nproc-per-node", "2", "run.py", "--data", "MME", "--model", "InternVL2-8B"]
    code = wrapper.main(["--simulate", "8xA100-80GB", "--diag-report", str(report), "--", *command])
    checks = _report(report)
    assert checks["test_vlmevalkit_gives_each_process_its_own_gpus"]["data"]["slices"] == [
        {"local_rank": 0, "cuda_visible_devices": "4,5"}, {"local_rank": 1, "cuda_visible_devices": "6,7"}]  # fmt: skip
    for case in ("rank0-gpus4,5-internvl2-8b-auto", "rank1-gpus6,7-internvl2-8b-auto"):
        assert checks[f"test_model_fits_in_gpu_memory[{case}]"]["outcome"] == "passed"
        twin = checks[f"test_twin_runs_with_the_map[{case}]"]
        # InternVL2-8B's InternLM2 moves its logits back to the input's GPU (InternVL PR #132), so the head on the
        # slice's second GPU does not fail the InternVL #587 way, on transformers < 4.46 either.
        assert (twin["outcome"], twin["code"]) == ("passed", None)
    assert (code, [args for _, args, _ in started]) == (0, [command])
    out, err = capfd.readouterr()
    assert "VLMEvalKit run.py slices: rank 0 GPUs 4,5; rank 1 GPUs 6,7" in err
    assert "plan for rank0-gpus4,5-internvl2-8b-auto:" in out and "plan for rank1-gpus6,7-internvl2-8b-auto:" in out


@pytest.mark.parametrize(
    ("command", "words", "files"),
    [
        (["python", "run.py", "--data", "MME", "--model", "GPT4o"], "VLMEvalKit model 'GPT4o' has no diag preset",
         {"test_env.py", "test_layout.py"}),
        (["torchrun", "--nproc-per-node", "two", "run.py", "--data", "MME", "--model", "InternVL2-8B"],
         "torchrun options: --nproc-per-node two: Unsupported nproc_per_node value: two", {"test_env.py"}),
    ],
)  # fmt: skip
def test_bad_input_runs_what_it_can_and_never_starts_the_command(tmp_path, capsys, started, command, words, files):
    report = tmp_path / "r.json"
    code = wrapper.main(["--simulate", "2xA100-80GB", "--diag-report", str(report), "-q", "--", *command])
    err = capsys.readouterr().err
    assert code == 2 and not started
    assert words in err and "Traceback" not in err
    ran = {c["nodeid"].split("::")[0].rsplit("/", 1)[-1] for c in json.loads(report.read_text())["checks"]}
    assert ran == files  # the environment checks ran (and the layout ones where the command parsed)


def _diag_run(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "diag", "run", "--diag-report", str(tmp_path / "r.json"), "-q", *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip


def test_an_unknown_command_gets_the_environment_checks_and_is_started_for_real(tmp_path):
    marker = tmp_path / "started"
    result = _diag_run(tmp_path, "--simulate", "2xA100-80GB", "--", sys.executable, "-c",
                       f"open({str(marker)!r}, 'w').write('yes')")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "yes"
    assert "not a command diag recognises" in result.stderr


def test_a_failed_environment_check_keeps_the_command_from_starting(tmp_path):
    marker = tmp_path / "started"
    result = _diag_run(tmp_path, "--simulate", "2xA100-80GB", "--gpus", "0,7", "--", sys.executable, "-c",
                       f"open({str(marker)!r}, 'w').write('yes')")  # fmt: skip
    assert result.returncode == 1 and not marker.exists()
    assert "ENV-002" in result.stdout and "not starting" in result.stderr
