"""lmms-eval's `--model_args`, parsed the way lmms-eval parses it, and the device map each model class then uses.

`lmms_eval/utils.py::simple_parse_args_string` changed in PR #915. Before it (read at EvolvingLMMs-Lab/lmms-eval
@fea38060), the string was split on every comma, empty items dropped, and each item split on every `=`; so
`a=1, b=2` gave the key `" b"`, which the model class then rejected (`Unexpected kwargs`), and `x=a=b` raised.
From #915 (read @06965734), a comma inside quotes, braces or brackets does not split, each item is stripped,
and each item splits on its first `=`. Both convert values the same way (`handle_arg_string`): "true"/"false" in
any case to bool, `str.isnumeric()` to int, else float if `float()` accepts it, else the string unchanged
(quotes included). So `device_map=` gives "", `device_map=0` gives 0 and `device_map=-1` gives -1.0.

Errors are raised by running the same Python operation lmms-eval runs, so the message is the one this
interpreter would print for lmms-eval too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from diag.devicemap.sources import ORIGIN_DEFAULT, ORIGIN_MODEL_ARGS, DeviceMapSource

ArgValue = bool | int | float | str

# Read from EvolvingLMMs-Lab/lmms-eval, lmms_eval/models/simple/<class>.py, `__init__` defaults:
#   llava_hf, idefics2, llama_vision, qwen2_vl @19085f3a; aria @48abd2d8; llava @1741440d;
#   llava_onevision @077faa1b; internvl2 @2a475ad8; cogvlm2 @59385164.
# The 2025-26 classes (lmms_eval/models/{chat,simple}/<class>.py, as of the 2026-08 HEAD 75571cfe), below them.
# None: the class has no device_map parameter (cogvlm2 hands its `device`, default "cuda", to from_pretrained).
MODEL_CLASS_DEFAULT_DEVICE_MAP: Mapping[str, str | None] = {
    "llava_hf": "",
    "idefics2": "",
    "llama_vision": "",
    "aria": "",
    "llava": "cuda:0",
    "llava_onevision": "cuda:0",
    "internvl2": "cuda:0",
    "qwen2_vl": "cuda",
    "cogvlm2": None,
    "qwen2_5_vl": "auto",
    "huggingface": "auto",
    "gemma3": "auto",
    "llava_onevision1_5": "auto",
    "qwen3_vl": "auto",
    "internvl3": "cuda:0",
    "internvl3_5": "cuda:0",
    "internvl_hf": "auto",
    "glm4v": "auto",
    "llama4_scout": "auto",
    "phi4_multimodal": "",
    "qwen3_5": "auto",
    "videollama3": "auto",
}
# The date each 2025-26 class first appeared in lmms-eval (b7b4b1d9 for the 2025-07-30 ones): a kit version
# older than that has no such class.
CLASS_ADDED: Mapping[str, str] = {
    "qwen2_5_vl": "2025-07-30",
    "huggingface": "2025-07-30",
    "minicpm_v": "2025-07-30",
    "phi3v": "2025-07-30",
    "gemma3": "2025-09-17",
    "llava_onevision1_5": "2025-11-06",
    "qwen3_vl": "2025-11-07",
    "internvl3": "2026-01-06",
    "internvl3_5": "2026-01-06",
    "internvl_hf": "2026-01-29",
    "glm4v": "2026-02-08",
    "llama4_scout": "2026-02-08",
    "phi4_multimodal": "2026-03-01",
    "qwen3_5": "2026-03-26",
}
# With several processes (`accelerate launch --num_processes N`, N > 1), read in the same files:
# these classes load on `cuda:{local_process_index}` whatever device_map says (device_map=auto included) ...
PER_PROCESS_GPU_CLASSES = frozenset({
    "llava", "llava_onevision", "internvl2", "qwen2_vl", "cogvlm2", "qwen2_5_vl", "huggingface", "qwen3_vl",
    "llava_onevision1_5", "internvl_hf", "glm4v", "llama4_scout", "qwen3_5", "videollama3",
})  # fmt: skip
# ... and these only when device_map is "": with device_map=auto every process splits the model over every
# visible GPU and then runs as a single process (rank 0 of 1), so each evaluates the whole task.
SPLIT_IN_EVERY_PROCESS_CLASSES = frozenset({"llava_hf", "idefics2", "llama_vision", "aria"})
# Classes that move the loaded model whole afterwards (`.to(...)`): where it ends up is what the GPUs must hold.
# "cuda" is the current device (cuda:0 in one process).
MOVED_AFTER_LOADING: Mapping[str, str] = {
    "gemma3": "cuda",
    "phi4_multimodal": "cuda",
    "internvl3": "cuda:0",
    "internvl3_5": "cuda:0",
}
# internvl2 with device_map=auto in one process builds its split from this table of checkpoint folder names
# (lmms_eval/models/simple/internvl2.py, since PR #481): any other name raises KeyError unless num_layers= is given.
INTERNVL2_SPLIT_NAMES = frozenset({
    "InternVL2_5-1B", "InternVL2_5-2B", "InternVL2_5-4B", "InternVL2_5-8B", "InternVL2_5-26B", "InternVL2_5-38B",
    "InternVL2_5-78B", "InternVL2-1B", "InternVL2-2B", "InternVL2-4B", "InternVL2-8B", "InternVL2-26B",
    "InternVL2-40B", "InternVL2-Llama3-76B",
})  # fmt: skip
INTERNVL2_OWN_SPLIT = "2024-12-30"  # PR #481 (75f45363): before it internvl2 passed no device_map and ran .cuda()
# The whole constructor signature of classes that assert `kwargs == {}` (any other key raises
# `AssertionError: Unexpected kwargs`), as read upstream: cogvlm2 @59385164, minicpm_v and phi3v @b7b4b1d9.
# Classes not listed here are never flagged for their keys by the emulation.
KNOWN_SIGNATURES: Mapping[str, frozenset[str]] = {
    "cogvlm2": frozenset({"pretrained", "device", "dtype", "batch_size", "trust_remote_code"}),
    "minicpm_v": frozenset({"pretrained", "device", "dtype", "batch_size", "trust_remote_code"}),
    "phi3v": frozenset({"model_id_name", "device", "dtype", "batch_size", "trust_remote_code", "use_cache"}),
}
# The `device` default of the classes that fall back to it (qwen2_vl for an empty device_map, cogvlm2 always).
_DEVICE_DEFAULT: Mapping[str, str] = {"qwen2_vl": "cuda", "cogvlm2": "cuda"}
_COGVLM2_PARAMETERS = KNOWN_SIGNATURES["cogvlm2"]


def rejected_keys(model_class: str | None, args: Mapping[str, object]) -> list[str]:
    """Keys the class's known signature does not take (batch_size is MAP-010's); [] where the signature is unknown."""
    known = KNOWN_SIGNATURES.get(str(model_class))
    if known is None:
        return []
    return [key for key in args if key not in known]


class ModelArgsError(ValueError):
    """lmms-eval would stop on this `--model_args`; `upstream_error` is what it raises ("ValueError: ...")."""

    def __init__(self, text: str, item: str, upstream_error: str) -> None:
        self.text = text
        self.item = item
        self.upstream_error = upstream_error
        from diag.redact import redact_text, redacted_model_args  # the message is printed: secrets hidden

        shown, at = redacted_model_args(text), redact_text(item)
        super().__init__(f"--model-args {shown!r}: lmms-eval stops at {at!r} with {upstream_error}")


class ModelClassRejects(ModelArgsError):
    """The lmms-eval model class stops on these args before loading: `code` is the fix code, `key` the item."""

    def __init__(self, text: str, model_class: str, key: str, upstream_error: str, code: str, why: str) -> None:
        ValueError.__init__(self, why)
        self.text = text
        self.item = key
        self.key = key
        self.model_class = model_class
        self.upstream_error = upstream_error
        self.code = code


def parse_model_args(text: str) -> dict[str, object]:
    """`simple_parse_args_string` as of lmms-eval PR #915: the dict of keyword arguments the model class gets."""
    return dict(_parse(text))


