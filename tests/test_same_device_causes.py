"""Explainable same-device failures get their own code, not FWD-007: the twin run and its classification called
directly (no pytest run), on whichever stack is installed."""

from __future__ import annotations

import pytest

from diag.devicemap.sources import DeviceMapSource
from diag.samedevice.causes import classify, select_gpus_fix
from diag.samedevice.run import RunResult
from diag.samedevice.verify import check_run
from diag.topology import build_topology
from diag.twins import PRESETS, build_meta, language_model_layout

SAME = "RuntimeError: Expected all tensors to be on the same device, but found at least two devices"


@pytest.fixture(scope="module")
def metas():
    return {name: build_meta(PRESETS[name]) for name in ("llava-1.5-7b", "internvl2-8b")}


@pytest.mark.parametrize("name", ["llava-1.5-7b", "internvl2-8b"])
@pytest.mark.parametrize(("device_map", "fixed"), [({"": 1}, {"": 0}), ({"": "cuda:1"}, {"": "cuda:0"})])
def test_the_whole_model_on_cuda_1_with_inputs_on_cuda_0_is_fwd_005(metas, name, device_map, fixed):
    """`{"": 1}` (the CogVLM write-up's own fix; `--device-map 1` and `cuda:1` resolve to it too): one device,
    so from_pretrained adds no hook, and the inputs the kit sends to cuda:0 meet the model on cuda:1."""
    verdict = check_run(PRESETS[name], device_map, simulated_gpus=2, meta_model=metas[name])
    assert verdict.result.devices is not None and set(verdict.result.devices) == {"cuda:0", "cuda:1"}
    assert verdict.cause is not None and verdict.cause.code == "FWD-005"
    assert verdict.cause.map_gpus == (1,)
    assert "the inputs sit on cuda:0, where the map puts no part of the model" in verdict.cause.explanation
    assert verdict.fixed_map == fixed and verdict.verified


def test_the_inputs_gpu_in_the_map_is_not_this_cause():
    result = RunResult("forward", f"{SAME}, cuda:1 and cuda:0!", devices=("cuda:1", "cuda:0"))
    layout_model = build_meta(PRESETS["llava-1.5-7b"])
    cause = classify(result, layout_model, {"": 0, "lm_head": 1}, language_model_layout(layout_model))
    assert cause.code != "FWD-005" and not cause.map_gpus


def test_a_map_that_skips_the_inputs_gpu_is_renumbered_from_0_in_the_form_written():
    model = build_meta(PRESETS["llava-1.5-7b"])
    result = RunResult("forward", f"{SAME}, cuda:2 and cuda:0!", devices=("cuda:2", "cuda:0"))
    cause = classify(result, model, {"a": 2, "b": "cuda:3"}, language_model_layout(model))
    assert cause.code == "FWD-005" and cause.map_gpus == (2, 3)
    assert cause.fixed_map == {"a": 0, "b": "cuda:1"}


def _topology(gpus: list[str], spec: str = "8xA100-80GB"):
    """The view the plugin gives a run with --gpus: CUDA_VISIBLE_DEVICES set to them."""
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    return build_topology(env=env, gpus=gpus, simulate=spec)


@pytest.mark.parametrize(
    ("value", "origin", "written"),
    [
        ({"": 1}, "--device-map", 'device_map={"": 0}'),
        ({"": "cuda:1"}, "--device-map", 'device_map={"": "cuda:0"}'),
        ("cuda:1", "--device-map", 'device_map="cuda:0"'),
        (1, "--device-map", "device_map=0"),
        ("cuda:1", "--model-args", "in --model_args device_map=cuda:0"),
    ],
)
def test_the_fix_selects_the_physical_gpu_of_cuda_1_and_maps_to_0(metas, value, origin, written):
    device_map = value if isinstance(value, dict) else {"": 1}
    verdict = check_run(PRESETS["llava-1.5-7b"], device_map, simulated_gpus=4, meta_model=metas["llava-1.5-7b"])
    assert verdict.cause is not None and verdict.verified
    topology = _topology(["4", "5", "6", "7"])  # cuda:1 is GPU 5
    fix = select_gpus_fix(verdict.cause, DeviceMapSource(value, origin, str(value)), topology)
    assert fix is not None
    summary, env = fix
    assert summary.startswith("Select that GPU and map to 0 (cuda:1 is GPU 5)")
    assert f"CUDA_VISIBLE_DEVICES=5 and {written};" in summary
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "5"}


def test_an_auto_split_map_past_the_slices_first_gpu_gets_a_launch_fix(metas):
    """VLMEvalKit, 4 GPUs, 2 processes, AUTO_SPLIT=1: run.py gives rank 1 GPUs 2,3, and the split counts from
    LOCAL_RANK again inside them, so internvl2-8b goes to the slice's cuda:1 (GPU 3) alone."""
    from diag.devicemap.autosplit import PINNED_MODULES, internvl_split, split_source

    model = metas["internvl2-8b"]
    layout = language_model_layout(model)
    names = {name for name, _ in model.named_modules()}
    plan = internvl_split(num_layers=layout.num_layers, layers=layout.layers,
                          pinned=[p for p in PINNED_MODULES if p in names], visible_gpus=2, local_rank=1,
                          local_world_size=2)  # fmt: skip
    device_map = {k: v for k, v in plan.device_map.items() if k in names}
    assert set(device_map.values()) == {1}
    verdict = check_run(PRESETS["internvl2-8b"], device_map, simulated_gpus=2, meta_model=model)
    assert verdict.cause is not None and verdict.cause.code == "FWD-005" and verdict.verified
    fix = select_gpus_fix(verdict.cause, split_source(plan), _topology(["2", "3"], "4xA100-80GB"))
    assert fix is not None
    summary, env = fix
    assert "(CUDA_VISIBLE_DEVICES=2,3), so it puts the model on cuda:1 (GPU 3) and leaves cuda:0 (GPU 2)" in summary
    assert "Run one process with AUTO_SPLIT=1" in summary and env == {}


def test_a_root_key_beside_a_nested_key_on_another_gpu_is_fwd_010(metas):
    """`{"": 0, "vision_model.embeddings": 1}`: accelerate moves the inputs of the embeddings to the root's GPU;
    the fix spells "" out and re-runs."""
    device_map = {"": 0, "vision_model.embeddings": 1}
    verdict = check_run(PRESETS["internvl2-8b"], device_map, simulated_gpus=2, meta_model=metas["internvl2-8b"])
    assert verdict.cause is not None and verdict.cause.code == "FWD-010", verdict.result
    assert verdict.cause.modules == ("vision_model.embeddings",)
    assert verdict.fixed_map is not None and "" not in verdict.fixed_map
    assert verdict.fixed_map["vision_model.embeddings"] == 1
    assert verdict.fixed_map["vision_model.encoder"] == 0 and verdict.fixed_map["language_model"] == 0
    assert verdict.verified


def test_fwd_010_is_in_the_catalog():
    from diag.fixes import lookup

    assert lookup("FWD-010").references[0].endswith("huggingface/accelerate/blob/main/src/accelerate/hooks.py")
