"""The presets_more group: LLaVA-OneVision, Idefics3/SmolVLM2, InternVL3 -hf, GLM-4.1V, Phi-4-multimodal (their family
modules, called through the Family interface) and the remote-code InternVL2.5/3/3.5 (through diag's build path).

Each native preset: meta build with the real layer counts and published size where the installed transformers has
the class (else `unavailable` names the missing class), the tiny twin's input sets through forward and a two-token
generate on the CPU, then over 4 virtual GPUs with the map transformers plans, and with a map that puts the vision
tower and projector on another GPU than the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from diag.devicemap.plan import plan_device_map
from diag.samedevice.causes import _unsplittable
from diag.samedevice.run import dispatch, run_twin
from diag.samedevice.verify import check_run, forced_map
from diag.twins import PRESETS, build_meta, build_tiny, language_model_layout, no_split_modules
from diag.twins.families import Family, family_for, family_named
from diag.twins.presets import PUBLISHED_PARAMS
from diag.twins.presets_more import PRESET_TABLE
from diag.virtual import VirtualCuda

NATIVE = [name for name, row in PRESET_TABLE.items() if row[0] != "internvl-chat"]
REMOTE = [name for name, row in PRESET_TABLE.items() if row[0] == "internvl-chat"]
# (language-model decoder layers, vision blocks) of each published config.json.
LAYERS = {
    "llava-onevision-0.5b": (24, 26),
    "llava-onevision-7b": (28, 26),
    "llava-onevision-72b": (80, 26),
    "smolvlm2-2.2b": (24, 27),
    "idefics3-8b": (32, 27),
    "internvl3-8b-hf": (28, 24),
    "internvl3-78b-hf": (80, 45),
    "glm-4.1v-9b": (40, 24),
    "phi-4-multimodal": (32, 27),
    "internvl2.5-8b": (32, 24),
    "internvl3-8b": (28, 24),
    "internvl3-78b": (80, 45),
    "internvl3.5-8b": (36, 24),
}
# The class each family needs and the release that added it (for the reason on older stacks).
NEEDS = {
    "llava-onevision": ("LlavaOnevisionConfig", "4.45.0"),
    "idefics3": ("Idefics3Config", "4.46.0"),
    "smolvlm": ("SmolVLMConfig", "4.50.0"),
    "internvl-hf": ("InternVLConfig", "4.52.0"),
    "glm4v": ("Glm4vConfig", "4.53.0"),
    "phi4-multimodal": ("Phi4MultimodalConfig", "4.50.0"),
}
# One preset per family runs over virtual GPUs (the smallest; the others differ only in widths and depths).
RUNS = ["llava-onevision-0.5b", "smolvlm2-2.2b", "idefics3-8b", "internvl3-8b-hf", "glm-4.1v-9b", "phi-4-multimodal"]
VIDEO_FAMILIES = {"llava-onevision", "glm4v"}
GIB = 2**30


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one CPU thread, as diag's run_twin uses (more threads only wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _family(name: str) -> Family:
    return family_named(PRESET_TABLE[name][0])


def _config(name: str) -> dict[str, Any]:
    return PRESET_TABLE[name][1]


def _available(name: str) -> Family:
    family = _family(name)
    reason = family.unavailable(_config(name))
    if reason is not None:
        pytest.skip(reason)
    return family


def _meta(name: str) -> nn.Module:
    _available(name)
    return build_meta(PRESETS[name])


def _tiny(name: str) -> nn.Module:
    _available(name)
    return build_tiny(PRESETS[name], seed=0)


def _vision_blocks(model: nn.Module) -> int:
    """Blocks of the vision tower: the longest ModuleList outside the language model's decoder layers."""
    layers = language_model_layout(model).layers
    lists = [len(m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n != layers]
    lists = [n for n in lists if n != language_model_layout(model).num_layers] or lists
    return max(lists)


# --- which family claims a config -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NATIVE)
def test_claims_picks_the_presets_family(name: str) -> None:
    family = family_for(_config(name))
    assert family is not None and family.name == PRESET_TABLE[name][0]
    assert family_for({"model_type": _config(name)["model_type"]}) is family  # by model_type alone too


@pytest.mark.parametrize("name", REMOTE)
def test_no_native_family_claims_the_remote_code_internvl(name: str) -> None:
    """InternVLChatModel (model_type internvl_chat) is not the -hf port's InternVLForConditionalGeneration."""
    assert not any(family_named(f).claims(_config(name)) for f in NEEDS)


def test_the_idefics3_and_smolvlm_families_split_by_architecture() -> None:
    assert family_for({"architectures": ["SmolVLMForConditionalGeneration"], "model_type": "idefics3"}) is (
        family_named("smolvlm")
    )
    assert family_for({"architectures": ["Idefics3ForConditionalGeneration"]}) is family_named("idefics3")


# --- meta builds ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NATIVE)
def test_unavailable_names_the_missing_class_or_builds(name: str) -> None:
    family = _family(name)
    class_name, since = NEEDS[family.name]
    reason = family.unavailable(_config(name))
    if hasattr(transformers, class_name):
        assert reason is None
        return
    assert reason is not None and "\n" not in reason
    assert reason.startswith(f"the installed transformers {transformers.__version__} has no {class_name}")
    assert reason.endswith(f"(model_type {_config(name)['model_type']!r}; added in transformers {since})")
    with pytest.raises(ValueError, match=class_name), torch.device("meta"):
        family.build(_config(name))


@pytest.mark.parametrize("name", NATIVE)
def test_meta_twin_has_the_real_depths_and_published_size(name: str) -> None:
    model = _meta(name)
    layout = language_model_layout(model)
    text_layers, vision_layers = LAYERS[name]
    modules = {n for n, _ in model.named_modules()}
    assert layout.num_layers == text_layers
    assert f"{layout.layers}.{text_layers - 1}" in modules and f"{layout.layers}.{text_layers}" not in modules
    assert _vision_blocks(model) == vision_layers
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    count = sum(p.numel() for p in model.parameters())
    if name in PUBLISHED_PARAMS:
        assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)
    else:
        # Phi-4-multimodal: the card's 5.6B counts the vision and speech LoRA adapters, which the native class
        # loads separately; its Phi-4-mini language model is microsoft/Phi-4-mini-instruct's 3.84B.
        assert name == "phi-4-multimodal"
        lm = model.get_submodule(layout.layers.rpartition(".")[0])
        extend = sum(p.numel() for p in lm.get_submodule("embed_tokens_extend").parameters())
        assert sum(p.numel() for p in lm.parameters()) - extend == pytest.approx(3.84e9, rel=0.01)


