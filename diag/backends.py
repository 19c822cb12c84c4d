"""Inference backends an eval starts (vLLM, SGLang, LMDeploy): the launch's size and the rules each backend
checks when it starts, judged before it starts.

A `BackendLaunch` says which backend, how it was started (lmms-eval `--model vllm` / `--model sglang`,
VLMEvalKit `--use-vllm` or its LMDeploy path, or a server command such as `vllm serve`), the tensor- and
data-parallel sizes (or how the kit picks them from the GPU count), the memory fraction, and the launcher's
process count. It is read from the eval command (diag.launch.commands.backend_launch) or from diag's options
(`--backend`, `--eval-model vllm`, `--model-args`). The rules are plain functions of the launch, the model's
config and the node, so they run where vllm / sglang / lmdeploy are not installed (the usual case for diag);
where vllm is installed, its own `divide` helper is not needed: the arithmetic is the same integer test.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diag.options import DiagOptions
    from diag.topology.records import Gpu, Topology

VLLM = "vllm"
SGLANG = "sglang"
LMDEPLOY = "lmdeploy"
BACKENDS = (VLLM, SGLANG, LMDEPLOY)
# lmms-eval model classes that start an engine instead of loading with from_pretrained.
LMMS_EVAL_BACKEND_CLASSES: Mapping[str, str] = {"vllm": VLLM, "sglang": SGLANG, "llava_sglang": SGLANG}
# The memory fraction each start path uses when none is given: lmms-eval's vllm class (0.8), VLMEvalKit's vLLM
# path (`gpu_utils`, 0.9) and LMDeploy path (`cache_max_entry_count=0.1`), vLLM's own default (0.9).
LMMS_EVAL_VLLM_FRACTION = 0.8
VLMEVALKIT_VLLM_FRACTION = 0.9
VLLM_FRACTION = 0.9
VLMEVALKIT_LMDEPLOY_FRACTION = 0.1
FRACTION_NAME = {VLLM: "gpu_memory_utilization", SGLANG: "mem_fraction_static", LMDEPLOY: "cache_max_entry_count"}
# The backends' own error texts, as their users report them.
VLLM_HEADS_ERROR = ("ValueError: Total number of attention heads ({heads}) must be divisible by tensor parallel size "
                    "({tp}).")  # fmt: skip
VLLM_MEMORY_ERROR = ("ValueError: Free memory on device ({free:.2f}/{total:.2f} GiB) on startup is less than desired "
                     "GPU memory utilization ({fraction}, {wanted:.2f} GiB). Decrease GPU memory utilization or "
                     "reduce GPU memory used by other processes.")  # fmt: skip
LMMS_EVAL_WORLD_ERROR = ("ValueError: For external_launcher mode, accelerate world size must equal "
                         "tensor_parallel_size * data_parallel_size ({want}), but got {got}.")  # fmt: skip
LMMS_EVAL_DP_ERROR = "ValueError: vLLM data parallel requires torchrun/accelerate multi-process launch"
VLLM_WORLD_ERROR = ("RuntimeError: world_size ({got}) is not equal to tensor_model_parallel_size ({tp}) x "
                    "pipeline_model_parallel_size (1)")  # fmt: skip
SGLANG_UNBALANCED_ERROR = "The memory capacity is unbalanced. Some GPUs may be occupied by other processes."
SGLANG_MEMORY_ERROR = "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static."
FORK_ERROR = ("RuntimeError: Cannot re-initialize CUDA in forked subprocess. To use CUDA with multiprocessing, you "
              "must use the 'spawn' start method")  # fmt: skip
MIB_PER_GIB = 1024


class BackendArgsError(ValueError):
    """A backend setting that is not a number the backend accepts (one line, naming the setting)."""


@dataclass(frozen=True)
class BackendLaunch:
    """How an eval starts an inference backend. `tp` None: the kit picks it from the visible GPU count
    (`auto_tp`: "vlmevalkit" = 8/4/2/1 by torch.cuda.device_count(), "all" = every visible GPU)."""

    backend: str
    via: str  # "lmms-eval --model vllm", "VLMEvalKit --use-vllm", "vllm serve", ...
    kit: str | None = None  # lmms-eval, vlmevalkit, or None for a server command
    model: str | None = None  # the checkpoint the engine loads, as written
    model_from: str = ""
    tp: int | None = 1
    tp_from: str = "default 1"
    auto_tp: str | None = None
    dp: int = 1
    dp_from: str = "default 1"
    fraction: float | None = None
    fraction_from: str = ""
    processes: int = 1  # processes the launcher starts on this node
    processes_from: str = "default 1"
    launcher: str | None = None  # "accelerate launch", "torchrun", ... None: a plain start
    spawn_forced: bool = False  # the kit sets VLLM_WORKER_MULTIPROC_METHOD=spawn itself
    model_args: str | None = None  # lmms-eval's --model_args as written (for the fix commands)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fraction_name(self) -> str:
        return FRACTION_NAME[self.backend]

    def tensor_parallel(self, visible: int) -> int:
        """The TP size the engine starts with on `visible` GPUs (the kit's choice when `tp` is None)."""
        if self.tp is not None:
            return self.tp
        if self.auto_tp == "all":
            return max(visible, 1)
        return next(size for size in (8, 4, 2, 1) if visible >= size or size == 1)

    def tp_said(self, visible: int) -> str:
        """`tensor_parallel_size=8` or `tp 8 (VLMEvalKit picks 8/4/2/1 from the 8 visible GPUs)`."""
        if self.tp is not None:
            return f"tp={self.tp} ({self.tp_from})"
        return f"tp={self.tensor_parallel(visible)} ({self.tp_from}, {visible} visible GPUs)"

    def gpus_needed(self, visible: int) -> int:
        return self.tensor_parallel(visible) * self.dp


# -- reading the settings ------------------------------------------------------------------------------------------
def _whole(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise BackendArgsError(f"{name}={value!r}: expected a whole number of GPUs, 1 or more")
    number = int(str(value).strip())
    if number < 1 or number > 4096:
        raise BackendArgsError(f"{name}={value!r}: expected a whole number of GPUs, 1 to 4096")
    return number


def _fraction(value: object, name: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BackendArgsError(f"{name}={value!r}: expected a fraction of GPU memory between 0 and 1") from None
    if not 0 < number <= 1:
        raise BackendArgsError(f"{name}={value!r}: expected a fraction of GPU memory between 0 and 1")
    return number


def _first(args: Mapping[str, object], names: Sequence[str]) -> tuple[str, object] | None:
    return next(((n, args[n]) for n in names if n in args), None)


def from_lmms_eval(model_class: str | None, model_args: str | None) -> BackendLaunch | None:
    """The engine lmms-eval's `--model vllm` / `--model sglang` class starts with these `--model_args`; None for
    any other class. Raises BackendArgsError for a size or fraction the engine would refuse."""
    backend = LMMS_EVAL_BACKEND_CLASSES.get(model_class or "")
    if backend is None:
        return None
    from diag.devicemap.model_args import ModelArgsError, parse_model_args

    try:
        args = parse_model_args(model_args or "")
    except ModelArgsError as exc:
        raise BackendArgsError(str(exc)) from None
    launch = BackendLaunch(backend, f"lmms-eval --model {model_class}", "lmms-eval", model_args=model_args,
                           spawn_forced=backend == VLLM)  # fmt: skip
    model = _first(args, ("model", "pretrained", "model_path"))
    if model is not None:
        launch = replace(launch, model=str(model[1]), model_from=f"{model[0]}={model[1]}")
    else:
        note = f"--model_args names no model=: lmms-eval's {model_class} class loads its default model (not assumed)"
        launch = replace(launch, notes=(note,))
    tp = _first(args, ("tensor_parallel_size", "tp_size", "tp"))
    if tp is not None:
        launch = replace(launch, tp=_whole(tp[1], tp[0]), tp_from=f"{tp[0]}={tp[1]}")
    dp = _first(args, ("data_parallel_size", "dp_size", "dp"))
    if dp is not None:
        launch = replace(launch, dp=_whole(dp[1], dp[0]), dp_from=f"{dp[0]}={dp[1]}")
    name = FRACTION_NAME[backend]
    if name in args:
        launch = replace(launch, fraction=_fraction(args[name], name), fraction_from=f"{name}={args[name]}")
    elif backend == VLLM:
        launch = replace(launch, fraction=LMMS_EVAL_VLLM_FRACTION,
                         fraction_from=f"lmms-eval's vllm default {LMMS_EVAL_VLLM_FRACTION}")  # fmt: skip
    return launch


def from_vlmevalkit(model_name: str | None, backend: str, checkpoint: str | None = None) -> BackendLaunch:
    """VLMEvalKit's `--use-vllm` (TP 8/4/2/1 by the visible GPU count, gpu_utils 0.9) or LMDeploy path (TP over
    every visible GPU, cache_max_entry_count 0.1), as its Qwen2-VL class starts them."""
    if backend == VLLM:
        return BackendLaunch(VLLM, "VLMEvalKit --use-vllm", "vlmevalkit", checkpoint, f"--model {model_name}",
                             tp=None, tp_from="VLMEvalKit picks 8/4/2/1 from torch.cuda.device_count()",
                             auto_tp="vlmevalkit", fraction=VLMEVALKIT_VLLM_FRACTION,
                             fraction_from=f"VLMEvalKit's gpu_utils default {VLMEVALKIT_VLLM_FRACTION}")  # fmt: skip
    return BackendLaunch(LMDEPLOY, "VLMEvalKit LMDeploy (use_lmdeploy)", "vlmevalkit", checkpoint,
                         f"--model {model_name}", tp=None, tp_from="VLMEvalKit passes tp=torch.cuda.device_count()",
                         auto_tp="all", fraction=VLMEVALKIT_LMDEPLOY_FRACTION,
                         fraction_from=f"VLMEvalKit's setting {VLMEVALKIT_LMDEPLOY_FRACTION}")  # fmt: skip


def from_options(options: DiagOptions) -> BackendLaunch | None:
    """The launch diag's options describe: `--eval-model vllm|sglang` with `--model-args` (lmms-eval), or
    `--backend NAME` (with `--eval-kit vlmevalkit`: its auto TP; else the sizes in `--model-args`)."""
    backend = options.backend
    found = from_lmms_eval(options.eval_model, options.model_args) if options.kit == "lmms-eval" else None
    if found is None and backend is not None:
        if options.kit == "vlmevalkit" and backend in (VLLM, LMDEPLOY):
            found = from_vlmevalkit(None, backend, options.model)
            found = replace(found, model_from="--model" if options.model else "")
        else:
            cls = {VLLM: "vllm", SGLANG: "sglang"}.get(backend)
            found = from_lmms_eval(cls, options.model_args) if cls else None
            if found is None:  # LMDeploy outside VLMEvalKit: TP from `tp=` in --model-args, else 1
                found = _lmdeploy_from_args(options.model_args)
            found = replace(found, via=f"--backend {backend}", kit=options.kit)
    if found is None:
        return None
    if options.model is not None:
        found = replace(found, model=options.model, model_from="--model")
    if options.processes is not None:
        found = replace(found, processes=options.processes, processes_from="--processes")
    return found


def _lmdeploy_from_args(model_args: str | None) -> BackendLaunch:
    from diag.devicemap.model_args import ModelArgsError, parse_model_args

    try:
        args = parse_model_args(model_args or "")
    except ModelArgsError as exc:
        raise BackendArgsError(str(exc)) from None
    launch = BackendLaunch(LMDEPLOY, "lmdeploy", fraction=0.8, fraction_from="LMDeploy's default 0.8")
    if "tp" in args:
        launch = replace(launch, tp=_whole(args["tp"], "tp"), tp_from=f"tp={args['tp']}")
    if "cache_max_entry_count" in args:
        value = args["cache_max_entry_count"]
        launch = replace(launch, fraction=_fraction(value, "cache_max_entry_count"),
                         fraction_from=f"cache_max_entry_count={value}")  # fmt: skip
    return launch


def for_run(options: DiagOptions, env: Mapping[str, str]) -> BackendLaunch | None:
    """The backend launch of this run: from `--eval-command` when given (the options it leaves out), else from
    the options; diag's own `--processes`, `--model` and `--backend` win over what the command says."""
    launch = None
    if options.eval_command is not None:
        from diag.launch.commands import CommandError, backend_launch

        try:
            launch = backend_launch(options.eval_command, env)
        except CommandError:
            launch = None  # the wrapper reports the command's own problem
    if launch is None:
        return from_options(options)
    if options.processes is not None:
        launch = replace(launch, processes=options.processes, processes_from="--processes")
    if options.model is not None:
        launch = replace(launch, model=options.model, model_from="--model")
    return launch


# -- the model's heads ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Heads:
    """Attention heads of one part of the model, from its config."""

    part: str  # "language model" or "vision tower"
    heads: int
    kv_heads: int | None = None  # language model only
    where: str = ""  # the config keys read


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def language_heads(config: Mapping[str, Any]) -> Heads | None:
    """The language model's query and KV heads: `text_config` (HF VLMs), `llm_config` (InternVL), else top level."""
    for key in ("text_config", "llm_config", "language_config"):
        sub = config.get(key)
        if isinstance(sub, Mapping) and _int(sub.get("num_attention_heads")):
            heads = int(sub["num_attention_heads"])
            kv = _int(sub.get("num_key_value_heads")) or heads
            return Heads("language model", heads, kv, f"{key}.num_attention_heads")
    heads_value = _int(config.get("num_attention_heads"))
    if heads_value is None:
        return None
    kv = _int(config.get("num_key_value_heads")) or heads_value
    return Heads("language model", heads_value, kv, "num_attention_heads")


def vision_heads(config: Mapping[str, Any]) -> Heads | None:
    """The vision tower's heads: `vision_config.num_heads` (Qwen2-VL, CogVLM) or `.num_attention_heads`."""
    sub = config.get("vision_config")
    if not isinstance(sub, Mapping):
        return None
    for key in ("num_heads", "num_attention_heads"):
        if _int(sub.get(key)):
            return Heads("vision tower", int(sub[key]), where=f"vision_config.{key}")
    return None


def kv_heads_problem(kv_heads: int, tp: int) -> str | None:
    """vLLM's and SGLang's rule for KV heads: with tp below the KV heads each rank takes kv/tp of them (kv % tp
    must be 0); from tp = kv up, each KV head is replicated on tp/kv ranks (tp % kv must be 0)."""
    if tp >= kv_heads:
        return None if tp % kv_heads == 0 else f"{tp} ranks cannot replicate {kv_heads} KV heads evenly"
    return None if kv_heads % tp == 0 else f"{kv_heads} KV heads do not split over {tp} ranks"


def divisors_up_to(heads: int, limit: int, kv_heads: int | None = None, vision: int | None = None) -> list[int]:
    """TP sizes from 1 to `limit` that every rule accepts (the language model's heads and KV heads, the vision
    tower's heads)."""
    good = []
    for tp in range(1, max(limit, 1) + 1):
        if heads % tp or (kv_heads and kv_heads_problem(kv_heads, tp)) or (vision and vision % tp):
            continue
        good.append(tp)
    return good


# Families whose vision tower vLLM / SGLang shard by head with tensor parallelism (Qwen2-VL's ViT; CLIP in LLaVA).
# InternViT and CogVLM's EVA tower are left out: vLLM pads or replicates some of them, and diag does not model it.
TP_SHARDED_VISION = frozenset({"qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3-vl-moe", "llava", "llava-next"})


# -- the GPUs the engine takes -------------------------------------------------------------------------------------
def engine_gpus(topology: Topology, count: int) -> list[Gpu]:
    """The node's GPUs behind the first `count` CUDA ordinals the engine uses (cuda:0.. in the process's view)."""
    from diag.topology.records import uuid_key

    by_uuid = {}
    for gpu in topology.node.gpus:
        by_uuid[uuid_key(gpu.uuid)] = gpu
        for mig in gpu.mig_uuids:
            by_uuid[uuid_key(mig)] = gpu
    found = [by_uuid.get(uuid_key(d.uuid)) for d in topology.cuda.devices[:count]]
    return [g for g in found if g is not None]


def vllm_memory_shortfall(gpu: Gpu, fraction: float) -> tuple[float, float, float] | None:
    """(free GiB, total GiB, wanted GiB) when vLLM's start-up test fails on this GPU: free < fraction x total."""
    total = gpu.memory_total_mib / MIB_PER_GIB
    free = gpu.memory_free_mib / MIB_PER_GIB
    wanted = fraction * total
    return (free, total, wanted) if free < wanted else None


def fraction_that_fits(gpus: Sequence[Gpu]) -> float:
    """The largest fraction (two decimals, a margin of 0.01) whose share of total memory is free on every GPU."""
    share = min(g.memory_free_mib / g.memory_total_mib for g in gpus if g.memory_total_mib > 0)
    return max(math.floor(share * 100) / 100 - 0.01, 0.0)


def sglang_unbalanced(gpus: Sequence[Gpu]) -> bool:
    """SGLang's start-up test over its TP ranks: the least free memory below 0.9 of the most."""
    free = [g.memory_free_mib for g in gpus]
    return len(free) > 1 and min(free) < 0.9 * max(free)


# -- MIG / UUID entries --------------------------------------------------------------------------------------------
def uuid_entries(cuda_visible_devices: str | None) -> list[str]:
    """The `GPU-…` / `MIG-…` entries of CUDA_VISIBLE_DEVICES (vLLM reads each entry with int())."""
    if not cuda_visible_devices:
        return []
    return [e.strip() for e in cuda_visible_devices.split(",") if e.strip() and not e.strip().isdigit()]


def start_method(env: Mapping[str, str] | None = None) -> str | None:
    """VLLM_WORKER_MULTIPROC_METHOD as set (None: unset)."""
    value = (env if env is not None else os.environ).get("VLLM_WORKER_MULTIPROC_METHOD")
    return value.strip() if value is not None else None


# -- fix commands --------------------------------------------------------------------------------------------------
def model_args_with(model_args: str | None, changes: Mapping[str, object | None]) -> str:
    """An lmms-eval --model_args string with keys set (None: removed), the others kept in their order."""
    from diag.roots import model_args_without

    text = model_args or ""
    for key in changes:
        text = model_args_without(text, key)
    added = [f"{k}={v}" for k, v in changes.items() if v is not None]
    return ",".join([t for t in [text] if t] + added)


def command_with_option(command: Sequence[str], names: Sequence[str], value: str) -> str:
    """A server command with the first of `names` set to `value` (`--opt v` or `--opt=v`, `_` or `-`); the
    first name appended when the command has none of them."""
    import shlex

    parts = list(command)
    wanted = {n.replace("_", "-") for n in names}
    for index, token in enumerate(parts):
        name, equals, _ = token.partition("=")
        if name.replace("_", "-") not in wanted:
            continue
        if equals:
            parts[index] = f"{name}={value}"
        elif index + 1 < len(parts):
            parts[index + 1] = value
        return shlex.join(parts)
    return shlex.join([*parts, names[0], value])


def run_py_in_one_process(command: Sequence[str]) -> str | None:
    """`torchrun … run.py ARGS` as `python run.py ARGS` (leading VAR=value settings kept); None without run.py."""
    import shlex
    from pathlib import PurePath

    from diag.redact import is_assignment

    parts = list(command)
    names = [PurePath(t).name for t in parts]
    if "run.py" not in names:
        return None
    index = names.index("run.py")
    lead = [t for t in parts[:index] if is_assignment(t)]
    return shlex.join([*lead, "python", *parts[index:]])


__all__ = [
    "BACKENDS",
    "LMDEPLOY",
    "SGLANG",
    "VLLM",
    "BackendArgsError",
    "BackendLaunch",
    "Heads",
    "command_with_option",
    "divisors_up_to",
    "engine_gpus",
    "for_run",
    "fraction_that_fits",
    "from_lmms_eval",
    "from_options",
    "from_vlmevalkit",
    "kv_heads_problem",
    "language_heads",
    "model_args_with",
    "run_py_in_one_process",
    "sglang_unbalanced",
    "uuid_entries",
    "vision_heads",
    "vllm_memory_shortfall",
]
