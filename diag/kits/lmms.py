"""lmms-eval's model class, as the installed kit builds it, or as diag's emulation knows it.

The installed path resolves `--model` through lmms-eval's own registry (whichever the installed version has:
`lmms_eval.models.get_model`, `lmms_eval.api.registry.get_model` or `MODEL_REGISTRY`) and builds the class the way
the evaluator does, `create_from_arg_string(model_args, {"batch_size": ..., "device": ...})`, with the loaders
intercepted (`diag.kits.capture`) under this process's rank and process count.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diag.devicemap.sources import ORIGIN_DEFAULT, ORIGIN_MODEL_ARGS, DeviceMapSource
from diag.kits import LMMS_EVAL, KitUse, date_of, emulated, installed_version, module_folder


@dataclass(frozen=True)
class KitVerdict:
    """What the kit does for one process: the map source it ends with, or the error it stops with first."""

    kit: KitUse
    source: DeviceMapSource | None = None
    problem: str | None = None
    code: str | None = None
    key: str | None = None  # the --model_args key the class rejects, when that is the problem


class KitUnavailable(Exception):
    """The installed kit could not be run for this (import error, no registry): the emulation answers."""


def lmms_eval_installed(option_version: str | None) -> KitUse | None:
    """The installed lmms-eval, when `lmms_eval` is importable; None when it is not."""
    folder = module_folder("lmms_eval")
    if folder is None:
        return None
    version = installed_version("lmms_eval") or installed_version("lmms-eval")
    date = date_of(LMMS_EVAL, version) if version else None
    if date is None and option_version is not None:  # the installed version says nothing: the option dates it
        date = date_of(LMMS_EVAL, option_version)
    return KitUse(LMMS_EVAL, "installed", version=version, date=date, where=str(folder))


def eval_options(command: Sequence[str] | None) -> dict[str, str]:
    """lmms-eval's `--batch_size` and `--device` from the eval command, abbreviations read as argparse does."""
    import argparse
    import contextlib
    import io

    if not command:
        return {}
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--batch_size", default="1")
    parser.add_argument("--device", default=None)
    parser.add_argument("--model_args", default=None)
    parser.add_argument("--model", default=None)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ns, _ = parser.parse_known_args(list(command))
    except SystemExit:
        return {}
    return {k: v for k, v in {"batch_size": ns.batch_size, "device": ns.device}.items() if v is not None}


