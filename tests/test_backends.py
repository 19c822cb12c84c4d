"""The inference-backend checks (BACKEND-001..009): the launch read from commands and options, the backends' rules
as functions, and the shipped checks run through the plugin on simulated and replayed nodes."""

from __future__ import annotations

import pytest

from diag.backends import (
    LMDEPLOY,
    SGLANG,
    VLLM,
    BackendArgsError,
    command_with_option,
    divisors_up_to,
    fraction_that_fits,
    from_lmms_eval,
    from_options,
    from_vlmevalkit,
    kv_heads_problem,
    language_heads,
    model_args_with,
    run_py_in_one_process,
    sglang_unbalanced,
    uuid_entries,
    vision_heads,
    vllm_memory_shortfall,
)
from diag.launch.commands import CommandError, backend_launch
from diag.options import DiagOptions
from diag.topology.records import Gpu
from diag.twins import PRESETS

QWEN7 = "Qwen/Qwen2-VL-7B-Instruct"


def _gpu(index: int, used_mib: int = 0, total_mib: int = 81920) -> Gpu:
    return Gpu(index, f"GPU-{index:08d}", f"0000:{index:02d}:00.0", "NVIDIA A100-SXM4-80GB", total_mib, used_mib)


def _options(**given: object) -> DiagOptions:
    fields = dict(gpus=None, simulate=None, topology=None, model=None, device_map=None, model_args=None,
                  processes=None, report_path=None)  # fmt: skip
    fields.update(given)
    return DiagOptions(**fields)  # type: ignore[arg-type]


# -- reading the launch ------------------------------------------------------------------------------------------
def test_lmms_eval_vllm_model_args_give_sizes_fraction_and_model():
    launch = from_lmms_eval("vllm", f"model={QWEN7},tensor_parallel_size=4,data_parallel_size=2")
    assert launch is not None
    assert (launch.backend, launch.model, launch.tp, launch.dp) == (VLLM, QWEN7, 4, 2)
    assert launch.fraction == 0.8 and "default" in launch.fraction_from  # lmms-eval's class default
    assert launch.spawn_forced and launch.kit == "lmms-eval"
    assert from_lmms_eval("llava_hf", "pretrained=x") is None


def test_lmms_eval_sglang_reads_tp_size_and_mem_fraction_static():
    launch = from_lmms_eval("sglang", "pretrained=Qwen/Qwen2-VL-2B-Instruct,tp_size=2,mem_fraction_static=0.7")
    assert launch is not None
    assert (launch.backend, launch.tp, launch.fraction, launch.fraction_name) == (SGLANG, 2, 0.7, "mem_fraction_static")
    assert not launch.spawn_forced


@pytest.mark.parametrize(
    ("args", "said"),
    [("tensor_parallel_size=0", "tensor_parallel_size=0"), ("tensor_parallel_size=two", "'two'"),
     ("gpu_memory_utilization=1.5", "gpu_memory_utilization=1.5"), ("data_parallel_size=-1", "data_parallel_size")],
)  # fmt: skip
def test_bad_sizes_are_one_line_errors(args, said):
    with pytest.raises(BackendArgsError, match=said) as caught:
        from_lmms_eval("vllm", args)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("command", "backend", "tp", "dp", "fraction", "model", "processes"),
    [
        (["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", "--model", "vllm", "--model_args",
          f"model={QWEN7},tensor_parallel_size=8"], VLLM, 8, 1, 0.8, QWEN7, 2),
        (["python", "-m", "lmms_eval", "--model", "sglang", "--model_args", f"model={QWEN7},tp_size=4"], SGLANG, 4, 1,
         None, QWEN7, 1),
        (["vllm", "serve", QWEN7, "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.7"], VLLM, 4, 1, 0.7,
         QWEN7, 1),
        (["vllm", "serve", QWEN7, "--tensor_parallel_size=2", "--data-parallel-size", "4"], VLLM, 2, 4, 0.9, QWEN7, 1),
        (["python", "-m", "vllm.entrypoints.openai.api_server", "--model", QWEN7, "-tp", "2"], VLLM, 2, 1, 0.9, QWEN7,
         1),
        (["python3", "-m", "sglang.launch_server", "--model-path", QWEN7, "--tp", "8", "--mem-fraction-static",
          "0.8"], SGLANG, 8, 1, 0.8, QWEN7, 1),
        (["lmdeploy", "serve", "api_server", QWEN7, "--tp", "2"], LMDEPLOY, 2, 1, None, QWEN7, 1),
        (["python", "run.py", "--data", "MME", "--model", "Qwen2-VL-7B-Instruct", "--use-vllm"], VLLM, None,
         1, 0.9, QWEN7, 1),
        (["torchrun", "--nproc-per-node", "2", "run.py", "--data", "MME", "--model", "Qwen2-VL-7B-Instruct",
          "--use-v"], VLLM, None, 1, 0.9, QWEN7, 2),
    ],
)  # fmt: skip
def test_backend_commands_are_recognised(command, backend, tp, dp, fraction, model, processes):
    launch = backend_launch(tuple(command), {})  # --eval-command gives a tuple
    assert launch is not None
    assert (launch.backend, launch.tp, launch.dp, launch.fraction, launch.model, launch.processes) == (
        backend, tp, dp, fraction, model, processes)  # fmt: skip