def test_every_preset_of_the_group_has_layers_and_a_published_size_but_phi4() -> None:
    assert set(LAYERS) == set(PRESET_TABLE)
    assert set(PRESET_TABLE) - set(PUBLISHED_PARAMS) == {"phi-4-multimodal"}
    assert set(PRESET_TABLE) <= set(PRESETS)  # merged through presets._GROUPS


# --- tiny twins on the CPU ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models() -> Iterator[dict[str, nn.Module]]:
    yield {}


def _tiny_cached(name: str, cache: dict[str, nn.Module]) -> nn.Module:
    if name not in cache:
        cache[name] = _tiny(name)
    return cache[name]


@pytest.mark.parametrize("name", NATIVE)
def test_tiny_twin_keeps_every_depth(name: str, tiny_models: dict[str, nn.Module]) -> None:
    model = _tiny_cached(name, tiny_models)
    assert language_model_layout(model).num_layers == LAYERS[name][0]
    assert _vision_blocks(model) == LAYERS[name][1]
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


@pytest.mark.parametrize("name", RUNS)
def test_tiny_twin_runs_every_input_set(name: str, tiny_models: dict[str, nn.Module]) -> None:
    family = _available(name)
    model = _tiny_cached(name, tiny_models)
    sets = family.input_sets(model, torch.Generator().manual_seed(0))
    assert next(iter(sets)) == "image"
    assert ("video" in sets) == (family.name in VIDEO_FAMILIES)
    for inputs in sets.values():
        with torch.no_grad():
            assert list(family.run(model, inputs)) == ["forward", "generate"]
            out: Any = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert out.shape[-1] == inputs["input_ids"].shape[-1] + 2


