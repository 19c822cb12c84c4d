"""VLMEvalKit: run.py's GPU slicing and the model class's device map, from its own code or by date.

Installed (the `vlmeval` package is importable, or the eval command names a checkout's run.py): run.py's GPU
block (its top-level statements before it imports vlmeval) runs in a subprocess per local process, under the
launcher's variables for that process and an `nvidia-smi` that lists the simulated or real node's GPUs; the model
(`vlmeval.config.supported_VLM[name]`) is then built in each process's slice with the loaders intercepted, with
AUTO_SPLIT and the rank as the process has them, so the class's own split (or its `auto`) is what is checked.

Emulation, by the kit's date (the checkout's commit, or `--eval-kit-version`):
- before PR #952 (2025-04-29): run.py does not slice; InternVL splits with AUTO_SPLIT=1 (from 2024-12-30 also
  when device_count > WORLD_SIZE and divides by it), as the Dec-30, Dec-9 or Nov-2024 split of its date;
- 2025-04-29 to 2025-05-23: run.py slices on WORLD_SIZE > 1 by RANK; InternVL loads with `auto` over its slice;
- since 2025-05-23 (002fc953, unchanged at the 2026-08 HEAD): run.py slices only on LOCAL_WORLD_SIZE > 1
  (`srun`, or WORLD_SIZE exported alone, do not slice), reading LOCAL_RANK with default 1 (issue #1589);
  InternVL ignores AUTO_SPLIT and loads with `auto` over its slice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from diag.devicemap.sources import ORIGIN_AUTO_SPLIT, DeviceMapSource
from diag.kits import VLMEVALKIT, KitUse, checkout_commit, date_of, emulated, installed_version, module_folder
from diag.kits.lmms import KitVerdict

if TYPE_CHECKING:
    from diag.topology.records import Topology

PR_952 = "2025-04-29"  # InternVL loads with `auto`; run.py slices (on WORLD_SIZE)
LOCAL_SLICING = "2025-05-23"  # run.py slices only on LOCAL_WORLD_SIZE > 1
DEC30_SPLIT = "2024-12-30"
DEC09_SPLIT = "2024-12-09"


@dataclass(frozen=True)
class Checkout:
    """Where the kit's code is: the folder holding `vlmeval/` (and run.py, when there is one)."""

    root: Path
    run_py: Path | None
    on_path: bool  # `vlmeval` imports without adding `root` to sys.path


def find_checkout(command: Sequence[str] | None, env: Mapping[str, str]) -> Checkout | None:
    """The VLMEvalKit the eval runs: the checkout whose run.py the command names, else the importable package."""
    if command:
        from diag.launch.commands import CommandError, recognise

        try:
            found = recognise(command, env)
        except CommandError:
            found = None
        if found is not None and found.target and not found.target_is_module and found.target.endswith("run.py"):
            run_py = Path(found.target)
            if (run_py.parent / "vlmeval").is_dir() and run_py.is_file():
                return Checkout(run_py.parent.resolve(), run_py.resolve(), False)
    folder = module_folder("vlmeval")
    if folder is None:
        return None
    root = folder.parent
    run_py = root / "run.py"
    return Checkout(root, run_py if run_py.is_file() else None, True)


def vlmevalkit_kit(checkout: Checkout | None, option_version: str | None) -> KitUse:
    date: str | None
    version: str | None
    if checkout is None:
        return emulated(VLMEVALKIT, option_version)
    found = checkout_commit(checkout.root)
    if found is not None:
        commit, date = found
        date = date or date_of(VLMEVALKIT, commit)
        version = f"commit {commit[:8]}"
    else:
        version, date = installed_version("vlmeval"), None
    if date is None and option_version is not None:
        date = date_of(VLMEVALKIT, option_version)
    return KitUse(VLMEVALKIT, "installed", version=version, date=date, where=str(checkout.root))


