"""Gemma 3, Llama 3.2 Vision (mllama) and Llama 4: their presets and family modules, through the Family interface.

Until build.py asks the registry, these tests call the families directly: `build` under the meta device for
planning, `tiny_config` + `build` for CPU twins, `input_sets` and `run`, and diag's own dispatch and virtual
GPUs. transformers 4.45.2 has mllama but neither Gemma 3 nor Llama 4; there the tests assert the reason.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from diag.devicemap.plan import plan_device_map
from diag.samedevice.run import dispatch
from diag.twins import PRESETS, build_meta, build_tiny, language_model_layout, preset_for_checkpoint
from diag.twins.families import Family, family_for, family_named
from diag.twins.families.mllama import VLMEVALKIT_NAMES, installed_names, vlmevalkit_90b_split
from diag.twins.presets import PUBLISHED_PARAMS
from diag.virtual import VirtualCuda

# preset -> (family, text layers, vision layers as named in the module tree)
PRESETS_HERE = {
    "gemma-3-4b": ("gemma3", 34, 27),
    "gemma-3-12b": ("gemma3", 48, 27),
    "gemma-3-27b": ("gemma3", 62, 27),
    "llama-3.2-11b-vision": ("mllama", 40, 32),
    "llama-3.2-90b-vision": ("mllama", 100, 32),
    "llama-4-scout": ("llama4", 48, 34),
    "llama-4-maverick": ("llama4", 48, 34),
}
NAMES = list(PRESETS_HERE)
MISSING_ON = {"gemma3": "Gemma3ForConditionalGeneration", "llama4": "Llama4ForConditionalGeneration"}
# transformers 5.24's Llama4ForConditionalGeneration.forward ends by reading `outputs.image_outputs` from the
# language model's MoeCausalLMOutputWithPast, which has no such field: every forward (and so generate) raises.
LLAMA4_FORWARD_BROKEN = hasattr(transformers, "Llama4ForConditionalGeneration") and (
    "outputs.image_outputs" in inspect.getsource(transformers.Llama4ForConditionalGeneration.forward)
)


@pytest.fixture(autouse=True)
def _quiet_one_thread() -> Iterator[None]:
    """One CPU thread, as diag's twin runs use (tiny tensors; two busy cores make more threads 50x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.set_num_threads(threads)


def _family(name: str) -> Family:
    return family_named(PRESETS_HERE[name][0])


def _config(name: str) -> dict[str, Any]:
    return copy.deepcopy(dict(PRESETS[name].config))


def _buildable(name: str) -> Family:
    """The preset's family, or a skip on a stack without its class (after checking the reason names it)."""
    family = _family(name)
    reason = family.unavailable(_config(name))
    if reason is not None:
        missing = MISSING_ON[family.name]
        assert missing in reason and transformers.__version__ in reason
        pytest.skip(reason)
    return family


def _meta(name: str) -> nn.Module:
    _buildable(name)
    return build_meta(PRESETS[name])


def _tiny(name: str) -> nn.Module:
    _buildable(name)
    return build_tiny(PRESETS[name], seed=0)


def _names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


# --- presets and claims ---------------------------------------------------------------------------------------


def test_presets_merge_with_their_family_and_hub_ids() -> None:
    for name, (family, _, _) in PRESETS_HERE.items():
        spec = PRESETS[name]
        assert spec.family == family and spec.dtype == "bfloat16" and name in PUBLISHED_PARAMS
        for checkpoint in spec.checkpoints:
            assert preset_for_checkpoint(checkpoint) is spec
    assert preset_for_checkpoint("google/gemma-3-27b-pt") is PRESETS["gemma-3-27b"]
    assert preset_for_checkpoint("/models/Llama-4-Maverick-17B-128E-Instruct") is PRESETS["llama-4-maverick"]


@pytest.mark.parametrize("name", NAMES)
def test_the_family_claims_the_preset_and_its_published_forms(name: str) -> None:
    family = _family(name)
    config = _config(name)
    assert family_for(config) is family
    assert family_for({"architectures": config["architectures"]}) is family  # architectures alone
    assert family_for({"model_type": config["model_type"], "text_config": {}, "vision_config": {}}) is family
    # The text model alone is not this family's: a checkpoint of the text part is a plain LM.
    assert family_for(config["text_config"]) is None


