"""FACTS.md's device errors, reproduced in simulation with the verdict and the cause each stack really gives.

diag never looks at the transformers version: the twins run the installed code. Only these tests know which
stack they are on, to state what FACTS.md says that stack does ("Which versions break", "Generation").
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from packaging.version import Version

from diag.devicemap.autosplit import PINNED_MODULES_WITHOUT_ROTARY, internvl_split
from diag.devicemap.plan import GIB, plan_device_map
from diag.samedevice.verify import check_run, forced_map
from diag.twins import PRESETS, build_meta, language_model_layout

OLD_STACK = Version(transformers.__version__) < Version("4.46")  # FACTS.md: 4.45 is where these failures live
ROTARY_BREAKS = Version(transformers.__version__) < Version("4.52")  # FACTS.md: 4.43-4.50 fail, 4.52+ move it
FOUR_GPUS = {0: 80 * GIB, 1: 80 * GIB, 2: 80 * GIB, 3: 80 * GIB, "cpu": 256 * GIB}


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _meta(name: str) -> torch.nn.Module:
    return build_meta(PRESETS[name]).to(torch.bfloat16)


def _readme_split_without_rotary(model: torch.nn.Module) -> dict[str, int]:
    """InternVL's README split_model over 4 GPUs, as written before InternVL PR #789 added rotary_emb."""
    layout = language_model_layout(model)
    names = {name for name, _ in model.named_modules()}
    pinned = [p for p in PINNED_MODULES_WITHOUT_ROTARY if p in names]
    split = internvl_split(num_layers=layout.num_layers, layers=layout.layers, pinned=pinned, visible_gpus=4)
    return {k: v for k, v in split.device_map.items() if k in names}


def test_internvl_readme_map_without_rotary_emb():
    meta = _meta("internvl2-76b")
    layout = language_model_layout(meta)
    verdict = check_run(PRESETS["internvl2-76b"], _readme_split_without_rotary(meta), simulated_gpus=4, meta_model=meta)
    if ROTARY_BREAKS:
        assert not verdict.result.ok
        assert verdict.result.devices == ("cpu", "cuda:0")
        assert verdict.cause is not None and verdict.cause.code == "FWD-001"
        assert verdict.cause.modules == (layout.rotary,)
        assert verdict.verified and verdict.fixed_map is not None and verdict.fixed_map[layout.rotary] == 0
    else:
        assert verdict.result.ok, verdict.result.error


def test_internvl_chat_under_auto_over_four_gpus():
    meta = _meta("internvl2-76b")
    layout = language_model_layout(meta)
    device_map = plan_device_map(meta, "auto", FOUR_GPUS)
    assert device_map[layout.head] != device_map[layout.embed]  # auto puts the head on a later GPU
    verdict = check_run(PRESETS["internvl2-76b"], device_map, simulated_gpus=4, meta_model=meta,
                        replan=("auto", FOUR_GPUS))  # fmt: skip
    if OLD_STACK:  # InternVL #587: the sampling step mixes the head's GPU and the inputs' GPU
        assert verdict.result.stage == "chat" and verdict.result.cross_device  # chat's generate
        # chat sets eos_token_id, so the first op to meet both GPUs is the one #587 quotes:
        # `next_tokens * unfinished_sequences`, with the head's GPU (the 76B's auto plan puts it on GPU 2) first.
        assert verdict.result.op == "Tensor.mul" and verdict.result.devices == ("cuda:2", "cuda:0")
        assert verdict.cause is not None and verdict.cause.code == "FWD-002"
        assert verdict.verified
        fixed = verdict.fixed_map or {}
        assert fixed[layout.head] == fixed[layout.embed] == fixed[layout.norm]
    else:
        assert verdict.result.ok, verdict.result.error


@pytest.mark.parametrize("where", ["auto", "head-on-last-gpu"])
def test_internlm2_based_internvl_returns_its_logits_to_the_inputs_gpu(where):
    """InternVL2-8B's language model is InternLM2, whose remote code moves the logits back to the input's device
    (InternVL PR #132): with the head on another GPU than the embeddings its chat runs on every stack."""
    meta = _meta("internvl2-8b")
    layout = language_model_layout(meta)
    if where == "auto":
        device_map = plan_device_map(meta, "auto", FOUR_GPUS)
    else:
        device_map = {**forced_map(meta, 4, PRESETS["internvl2-8b"].family), layout.norm: 3, layout.head: 3}
    assert device_map[layout.head] != device_map[layout.embed]
    verdict = check_run(PRESETS["internvl2-8b"], device_map, simulated_gpus=4, meta_model=meta)
    assert verdict.result.ok, verdict.result.error


