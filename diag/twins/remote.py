"""The checkpoint's own modelling code (config.json `auto_map`), loaded the way transformers loads it, with consent.

A checkpoint that ships its code names it in config.json: `"auto_map": {"AutoConfig": "configuration_x.XConfig",
"AutoModelForCausalLM": "modeling_x.XForCausalLM", ...}`, with those files beside config.json (a local folder, or
the snapshot folder of the local Hugging Face cache). `from_pretrained(..., trust_remote_code=True)` imports them
through `transformers.dynamic_module_utils.get_class_from_dynamic_module`; diag calls the same function, with
`local_files_only=True` and the hub offline, and only when the user gave `--trust-remote-code` (the wrapper gives
it when the eval command itself would run that code). Without consent nothing of that code is imported: not the
modelling file, not the configuration file (config.json is read as JSON only).

With consent the model is built from those classes: at full width on the meta device for planning, at tiny width
(the family's shrink, or a generic one) on the CPU for the same-device run. When the code does not build or run
on the installed transformers, that is the eval's own failure (MODEL-001), found before any weight is read.
References: https://huggingface.co/docs/transformers/custom_models and
https://github.com/huggingface/transformers/blob/main/src/transformers/dynamic_module_utils.py
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from diag.twins.spec import ModelSpec

# The pseudo-families of a config no hand-written twin and no installed class builds.
REMOTE = "remote"  # its own code only (auto_map): buildable with --trust-remote-code
UNKNOWN = "unknown"  # a model_type the installed transformers does not know, and no auto_map: MODEL-002
# auto_map entries that name the model class, in the order diag prefers them (the kits generate text).
MODEL_KEYS = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModel")
CONSENT = "--trust-remote-code"
GIVE_THE_MODEL = (
    "give diag the model: --model path/to/checkpoint (or its config.json), or a hub id whose snapshot is in the "
    "local Hugging Face cache; for a checkpoint that ships its own code (auto_map) add --trust-remote-code"
)


@dataclass(frozen=True)
class CodeProblem:
    """Why the model cannot be built or run here: a fix code, one line of what happened, and the fix."""

    code: str
    message: str
    fix: str


class ModelCodeError(Exception):
    """The checkpoint's own code failed on the installed transformers (MODEL-001): where, and the error's line."""

    def __init__(self, stage: str, error: BaseException | str) -> None:
        self.stage = stage
        self.error = error if isinstance(error, str) else one_line(error)
        super().__init__(f"{stage}: {self.error}")


def one_line(error: BaseException) -> str:
    """`TypeError: forward() got ...`: the exception's type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _refs(config: Mapping[str, Any]) -> dict[str, str]:
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, Mapping):
        return {}
    return {k: v for k, v in auto_map.items() if isinstance(k, str) and isinstance(v, str)}


def model_ref(config: Mapping[str, Any]) -> str | None:
    """The auto_map entry of the model class diag builds (`modeling_x.XForCausalLM`), or None."""
    refs = _refs(config)
    return next((refs[k] for k in MODEL_KEYS if k in refs), None)


def code_folder(config: Mapping[str, Any], folder: Path) -> str | None:
    """`folder` when it holds the modelling files config.json's auto_map names (model and config classes); None
    when there is no auto_map, a file is missing, or the code lives in another repository (`repo--module.Class`)."""
    ref = model_ref(config)
    if ref is None:
        return None
    refs = [ref, *([_refs(config)["AutoConfig"]] if "AutoConfig" in _refs(config) else [])]
    for item in refs:
        module = item.rpartition(".")[0]
        if "--" in item or not module or not re.fullmatch(r"[\w.]+", module):
            return None
        if not (folder / (module.replace(".", "/") + ".py")).is_file():
            return None
    return str(folder)