@pytest.mark.parametrize("name", ["llava-onevision-0.5b", "glm-4.1v-9b"])
def test_a_wrong_image_token_count_is_refused_by_the_installed_code(name: str) -> None:
    """The input sets give the count the processor writes: with one token fewer transformers 5 refuses the batch;
    4.45's LLaVA-OneVision does not count (`masked_scatter` fills the positions there are and drops the rest)."""
    family = _available(name)
    model = _tiny(name)
    inputs = dict(family.input_sets(model, torch.Generator().manual_seed(0))["image"])
    config: Any = model.config
    image_id = int(getattr(config, "image_token_id", None) or config.image_token_index)  # 4.45: the latter only
    ids = inputs["input_ids"][0].tolist()
    ids.remove(image_id)
    inputs["input_ids"] = torch.tensor([ids])
    inputs["attention_mask"] = torch.ones(1, len(ids), dtype=torch.long)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).int()
    if int(transformers.__version__.split(".")[0]) < 5:
        with torch.no_grad():
            assert model(**inputs).logits.shape[1] == len(ids)
        return
    match = "Image features and image tokens do not match"
    with pytest.raises((ValueError, RuntimeError), match=match), torch.no_grad():
        model(**inputs)


# --- over virtual GPUs ----------------------------------------------------------------------------------------


def _run_on_virtual(name: str, device_map: Mapping[str, Any], gpus: int = 4) -> dict[str, str | None]:
    """Each input set's outcome on a fresh tiny twin dispatched with the map: None, or the first error line."""
    family = _available(name)
    outcomes: dict[str, str | None] = {}
    for key in family.input_sets(_tiny(name), torch.Generator().manual_seed(0)):
        model = _tiny(name)
        inputs = family.input_sets(model, torch.Generator().manual_seed(0))[key]
        with VirtualCuda(gpus, model=model):
            try:
                dispatch(model, device_map)
                with torch.no_grad():
                    for _ in family.run(model, {k: v.to("cuda:0") for k, v in inputs.items()}):
                        pass
                outcomes[key] = None
            except (RuntimeError, ValueError) as exc:
                outcomes[key] = str(exc).splitlines()[0]
    return outcomes


@pytest.mark.parametrize("name", RUNS)
def test_the_planned_auto_map_over_4_gpus_runs(name: str) -> None:
    meta = _meta(name)
    memory: dict[int | str, int] = {gpu: 80 * GIB for gpu in range(4)}
    memory["cpu"] = 1024 * GIB
    device_map = plan_device_map(meta, "auto", memory)
    assert len(set(device_map.values()) & {0, 1, 2, 3}) >= 2  # the plan spreads the model over the GPUs
    assert _run_on_virtual(name, device_map) == dict.fromkeys(_input_keys(name))


def _input_keys(name: str) -> list[str]:
    return ["image", "video"] if PRESET_TABLE[name][0] in VIDEO_FAMILIES else ["image"]


# The vision tower and projector of each family (as the installed transformers names them), put on cuda:1 while
# the embeddings and the rest stay on cuda:0.
_VISION = {
    "llava-onevision": ("vision_tower", "multi_modal_projector"),
    "idefics3": ("vision_model", "connector"),
    "smolvlm": ("vision_model", "connector"),
    "internvl-hf": ("vision_tower", "multi_modal_projector"),
    "glm4v": ("visual",),
    "phi4-multimodal": ("embed_tokens_extend.image_embed",),
}


