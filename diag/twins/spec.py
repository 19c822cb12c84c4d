"""Which model a run is about: presets by name, local config.json files, hub ids from the local HF cache.

The checkpoint's own config.json wins over diag's preset whenever it is on the machine (a folder, or the hub
cache); a preset stands in only for a checkpoint that is not there, and `ModelSpec.source` says which it was.
Only a config is ever read; nothing is downloaded and no remote code runs.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from diag import reader
from diag.twins.hubcache import cached_config, hub_cache_dir
from diag.twins.presets import PRESET_TABLE

FAMILIES: tuple[str, ...] = ("llava", "llava-next", "qwen2-vl", "internvl-chat", "cogvlm")

_BY_ARCHITECTURE = {
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava-next",
    "Qwen2VLForConditionalGeneration": "qwen2-vl",
    "InternVLChatModel": "internvl-chat",
    "CogVLMForCausalLM": "cogvlm",
}
_BY_MODEL_TYPE = {
    "llava": "llava",
    "llava_next": "llava-next",
    "qwen2_vl": "qwen2-vl",
    "internvl_chat": "internvl-chat",
    "cogvlm": "cogvlm",
}
# The LLaVA repository's own format (liuhaotian/*, lmms-lab/llava-next-*): a flat LM config plus mm_* fields.
_LLAVA_REPO_LM = {
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
    "LlavaQwenForCausalLM": "qwen2",
}


# The language models InternVLChatModel builds (upstream: Llama, InternLM2, Phi3, Qwen2).
INTERNVL_LANGUAGE_MODELS = (
    "LlamaForCausalLM",
    "InternLM2ForCausalLM",
    "Phi3ForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)


class UnknownModel(ValueError):
    """A --model value that names no preset and no readable config of a supported family (one-line message)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model the suite can build twins of."""

    name: str
    family: str
    config: Mapping[str, Any] = field(hash=False)
    checkpoints: tuple[str, ...] = ()
    dtype: str = "bfloat16"
    # Where the config came from: "preset" (diag's shipped copy of the published config.json), "config" (a
    # config.json or checkpoint folder given by path) or "hub-cache" (the checkpoint's config.json in the local
    # Hugging Face cache, as from_pretrained would read it). `config_path` is the file read, if any.
    source: str = "preset"
    config_path: str | None = None

    @property
    def describes_the_checkpoint(self) -> bool:
        """True when the config is the checkpoint's own file, not diag's preset standing in for it."""
        return self.source != "preset"


def _preset(name: str, family: str, config: dict[str, Any], checkpoints: tuple[str, ...], dtype: str) -> ModelSpec:
    return ModelSpec(name, family, MappingProxyType(copy.deepcopy(config)), checkpoints, dtype)


PRESETS: Mapping[str, ModelSpec] = MappingProxyType({name: _preset(name, *row) for name, row in PRESET_TABLE.items()})


def _supported() -> str:
    return f"presets: {', '.join(PRESETS)}; families: {', '.join(FAMILIES)}"


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset (case-insensitive), a hub id of a preset, or a local config.json (or a folder holding one)."""
    key = name_or_path.strip()
    if not key:
        raise UnknownModel(f"--model is empty: give a preset or a config.json path ({_supported()})")
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    path = Path(key).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.exists():
            raise UnknownModel(f"--model {name_or_path}: the folder has no config.json ({_supported()})")
    if path.exists():  # a FIFO or a device is refused by the reader, never read
        return _from_file(name_or_path, path)
    spec = model_for_checkpoint(key)
    if spec is not None:
        return spec
    raise UnknownModel(
        f"--model {name_or_path}: not a preset, a checkpoint in the local Hugging Face cache "
        f"({hub_cache_dir()}), a known checkpoint or a config.json path ({_supported()})"
    )


def model_for_checkpoint(pretrained: str, env: Mapping[str, str] | None = None) -> ModelSpec | None:
    """What `from_pretrained(pretrained)` would read, offline: a local checkpoint folder, else the hub id's
    config.json in the local Hugging Face cache, else diag's preset for that id (a fallback: the checkpoint's
    own config is not on this machine). None when none of them knows it; UnknownModel when the checkpoint's
    own config is there but of a family diag cannot build."""
    key = pretrained.strip()
    folder = Path(key).expanduser()
    if key and folder.is_dir() and (folder / "config.json").exists():
        return _from_file(key, folder / "config.json")
    cached = cached_config(key, env)
    if cached is not None:
        return dataclasses.replace(_from_file(key, cached), source="hub-cache")
    return preset_for_checkpoint(key)


MAX_LAYERS = 10_000  # layers in any one stack of a config; the largest published models have under 200
_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers", "num_encoder_layers",
               "depth", "encoder_layers", "decoder_layers")  # fmt: skip
# Keys whose value, when given, transformers and diag read as an object (a sub-config).
_OBJECT_KEYS = ("rope_scaling", "quantization_config")