def model_type_known(model_type: str) -> bool:
    """True when the installed transformers registers this model_type (its own CONFIG_MAPPING)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def with_consent(spec: ModelSpec, trust_remote_code: bool) -> ModelSpec:
    """The spec built from the checkpoint's own code when the user consented and that code is on the machine."""
    if trust_remote_code and spec.code_dir is not None and spec.code != "remote":
        return replace(spec, code="remote")
    return spec


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set for the call, read both from the environment and from the
    constants huggingface_hub read at import: loading from the folder never reaches for the network."""
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants
    previous = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_classes(spec: ModelSpec) -> tuple[type[Any], type[nn.Module]]:
    """(config class, model class) from the checkpoint's own files, imported as from_pretrained imports them.

    Refuses unless the spec says the checkpoint's code runs (`code == "remote"`, set only with consent).
    Raises ModelCodeError when an import fails (a missing name in the installed transformers, a syntax the
    installed Python rejects, an import of a package that is not installed)."""
    if spec.code != "remote" or spec.code_dir is None:
        raise PermissionError(f"{spec.name}: the checkpoint's own code runs only with {CONSENT}")
    ref = model_ref(spec.config)
    if ref is None:
        raise ModelCodeError("import", f"config.json's auto_map names no model class ({', '.join(MODEL_KEYS)})")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    refs = _refs(spec.config)
    try:
        with _offline():
            if "AutoConfig" in refs:
                config_class = get_class_from_dynamic_module(refs["AutoConfig"], spec.code_dir, local_files_only=True)
            else:
                from transformers.models.auto.configuration_auto import CONFIG_MAPPING

                config_class = CONFIG_MAPPING[str(spec.config.get("model_type"))]
            model_class = get_class_from_dynamic_module(ref, spec.code_dir, local_files_only=True)
    except Exception as exc:  # the eval's from_pretrained would stop here too
        raise ModelCodeError("import", exc) from exc
    return config_class, model_class


def _without_dtype(config: Any) -> Any:
    if isinstance(config, Mapping):
        return {k: _without_dtype(v) for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    return config


def construct(spec: ModelSpec, config: Mapping[str, Any]) -> nn.Module:
    """The checkpoint's model class built from a config dict, in the current default device and dtype."""
    config_class, model_class = load_classes(spec)
    try:
        built = config_class.from_dict(copy.deepcopy(_without_dtype(config)))
        model: nn.Module = model_class(built)
    except Exception as exc:
        raise ModelCodeError("build", exc) from exc
    return model


def _with_default_dtype(spec: ModelSpec, config: Mapping[str, Any], dtype: torch.dtype) -> nn.Module:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return construct(spec, config)
    finally:
        torch.set_default_dtype(previous)


def build_meta(spec: ModelSpec) -> nn.Module:
    """Full width on the meta device, in the checkpoint's dtype, eval mode (as diag.twins.build_meta)."""
    import torch

    dtype = getattr(torch, spec.dtype, None)
    dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.bfloat16
    with torch.device("meta"):
        model = _with_default_dtype(spec, spec.config, dtype)
    return model.eval()


def build_tiny(spec: ModelSpec, *, seed: int = 0) -> nn.Module:
    """Tiny width (the family's shrink where diag has one, else `tiny_config`), float32 CPU weights from `seed`."""
    import torch

    from diag.twins.families import family_named

    config = family_named(spec.family).tiny_config(spec.config)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _with_default_dtype(spec, config, torch.float32)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


# Generic shrink for a config no family of diag knows: the usual width fields wherever they appear.
_WIDTHS = {"hidden_size": 64, "intermediate_size": 128, "embed_dim": 64, "projection_dim": 64, "d_model": 64,
           "ffn_dim": 128, "n_embd": 64}  # fmt: skip
_HEADS = ("num_attention_heads", "num_heads", "n_head")