def test_commands_that_start_no_backend_give_none():
    assert backend_launch(["python", "-m", "lmms_eval", "--model", "llava_hf"], {}) is None
    assert backend_launch(["python", "run.py", "--data", "MME", "--model", "InternVL2-8B"], {}) is None
    assert backend_launch(["python", "train.py"], {}) is None
    with pytest.raises(CommandError, match="tensor parallel size"):
        backend_launch(["vllm", "serve", QWEN7, "--tensor-parallel-size", "x"], {})


def test_options_describe_the_launch_without_a_command():
    launch = from_options(_options(eval_model="vllm", model_args=f"model={QWEN7},tensor_parallel_size=4"))
    assert launch is not None and (launch.backend, launch.tp, launch.via) == (VLLM, 4, "lmms-eval --model vllm")
    auto = from_options(_options(eval_kit="vlmevalkit", backend="vllm", model="qwen2-vl-7b"))
    assert auto is not None and auto.tp is None and auto.tensor_parallel(8) == 8 and auto.tensor_parallel(6) == 4
    lmdeploy = from_options(_options(eval_kit="vlmevalkit", backend="lmdeploy", processes=1))
    assert lmdeploy is not None and lmdeploy.tensor_parallel(6) == 6 and lmdeploy.fraction == 0.1
    server = from_options(_options(backend="sglang", model_args="tp_size=2"))
    assert server is not None and (server.backend, server.tp) == (SGLANG, 2)
    assert from_options(_options()) is None


def test_vlmevalkit_picks_tp_from_the_gpu_count():
    launch = from_vlmevalkit("Qwen2-VL-7B-Instruct", VLLM, QWEN7)
    assert [launch.tensor_parallel(n) for n in (1, 2, 3, 4, 7, 8, 16)] == [1, 2, 2, 4, 4, 8, 8]
    assert from_vlmevalkit("x", LMDEPLOY).tensor_parallel(3) == 3


# -- the rules ---------------------------------------------------------------------------------------------------
def test_heads_come_from_the_language_model_and_the_vision_tower():
    qwen = PRESETS["qwen2-vl-7b"].config
    assert (language_heads(qwen).heads, language_heads(qwen).kv_heads) == (28, 4)  # type: ignore[union-attr]
    assert vision_heads(qwen).heads == 16  # type: ignore[union-attr]
    intern = PRESETS["internvl2-8b"].config  # llm_config
    assert (language_heads(intern).heads, language_heads(intern).kv_heads) == (32, 8)  # type: ignore[union-attr]
    llava = PRESETS["llava-1.5-7b"].config  # text_config, CLIP vision_config.num_attention_heads
    assert language_heads(llava).heads == 32 and vision_heads(llava).heads == 16  # type: ignore[union-attr]
    assert language_heads({}) is None and vision_heads({"vision_config": {}}) is None


def test_kv_heads_split_below_tp_and_replicate_from_tp_up():
    assert kv_heads_problem(4, 2) is None and kv_heads_problem(4, 8) is None and kv_heads_problem(4, 4) is None
    assert kv_heads_problem(4, 3) and kv_heads_problem(4, 6) and kv_heads_problem(8, 3)