@pytest.mark.parametrize("family_name", ["gemma3", "llama4"])
def test_a_stack_without_the_class_says_which_class_is_missing(family_name: str) -> None:
    family = family_named(family_name)
    config = next(_config(n) for n, (f, _, _) in PRESETS_HERE.items() if f == family_name)
    reason = family.unavailable(config)
    if hasattr(transformers, MISSING_ON[family_name]):
        assert reason is None
        return
    assert reason is not None and "\n" not in reason
    assert MISSING_ON[family_name] in reason and transformers.__version__ in reason
    with pytest.raises(ValueError, match=MISSING_ON[family_name]):
        family.build(config)


def test_mllama_is_on_both_stacks() -> None:
    assert family_named("mllama").unavailable(_config("llama-3.2-11b-vision")) is None


# --- full width on the meta device -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_meta_build_has_the_real_layers_and_size_and_no_storage(name: str) -> None:
    model = _meta(name)
    _, text_layers, vision_layers = PRESETS_HERE[name]
    layout = language_model_layout(model)
    names = _names(model)
    assert layout.num_layers == text_layers
    assert f"{layout.layers}.{text_layers - 1}" in names and f"{layout.layers}.{text_layers}" not in names
    assert any(name.endswith(f"layers.{vision_layers - 1}") and "vision" in name for name in names)
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_gemma3_keeps_five_sliding_layers_per_global_layer_and_the_tied_head() -> None:
    model = _meta("gemma-3-27b")
    types = list(model.config.text_config.layer_types)
    assert len(types) == 62 and types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert [i for i, t in enumerate(types) if t == "full_attention"] == list(range(5, 62, 6))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize(("name", "cross"), [("llama-3.2-11b-vision", 8), ("llama-3.2-90b-vision", 20)])
def test_mllama_has_its_cross_attention_layers_where_the_config_puts_them(name: str, cross: int) -> None:
    model = _meta(name)
    layout = language_model_layout(model)
    layers = dict(model.named_modules())[layout.layers]
    kinds = [type(layer).__name__ for layer in layers]
    where = [i for i, kind in enumerate(kinds) if kind == "MllamaCrossAttentionDecoderLayer"]
    assert where == list(range(3, layout.num_layers, 5)) and len(where) == cross


LLAMA4_MOE = [("llama-4-scout", 16, list(range(48))), ("llama-4-maverick", 128, list(range(1, 48, 2)))]


@pytest.mark.parametrize(("name", "experts", "moe_layers"), LLAMA4_MOE)
def test_llama4_has_its_experts_in_the_published_layers(name: str, experts: int, moe_layers: list[int]) -> None:
    model = _meta(name)
    layout = language_model_layout(model)
    params = dict(model.named_parameters())
    with_experts = [i for i in range(48) if f"{layout.layers}.{i}.feed_forward.router.weight" in params]
    assert with_experts == moe_layers
    assert params[f"{layout.layers}.{moe_layers[0]}.feed_forward.router.weight"].shape[0] == experts


# --- tiny twins on the CPU -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_tiny_twin_keeps_every_module_name_of_the_full_model(name: str) -> None:
    tiny, full = _tiny(name), _meta(name)
    assert _names(tiny) == _names(full)
    assert sum(p.numel() for p in tiny.parameters()) < 20_000_000


