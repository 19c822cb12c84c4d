"""checks/test_layout.py end to end on simulated nodes, and the layout helpers it rests on."""

from __future__ import annotations

import pytest

from diag.devicemap.model_args import device_map_for_process, device_map_from_model_args
from diag.layout import ProcessSlice, local_processes, local_rank, slice_topology, vlmevalkit_layout
from diag.topology import build_topology

LLAVA_AUTO = "pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto"


def _entry(run, name, outcome):
    entry = run.check(name)
    assert entry["outcome"] == outcome, (entry, run.text)
    return entry


# -- lmms-eval: processes and device_map=auto ------------------------------------------------------------------
def test_two_lmms_eval_processes_with_device_map_auto_fail_and_the_fix_says_one_gpu_each_fits(run_checks):
    run = run_checks("--simulate", "2xA100-80GB", "--processes", "2", "--eval-model", "llava_hf",
                     "--model-args", LLAVA_AUTO)  # fmt: skip
    entry = _entry(run, "test_lmms_eval_does_not_combine_processes_with_device_map_auto", "failed")
    assert entry["code"] == "LAYOUT-002"
    assert "each of the 2 processes loads its own copy split over all 2 GPUs" in entry["message"]
    assert entry["fix"]["summary"].startswith("Keep 2 processes and remove device_map=auto")
    assert "llava-1.5-7b fits one GPU" in entry["fix"]["summary"]
    assert "one process with device_map=auto" in entry["fix"]["details"]  # the other fix is named too
    assert entry["data"]["layout"]["fits_one_gpu"] is True
    assert "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/50" in entry["references"]


def test_one_lmms_eval_process_with_device_map_auto_passes(run_checks):
    run = run_checks("--simulate", "2xA100-80GB", "--processes", "1", "--eval-model", "llava_hf",
                     "--model-args", LLAVA_AUTO)  # fmt: skip
    _entry(run, "test_lmms_eval_does_not_combine_processes_with_device_map_auto", "passed")
    _entry(run, "test_processes_do_not_outnumber_the_visible_gpus", "passed")


def test_a_model_too_large_for_one_gpu_gets_the_one_process_fix(run_checks):
    run = run_checks("--simulate", "4xA100-80GB", "--processes", "2", "--eval-model", "internvl2",
                     "--model-args", "pretrained=OpenGVLab/InternVL2-Llama3-76B,device_map=auto")  # fmt: skip
    entry = _entry(run, "test_lmms_eval_does_not_combine_processes_with_device_map_auto", "failed")
    assert "internvl2 ignores device_map=auto with several processes" in entry["message"]
    assert entry["fix"]["summary"].startswith("Run one process with device_map=auto")
    assert "internvl2-76b does not fit one GPU" in entry["fix"]["summary"]
    assert entry["data"]["layout"]["fits_one_gpu"] is False and entry["data"]["layout"]["gpus_needed"] <= 4


@pytest.mark.parametrize(("variable", "value"), [("LOCAL_WORLD_SIZE", "2"), ("SLURM_NTASKS_PER_NODE", "2(x3)")])
def test_the_process_count_is_read_from_the_launchers_variables(run_checks, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    run = run_checks("--simulate", "2xA100-80GB", "--model-args", LLAVA_AUTO)
    entry = _entry(run, "test_lmms_eval_does_not_combine_processes_with_device_map_auto", "failed")
    assert entry["message"].startswith(f"2 processes ({variable}) with device_map=auto")
    assert "Give --model" not in entry["fix"]["summary"]  # pretrained= names the model


def test_without_a_named_model_both_fixes_are_offered(run_checks):
    run = run_checks("--simulate", "2xA100-80GB", "--processes", "2", "--model-args", "device_map=auto")
    entry = _entry(run, "test_lmms_eval_does_not_combine_processes_with_device_map_auto", "failed")
    assert entry["fix"]["summary"].startswith("Either run one process with device_map=auto")
    assert "each process either splits the model" in entry["message"]


# -- processes against GPUs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kit", "words"),
    [(None, "take cuda:2, cuda:3: CUDA error: invalid device ordinal"),
     ("vlmevalkit", "The number of processes should be less than or equal to the number of GPUs")],
)  # fmt: skip
def test_more_processes_than_gpus_fail(run_checks, kit, words):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5", "--processes", "4",
                     *(["--eval-kit", kit] if kit else []))  # fmt: skip
    entry = _entry(run, "test_processes_do_not_outnumber_the_visible_gpus", "failed")
    assert entry["code"] == "LAYOUT-001" and words in entry["message"]
    assert "--nproc-per-node 2" in entry["fix"]["summary"]
    recheck = entry["fix"]["commands"][0]
    assert "--processes 2" in recheck and "--processes 4" not in recheck and "--gpus 4,5" in recheck