def test_sizes_that_divide_every_part():
    assert divisors_up_to(28, 8, 4, 16) == [1, 2, 4]  # Qwen2-VL-7B
    assert divisors_up_to(12, 8, 2, 16) == [1, 2, 4]  # Qwen2-VL-2B: 12 heads, 2 KV heads (replicated at 4)
    assert divisors_up_to(24, 8, 3) == [1, 3, 6]  # 3 KV heads: 2 and 4 split them unevenly, 8 replicates unevenly
    assert divisors_up_to(64, 8, 8, 16) == [1, 2, 4, 8]  # Qwen2-VL-72B


def test_vllm_needs_the_fraction_of_total_free():
    busy = _gpu(5, used_mib=70000)
    free, total, wanted = vllm_memory_shortfall(busy, 0.9)  # type: ignore[misc]
    assert round(free * 1024) == 81920 - 70000 and total == 80 and wanted == pytest.approx(72)
    assert vllm_memory_shortfall(_gpu(0, used_mib=500), 0.9) is None
    assert vllm_memory_shortfall(_gpu(0, used_mib=9000), 0.9) is not None  # 71.2 GiB free < 72 GiB
    assert fraction_that_fits([_gpu(0), busy]) == pytest.approx(0.13)  # 11920/81920 = 0.1455 -> 0.14 - 0.01


def test_sglang_refuses_unbalanced_free_memory():
    assert sglang_unbalanced([_gpu(0), _gpu(1, used_mib=10000)])
    assert not sglang_unbalanced([_gpu(0, used_mib=500), _gpu(1, used_mib=600)])
    assert not sglang_unbalanced([_gpu(0, used_mib=40000)])  # one rank: nothing to compare


def test_uuid_entries_and_fix_helpers():
    assert uuid_entries("0,GPU-abc, MIG-def,3") == ["GPU-abc", "MIG-def"] and uuid_entries(None) == []
    assert model_args_with("model=m,tensor_parallel_size=8", {"tensor_parallel_size": 4}) == (
        "model=m,tensor_parallel_size=4")  # fmt: skip
    assert model_args_with("model=m,data_parallel_size=2", {"data_parallel_size": None}) == "model=m"
    assert command_with_option(["vllm", "serve", "m", "--tensor_parallel_size=8"], ["--tensor-parallel-size"], "4") == (
        "vllm serve m --tensor_parallel_size=4")  # fmt: skip
    assert command_with_option(["vllm", "serve", "m"], ["--tensor-parallel-size"], "4").endswith(
        "--tensor-parallel-size 4")  # fmt: skip
    assert run_py_in_one_process(["A=1", "torchrun", "--nproc-per-node", "2", "run.py", "--use-vllm"]) == (
        "A=1 python run.py --use-vllm")  # fmt: skip


# -- the checks through the plugin -------------------------------------------------------------------------------
def _backend_run(run_checks, *args: str):
    return run_checks(*args, target="checks/test_backends.py")


def test_vllm_two_processes_with_tp8_and_a_28_head_model_fail(run_checks):
    run = _backend_run(run_checks, "--simulate", "8xA100-80GB", "--eval-command",
                       "accelerate launch --num_processes 2 -m lmms_eval --model vllm --model_args "
                       f"model={QWEN7},tensor_parallel_size=8 --tasks mme")  # fmt: skip
    ranks = run.check("test_backend_processes_match_the_engine_ranks")
    assert ranks["code"] == "BACKEND-001" and "(8), but got 2" in ranks["message"]
    assert any("--num_processes 8" in c for c in ranks["fix"]["commands"])
    heads = run.check("test_tensor_parallel_divides_the_language_model_heads")
    assert heads["code"] == "BACKEND-004"
    assert "Total number of attention heads (28) must be divisible by tensor parallel size (8)" in heads["message"]
    assert "diag's preset qwen2-vl-7b" in heads["message"]  # says which config the verdict rests on
    assert any("tensor_parallel_size=4" in c for c in heads["fix"]["commands"])
    assert run.check("test_tensor_parallel_divides_the_vision_tower_heads")["outcome"] == "passed"  # 16 % 8 == 0