def _image_tokens(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    config: Any = model.config
    return int((inputs["input_ids"] == int(config.image_token_index)).sum())


@pytest.mark.parametrize("name", ["gemma-3-4b", "llama-3.2-11b-vision", "llama-4-maverick"])
def test_input_sets_hold_the_image_tokens_the_processor_writes(name: str) -> None:
    tiny = _tiny(name)
    sets = _family(name).input_sets(tiny, torch.Generator().manual_seed(0))
    assert list(sets) == ["image", "images"]
    config: Any = tiny.config
    for key, images in (("image", 1), ("images", 2)):
        inputs = sets[key]
        if name.startswith("gemma"):  # mm_tokens_per_image soft tokens per image
            assert _image_tokens(tiny, inputs) == images * int(config.mm_tokens_per_image)
            assert inputs["pixel_values"].shape[0] == images
        elif name.startswith("llama-3.2"):  # one <|image|> per image, tiles in the cross-attention mask
            assert _image_tokens(tiny, inputs) == images
            assert inputs["pixel_values"].shape[:3] == (1, images, int(config.vision_config.max_num_tiles))
            assert inputs["cross_attention_mask"].shape == (1, inputs["input_ids"].shape[1], images, 4)
            assert int(inputs["aspect_ratio_mask"][0, 0].sum()) == 2  # the 1:2 image uses two tiles
        else:  # 4 tokens per crop: the wide image is 2 tiles + its global view, the second image 1 crop
            crops = inputs["pixel_values"].shape[0]
            assert crops == (3 if images == 1 else 4)
            assert _image_tokens(tiny, inputs) == 4 * crops


def _run_all(family: Family, model: nn.Module, device: str | None = None) -> dict[str, list[str]]:
    """Each input set through the family's run; the stages reached per set."""
    reached: dict[str, list[str]] = {}
    for key, inputs in family.input_sets(model, torch.Generator().manual_seed(0)).items():
        placed = {k: v.to(device) for k, v in inputs.items()} if device else inputs
        reached[key] = []
        with torch.no_grad():
            for stage in family.run(model, placed):
                reached[key].append(stage)
    return reached


def _expect_runs(name: str, family: Family, model: nn.Module, device: str | None = None) -> None:
    if family.name == "llama4" and LLAMA4_FORWARD_BROKEN:
        with pytest.raises(AttributeError, match="image_outputs"):
            _run_all(family, model, device)
        return
    reached = _run_all(family, model, device)
    assert reached == {"image": ["forward", "generate"], "images": ["forward", "generate"]}


@pytest.mark.parametrize("name", NAMES)
def test_tiny_twin_runs_each_input_set_on_the_cpu(name: str) -> None:
    family, tiny = _family(name), _tiny(name)
    _expect_runs(name, family, tiny)
    if not (family.name == "llama4" and LLAMA4_FORWARD_BROKEN):
        inputs = family.input_sets(tiny, torch.Generator().manual_seed(0))["image"]
        with torch.no_grad():
            out = tiny.generate(**inputs, max_new_tokens=2, do_sample=False)  # type: ignore[operator]
        assert out.shape[1] == inputs["input_ids"].shape[1] + 2


# --- over 4 virtual GPUs, with diag's dispatch -----------------------------------------------------------------


def _auto_map(name: str) -> tuple[nn.Module, dict[str, Any]]:
    """accelerate's `auto` plan for the full-width model, with GPUs a third of its size: it spans all four."""
    meta = _meta(name)
    size = sum(p.numel() * p.element_size() for p in meta.parameters())
    budget: dict[int | str, int] = {gpu: size // 3 for gpu in range(4)}
    budget["cpu"] = 10 * size
    return meta, plan_device_map(meta, "auto", budget)


def _on_virtual_gpus(name: str, device_map: dict[str, Any]) -> None:
    family, tiny = _family(name), _tiny(name)
    with VirtualCuda(4, model=tiny):
        dispatch(tiny, device_map)
        _expect_runs(name, family, tiny, "cuda:0")


@pytest.mark.parametrize("name", ["gemma-3-4b", "gemma-3-27b", "llama-3.2-11b-vision", "llama-3.2-90b-vision",
                                  "llama-4-scout", "llama-4-maverick"])  # fmt: skip
def test_auto_map_over_four_virtual_gpus(name: str) -> None:
    _, device_map = _auto_map(name)
    assert {str(v) for v in device_map.values()} == {"0", "1", "2", "3"}
    _on_virtual_gpus(name, device_map)


@pytest.mark.parametrize("name", ["gemma-3-12b", "llama-3.2-11b-vision", "llama-4-scout"])
def test_vision_tower_and_projector_on_other_gpus_than_the_embeddings(name: str) -> None:
    """The split users see: the vision tower on GPU 3, the projector on GPU 2, the text embeddings on GPU 0.
    The installed classes move the image features to the embeddings' device before merging them (mllama: the
    cross-attention states go to each layer's GPU through accelerate's hooks), so this map runs."""
    meta, planned = _auto_map(name)
    layout = language_model_layout(meta)
    assert len(layout.vision) == 2  # the tower and the projector, whatever the installed names are
    device_map = {k: v for k, v in planned.items() if not any(k == p or k.startswith(p + ".") for p in layout.vision)}
    device_map.update({layout.vision[0]: 3, layout.vision[1]: 2, layout.embed: 0})
    _on_virtual_gpus(name, device_map)


def test_the_90b_forced_map_is_vlmevalkits_split_under_the_installed_names() -> None:
    """VLMEvalKit loads every Llama-3.2-90B-Vision with its own split_model: vision and embeddings on the first GPU,
    projector, norm and head on the last. The forced map places the parts the same way under the built model's
    names (4.45: `language_model.model.layers.N`; 5.x: `model.language_model.layers.N`), and runs on both stacks
    (cross-attention states made on the last GPU reach every layer)."""
    meta = _meta("llama-3.2-90b-vision")
    device_map = family_named("mllama").forced_map(meta, 4)
    assert device_map is not None
    names = installed_names(meta)
    assert set(device_map) <= _names(meta)  # every key a module of the installed class, on either stack
    assert [sum(1 for k, v in device_map.items() if k.startswith(f"{names['layers']}.") and v == g)
            for g in range(4)] == [23, 28, 28, 21]  # fmt: skip
    assert device_map[names["vision"]] == device_map[names["embed"]] == 0
    assert device_map[names["projector"]] == device_map[names["norm"]] == device_map[names["head"]] == 3
    if names == VLMEVALKIT_NAMES:  # 4.45: exactly the map VLMEvalKit writes
        assert device_map == vlmevalkit_90b_split(4)
    else:  # 5.x: the same placement, renamed
        assert names["layers"] == "model.language_model.layers" and names["vision"] == "model.vision_model"
        renamed = {VLMEVALKIT_NAMES[part]: name for part, name in names.items()}
        literal = vlmevalkit_90b_split(4)
        assert len(device_map) == len(literal)
        for key, gpu in literal.items():
            prefix, _, index = key.rpartition(".")
            new_key = f"{renamed[prefix]}.{index}" if prefix in renamed and index.isdigit() else renamed[key]
            assert device_map[new_key] == gpu
    _on_virtual_gpus("llama-3.2-90b-vision", device_map)


def test_vlmevalkits_own_90b_keys_load_only_where_they_are_the_installed_names() -> None:
    """VLMEvalKit's split_model writes 4.45's names: a transformers that renamed the modules (5.x) leaves the
    model's parameters without a device, and loading stops there; kit_advice says to use the map's names."""
    meta = _meta("llama-3.2-90b-vision")
    literal = vlmevalkit_90b_split(4)
    assert literal["language_model.model.layers.0"] == 0 and literal["language_model.lm_head"] == 3
    vlmevalkit_line = next(
        line for line in family_named("mllama").kit_advice("m.json") if line.startswith("VLMEvalKit")
    )
    assert "`language_model.model.layers.N`" in vlmevalkit_line and "`model.language_model.layers.N`" in vlmevalkit_line
    if set(literal) <= _names(meta):
        _on_virtual_gpus("llama-3.2-90b-vision", literal)
    else:
        tiny = _tiny("llama-3.2-90b-vision")
        with VirtualCuda(4, model=tiny), pytest.raises(ValueError, match=r"model\.(vision_model|language_model)"):
            dispatch(tiny, literal)


def test_the_11b_gets_no_forced_split() -> None:
    assert family_named("mllama").forced_map(_meta("llama-3.2-11b-vision"), 4) is None


@pytest.mark.parametrize("family_name", ["gemma3", "mllama", "llama4"])
def test_kit_advice_names_the_kits_and_the_map(family_name: str) -> None:
    lines = family_named(family_name).kit_advice("/tmp/fixed-map.json")
    assert any(line.startswith("lmms-eval:") for line in lines)
    assert any(line.startswith("VLMEvalKit:") for line in lines)
    assert family_named(family_name).loader.endswith("ForConditionalGeneration")