# -- run.py's GPU block --------------------------------------------------------------------------------------
def rank_env(origin: str, processes: int, rank: int, env: Mapping[str, str]) -> dict[str, str | None]:
    """The launcher variables process `rank` gets: torchrun/accelerate (LOCAL_*), srun (SLURM_*), or WORLD_SIZE."""
    unset: dict[str, str | None] = {name: None for name in ("LOCAL_WORLD_SIZE", "LOCAL_RANK", "WORLD_SIZE", "RANK",
                                                            "SLURM_NTASKS_PER_NODE", "SLURM_LOCALID")}  # fmt: skip
    if origin == "SLURM_NTASKS_PER_NODE":
        return {**unset, "SLURM_NTASKS_PER_NODE": str(processes), "SLURM_LOCALID": str(rank)}
    if origin == "WORLD_SIZE":
        return {**unset, "WORLD_SIZE": str(processes), "RANK": str(rank)}
    return {**unset, "LOCAL_WORLD_SIZE": str(processes), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(processes),
            "RANK": str(rank)}  # fmt: skip


def emulated_run_py(date: str | None, gpu_list: Sequence[str], env: Mapping[str, str | None]) -> str | None:
    """The CUDA_VISIBLE_DEVICES run.py of that date sets for a process with `env`; None: it leaves it alone.

    Raises AssertionError (more processes than GPUs), as run.py does.
    """
    from diag.devicemap.autosplit import PROCESSES_ASSERTION

    if date is not None and date < PR_952:
        return None
    if date is not None and date < LOCAL_SLICING:
        count, rank = int(env.get("WORLD_SIZE") or 1), int(env.get("RANK") or 0)
    else:
        count, rank = int(env.get("LOCAL_WORLD_SIZE") or 1), int(env.get("LOCAL_RANK") or 1)
    if count <= 1 or not gpu_list:
        return None
    if len(gpu_list) < count:
        raise AssertionError(PROCESSES_ASSERTION)
    per = len(gpu_list) // count
    return ",".join(gpu_list[per * rank : per * rank + per])


_BLOCK_RUNNER = r"""
import ast, json, os, sys
spec = json.loads(sys.argv[1])
source = open(spec["run_py"], encoding="utf-8").read()
tree = ast.parse(source)
def imports_kit(node):
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "vlmeval"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "vlmeval" for a in node.names)
    return False
body = []
for node in tree.body:
    if imports_kit(node):
        break
    body.append(node)
code = compile(ast.Module(body=body, type_ignores=[]), spec["run_py"], "exec")
base = dict(os.environ)
out = []
for env in spec["ranks"]:
    os.environ.clear()
    os.environ.update(base)
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        exec(code, {"__name__": "diag_probe", "__file__": spec["run_py"]})
        out.append({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES")})
    except BaseException as exc:
        out.append({"error": f"{type(exc).__name__}: {exc}"})
print("DIAG-RUNPY " + json.dumps(out))
"""


def installed_run_py(
    run_py: Path, topology: Topology, ranks: Sequence[Mapping[str, str | None]], env: Mapping[str, str]
) -> list[dict[str, str | None]]:
    """run.py's own GPU block, once per process environment; what CUDA_VISIBLE_DEVICES each ends with."""
    lines = []
    for gpu in topology.node.gpus:
        lines.append(f"GPU {gpu.nvml_index}: {gpu.name} (UUID: {gpu.uuid})")
        lines += [f"  MIG (UUID: {mig})" for mig in gpu.mig_uuids]
    with tempfile.TemporaryDirectory(prefix="diag-nvidia-smi-") as folder:
        smi = Path(folder) / "nvidia-smi"
        smi.write_text("#!/bin/sh\ncat <<'EOF'\n" + "\n".join(lines) + "\nEOF\n", encoding="utf-8")
        smi.chmod(0o755)
        child_env = {**env, "PATH": f"{folder}{os.pathsep}{env.get('PATH', os.defpath)}"}
        cvd = topology.selection.cuda_visible_devices
        if cvd is not None:
            child_env["CUDA_VISIBLE_DEVICES"] = cvd
        spec = json.dumps({"run_py": str(run_py), "ranks": list(ranks)})
        done = subprocess.run([sys.executable, "-c", _BLOCK_RUNNER, spec], capture_output=True, text=True,
                              env=child_env, cwd=str(run_py.parent), timeout=120, check=False)  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith("DIAG-RUNPY "):
            return list(json.loads(line.removeprefix("DIAG-RUNPY ")))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"run.py's GPU block did not run: {tail}")