def _vision_split(model: nn.Module, family: str) -> dict[str, int]:
    """Every top module on 0 except the vision parts on 1: keys named down to the vision modules, with each
    parameter that sits on a module along the way named by itself (as `image_newline`)."""
    modules = dict(model.named_modules())
    vision = [n for n in modules if any(n == v or n.endswith("." + v) for v in _VISION[family])]
    vision = [n for n in vision if not any(n.startswith(o + ".") for o in vision)]
    assert vision, f"no vision module of {family} in the twin"
    device_map: dict[str, int] = {}

    def place(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            full = f"{prefix}{child_name}"
            if full in vision:
                device_map[full] = 1
            elif any(v.startswith(full + ".") for v in vision):
                place(full + ".", child)
            else:
                device_map[full] = 0
        for param_name, _ in module.named_parameters(recurse=False):
            device_map[f"{prefix}{param_name}"] = 0
        for buffer_name, _ in module.named_buffers(recurse=False):
            device_map[f"{prefix}{buffer_name}"] = 0

    place("", model)
    return device_map


@pytest.mark.parametrize("name", RUNS)
def test_the_vision_tower_on_another_gpu_than_the_embeddings(name: str) -> None:
    """Every one of these families moves the image features to the embeddings' device before merging them
    (`.to(inputs_embeds.device)` in the installed code), so the split runs on every installed stack that has the
    class; what runs on cuda:1 is only the tower and the projector."""
    family = PRESET_TABLE[name][0]
    model = _tiny(name)
    device_map = _vision_split(model, family)
    assert 1 in device_map.values() and 0 in device_map.values()
    assert _run_on_virtual(name, device_map, gpus=2) == dict.fromkeys(_input_keys(name))


# --- the remote-code InternVL presets, through diag's build path ---------------------------------------------


@pytest.mark.parametrize("name", REMOTE)
def test_remote_code_internvl_presets_build_and_run_where_the_lm_class_exists(name: str) -> None:
    spec = PRESETS[name]
    if spec.config["llm_config"]["architectures"] == ["Qwen3ForCausalLM"] and not hasattr(
        transformers, "Qwen3ForCausalLM"
    ):
        with pytest.raises(NotImplementedError, match=r"has no Qwen3ForCausalLM \(added in transformers 4.51.0\)"):
            build_meta(spec)
        result = run_twin(spec, {"": 0}, simulated_gpus=1)
        assert result.stage == "build" and "Qwen3ForCausalLM" in (result.error or "")
        return
    meta = build_meta(spec)
    layout = language_model_layout(meta)
    assert layout.num_layers == LAYERS[name][0]
    assert len(meta.get_submodule("vision_model.encoder.layers")) == LAYERS[name][1]
    assert sum(p.numel() for p in meta.parameters()) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)
    lm_layer = type(meta.get_submodule(f"{layout.layers}.0")).__name__
    assert lm_layer in no_split_modules(meta)
    tiny = build_tiny(spec)
    assert language_model_layout(tiny).num_layers == LAYERS[name][0]
    memory: dict[int | str, int] = {gpu: 80 * GIB for gpu in range(4)}
    memory["cpu"] = 1024 * GIB
    device_map = plan_device_map(meta, "auto", memory)
    result = run_twin(spec, {"": 0}, simulated_gpus=4)
    assert result.ok, result.error
    # `auto` over 4 GPUs puts the head on another GPU than the embeddings; how that ends depends on the LM and
    # the installed transformers (InternVL #587), which the fidelity tests of the 2024 presets cover.
    assert device_map[layout.head] != device_map[layout.embed]


# --- forced 8-GPU maps that split a vision block --------------------------------------------------------------

# preset -> (the vision block class the forced map splits, the sub-model class that lists it as no-split or None)
SPLIT_VISION_BLOCKS = {
    "smolvlm2-2.2b": ("SmolVLMEncoderLayer", None),
    "glm-4.1v-9b": ("Glm4vVisionPatchMerger", None),
    "phi-4-multimodal": ("Phi4MultimodalVisionEncoderLayer", "Phi4MultimodalVisionModel"),
}


def _declared_anywhere(model: nn.Module) -> set[str]:
    """Every class any sub-model lists in its own `_no_split_modules` (what 4.x's `_get_no_split_modules` gathered
    by walking every sub-module)."""
    return {c for m in model.modules() if isinstance(m, PreTrainedModel) for c in type(m)._no_split_modules or ()}