def resolve_class(name: str) -> type:
    """The class lmms-eval's own registry gives for `--model name`. ValueError/KeyError: the name is unknown."""
    import importlib

    try:
        models = importlib.import_module("lmms_eval.models")
    except Exception as exc:  # the kit's own import failed (a missing dependency): the emulation answers
        raise KitUnavailable(f"import lmms_eval.models: {type(exc).__name__}: {exc}") from None
    get_model = getattr(models, "get_model", None)
    if get_model is None:
        try:
            registry = importlib.import_module("lmms_eval.api.registry")
        except Exception as exc:
            raise KitUnavailable(f"import lmms_eval.api.registry: {type(exc).__name__}: {exc}") from None
        get_model = getattr(registry, "get_model", None)
        if get_model is None:
            table = getattr(registry, "MODEL_REGISTRY", None)
            if not isinstance(table, Mapping):
                raise KitUnavailable("lmms-eval has no get_model and no MODEL_REGISTRY")
            if name not in table:
                raise ValueError(f"Model {name} not found in available models")
            found_class: type = table[name]
            return found_class
    try:
        found = get_model(name)
    except (ValueError, KeyError):
        raise
    except Exception as exc:  # the class's module did not import: its dependencies are missing here
        raise KitUnavailable(f"importing the {name!r} class: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, type):
        raise KitUnavailable(f"the registry gave {type(found).__name__} for {name!r}, not a class")
    return found


def build_installed(
    kit: KitUse, model_class: str, model_args: str, *, processes: int, rank: int, gpus: int,
    options: Mapping[str, str] | None = None,
) -> KitVerdict:  # fmt: skip
    """Build the installed class as the evaluator does, with the loaders intercepted; its verdict for this rank."""
    from diag.kits.capture import WeightReadStopped, imported_fresh, intercepted

    options = options or {}
    env = {"LOCAL_RANK": str(rank), "RANK": str(rank), "WORLD_SIZE": str(processes),
           "LOCAL_WORLD_SIZE": str(processes)}  # fmt: skip
    with imported_fresh("lmms_eval"):
        try:
            cls = resolve_class(model_class)
        except (ValueError, KeyError) as exc:
            return KitVerdict(kit, problem=f"{kit.describe()} has no model class {model_class!r}: "
                              f"{type(exc).__name__}: {exc}", code="KIT-002", key="--model")  # fmt: skip
        error: BaseException | None = None
        with intercepted(gpus=gpus, processes=processes, rank=rank, env=env) as capture:
            additional = {"batch_size": options.get("batch_size", "1"), "device": options.get("device")}
            try:
                if hasattr(cls, "create_from_arg_string"):
                    cls.create_from_arg_string(model_args, additional)
                else:
                    from diag.devicemap.model_args import parse_model_args

                    cls(**parse_model_args(model_args), **{k: v for k, v in additional.items() if v is not None})
            except WeightReadStopped:
                pass
            except Exception as exc:  # the constructor's own error (or one after the load, which is ignored)
                error = exc
    return _verdict(kit, cls, model_class, model_args, capture, error)


def _verdict(
    kit: KitUse, cls: type, model_class: str, model_args: str, capture: Any, error: BaseException | None
) -> KitVerdict:
    from diag.devicemap.model_args import parse_model_args

    load = capture.model
    args = parse_model_args(model_args)
    origin = ORIGIN_MODEL_ARGS if "device_map" in args else ORIGIN_DEFAULT
    written = f"device_map={args['device_map']}" if "device_map" in args else f"{model_class}'s own choice"
    if load is None:
        if error is None:
            return KitVerdict(
                kit,
                DeviceMapSource(
                    None, origin, written, model_class, f"{model_class} loads no transformers model ({kit.describe()})"
                ),
            )
        text = f"{type(error).__name__}: {error}"
        code, key = _code_of(error, cls, args)
        where = f"{cls.__module__}.{cls.__name__}, {kit.describe()}"
        what = f"lmms-eval's {model_class!r} class ({where}) raises {text} before loading the model"
        return KitVerdict(kit, problem=what, code=code, key=key)
    passed = load.device_map if load.has_device_map else None
    note = f"{model_class} ({kit.describe()}) calls {load.owner}.from_pretrained(device_map={passed!r})"
    value: Any = passed
    if load.moves:
        value = load.moves[-1]
        note += f", then moves the whole model with .to({value!r})"
    elif not load.has_device_map:
        note += " (no device_map: it loads on the CPU)"
    return KitVerdict(kit, DeviceMapSource(value, origin, written, model_class, note))


def _code_of(error: BaseException, cls: type, args: Mapping[str, Any]) -> tuple[str, str | None]:
    """The fix code for a constructor error: MAP-010 (batch_size twice), MAP-011 (a key the class does not take),
    MAP-012 (internvl2's split table), MAP-013 (anything else the class raises)."""
    text = str(error)
    if isinstance(error, TypeError) and "multiple values for keyword argument 'batch_size'" in text:
        return "MAP-010", "batch_size"
    unexpected = re.search(r"unexpected keyword argument '([^']+)'", text)
    if isinstance(error, TypeError) and unexpected:
        return "MAP-011", unexpected[1]
    if isinstance(error, AssertionError) and "Unexpected kwargs" in text:
        return "MAP-011", _first_unknown(cls, args)
    if isinstance(error, KeyError) and "num_layers" not in args and "device_map" in args:
        return "MAP-012", "device_map"
    return "MAP-013", None


def _first_unknown(cls: type, args: Mapping[str, Any]) -> str | None:
    """The first key the class's own signature does not name (it takes **kwargs only to reject them)."""
    try:
        parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    except (TypeError, ValueError):
        return None
    return next((key for key in args if key not in parameters), None)


def lmms_eval_verdict(
    model_class: str, model_args: str, *, processes: int, rank: int, gpus: int, option_version: str | None,
    command: Sequence[str] | None,
) -> KitVerdict:  # fmt: skip
    """The installed kit's verdict when it runs; else the emulation's, keyed by `--eval-kit-version`."""
    from diag.devicemap.model_args import (
        ModelArgsError,
        ModelClassRejects,
        device_map_for_process,
        device_map_from_model_args,
    )

    kit = lmms_eval_installed(option_version)
    reason = None
    if kit is not None:
        try:
            return build_installed(kit, model_class, model_args, processes=processes, rank=rank, gpus=gpus,
                                   options=eval_options(command))  # fmt: skip
        except KitUnavailable as exc:
            reason = f"the installed lmms-eval ({kit.where}) could not be run: {exc}"
    use = emulated(LMMS_EVAL, option_version, reason)
    try:
        source = device_map_from_model_args(model_args, model_class, use.date)
    except ModelClassRejects as exc:
        return KitVerdict(use, problem=f"{exc} ({use.describe()})", code=exc.code, key=exc.key)
    except ModelArgsError:
        raise
    if source is None:
        return KitVerdict(use)
    return KitVerdict(use, device_map_for_process(source, processes, rank))