def check_config(config: Any, where: str) -> dict[str, Any]:
    """The config object, checked where diag and transformers would trip: every sub-config (`text_config`,
    `vision_config`, `llm_config`, any `*_config`) an object, `architectures` a string or a list of strings, and
    layer counts whole numbers of at most MAX_LAYERS in every sub-config. Raises reader.InputError naming the
    field."""
    if not isinstance(config, dict):
        raise reader.InputError(f"{where}: holds a JSON {type(config).__name__}, not a config object")
    stack: list[tuple[tuple[str | int, ...], dict[str, Any]]] = [((), config)]
    while stack:
        path, sub = stack.pop()
        for key, value in sub.items():
            at = (*path, key)
            if (key.endswith("_config") or key in _OBJECT_KEYS) and value is not None:
                if not isinstance(value, dict):
                    raise reader.fail(where, at, "an object (a sub-config) or null", value)
                stack.append((at, value))
            elif key == "architectures" and value is not None:
                names = [value] if isinstance(value, str) else value
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise reader.fail(where, at, "a list of class names", value)
            elif key in _LAYER_KEYS and value is not None and not isinstance(value, list | dict | str):
                reader.whole(where, at, value, f"a whole number of layers, 0 to {MAX_LAYERS:,}", low=0,
                             high=MAX_LAYERS)  # fmt: skip
    return config


def _from_file(name: str, path: Path) -> ModelSpec:
    try:
        config = check_config(reader.load_json(path), reader.name(path))
    except reader.InputError as exc:
        raise UnknownModel(f"--model {name}: {exc}") from None
    if "mm_vision_tower" in config:
        config = _from_llava_repo(name, config)  # a flat LM config: its layer count was checked above
    family = family_of(config)
    if family is None:
        raise UnknownModel(
            f"--model {name}: model_type {config.get('model_type')!r} / architectures "
            f"{config.get('architectures')} is not a supported family ({_supported()})"
        )
    if family == "internvl-chat":
        llm = config.get("llm_config") or {}
        arch = (llm.get("architectures") or ["InternLM2ForCausalLM"])[0]
        if arch not in INTERNVL_LANGUAGE_MODELS:
            raise UnknownModel(
                f"--model {name}: InternVL with a {arch} language model is not supported "
                f"(supported: {', '.join(INTERNVL_LANGUAGE_MODELS)})"
            )
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return ModelSpec(name, family, MappingProxyType(config), (), dtype, source="config", config_path=str(path))


def family_of(config: Mapping[str, Any]) -> str | None:
    """The family a config.json describes, from `architectures` first, then `model_type`."""
    architectures = config.get("architectures") or ()
    for arch in [architectures] if isinstance(architectures, str) else architectures:
        if isinstance(arch, str) and arch in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[arch]
    return _BY_MODEL_TYPE.get(str(config.get("model_type")))


def _from_llava_repo(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The HF-format equivalent of a LLaVA-repository config (LlavaLlamaForCausalLM & co.).

    Its language model is the flat config; its tower is CLIP ViT-L/14 (336 or 224 px, as `mm_vision_tower`
    names it) and its `mlp2x_gelu` projector is HF's `multi_modal_projector`. Image positions are marked with
    -200 outside the vocabulary there; the twin marks them with the last vocabulary id. Module names are
    transformers' (LlavaForConditionalGeneration), not the LLaVA repository's (`model.mm_projector`).
    """
    arch = (config.get("architectures") or [""])[0]
    tower = str(config.get("mm_vision_tower", ""))
    lm_type = _LLAVA_REPO_LM.get(arch)
    if lm_type is None or "clip-vit-large-patch14" not in tower:
        raise UnknownModel(
            f"--model {name}: LLaVA-repository config with {arch or 'no architecture'} and tower {tower!r} "
            f"is not supported (LLaVA with Llama/Mistral/Qwen2 and CLIP ViT-L/14; {_supported()})"
        )
    vision = copy.deepcopy(PRESET_TABLE["llava-1.5-7b"][1]["vision_config"])
    if not tower.endswith("336"):
        vision["image_size"] = 224
    text = {k: v for k, v in config.items() if not k.startswith(("mm_", "image_")) and k != "architectures"}
    text.update(model_type=lm_type, architectures=[arch.replace("Llava", "", 1)])
    vocab = int(text.get("vocab_size", 32000))
    anyres = "anyres" in str(config.get("image_aspect_ratio", ""))
    out: dict[str, Any] = {
        "model_type": "llava_next" if anyres else "llava",
        "architectures": ["LlavaNextForConditionalGeneration" if anyres else "LlavaForConditionalGeneration"],
        "text_config": text,
        "vision_config": vision,
        "image_token_index": vocab - 1,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": int(config.get("mm_vision_select_layer", -2)),
        "vision_feature_select_strategy": "full"
        if config.get("mm_vision_select_feature") == "cls_patch"
        else "default",
        "torch_dtype": config.get("torch_dtype"),
    }
    if anyres:
        out["image_grid_pinpoints"] = (
            config.get("image_grid_pinpoints") or PRESET_TABLE["llava-v1.6-34b"][1]["image_grid_pinpoints"]
        )
    return out


def preset_for_checkpoint(pretrained: str) -> ModelSpec | None:
    """The preset a hub id (`--model_args pretrained=...`) stands for, case-insensitively; for a local path,
    the preset whose hub id ends with the path's last component (or its `models--org--name` cache folder)."""
    key = pretrained.strip().rstrip("/\\")
    if not key:
        return None
    by_id = {ckpt.lower(): spec for spec in PRESETS.values() for ckpt in spec.checkpoints}
    if key.lower() in by_id:
        return by_id[key.lower()]
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    parts = PurePosixPath(key.replace("\\", "/")).parts
    for part in reversed(parts):
        cache = re.fullmatch(r"models--([^/]+?)--(.+)", part)
        if cache and f"{cache[1]}/{cache[2]}".lower() in by_id:
            return by_id[f"{cache[1]}/{cache[2]}".lower()]
    last = parts[-1].lower() if parts else ""
    by_repo_name = {ckpt.split("/")[-1]: spec for ckpt, spec in by_id.items()}
    return by_repo_name.get(last) or PRESETS.get(last)