# -- the model class ---------------------------------------------------------------------------------------------
def build_installed_model(
    checkout: Checkout, kit: KitUse, name: str, *, gpus: int, env: Mapping[str, str | None], rank: int, processes: int
) -> KitVerdict | None:
    """`supported_VLM[name]()` built with the loaders intercepted in this process's view; None: not a known name."""
    import importlib

    from diag.kits.capture import WeightReadStopped, imported_fresh, intercepted

    with imported_fresh("vlmeval", None if checkout.on_path else str(checkout.root)):
        try:
            config = importlib.import_module("vlmeval.config")
        except Exception as exc:
            raise RuntimeError(f"import vlmeval.config: {type(exc).__name__}: {exc}") from None
        table = getattr(config, "supported_VLM", {})
        if name not in table:
            return None
        error: BaseException | None = None
        with intercepted(gpus=gpus, processes=1, rank=0, env=env) as capture:
            try:
                table[name]()
            except WeightReadStopped:
                pass
            except Exception as exc:
                error = exc
    load = capture.model
    if load is None:
        if error is None:
            return KitVerdict(kit)
        what = (f"{kit.describe()}: {name} raises {type(error).__name__}: {error} before loading, in process "
                f"{rank} of {processes} seeing {gpus} GPU(s)")  # fmt: skip
        return KitVerdict(kit, problem=what, code="SPLIT-001")
    value: Any = load.device_map if load.has_device_map else None
    auto_split = env.get("AUTO_SPLIT") == "1"
    note = f"{name} ({kit.describe()}) calls {load.owner}.from_pretrained(device_map=" + (
        "<its split>)" if isinstance(value, dict) else f"{value!r})"
    )
    if load.moves:
        value = load.moves[-1]
        note += f", then moves the whole model with .to({value!r})"
    if isinstance(value, dict):
        return KitVerdict(kit, DeviceMapSource(value, ORIGIN_AUTO_SPLIT, "AUTO_SPLIT=1" if auto_split else
                                               "VLMEvalKit's split", note=note))  # fmt: skip
    if auto_split:
        note += "; AUTO_SPLIT=1 is not what decides it"
    return KitVerdict(kit, DeviceMapSource(value, "VLMEvalKit", f"device_map={value!r} ({name})", note=note))


def emulated_internvl(kit: KitUse, model: Any, topology: Topology, env: Mapping[str, str]) -> KitVerdict | None:
    """InternVL's map in VLMEvalKit of the kit's date; None where the date's class does not split (the default
    `auto` then applies, as for every other model)."""
    from diag.devicemap.autosplit import auto_split_flag_like_vlmevalkit

    if not kit.before(PR_952):
        if env.get("AUTO_SPLIT") == "1":
            note = f"InternVL in {kit.describe()} ignores AUTO_SPLIT and loads with device_map='auto' over its GPUs"
            return KitVerdict(kit, DeviceMapSource("auto", "VLMEvalKit", "device_map='auto' (InternVLChat)",
                                                   note=note))  # fmt: skip
        return None
    world = int(env.get("WORLD_SIZE") or 1) if (env.get("WORLD_SIZE") or "1").isdigit() else 1
    visible = len(topology.cuda.devices)
    flag = env.get("AUTO_SPLIT") == "1" or (
        kit.date is not None and kit.date >= DEC30_SPLIT and auto_split_flag_like_vlmevalkit(None, visible, world)
    )
    if not flag:
        return None
    variant = "dec30-2024" if kit.date is None or kit.date >= DEC30_SPLIT else (
        "dec09-2024" if kit.date >= DEC09_SPLIT else "nov-2024")  # fmt: skip
    from diag.devicemap.cases import auto_split_source

    try:
        source = auto_split_source(model, topology, env, variant=variant)
    except (AssertionError, ValueError) as exc:  # what VLMEvalKit's own split raises for this layout
        return KitVerdict(kit, problem=f"AUTO_SPLIT=1 ({kit.describe()}): {exc}", code="SPLIT-001")
    return KitVerdict(kit, source)


def slice_tokens(result: str | None, parent: Sequence[str]) -> tuple[str, ...]:
    """The entries a process's CUDA_VISIBLE_DEVICES holds after run.py (all of the parent's when unchanged)."""
    if result is None:
        return tuple(parent)
    return tuple(token for token in result.split(",") if token != "")


def parent_gpu_list(topology: Topology) -> list[str]:
    cvd = topology.selection.cuda_visible_devices
    if cvd:
        return [entry.strip() for entry in cvd.split(",")]
    return [str(device.cuda_index) for device in topology.cuda.devices]


def is_run_py(target: str | None) -> bool:
    return target is not None and PurePath(target).name == "run.py"
