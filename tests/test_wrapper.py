"""`python -m diag run [diag options] -- COMMAND …`: command shapes, the derived pytest run, bad input, and the
command started only when every check passed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from diag.launch import wrapper
from diag.launch.commands import CommandError, recognise
from diag.launch.findeval import find_eval
from diag.launch.wrapper import checks_dir, plan_run
from tests.conftest import SCHEMA

LLAVA_HF = ["--model", "llava_hf", "--model_args", "pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "LOCAL_RANK",
                 "AUTO_SPLIT", "SLURM_NTASKS_PER_NODE", "SLURM_LOCALID"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A machine where the evals can start: fake `lmms_eval` and `vlmeval` packages (on sys.path and PYTHONPATH),
    `python`, `torchrun` and `accelerate` on PATH (scripts run by this interpreter), and the current folder a
    VLMEvalKit checkout with its run.py."""
    site, bin_dir, checkout = tmp_path / "site", tmp_path / "bin", tmp_path / "VLMEvalKit"
    for package in (site / "lmms_eval", site / "vlmeval"):
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    for name in ("torchrun", "accelerate"):
        (bin_dir / name).write_text(f"#!{sys.executable}\n")
        (bin_dir / name).chmod(0o755)
    checkout.mkdir()
    (checkout / "run.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(checkout)
    return tmp_path


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
def test_dry_run_prints_the_pytest_command_and_runs_nothing(capsys, monkeypatch, started, installed):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--dry-run ran something"))
    command = ["torchrun", "--nproc-per-node", "2", "run.py", "--data", "MME", "--model", "InternVL2-8B"]
    code = wrapper.main(["--simulate", "8xA100-80GB", "--dry-run", "--", *command])
    out, err = capsys.readouterr()
    assert code == 0 and not started
    report = installed / "VLMEvalKit" / "reports" / "diag-report.json"  # the current folder's, by default
    assert out.strip() == shlex.join([sys.executable, "-m", "pytest", str(checks_dir()), "-p", "diag.plugin",
                                      "-p", "no:cacheprovider", "--eval-kit", "vlmevalkit", "--processes", "2",
                                      "--model", "internvl2-8b", "--eval-command", shlex.join(command),
                                      "--simulate", "8xA100-80GB", "--diag-report", str(report)])  # fmt: skip
    assert "VLMEvalKit run.py slices: rank 0 GPUs 4,5; rank 1 GPUs 6,7" in err
    assert "the eval's environment: CUDA_VISIBLE_DEVICES=4,5,6,7, CUDA_DEVICE_ORDER unset (FASTEST_FIRST)" in err


def test_a_report_path_of_the_user_is_read_from_the_current_folder(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--dry-run ran something"))
    assert wrapper.main(["--diag-report=out/{host}.json", "--dry-run", "--", "bash", "x.sh"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv.count("--diag-report") == 1 and not any(a.startswith("--diag-report=") for a in argv)
    written = Path(argv[argv.index("--diag-report") + 1])
    assert written.parent == tmp_path / "out" and "{" not in written.name
    assert wrapper.main(["--diag-report", "{user}.json", "--", "bash", "x.sh"]) == 2
    assert "has {user}: expected only the placeholders" in capsys.readouterr().err
    assert wrapper.main(["--diag-report", "--", "bash", "x.sh"]) == 2
    assert _said(capsys.readouterr().err) == ["error: --diag-report needs a value"]


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


def _said(err):
    """The wrapper's own lines on stderr, without their `diag: ` prefix."""
    return [line.removeprefix("diag: ") for line in err.splitlines() if line.startswith("diag: ")]


def _report(path):
    return {c["nodeid"].split("::")[-1]: c for c in json.loads(path.read_text())["checks"]}


def test_two_lmms_eval_processes_with_auto_fail_and_the_command_is_not_started(tmp_path, capsys, started, installed):
    report = tmp_path / "r.json"
    command = ["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", *LLAVA_HF, "--tasks", "mme"]
    code = wrapper.main(["--simulate", "2xA100-80GB", "--diag-report", str(report), "-q", "--", *command])
    assert code == 1 and not started
    checks = _report(report)
    assert checks["test_lmms_eval_does_not_combine_processes_with_device_map_auto"]["code"] == "LAYOUT-002"
    lines = _said(capsys.readouterr().err)
    decision = lines.index(next(line for line in lines if line.startswith("checks failed (pytest exit code 1): ")))
    assert lines[decision + 1].startswith("  next step: [LAYOUT-002] ")  # the wrapper lists the failure with its fix
    assert (
        lines[-1].startswith("not starting accelerate launch --num_processes 2 -m lmms_eval")
        and "Traceback" not in lines
    )


def test_one_lmms_eval_process_with_auto_passes_and_the_command_starts_unchanged(tmp_path, capsys, started, installed):
    report = tmp_path / "r.json"
    command = ["python", "-m", "lmms_eval", *LLAVA_HF, "--tasks", "mme"]
    code = wrapper.main(["--simulate", "2xA100-80GB", "--gpus", "0,1", "--diag-report", str(report), "-q",
                         "--start-anyway", "--", *command])  # fmt: skip
    assert code == 0
    assert [(file, args) for file, args, _ in started] == [("python", command)]
    assert started[0][2]["CUDA_VISIBLE_DEVICES"] == "0,1" and started[0][2]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert _report(report)["test_lmms_eval_does_not_combine_processes_with_device_map_auto"]["outcome"] == "passed"
    lines = _said(capsys.readouterr().err)
    assert (
        f"found lmms_eval: {installed / 'site' / 'lmms_eval' / '__init__.py'} (found by {installed / 'bin' / 'python'})"
        in lines
    )
    assert lines[-2:] == [
        "the eval's environment: CUDA_VISIBLE_DEVICES=0,1, CUDA_DEVICE_ORDER=PCI_BUS_ID",
        f"the node checked was simulated (--simulate), not this machine's: starting anyway (--start-anyway): "
        f"{shlex.join(command)}",
    ]


def test_vlmevalkit_torchrun_over_four_gpus_checks_two_slices(tmp_path, monkeypatch, capfd, started, installed):
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
    # Passed, but the eval is not started after checking a simulated node (no --start-anyway).
    assert (code, started) == (wrapper.NOT_THIS_NODE, [])
    out, err = capfd.readouterr()
    assert "VLMEvalKit run.py slices: rank 0 GPUs 4,5; rank 1 GPUs 6,7" in err
    assert _said(err)[-1] == (
        f"not starting {shlex.join(command)}: the node checked was simulated (--simulate), not this machine's "
        "(exit code 6); check this machine by leaving out --simulate/--topology, or give --start-anyway before "
        "`--` to start it all the same"
    )
    assert "plan for rank0-gpus4,5-internvl2-8b-auto:" in out and "plan for rank1-gpus6,7-internvl2-8b-auto:" in out


@pytest.mark.parametrize(
    ("command", "words", "files"),
    [
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
    result = _diag_run(tmp_path, "--simulate", "2xA100-80GB", "--start-anyway", "--", sys.executable, "-c",
                       f"open({str(marker)!r}, 'w').write('yes')")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "yes"
    assert "not a command diag recognises" in result.stderr
    assert "diag: the node checked was simulated (--simulate), not this machine's: starting anyway" in result.stderr


def test_a_failed_environment_check_keeps_the_command_from_starting(tmp_path):
    marker = tmp_path / "started"
    result = _diag_run(tmp_path, "--simulate", "2xA100-80GB", "--gpus", "0,7", "--", sys.executable, "-c",
                       f"open({str(marker)!r}, 'w').write('yes')")  # fmt: skip
    assert result.returncode == 1 and not marker.exists()
    assert "ENV-002" in result.stdout and "not starting" in result.stderr


# -- help --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_options_exit_codes_and_examples(capsys, monkeypatch, flag):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("help ran something"))
    assert wrapper.main(["--simulate", "8xA100-80GB", flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {wrapper.USAGE}")
    assert "[--dry-run | --check-only] [--start-anyway] -- COMMAND" in wrapper.USAGE
    for option in ("--dry-run", "--start-anyway", "--gpus IDS", "--simulate SPEC", "--topology PATH", "--model ",
                   "--device-map VALUE", "--model-args STRING", "--processes N", "--diag-report PATH"):  # fmt: skip
        assert f"\n  {option}" in out, option
    assert "--eval-command" not in out  # the wrapper fills it in itself
    assert "-m lmms_eval --model llava_hf" in out and "torchrun --nproc-per-node 2 run.py --data MME" in out
    assert f"\n  {wrapper.NOT_THIS_NODE}  " in out and f"\n  {wrapper.EVAL_NOT_FOUND}  " in out


def test_help_after_the_separator_belongs_to_the_command(capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("--dry-run ran something"))
    assert wrapper.main(["--dry-run", "--", "bash", "eval.sh", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" not in out and out.rstrip().endswith(
        "--eval-command 'bash eval.sh --help' --diag-report "
        + shlex.quote(str(Path.cwd() / "reports" / "diag-report.json"))
    )


def test_diag_help_lists_run_and_run_help_exits_0():
    from diag.__main__ import _parser

    text = " ".join(_parser().format_help().split())  # argparse wraps the lines
    assert "{topology,fix-codes,merge,run}" in text
    assert "run run the checks an eval command implies, then the command if they pass: run [diag options] " \
           "[--dry-run | --check-only] [--start-anyway] -- COMMAND (run --help: its options)" in text  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "diag", "run", "-h"], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "") and result.stdout.startswith("usage: python -m diag run")


# -- a node that is not this machine's -----------------------------------------------------------------------------
def test_a_replayed_node_is_checked_but_the_command_is_not_started(tmp_path, capsys, started):
    from diag.__main__ import main as diag_main

    assert diag_main(["topology", "--simulate", "2xA100-80GB"]) == 0
    node = tmp_path / "node.json"
    node.write_text(capsys.readouterr().out)
    report = tmp_path / "r.json"
    code = wrapper.main(["--topology", str(node), "--diag-report", str(report), "-q", "--", sys.executable, "-c", "1"])
    assert (code, started) == (wrapper.NOT_THIS_NODE, [])
    assert json.loads(report.read_text())["summary"]["failed"] == 0  # the checks ran, and passed
    said = _said(capsys.readouterr().err)
    assert said[-3:-1] == ["every check passed", "the eval's environment: CUDA_VISIBLE_DEVICES unset (every GPU), "
                                                 "CUDA_DEVICE_ORDER unset (FASTEST_FIRST)"]  # fmt: skip
    assert said[-1].startswith(f"not starting {sys.executable} -c 1: the node checked was replayed from a file "
                               "(--topology), not this machine's (exit code 6)")  # fmt: skip


@pytest.mark.parametrize(
    ("source", "args", "elsewhere"),
    [("nvml", ["--simulate", "2xA100-80GB"], None),  # the report says what was checked
     ("simulated", [], "simulated (--simulate)"), ("file", [], "replayed from a file (--topology)"),
     (None, ["--topology=n.json"], "replayed from a file (--topology)"), (None, [], None)],
)  # fmt: skip
def test_what_node_was_checked_comes_from_the_report_else_from_the_options(source, args, elsewhere):
    report = None if source is None else {"topology": {"source": source}}
    assert wrapper._checked_elsewhere(report, args) == elsewhere


# -- the eval's executable, module and script --------------------------------------------------------------------
def _fake_module(folder, name):
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    return folder / name / "__init__.py"


def test_lmms_eval_missing_from_this_interpreter_is_one_line_with_the_fix(tmp_path):
    command = [sys.executable, "-m", "lmms_eval", "--model", "llava"]
    found = find_eval(command, recognise(command, {}), dict(os.environ), str(tmp_path))
    assert found.missing == f"lmms_eval is not importable by {sys.executable}: pip install lmms-eval in that " \
                            "environment (or activate the environment lmms-eval is installed in)"  # fmt: skip


def test_lmms_eval_on_sys_path_is_found_by_this_interpreter(tmp_path, monkeypatch):
    origin = _fake_module(tmp_path / "site", "lmms_eval")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    command = [sys.executable, "-m", "lmms_eval", "--model", "llava"]
    found = find_eval(command, recognise(command, {}), dict(os.environ), str(tmp_path))
    assert found.missing is None
    assert found.lines == [f"{sys.executable}: {sys.executable}", f"lmms_eval: {origin} (found by {sys.executable})"]


def _launcher(folder, name, first_line):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(first_line + "\n")
    (folder / name).chmod(0o755)
    return folder / name


def test_accelerate_not_on_path_is_one_line_with_the_fix(tmp_path):
    command = ["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", "--model", "llava"]
    found = find_eval(command, recognise(command, {}), {"PATH": str(tmp_path)}, str(tmp_path))
    assert found.missing == "accelerate is not on PATH: pip install accelerate in the eval's environment, or " \
                            "activate that environment"  # fmt: skip


def test_the_module_is_looked_up_by_the_launchers_own_interpreter(tmp_path):
    """accelerate runs `-m lmms_eval` with the python on its first line: that one is asked, not diag's."""
    other = tmp_path / "other" / "python3"
    other.parent.mkdir()
    other.symlink_to(sys.executable)  # another path: asked in a child process, with the eval's environment
    _launcher(tmp_path / "bin", "accelerate", f"#!{other}")
    origin = _fake_module(tmp_path / "site", "lmms_eval")
    command = ["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", "--model", "llava"]
    env = {"PATH": str(tmp_path / "bin"), "PYTHONPATH": str(tmp_path / "site")}
    found = find_eval(command, recognise(command, {}), env, str(tmp_path))
    assert found.missing is None and found.lines[-1] == f"lmms_eval: {origin} (found by {other})"
    found = find_eval(command, recognise(command, {}), {"PATH": str(tmp_path / "bin")}, str(tmp_path))
    assert found.missing is not None and found.missing.startswith(
        f"lmms_eval is not importable by {other}: pip install"
    )


@pytest.mark.parametrize(
    ("head", "interpreter"),
    [("#!/opt/venv/bin/python3.11", "/opt/venv/bin/python3.11"),
     ("#!/bin/sh\n'''exec' \"/a/long/path/venv/bin/python\" \"$0\" \"$@\"\n' '''", "/a/long/path/venv/bin/python"),
     ("#!/usr/bin/env python3", "ENV"), ("#!/bin/bash", None), ("no shebang", None)],
)  # fmt: skip
def test_the_interpreter_of_a_launcher_script_is_read_from_its_first_lines(tmp_path, head, interpreter):
    from diag.launch.findeval import _shebang_interpreter

    _launcher(tmp_path / "bin", "python3", "#!/bin/sh")  # what `env python3` finds on PATH
    script = _launcher(tmp_path, "torchrun", head)
    expected = str(tmp_path / "bin" / "python3") if interpreter == "ENV" else interpreter
    assert _shebang_interpreter(str(script), str(tmp_path / "bin")) == expected


def test_vlmevalkit_run_py_must_be_in_the_current_folder(tmp_path):
    command = [sys.executable, "run.py", "--data", "MME", "--model", "InternVL2-8B"]
    found = find_eval(command, recognise(command, {}), dict(os.environ), str(tmp_path))
    assert found.missing == f"run.py is not in {tmp_path}: cd into the VLMEvalKit checkout (where run.py is) and " \
                            "run the command there, or give run.py's path"  # fmt: skip


def test_vlmeval_is_found_beside_run_py_as_python_would_find_it(tmp_path):
    checkout = tmp_path / "VLMEvalKit"
    checkout.mkdir()
    (checkout / "run.py").write_text("")
    command = [sys.executable, "VLMEvalKit/run.py", "--data", "MME", "--model", "InternVL2-8B"]
    found = find_eval(command, recognise(command, {}), dict(os.environ), str(tmp_path))
    assert found.missing == f"vlmeval is not importable by {sys.executable}: run from the VLMEvalKit checkout and " \
                            "install it there: cd VLMEvalKit && pip install -e ."  # fmt: skip
    origin = _fake_module(checkout, "vlmeval")  # not on sys.path: found in run.py's folder
    found = find_eval(command, recognise(command, {}), dict(os.environ), str(tmp_path))
    assert found.missing is None and found.lines[1:] == [
        f"VLMEvalKit/run.py: {checkout / 'run.py'}", f"vlmeval: {origin} (found by {sys.executable})"]  # fmt: skip


def test_a_missing_module_is_said_before_the_checks_and_the_eval_is_not_started(tmp_path, capsys, monkeypatch,
                                                                                 started):  # fmt: skip
    said_before: list[str] = []

    def checks(argv, check):
        said_before.extend(_said(capsys.readouterr().err))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(subprocess, "run", checks)
    command = [sys.executable, "-m", "lmms_eval", *LLAVA_HF]
    code = wrapper.main(["--diag-report", str(tmp_path / "r.json"), "--", *command])
    assert (code, started) == (wrapper.EVAL_NOT_FOUND, [])
    assert f"error: lmms_eval is not importable by {sys.executable}: pip install lmms-eval in that environment " \
           "(or activate the environment lmms-eval is installed in)" in said_before  # fmt: skip
    assert _said(capsys.readouterr().err)[-1] == f"not starting {shlex.join(command)}: lmms_eval is not importable " \
                                                 f"by {sys.executable}: pip install lmms-eval in that environment " \
                                                 "(or activate the environment lmms-eval is installed in)"  # fmt: skip


# -- failures and warnings before the decision -------------------------------------------------------------------
def _check(nodeid, outcome="passed", code=None, fix=None, subject=None, warnings=()):
    return {"nodeid": nodeid, "outcome": outcome, "code": code, "subject": subject, "message": "m",
            "fix": {"summary": fix} if fix else None, "warnings": list(warnings)}  # fmt: skip


SPLIT_WARNING = {
    "code": "SPLIT-001",
    "message": "VLMEvalKit before Dec 30 would address cuda:0-7.",
    "fix": "Update it.",
}
MAP_WARNING = {"code": "MAP-005", "message": "the map names layers.32", "fix": "Use the corrected map m.json."}


def test_report_lines_give_each_failure_and_warning_once_with_its_code_and_fix():
    report = {"checks": [
        _check("a[rank0]", warnings=[SPLIT_WARNING, MAP_WARNING]), _check("a[rank1]", warnings=[SPLIT_WARNING]),
        _check("d[rank1]", warnings=[SPLIT_WARNING]),
        _check("b", "failed", "ENV-006", "Use free GPUs: --gpus 1,2.", "GPU 0"), _check("c", "error", "DIAG-003", "x"),
    ]}  # fmt: skip
    failures, warnings = wrapper.report_lines(report)
    assert failures == ["[ENV-006] GPU 0: Use free GPUs: --gpus 1,2.", "[DIAG-003] c: x"]
    split = "VLMEvalKit before Dec 30 would address cuda:0-7; fix: Update it."
    assert warnings == ["[MAP-005] rank0: the map names layers.32; fix: Use the corrected map m.json.",
                        f"[SPLIT-001] rank0: {split}", f"[SPLIT-001] rank1: {split}"]  # fmt: skip


def _fake_checks(monkeypatch, report, returncode=0):
    """pytest replaced by a run that writes `report` where the wrapper asked for it."""

    def run(argv, check):
        Path(argv[argv.index("--diag-report") + 1]).write_text(json.dumps(report))
        return subprocess.CompletedProcess(argv, returncode)

    monkeypatch.setattr(subprocess, "run", run)


def test_warnings_are_listed_and_never_called_every_check_passed(tmp_path, capsys, monkeypatch, started):
    _fake_checks(
        monkeypatch, {"topology": {"source": "nvml"}, "checks": [_check("a", warnings=[SPLIT_WARNING, MAP_WARNING])]}
    )
    command = [sys.executable, "-c", "1"]
    assert wrapper.main(["--diag-report", str(tmp_path / "r.json"), "--", *command]) == 0
    said = _said(capsys.readouterr().err)
    assert "every check passed" not in " ".join(said)
    assert said[-5:] == ["checks passed with 2 warnings:",
                         "  next step: [MAP-005] a: the map names layers.32; fix: Use the corrected map m.json.",
                         "  [SPLIT-001] a: VLMEvalKit before Dec 30 would address cuda:0-7; fix: Update it.",
                         "the eval's environment: CUDA_VISIBLE_DEVICES unset (every GPU), CUDA_DEVICE_ORDER unset "
                         "(FASTEST_FIRST)", f"starting {shlex.join(command)}"]  # fmt: skip
    assert [args for _, args, _ in started] == [command]  # the report said nvml: this machine's node


def test_failures_and_warnings_are_listed_before_not_starting(tmp_path, capsys, monkeypatch, started):
    failed = _check("a", "failed", "ENV-006", "Use free GPUs: --gpus 1,2.", "GPU 0", warnings=[SPLIT_WARNING])
    _fake_checks(monkeypatch, {"topology": {"source": "nvml"}, "checks": [failed]}, 1)
    assert wrapper.main(["--diag-report", str(tmp_path / "r.json"), "--", sys.executable, "-c", "1"]) == 1
    said = _said(capsys.readouterr().err)
    assert said[-4:] == ["checks failed (pytest exit code 1): 1 failure, 1 warning:",
                         "  next step: [ENV-006] GPU 0: Use free GPUs: --gpus 1,2.",
                         "  [SPLIT-001] GPU 0: VLMEvalKit before Dec 30 would address cuda:0-7; fix: Update it.",
                         f"not starting {sys.executable} -c 1: fix the failures above"]  # fmt: skip
    assert not started


def test_the_warnings_of_a_real_run_reach_the_terminal_before_the_decision(tmp_path, monkeypatch, capfd, started,
                                                                           installed):  # fmt: skip
    """AUTO_SPLIT over 3 GPUs: SPLIT-001 (VLMEvalKit of Dec 2024 assumed 8 GPUs) is a warning of the run."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    monkeypatch.setenv("AUTO_SPLIT", "1")
    report = tmp_path / "r.json"
    command = ["torchrun", "--nproc-per-node", "1", "run.py", "--data", "MME", "--model", "InternVL2-8B"]
    # The Dec 30 2024 VLMEvalKit (current VLMEvalKit ignores AUTO_SPLIT for InternVL: PR #952)
    code = wrapper.main(["--simulate", "8xA100-80GB", "--diag-report", str(report), "-q", "--eval-kit-version",
                         "2024-12-30", "--", *command])  # fmt: skip
    warnings = [w for c in json.loads(report.read_text())["checks"] for w in c["warnings"]]
    assert "SPLIT-001" in {w["code"] for w in warnings}
    said = _said(capfd.readouterr().err)
    if code == 1:  # a stack where a check of this run fails: the warnings are listed with the failures
        assert any(line.startswith("checks failed (pytest exit code 1): ") for line in said)
    else:
        assert code == wrapper.NOT_THIS_NODE and "every check passed" not in said
        head = said.index(
            f"checks passed with {len(wrapper.report_lines(json.loads(report.read_text()))[1])} warnings:"
        )
        assert said[head + 1 :][-2] == "the eval's environment: CUDA_VISIBLE_DEVICES=4,5,6, CUDA_DEVICE_ORDER unset " \
                                       "(FASTEST_FIRST), AUTO_SPLIT=1"  # fmt: skip
    assert any("[SPLIT-001]" in line and "VLMEvalKit from Dec 9 to Dec 30 2024" in line for line in said)
    assert not started


# -- the eval command reaches the checks and the report ----------------------------------------------------------
def test_the_report_records_the_eval_command_with_its_secrets_redacted(tmp_path, started):
    report = tmp_path / "r.json"
    command = [sys.executable, "-c", "1", "--model_args", "pretrained=x/y,token=hf_SECRET123", "--hf-token", "hf_S2"]
    code = wrapper.main(["--simulate", "2xA100-80GB", "--diag-report", str(report), "-q", "--", *command])
    assert code == wrapper.NOT_THIS_NODE
    text = report.read_text()
    assert "hf_SECRET123" not in text and "hf_S2" not in text  # neither in eval_command nor in pytest's command
    data = json.loads(text)
    redacted = [
        sys.executable,
        "-c",
        "1",
        "--model_args",
        "pretrained=x/y,token=<redacted>",
        "--hf-token",
        "<redacted>",
    ]
    assert data["eval_command"] == shlex.join(redacted)
    assert "--eval-command" in data["command"]
    jsonschema.validate(data, SCHEMA)


def test_a_report_without_an_eval_command_says_null():
    from diag.report import build_report

    assert (
        build_report(command=["pytest"], topology=None, checks=[], duration_s=0.1, environ={})["eval_command"] is None
    )
    with_it = build_report(command=["pytest"], topology=None, checks=[], duration_s=0.1, environ={},
                           eval_command=("lmms-eval", "--model_args", "pretrained=a b,api_key=k"))  # fmt: skip
    assert with_it["eval_command"] == "lmms-eval --model_args 'pretrained=a b,api_key=<redacted>'"


@pytest.mark.parametrize(
    "args",
    [["pytest", "--eval-command", "lmms-eval --hf-token hf_X --model_args token=hf_Y"],
     ["pytest", "--eval-command=lmms-eval --hf-token hf_X --model_args token=hf_Y"],
     ["pytest", "--eval-command", "lmms-eval --hf-token hf_X --model_args 'token=hf_Y"]],  # unbalanced quote
)  # fmt: skip
def test_the_eval_command_inside_pytests_command_is_redacted_as_a_command(args):
    from diag.report import redacted_command

    line = redacted_command(args)
    assert "hf_X" not in line and "hf_Y" not in line and line.startswith("pytest --eval-command")


@pytest.mark.parametrize("source", ["nvml", "simulated"])
def test_check_only_runs_the_checks_and_never_starts_the_command(tmp_path, capsys, monkeypatch, started, source):
    _fake_checks(monkeypatch, {"topology": {"source": source}, "checks": [_check("a", warnings=[SPLIT_WARNING])]})
    command = [sys.executable, "-c", "1"]
    assert wrapper.main(["--check-only", "--diag-report", str(tmp_path / "r.json"), "--", *command]) == 0
    said = _said(capsys.readouterr().err)
    assert said[-1] == f"not starting {shlex.join(command)}: --check-only" and not started
    assert "checks passed with 1 warning:" in said


def test_check_only_keeps_a_failed_checks_exit_code(tmp_path, capsys, monkeypatch, started):
    failed = _check("a", "failed", "ENV-006", "Use free GPUs: --gpus 1,2.", "GPU 0")
    _fake_checks(monkeypatch, {"topology": {"source": "nvml"}, "checks": [failed]}, 1)
    assert wrapper.main(["--check-only", "--diag-report", str(tmp_path / "r.json"), "--", sys.executable]) == 1
    assert not started


def test_a_model_diag_cannot_build_never_keeps_the_eval_from_starting(
    tmp_path, capsys, monkeypatch, started, installed
):
    """No preset and no cached config: the environment and layout checks run, the model checks are skipped with
    how to give diag the model, and the eval starts when they pass (here, with --start-anyway on a simulated node)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    report = tmp_path / "r.json"
    command = ["python", "run.py", "--data", "MME", "--model", "GPT4o"]
    code = wrapper.main(["--simulate", "2xA100-80GB", "--start-anyway", "--diag-report", str(report), "-q", "--",
                         *command])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and [args for _, args, _ in started] == [command]
    assert "not derived: the model (--model GPT4o: its config is neither in the local Hugging Face cache" in err
    assert "give diag the checkpoint's config with --model PATH" in err
    ran = {c["nodeid"].split("::")[0].rsplit("/", 1)[-1] for c in json.loads(report.read_text())["checks"]}
    assert ran == {"test_env.py", "test_layout.py"}