@pytest.mark.parametrize("name", list(SPLIT_VISION_BLOCKS))
def test_the_forced_8_gpu_map_splits_a_vision_block_the_installed_class_lets_the_planner_split(name: str) -> None:
    """A real finding, not a planner artefact: the block's class is not among the no-split classes the installed
    transformers plans with (`device_map="auto"` uses the same set), so a map that cuts it fails on a real node
    too. SmolVLM and GLM-4.1V list no such class anywhere (SmolVLM lists the vision attention, not the encoder
    layer; GLM-4.1V the vision block, not the patch merger); Phi-4-multimodal's vision model lists its encoder
    layer, but transformers 5 gathers no-split classes from direct sub-models only and the vision model sits
    under plain modules. The fix keeps the block whole and is verified by a re-run."""
    spec = PRESETS[name]
    _available(name)
    block_class, declared_by = SPLIT_VISION_BLOCKS[name]
    meta = build_meta(spec)
    assert block_class not in no_split_modules(meta)
    assert (block_class in _declared_anywhere(meta)) == (declared_by is not None)
    verdict = check_run(spec, forced_map(meta, 8, spec.family), simulated_gpus=8, meta_model=meta)
    cause = verdict.cause
    assert cause is not None and cause.code == "FWD-004" and verdict.verified
    assert cause.no_split_class == block_class and type(meta.get_submodule(cause.modules[0])).__name__ == block_class
    assert cause.fixed_map is not None and cause.fixed_map[cause.modules[0]] in range(8)
    assert "device_map='auto' can split it on a real node too" in cause.explanation
    if declared_by is None:
        assert f"{block_class} is not among {type(meta).__name__}'s no-split classes" in cause.explanation
    else:
        assert f"({declared_by}) lists {block_class} in its _no_split_modules, but the installed" in cause.explanation


@pytest.mark.parametrize(("name", "splits"), [("smolvlm2-2.2b", True), ("glm-4.1v-9b", False),
                                              ("phi-4-multimodal", True)])  # fmt: skip
def test_device_map_auto_over_8_gpus_of_80_gib(name: str, splits: bool) -> None:
    """What accelerate's planner does with the installed classes on a real 8x80 GiB node (device_map="auto"
    balances even a small model over the GPUs): it cuts SmolVLM's and Phi-4-multimodal's vision encoder too, while
    GLM-4.1V's vision model stays whole (only a capped map reaches its merger)."""
    spec = PRESETS[name]
    _available(name)
    meta = build_meta(spec)
    memory: dict[int | str, int] = {gpu: 80 * GIB for gpu in range(8)}
    memory["cpu"] = 1024 * GIB
    verdict = check_run(spec, plan_device_map(meta, "auto", memory), simulated_gpus=8, meta_model=meta,
                        replan=("auto", memory))  # fmt: skip
    assert verdict.result.ok is not splits
    if splits:
        assert verdict.cause is not None and verdict.cause.code == "FWD-004" and verdict.verified
        assert verdict.cause.no_split_class == SPLIT_VISION_BLOCKS[name][0]


class _NestConfig(PretrainedConfig):
    model_type = "diag-nest-test"


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(self.first(x))


class _Tower(PreTrainedModel):
    config_class = _NestConfig
    _no_split_modules = ["_Block"]  # noqa: RUF012 (transformers' own attribute)

    def __init__(self, config: _NestConfig) -> None:
        super().__init__(config)
        self.block = _Block()
        self.post_init()


class _Top(PreTrainedModel):
    config_class = _NestConfig
    _no_split_modules = ["_Layer"]  # noqa: RUF012

    def __init__(self, config: _NestConfig) -> None:
        super().__init__(config)
        self.embed = nn.Module()  # a plain module between the model and its tower, as Phi-4-multimodal has
        self.embed.tower = _Tower(config)
        self.post_init()


def test_a_no_split_class_listed_by_a_nested_sub_model_on_both_stacks() -> None:
    """transformers 4.45's `_get_no_split_modules` walks every sub-module; transformers 5 gathers each model's
    direct children only. A split block whose class a nested sub-model lists is then named with that cause."""
    model = _Top(_NestConfig())
    gathered = no_split_modules(model)
    assert ("_Block" in gathered) is (int(transformers.__version__.split(".")[0]) < 5)
    block, why = _unsplittable(model, "embed.tower.block")
    assert block == "embed.tower.block"
    if "_Block" in gathered:  # the planner keeps it whole: only a hand-made map cuts it
        assert (
            why == "_Block is one of the model's no-split classes, so only a map not planned by transformers splits it"
        )
    else:
        assert why.startswith("embed.tower (_Tower) lists _Block in its _no_split_modules, but the installed")
        assert "into _Top's no-split classes (_Layer)" in why
    # A split module inside the listed block: the listed block is the unit to keep whole.
    assert _unsplittable(model, "embed.tower.block.first")[0] == ("embed.tower.block.first" if "_Block" in gathered
                                                                  else "embed.tower.block")  # fmt: skip
