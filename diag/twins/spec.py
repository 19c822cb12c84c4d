"""Which model a run is about: presets by name, local config.json files, hub ids from the local HF cache.

The checkpoint's own config.json wins over diag's preset whenever it is on the machine (a folder, or the hub
cache); a preset stands in only for a checkpoint that is not there, and `ModelSpec.source` says which it was.
Only a config is ever read here; nothing is downloaded and no remote code runs. A checkpoint that ships its own
modelling code (`auto_map`) records the folder holding it (`ModelSpec.code_dir`); diag/twins/remote.py builds from
it only with the user's consent (`--trust-remote-code`).
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
from diag.twins import remote
from diag.twins.hubcache import cached_config, hub_cache_dir
from diag.twins.presets import PRESET_TABLE

# Families of remote-code checkpoints that diag has a hand-written twin of (their family sets `mirrors`;
# tests/test_remote_code.py keeps the two in step). Needed while PRESETS is built, before the registry loads.
TWIN_FAMILIES: tuple[str, ...] = ("internvl-chat", "cogvlm")
# Families whose models only their own code builds and diag has no twin of (their family sets `config_only`,
# diag/twins/families/config_only.py): code "none" unless the checkpoint's own files run with consent.
CONFIG_ONLY_FAMILIES: tuple[str, ...] = ("minicpm-v", "deepseek-vl2", "ovis")


def __getattr__(name: str) -> Any:
    """`FAMILIES`: the names of the registered families (diag/twins/families), derived on first use."""
    if name == "FAMILIES":
        from diag.twins.families import family_names

        return family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    # Whose code builds it: "installed" (the installed transformers' class), "twin" (diag's hand-written twin of a
    # remote-code family), "remote" (the checkpoint's own modelling files: only with --trust-remote-code) or
    # "none" (nothing diag may build). `code_dir`: the folder holding the checkpoint's own code (auto_map), if any.
    code: str = "installed"
    code_dir: str | None = None

    @property
    def describes_the_checkpoint(self) -> bool:
        """True when the config is the checkpoint's own file, not diag's preset standing in for it."""
        return self.source != "preset"


def _preset(name: str, family: str, config: dict[str, Any], checkpoints: tuple[str, ...], dtype: str) -> ModelSpec:
    code = "twin" if family in TWIN_FAMILIES else "none" if family in CONFIG_ONLY_FAMILIES else "installed"
    return ModelSpec(name, family, MappingProxyType(copy.deepcopy(config)), checkpoints, dtype, code=code)


PRESETS: Mapping[str, ModelSpec] = MappingProxyType({name: _preset(name, *row) for name, row in PRESET_TABLE.items()})


def _supported() -> str:
    from diag.twins.families import family_names

    return f"presets: {', '.join(PRESETS)}; families: {', '.join(family_names())}"


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
    from diag.twins.families import family_for

    family = family_for(config)
    code_dir = remote.code_folder(config, path.parent)
    if family is None:
        family_name, code = _without_family(name, config)
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return ModelSpec(name, family_name, MappingProxyType(config), (), dtype, source="config",
                         config_path=str(path), code=code, code_dir=code_dir)  # fmt: skip
    code = "twin" if family.name in TWIN_FAMILIES else "none" if family.name in CONFIG_ONLY_FAMILIES else "installed"
    try:
        config = family.checkpoint_config(config)  # a repository's own format converted (LLaVA's)
    except ValueError as exc:
        if code_dir is None:
            raise UnknownModel(
                f"--model {name}: {exc}; or put the checkpoint's own code beside its config.json and give "
                "--trust-remote-code"
            ) from None
        code = "none"  # diag has no twin of it: only the checkpoint's own code builds it
    else:
        family = family_for(config) or family
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return ModelSpec(name, family.name, MappingProxyType(config), (), dtype, source="config", config_path=str(path),
                     code=code, code_dir=code_dir)  # fmt: skip


def _without_family(name: str, config: Mapping[str, Any]) -> tuple[str, str]:
    """(family, code) of a config no family of diag claims: its own code only (auto_map), a model_type the
    installed transformers does not know (a MODEL-002 finding, not a usage error), else UnknownModel."""
    if remote.model_ref(config) is not None:
        return remote.REMOTE, "none"
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type and not remote.model_type_known(model_type):
        return remote.UNKNOWN, "none"
    raise UnknownModel(
        f"--model {name}: model_type {model_type!r} / architectures "
        f"{config.get('architectures')} is not a supported family ({_supported()})"
    )


def family_of(config: Mapping[str, Any]) -> str | None:
    """The name of the family a config.json describes (diag.twins.families.family_for), or None."""
    from diag.twins.families import family_for

    family = family_for(config)
    return None if family is None else family.name


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