def tiny_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every layer count, vocabulary and token id kept; widths 64 (4 heads of 16), MLPs 128, eager attention.

    Only for configs no family shrinks: the checkpoint's code reads its own fields, so any other field is kept."""

    def shrink(sub: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in sub.items():
            if isinstance(value, Mapping) and (key.endswith("_config") or key == "text_config"):
                out[key] = shrink(value)
            elif key in _WIDTHS and isinstance(value, int) and not isinstance(value, bool):
                out[key] = min(value, _WIDTHS[key])
            elif key in _HEADS and isinstance(value, int) and not isinstance(value, bool):
                out[key] = min(value, 4)
            elif key == "num_key_value_heads" and isinstance(value, int) and not isinstance(value, bool):
                out[key] = min(value, 2)
            elif key == "head_dim":
                continue  # follows from the width and heads
            else:
                out[key] = copy.deepcopy(value)
        return out

    out = shrink(config)
    out.pop("rope_scaling", None)
    out["attn_implementation"] = "eager"
    return out


def example_inputs(spec: ModelSpec | None, model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU batch for the tiny model: one image (when the config describes a vision tower) and a prompt with
    the image token repeated once per image feature, as a LLaVA-style processor expands it.

    The count is `num_image_tokens` / `image_seq_length` where the config has one, else one per patch of the
    vision config's image; the image token id is the config's `image_token_index` / `image_token_id` /
    `img_context_token_id`. InternVL-Chat runs through `chat` (diag.samedevice.run), which needs the image only.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    config: Any = getattr(model, "config", None)
    vision = _field(config, "vision_config")
    size = _int(config, "force_image_size") or _int(vision, "image_size")
    patch = _int(vision, "patch_size")
    text = _field(config, "text_config") or _field(config, "llm_config") or config
    vocab = _int(text, "vocab_size") or _int(config, "vocab_size") or 256
    token = next((t for k in ("image_token_index", "image_token_id", "img_context_token_id")
                  if (t := _int(config, k)) is not None and 0 <= t < vocab), None)  # fmt: skip
    count = _int(config, "num_image_tokens") or _int(config, "image_seq_length")
    if count is None and size and patch:
        count = (size // patch) ** 2
    ids = [1 % vocab, *([token] * (count or 0) if token is not None else []), 10 % vocab, 11 % vocab]
    inputs: dict[str, torch.Tensor] = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }
    if size:
        inputs["pixel_values"] = torch.randn(1, 3, size, size, generator=generator)
    return inputs


def _field(config: Any, name: str) -> Any:
    value = config.get(name) if isinstance(config, Mapping) else getattr(config, name, None)
    return value


def _int(config: Any, name: str) -> int | None:
    value = _field(config, name) if config is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def probe(spec: ModelSpec, meta_model: nn.Module | None = None) -> CodeProblem | None:
    """Does the checkpoint's own code build, plan and run here? Build at full width on the meta device, plan
    `device_map="auto"` over two GPUs with the installed planner, build the tiny model and run forward and a
    two-token generate on the CPU. None when every step passed; MODEL-001 with the first error otherwise."""
    from diag.devicemap.plan import GIB, plan_device_map
    from diag.samedevice.run import dispatch, run_stages

    stage = "build"
    try:
        meta = meta_model if meta_model is not None else build_meta(spec)
        stage = "planning"
        plan_device_map(meta, "auto", {0: 1024 * GIB, 1: 1024 * GIB, "cpu": 1024 * GIB})
        stage = "build"
        tiny = build_tiny(spec)
        mismatch = _call_mismatch(spec, tiny)
        if mismatch is not None:
            return uncallable(spec, mismatch)
        stage = "loading"
        dispatch(tiny, {"": "cpu"})
        for stage in run_stages(spec, tiny, inputs_device="cpu"):  # noqa: B007 (the stage reached is reported)
            pass
    except ModelCodeError as exc:
        return model_code_failure(spec, exc.stage, exc.error)
    except PermissionError:
        raise
    except Exception as exc:  # anything the checkpoint's code raises on one device is the code's, not the map's
        return model_code_failure(spec, stage, one_line(exc))
    return None


def _call_mismatch(spec: ModelSpec, model: nn.Module) -> str | None:
    """Why the model's own forward cannot take the inputs diag feeds it (None when it can, or when its family
    calls it another way): MiniCPM-V's `forward(self, data, **kwargs)` wants the processor's dict. That is diag's
    ignorance of the model's call, not a failure of its code."""
    import inspect

    from diag.twins.build import example_input_sets
    from diag.twins.families import Family, family_named

    if type(family_named(spec.family)).run is not Family.run:  # driven another way (InternVL's chat)
        return None
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None
    for inputs in example_input_sets(spec, model).values():
        try:
            signature.bind(**inputs)
        except TypeError as exc:
            return f"{type(model).__name__}.forward{signature} does not take {', '.join(inputs)} ({exc})"
    return None


def uncallable(spec: ModelSpec, mismatch: str) -> CodeProblem:
    """MODEL-003 (a warning): the checkpoint's own code built and planned here, but diag does not know its call."""
    message = (f"{spec.name}: the checkpoint's own code builds and plans here, but diag does not know how to call "
               f"it: {mismatch}: the same-device check is skipped")  # fmt: skip
    fix = ("The map checks ran on the model's own modules. Before the full eval, run it on a few samples with the "
           "same device_map: a device error shows within the first batch.")  # fmt: skip
    return CodeProblem("MODEL-003", message, fix)


def installed_transformers() -> str:
    import transformers

    return str(transformers.__version__)


def _release(version: str) -> str:
    """`4.49.0.dev0` -> `4.49.0`: the release a development version becomes."""
    found = re.match(r"\d+(\.\d+)*", version.strip())
    return found[0] if found else version.strip()


def model_code_failure(spec: ModelSpec, stage: str, error: str) -> CodeProblem:
    """MODEL-001: the checkpoint's own code fails on the installed transformers; the fix names what works."""
    installed = installed_transformers()
    written = spec.config.get("transformers_version")
    where = f" (from {spec.code_dir})" if spec.code_dir else ""
    message = (f"{spec.name}: the checkpoint's own code{where} fails on the installed transformers {installed} in "
               f"{stage}: {error}")  # fmt: skip
    fixes = []
    if isinstance(written, str) and written.strip():
        release = _release(written)
        major = release.split(".")[0]
        newer = installed.split(".")[0] != major
        fixes.append(f"run the eval with the transformers the checkpoint was saved with, transformers=={release} "
                     f"(config.json transformers_version {written})"
                     + (f"; the installed {installed} is a major release newer than the code was written for"
                        if newer else ""))  # fmt: skip
    else:
        fixes.append("run the eval with the transformers release the checkpoint's code was written for (its model "
                     "card names it)")  # fmt: skip
    if spec.family == "internvl-chat" and model_type_known("internvl"):
        fixes.append("or use the native port the installed transformers loads without remote code: the "
                     "OpenGVLab `-hf` checkpoints (model_type internvl, e.g. OpenGVLab/InternVL3-8B-hf)")  # fmt: skip
    fix = "; ".join(fixes)
    return CodeProblem("MODEL-001", message, fix[0].upper() + fix[1:] + ".")


def unknown_model_type(spec: ModelSpec, reason: str | None = None) -> CodeProblem:
    """MODEL-002: a model_type the installed transformers does not register, and no auto_map to load it by (or,
    with `reason`, the family's own word on a class the installed transformers lacks)."""
    model_type = spec.config.get("model_type")
    installed = installed_transformers()
    written = spec.config.get("transformers_version")
    if reason is None:
        message = (f"{spec.name}: model_type {model_type!r} is not one the installed transformers {installed} "
                   "knows, and config.json has no auto_map: from_pretrained (and so the eval) cannot load "
                   "it")  # fmt: skip
    else:
        message = f"{spec.name}: {reason}: from_pretrained (and so the eval) cannot load it"
    if isinstance(written, str) and written.strip() and _release(written) != _release(installed):
        fix = (
            f"Upgrade transformers to the release that wrote this config.json or newer: "
            f"pip install 'transformers>={_release(written)}' (config.json transformers_version {written})."
        )
    else:
        fix = f"Upgrade transformers to a release that has model_type {model_type!r} (pip install -U transformers)."
    return CodeProblem("MODEL-002", message, fix)


def not_buildable(spec: ModelSpec | None, problem: str | None = None) -> CodeProblem:
    """MODEL-003 (a warning): diag has no model it may build, so the memory and same-device checks skip."""
    if spec is None:
        return CodeProblem("MODEL-003", f"{problem or 'no model'}: the memory and same-device checks are skipped",
                           GIVE_THE_MODEL[0].upper() + GIVE_THE_MODEL[1:] + ".")  # fmt: skip
    note = _no_twin(spec)
    if spec.code_dir is not None:
        why = (f"the checkpoint ships its own modelling code ({spec.code_dir}) and diag has no twin of it; without "
               f"{CONSENT} none of that code runs")  # fmt: skip
        fix = (f"Give {CONSENT} to build it from the checkpoint's own code, as the eval does with "
               "trust_remote_code=True (see docs/security.md).")  # fmt: skip
    elif note is not None:  # a config-only family (diag/twins/families/config_only.py) says where the code is
        why, fix = note
    else:
        why = ("the checkpoint ships its own modelling code (auto_map), which is not on this machine, and diag has "
               "no twin of it")  # fmt: skip
        fix = ("Put the checkpoint on the node (its folder as --model, or its snapshot in the Hugging Face cache) "
               f"and give {CONSENT}.")  # fmt: skip
    return CodeProblem("MODEL-003", f"{why}: the memory and same-device checks are skipped", fix)


def _no_twin(spec: ModelSpec) -> tuple[str, str] | None:
    """A config-only family's own word on where the model's code is and how diag could run it, or None."""
    from diag.twins.families import family_named

    try:
        no_twin = getattr(family_named(spec.family), "no_twin", None)
    except KeyError:
        return None
    if no_twin is None:
        return None
    why, fix = no_twin(spec.config)
    return str(why), str(fix)


TWIN_NOTE = "diag's hand-written twin; the checkpoint's own code was not run"


def twin_note(spec: ModelSpec) -> str:
    """What a verdict from a fallback twin rests on, and how to run the checkpoint's own code instead."""
    if spec.code_dir is not None:
        how = f"give {CONSENT} to run the checkpoint's own code from {spec.code_dir}"
    else:
        how = f"put the checkpoint on the node (--model PATH or the Hugging Face cache) and give {CONSENT}"
    return f"the verdict rests on {TWIN_NOTE} ({how})"


@functools.lru_cache(maxsize=16)
def cached_problem(spec: ModelSpec) -> CodeProblem | None:
    """code_problem, asked once per model in a process (the model check and the same-device check both ask)."""
    return code_problem(spec)


def code_problem(spec: ModelSpec, meta_model: nn.Module | None = None) -> CodeProblem | None:
    """The model-level finding for a spec: MODEL-002 (unknown model_type), MODEL-003 (nothing diag may build),
    MODEL-001 (the checkpoint's own code fails here), or None."""
    if spec.family == UNKNOWN:
        return unknown_model_type(spec)
    if spec.code == "none":  # nothing diag may build (before `unavailable`: a config-only family says why there)
        return not_buildable(spec)
    if spec.code != "remote":
        from diag.twins.families import family_named

        reason = family_named(spec.family).unavailable(spec.config)
        if reason is not None:  # a native class (or an LM of a twin) the installed transformers lacks
            return unknown_model_type(spec, reason)
    if spec.code == "remote":
        return probe(spec, meta_model)
    return None


__all__ = [
    "CONSENT",
    "GIVE_THE_MODEL",
    "MODEL_KEYS",
    "REMOTE",
    "TWIN_NOTE",
    "UNKNOWN",
    "CodeProblem",
    "ModelCodeError",
    "build_meta",
    "build_tiny",
    "cached_problem",
    "code_folder",
    "code_problem",
    "construct",
    "example_inputs",
    "load_classes",
    "model_code_failure",
    "model_type_known",
    "not_buildable",
    "one_line",
    "probe",
    "twin_note",
    "uncallable",
    "unknown_model_type",
    "with_consent",
]