def test_more_processes_than_gpus_gives_the_eval_command_corrected(run_checks):
    command = "torchrun --nproc-per-node=4 run.py --data MME --model InternVL2-8B"
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5", "--processes", "4", "--eval-kit", "vlmevalkit",
                     "--eval-command", command)  # fmt: skip
    entry = _entry(run, "test_processes_do_not_outnumber_the_visible_gpus", "failed")
    assert entry["fix"]["commands"] == ["torchrun --nproc-per-node=2 run.py --data MME --model InternVL2-8B"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("torchrun --nproc-per-node 8 run.py", "torchrun --nproc-per-node 2 run.py"),
        ("torchrun --nproc_per_node=8 run.py", "torchrun --nproc_per_node=2 run.py"),
        ("accelerate launch --num_processes 8 -m lmms_eval", "accelerate launch --num_processes 2 -m lmms_eval"),
        ("python -m lmms_eval --model llava", None),
        ("torchrun run.py --nproc-per-node", None),
    ],
)
def test_the_launchers_process_count_is_rewritten_in_place(command, expected):
    from diag.roots import eval_command_with_processes

    assert eval_command_with_processes(command.split(), 2) == expected


# -- VLMEvalKit slices -------------------------------------------------------------------------------------------
def test_vlmevalkit_gives_two_processes_two_gpus_each_and_checks_each_slice(run_checks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    run = run_checks("--simulate", "8xA100-80GB", "--eval-kit", "vlmevalkit", "--processes", "2",
                     "--model", "internvl2-8b")  # fmt: skip
    entry = _entry(run, "test_vlmevalkit_gives_each_process_its_own_gpus", "passed")
    assert entry["data"]["slices"] == [{"local_rank": 0, "cuda_visible_devices": "4,5"},
                                       {"local_rank": 1, "cuda_visible_devices": "6,7"}]  # fmt: skip
    for rank, gpus in ((0, [4, 5]), (1, [6, 7])):
        case = f"rank{rank}-gpus{gpus[0]},{gpus[1]}-internvl2-8b-auto"
        plan = _entry(run, f"test_model_fits_in_gpu_memory[{case}]", "passed")["data"]["plan"]
        assert [row["device"] for row in plan] == ["cuda:0", "cuda:1"]
        assert [row["nvml_index"] for row in plan] == gpus
        _entry(run, f"test_device_map_names_only_visible_gpus[{case}]", "passed")


def test_a_model_that_fits_the_node_but_not_one_processs_slice_fails_for_each_slice(run_checks):
    run = run_checks("--simulate", "4xA100-80GB", "--eval-kit", "vlmevalkit", "--processes", "4",
                     "--model", "internvl2-26b")  # fmt: skip
    for rank in range(4):
        entry = _entry(run, f"test_model_fits_in_gpu_memory[rank{rank}-gpus{rank}-internvl2-26b-auto]", "passed")
        assert [row["nvml_index"] for row in entry["data"]["plan"]] == [rank]
    run = run_checks("--simulate", "4xA100-40GB", "--eval-kit", "vlmevalkit", "--processes", "4",
                     "--model", "internvl2-26b")  # fmt: skip
    entry = _entry(run, "test_model_fits_in_gpu_memory[rank3-gpus3-internvl2-26b-auto]", "failed")
    assert entry["code"] == "MEM-002"  # 26B in bf16 needs more than one 40 GB GPU
    assert entry["subject"] == "rank3-gpus3-internvl2-26b-auto"  # the summary line names the slice


def test_vlmevalkit_leaves_the_remainder_unused_with_a_warning(run_checks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    run = run_checks("--simulate", "8xA100-80GB", "--eval-kit", "vlmevalkit", "--processes", "2",
                     "--model", "internvl2-1b")  # fmt: skip
    entry = _entry(run, "test_vlmevalkit_gives_each_process_its_own_gpus", "passed")
    assert [w["code"] for w in entry["warnings"]] == ["LAYOUT-003"]
    assert "leaves 6 unused" in entry["warnings"][0]["message"]


def test_vlmevalkit_cannot_slice_uuid_entries(run_checks):
    from diag.topology.simulated import simulated_node

    uuids = ",".join(g.uuid for g in simulated_node("4xA100-80GB").gpus[:2])
    run = run_checks("--simulate", "4xA100-80GB", "--gpus", uuids, "--eval-kit", "vlmevalkit", "--processes", "2",
                     "--model", "internvl2-1b")  # fmt: skip
    entry = _entry(run, "test_vlmevalkit_gives_each_process_its_own_gpus", "failed")
    assert entry["code"] == "SPLIT-002" and "invalid literal for int()" in entry["message"]


def test_bad_eval_kit_is_a_usage_error(pytester):
    result = pytester.runpytest(
        "-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "2xA100-80GB", "--eval-kit", "vllm"
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --eval-kit: 'vllm': expected one of lmms-eval, vlmevalkit*"])


# -- helpers -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "env", "count", "origin"),
    [
        (3, {"LOCAL_WORLD_SIZE": "2"}, 3, "--processes"),
        (None, {"LOCAL_WORLD_SIZE": "2", "WORLD_SIZE": "16"}, 2, "LOCAL_WORLD_SIZE"),
        (None, {"SLURM_NTASKS_PER_NODE": "4", "WORLD_SIZE": "8"}, 4, "SLURM_NTASKS_PER_NODE"),
        (None, {"WORLD_SIZE": "2"}, 2, "WORLD_SIZE"),
        (None, {"LOCAL_WORLD_SIZE": "two", "WORLD_SIZE": "2"}, 2, "WORLD_SIZE"),
        (None, {}, 1, "default"),
    ],
)
def test_process_count_providers(option, env, count, origin):
    found = local_processes(option, env)
    assert (found.count, found.origin) == (count, origin)
    assert found.ignored == (("LOCAL_WORLD_SIZE=two",) if env.get("LOCAL_WORLD_SIZE") == "two" else ())


def test_local_rank_prefers_the_launchers_variable():
    assert local_rank({"LOCAL_RANK": "1", "SLURM_LOCALID": "3"}) == 1
    assert local_rank({"SLURM_LOCALID": "3"}) == 3
    assert local_rank({"LOCAL_RANK": "x"}) is None


def test_a_slice_is_renumbered_from_cuda_0_and_keeps_its_physical_gpus():
    topology = build_topology(env={"CUDA_VISIBLE_DEVICES": "7,6,5,4"}, simulate="8xA100-80GB")
    layout = vlmevalkit_layout(topology, 2)
    assert [s.tokens for s in layout.slices] == [("7", "6"), ("5", "4")] and layout.unused == ()
    view = slice_topology(topology, layout.slices[1])
    assert [d.cuda_index for d in view.cuda.devices] == [0, 1]
    assert view.selection.nvml_indices == (5, 4) and view.selection.cuda_visible_devices == "5,4"
    assert layout.slices[1].id == "rank1-gpus5,4"
    assert slice_topology(topology, ProcessSlice(0, (0,), ("7",))).cuda.devices[0].uuid == topology.cuda.devices[0].uuid


@pytest.mark.parametrize(
    ("model_class", "model_args", "expected"),
    [
        ("llava", "device_map=auto", "cuda:1"),  # ignored with several processes
        ("qwen2_vl", "", "cuda:1"),
        ("llava_hf", "", "cuda:1"),  # the llava_hf family only for an empty device_map
        ("llava_hf", "device_map=auto", "auto"),
        (None, "device_map=auto", "auto"),
    ],
)
def test_the_map_each_of_several_lmms_eval_processes_passes(model_class, model_args, expected):
    source = device_map_from_model_args(model_args, model_class)
    assert source is not None
    assert device_map_for_process(source, 2, 1).value == expected
    assert device_map_for_process(source, 1, 0) is source