def parse_model_args_legacy(text: str) -> dict[str, object]:
    """`simple_parse_args_string` before PR #915: every comma splits, keys keep their spaces."""
    items = [item for item in text.strip().split(",") if item]
    return dict(_to_dict(text, items, _split_every_equals))


def _parse(text: str) -> dict[str, ArgValue]:
    return _to_dict(text, _split_top_level(text.strip()), _split_first_equals)


def _split_first_equals(item: str) -> tuple[str, str]:
    key, value = item.split("=", 1)
    return key, value


def _split_every_equals(item: str) -> tuple[str, str]:
    key, value = item.split("=")
    return key, value


def _to_dict(text: str, items: list[str], split: Callable[[str], tuple[str, str]]) -> dict[str, ArgValue]:
    parsed: dict[str, ArgValue] = {}
    for item in items:
        try:
            key, raw = split(item)
            parsed[key] = _convert(raw)
        except ValueError as exc:
            raise ModelArgsError(text, item, f"ValueError: {exc}") from None
    return parsed


def _convert(raw: str) -> ArgValue:
    """`handle_arg_string`: bool, then int (str.isnumeric, so "½" makes int() raise), then float, else str."""
    if raw.lower() == "true":
        return True
    if raw.lower() == "false":
        return False
    if raw.isnumeric():
        return int(raw)
    try:
        return float(raw)
    except ValueError:
        return raw


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside quotes, braces and brackets, stripping each item and dropping empty ones (#915).

    Like upstream, a quote preceded by a backslash does not open or close, and a closing brace or bracket
    without an opening one takes the depth below zero, where no comma splits.
    """
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for index, char in enumerate(text):
        if char in "\"'" and (index == 0 or text[index - 1] != "\\"):
            if not quote:
                quote = char
            elif char == quote:
                quote = ""
        elif not quote and char in "{[":
            depth += 1
        elif not quote and char in "}]":
            depth -= 1
        elif not quote and char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def pretrained_from_model_args(text: str) -> str | None:
    """The `pretrained=` value (checkpoint name or path), or None when the args do not name one."""
    value = _parse(text).get("pretrained")
    return None if value is None else str(value)


def device_map_from_model_args(text: str, model_class: str | None, date: str | None = None) -> DeviceMapSource | None:
    """The device map lmms-eval's model class ends up with, for one process (`date`: the kit version's date).

    `device_map=` in the args wins over the class default ("" for llava_hf); classes that rewrite the value
    (llava, llava_onevision and internvl2 load on cuda:0 unless it is "auto"; internvl2 with "auto" builds its
    own split and then moves the model to cuda:0; qwen2_vl falls back to `device` for an empty one; cogvlm2
    always passes `device`) are followed, and so are the classes that move the loaded model whole afterwards
    (`.to('cuda')`); `note` names the rewrite. With several processes the classes pass
    `cuda:{local_process_index}` instead (the llava_hf family only when device_map is ""). None when neither
    the args nor a known class default say anything. Raises ModelClassRejects where the class stops first.
    """
    args = _parse(text)
    _reject(text, model_class, args, date)
    if model_class == "cogvlm2":
        return _cogvlm2(text, args)
    given = "device_map" in args
    if not given and model_class not in MODEL_CLASS_DEFAULT_DEVICE_MAP:
        return None
    value: ArgValue | None = args["device_map"] if given else MODEL_CLASS_DEFAULT_DEVICE_MAP[str(model_class)]
    written = _written(text, "device_map") if given else f"device_map={value!r} ({model_class} default)"
    origin = ORIGIN_MODEL_ARGS if given else ORIGIN_DEFAULT
    if model_class == "internvl2" and date is not None and date < INTERNVL2_OWN_SPLIT:
        old = f"internvl2 before {INTERNVL2_OWN_SPLIT} passes no device_map and runs .cuda(): {value!r} is ignored"
        return DeviceMapSource("cuda:0", origin, written, model_class, old)
    passed, note = _as_the_class_passes_it(model_class, value, args)
    moved = MOVED_AFTER_LOADING.get(str(model_class))
    if moved is not None:
        target = "cuda:0" if moved == "cuda" else moved
        how = f"loads with device_map={passed!r}, then moves the whole model with .to({moved!r})"
        return DeviceMapSource(target, origin, written, model_class, f"{model_class} {how}")
    return DeviceMapSource(passed, origin, written, model_class, note)


def _reject(text: str, model_class: str | None, args: Mapping[str, ArgValue], date: str | None) -> None:
    """What the class raises before loading, as the emulation knows it (batch_size= is MAP-010's check)."""
    if model_class is None:
        return
    added = CLASS_ADDED.get(model_class)
    if date is not None and added is not None and date < added:
        raise ModelClassRejects(text, model_class, "--model", f"ValueError: Model {model_class} not found",
                                "KIT-002", f"lmms-eval as of {date} has no {model_class!r} model class (added "
                                f"{added}): it stops with ValueError: Model {model_class} not found")  # fmt: skip
    unknown = [key for key in rejected_keys(model_class, args) if key != "batch_size"]
    if unknown:
        shown = {key: args[key] for key in unknown}
        error = f"AssertionError: Unexpected kwargs: {shown}"
        raise ModelClassRejects(text, model_class, unknown[0], error, "MAP-011",
                                f"lmms-eval's {model_class!r} class does not take {', '.join(unknown)}: it raises "
                                f"{error} before loading the model")  # fmt: skip
    if model_class == "internvl2" and args.get("device_map") == "auto" and "num_layers" not in args:
        name = str(args.get("pretrained", "OpenGVLab/InternVL2-2B")).rstrip("/").split("/")[-1]
        if name not in INTERNVL2_SPLIT_NAMES and not (date is not None and date < INTERNVL2_OWN_SPLIT):
            raise ModelClassRejects(text, model_class, "device_map", f"KeyError: {name!r}", "MAP-012",
                                    f"lmms-eval's 'internvl2' class builds its own split for device_map=auto from a "
                                    f"table of checkpoint names that lacks {name!r}: it raises KeyError: {name!r} "
                                    "before loading the model (unless num_layers= is given)")  # fmt: skip


def device_map_for_process(source: DeviceMapSource, processes: int, local_rank: int) -> DeviceMapSource:
    """What one of `processes` processes passes to `from_pretrained`, given the one-process `source`.

    With several processes the classes of PER_PROCESS_GPU_CLASSES pass `cuda:{local_rank}` and the
    SPLIT_IN_EVERY_PROCESS_CLASSES do so for an empty device_map; the classes that move the model with
    `.to('cuda')` move it to the process's own GPU (accelerate makes it current); anything else is passed as it is.
    """
    model_class = source.model_class
    if processes <= 1 or model_class is None:
        return source
    ignored = model_class in PER_PROCESS_GPU_CLASSES
    if ignored or (model_class in SPLIT_IN_EVERY_PROCESS_CLASSES and source.value == ""):
        note = f"with {processes} processes {model_class} loads each on cuda:{{local_process_index}}"
        if source.value == "auto" and ignored:
            note += ", even with device_map=auto"
        return replace(source, value=f"cuda:{local_rank}", note=note)
    if MOVED_AFTER_LOADING.get(model_class) == "cuda":
        return replace(source, value=f"cuda:{local_rank}", note=f"{source.note} (this process's GPU)")
    return source


def _as_the_class_passes_it(
    model_class: str | None, value: ArgValue | None, args: dict[str, ArgValue]
) -> tuple[ArgValue | None, str | None]:
    if model_class in ("llava", "llava_onevision", "internvl2"):
        if value == "auto":
            if model_class == "internvl2":
                # lmms-eval replaces "auto" with its own split_model dict (no rotary_emb key, PR #481); the local
                # name is rebound, so its later `== "auto"` test fails and the `else:` branch moves it to cuda:0.
                return "cuda:0", ("internvl2 replaces device_map=auto with its own split over every visible GPU, "
                                  "then moves the whole model with .to('cuda:0')")  # fmt: skip
            return value, None
        if value == "cuda:0":
            return value, None
        return "cuda:0", f"{model_class} loads on cuda:0 unless device_map=auto; {value!r} is ignored"
    if model_class == "qwen2_vl" and not value:
        device = args.get("device", _DEVICE_DEFAULT["qwen2_vl"])
        return device, f"qwen2_vl passes its device {device!r} when device_map is {value!r}"
    return value, None


def _cogvlm2(text: str, args: dict[str, ArgValue]) -> DeviceMapSource:
    """cogvlm2 has no device_map parameter: it passes `device`; a device_map key fails its kwargs assertion."""
    unexpected = {key: value for key, value in args.items() if key not in _COGVLM2_PARAMETERS}
    if "device_map" in unexpected:
        raise ModelArgsError(text, _written(text, "device_map"), f"AssertionError: Unexpected kwargs: {unexpected}")
    if "device" in args:
        written = _written(text, "device")
        return DeviceMapSource(args["device"], ORIGIN_MODEL_ARGS, written, "cogvlm2", "cogvlm2 passes its device")
    value = _DEVICE_DEFAULT["cogvlm2"]
    return DeviceMapSource(
        value, ORIGIN_DEFAULT, f"device={value!r} (cogvlm2 default)", "cogvlm2", "cogvlm2 passes its device"
    )


def _written(text: str, key: str) -> str:
    """The last item that sets `key`, as the user wrote it (the last one wins in the dict too)."""
    found = [item for item in _split_top_level(text.strip()) if item.split("=", 1)[0] == key]
    return found[-1] if found else f"{key}="