def test_cogvlm_with_a_split_vision_layer_fails_and_the_no_split_fix_runs():
    meta = _meta("cogvlm-17b")
    meta._no_split_modules = ["CogVLMDecoderLayer"]  # CogVLM2's demo lists only the decoder layer (FACTS.md)
    memory = {0: int(24.9 * GIB), 1: 80 * GIB, "cpu": 256 * GIB}
    device_map = plan_device_map(meta, "sequential", memory)
    inner = {
        str(v) for k, v in device_map.items() if k.startswith("model.vision.transformer.layers.") and k.count(".") > 4
    }
    assert inner == {"0", "1"}, "the plan must split one vision TransformerLayer across the two GPUs"
    verdict = check_run(PRESETS["cogvlm-17b"], device_map, simulated_gpus=2, meta_model=meta,
                        replan=("sequential", memory))  # fmt: skip
    assert verdict.result.cross_device and verdict.result.devices == ("cuda:0", "cuda:1")
    assert verdict.result.module and verdict.result.module.startswith("model.vision.transformer.layers.")
    assert verdict.cause is not None and verdict.cause.code == "FWD-004"
    assert verdict.cause.no_split_class == "TransformerLayer"
    assert verdict.verified


def test_llava_next_34b_under_auto_over_four_gpus_runs():
    meta = _meta("llava-v1.6-34b")
    device_map = plan_device_map(meta, "auto", FOUR_GPUS)
    assert {str(v) for v in device_map.values()} == {"0", "1", "2", "3"}
    verdict = check_run(PRESETS["llava-v1.6-34b"], device_map, simulated_gpus=4, meta_model=meta)
    assert verdict.result.ok, verdict.result.error


@pytest.mark.parametrize("name", ["llava-1.5-7b", "internvl2-8b"])
def test_the_default_twins_forced_across_four_gpus_run(name):
    meta = _meta(name)
    device_map = forced_map(meta, 4, PRESETS[name].family)
    assert {str(v) for v in device_map.values()} == {"0", "1", "2", "3"}
    assert check_run(PRESETS[name], device_map, simulated_gpus=4, meta_model=meta).result.ok


def test_an_ordinal_beyond_the_visible_gpus_is_invalid():
    meta = _meta("llava-1.5-7b")
    verdict = check_run(PRESETS["llava-1.5-7b"], {"": 5}, simulated_gpus=4, meta_model=meta)
    assert not verdict.result.ok and "invalid device ordinal" in (verdict.result.error or "")
    assert verdict.cause is not None and verdict.cause.code == "FWD-006"


def test_internvl_chat_runs_the_eval_kits_chat_path(monkeypatch: pytest.MonkeyPatch):
    """The InternVL-Chat run goes through `chat` as the eval kits call it (tokenised prompt, ids sent with
    `.cuda()`): its generate sees the ids where chat put them, on the current GPU, cuda:0, and the image."""
    from diag.samedevice import run as run_module
    from diag.twins.internvl import InternVLChatModel

    seen: list[tuple[str, str]] = []
    original = InternVLChatModel.generate

    def spy(self, pixel_values=None, input_ids=None, **kwargs):
        seen.append((str(pixel_values.device), str(input_ids.device)))
        return original(self, pixel_values=pixel_values, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(InternVLChatModel, "generate", spy)
    spec = PRESETS["internvl2-8b"]
    result = run_module.run_twin(spec, forced_map(build_meta(spec), 2, spec.family), simulated_gpus=2)
    assert result.ok, result.error
    assert seen == [("cuda:0", "cuda:0")]  # one generate, from chat


def test_image_merge_across_gpus_in_remote_code_before_internvl_07ef6e9():
    """FACTS.md, InternVL step 3: remote code from before commit 07ef6e9 (#133) merges the image embeddings
    without moving them, so `mlp1` on another GPU than the embeddings fails in generate; pinning the vision
    side to the embeddings' GPU is the fix. Current upstream moves them first, and the same map runs."""
    import dataclasses

    spec = PRESETS["internvl2-8b"]
    legacy = dataclasses.replace(spec, config={**spec.config, "merge_without_move": True})
    meta = build_meta(legacy)
    device_map = {**forced_map(meta, 2, spec.family), "vision_model": 1, "mlp1": 1}
    verdict = check_run(legacy, device_map, simulated_gpus=2, meta_model=meta)
    assert not verdict.result.ok and verdict.result.stage == "chat"
    assert verdict.result.devices == ("cuda:0", "cuda:1")
    assert verdict.cause is not None and verdict.cause.code == "FWD-003"
    assert verdict.verified and verdict.fixed_map is not None
    assert (verdict.fixed_map["vision_model"], verdict.fixed_map["mlp1"]) == (0, 0)
    assert check_run(spec, device_map, simulated_gpus=2, meta_model=build_meta(spec)).result.ok