def test_vllm_tp4_on_four_free_gpus_passes(run_checks):
    run = _backend_run(run_checks, "--simulate", "8xA100-80GB", "--gpus", "4,5,6,7", "--eval-model", "vllm",
                       "--model-args", f"model={QWEN7},tensor_parallel_size=4")  # fmt: skip
    outcomes = run.outcomes()
    assert "failed" not in outcomes.values(), outcomes
    assert outcomes["test_tensor_parallel_divides_the_language_model_heads"] == "passed"
    assert outcomes["test_backend_memory_fraction_fits_the_free_memory"] == "passed"


def test_a_busy_gpu_fails_vllms_memory_fraction_with_the_free_mib(run_checks, node_file):
    busy = {"processes": [{"pid": 4242, "name": "python", "used_mib": 30000}], "memory_used_mib": 30512}
    node = node_file("8xA100-80GB", {5: busy})
    run = _backend_run(run_checks, "--topology", str(node), "--gpus", "4,5,6,7", "--eval-command",
                       f"vllm serve {QWEN7} --tensor-parallel-size 4 --gpu-memory-utilization 0.9")  # fmt: skip
    entry = run.check("test_backend_memory_fraction_fits_the_free_memory")
    assert entry["code"] == "BACKEND-006"
    free = 81920 - 30512
    assert f"GPU 5: {free} MiB free of 81920 MiB" in entry["message"] and "pid 4242" in entry["message"]
    assert "is less than desired GPU memory utilization (0.9," in entry["message"]
    commands = entry["fix"]["commands"]
    assert commands[0].startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1,2,3 vllm serve")
    assert commands[1].endswith("--gpu-memory-utilization 0.61")  # 51408 / 81920 = 0.6275 -> 0.62 - 0.01


def test_vlmevalkit_use_vllm_on_eight_gpus_picks_tp8_for_a_28_head_model(run_checks):
    run = _backend_run(run_checks, "--simulate", "8xA100-80GB", "--eval-command",
                       "python run.py --data MME --model Qwen2-VL-7B-Instruct --use-vllm")  # fmt: skip
    entry = run.check("test_tensor_parallel_divides_the_language_model_heads")
    assert entry["code"] == "BACKEND-004" and "VLMEvalKit picks 8/4/2/1" in entry["message"]
    assert entry["fix"]["commands"] == ["CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1,2,3 python run.py "
                                        "--data MME --model Qwen2-VL-7B-Instruct --use-vllm"]  # fmt: skip
    spawn = run.check("test_backend_workers_start_with_spawn")
    assert [w["code"] for w in spawn["warnings"]] == ["BACKEND-008"]


def test_sglang_tp3_fails_the_language_model_and_the_vision_tower(run_checks):
    run = _backend_run(run_checks, "--simulate", "8xA100-80GB", "--eval-command",
                       f"python -m sglang.launch_server --model-path {QWEN7} --tp 3")  # fmt: skip
    assert run.check("test_tensor_parallel_divides_the_language_model_heads")["code"] == "BACKEND-004"
    vision = run.check("test_tensor_parallel_divides_the_vision_tower_heads")
    assert vision["code"] == "BACKEND-005" and "16 is not divisible by 3" in vision["message"]


def test_gpu_uuids_in_the_selection_fail_vllm_with_the_indices_as_fix(run_checks):
    from diag.topology.simulated import simulated_node

    uuids = [g.uuid for g in simulated_node("4xA100-80GB").gpus[2:4]]
    run = _backend_run(run_checks, "--simulate", "4xA100-80GB", "--gpus", ",".join(uuids), "--backend", "vllm",
                       "--model-args", "tensor_parallel_size=2")  # fmt: skip
    entry = run.check("test_backend_can_use_the_visible_devices")
    assert (
        entry["code"] == "BACKEND-009" and f"invalid literal for int() with base 10: '{uuids[0]}'" in entry["message"]
    )
    assert "CUDA_VISIBLE_DEVICES=2,3" in entry["fix"]["summary"]
    assert " --gpus 2,3 " in entry["fix"]["commands"][0]  # this run checked again on the same GPUs by index
