"""What the device-map checks run on: a model and the one device_map value the eval will pass for it.

The value comes from the first source that says something: `--device-map`, then `device_map=` in
`--model-args` (or the lmms-eval class default), then VLMEvalKit's AUTO_SPLIT=1 map for InternVL, then `auto`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.devicemap.sources import DeviceMapSource

if TYPE_CHECKING:
    from diag.kits import KitUse
    from diag.kits.lmms import KitVerdict
    from diag.layout import ProcessSlice
    from diag.options import DiagOptions
    from diag.topology.records import Topology
    from diag.twins import ModelSpec

# Without --model, the checks plan the tiny twins' families at their real sizes.
DEFAULT_MODELS = ("llava-1.5-7b", "internvl2-8b")


@dataclass(frozen=True)
class MapCase:
    """One (model, device_map) pair to check; `problem` says why it could not be set up (then the checks fail)."""

    id: str
    model: ModelSpec | None
    source: DeviceMapSource | None
    problem: str | None = None
    problem_code: str | None = None
    # A VLMEvalKit process's slice of the GPUs: the view the checks judge this case on (None: the node's view).
    topology: Topology | None = None
    local_rank: int | None = None
    # The eval kit whose code (or diag's emulation of it) decided the map, and the fix for a problem it raised.
    kit: KitUse | None = None
    fix: str | None = None
    commands: tuple[str, ...] = ()


def _models(options: DiagOptions) -> tuple[list[ModelSpec], str | None]:
    """The models to check (built from the checkpoint's own code where the user consented), or why there is none."""
    from diag.twins.remote import with_consent

    models, problem = _resolved(options)
    return [with_consent(m, options.trust_remote_code) for m in models], problem


def _resolved(options: DiagOptions) -> tuple[list[ModelSpec], str | None]:
    from diag.devicemap.model_args import ModelArgsError, pretrained_from_model_args
    from diag.twins import PRESETS, UnknownModel, model_for_checkpoint, resolve_model

    if options.model is not None:
        return [resolve_model(options.model)], None
    if options.model_args:
        try:
            pretrained = pretrained_from_model_args(options.model_args)
        except ModelArgsError:
            pretrained = None
        if pretrained:
            try:
                spec = model_for_checkpoint(pretrained)
            except UnknownModel as exc:
                return [], str(exc).replace("--model ", "pretrained=", 1)
            if spec is not None:
                return [spec], None
            return [], (f"pretrained={pretrained} is not a checkpoint diag knows; pass --model with a preset "
                        f"({', '.join(sorted(PRESETS))}) or the checkpoint's local config.json")  # fmt: skip
    return [PRESETS[name] for name in DEFAULT_MODELS], None


def _source(options: DiagOptions, model: ModelSpec | None, topology: Topology, env: Mapping[str, str]) -> MapCase:
    from diag.devicemap.model_args import ModelArgsError, device_map_for_process, device_map_from_model_args
    from diag.devicemap.sources import parse_device_map_option
    from diag.layout import local_processes, local_rank

    if options.device_map is not None:
        return _case(model, parse_device_map_option(options.device_map))
    lmms = options.kit != "vlmevalkit" and (options.model_args is not None or options.eval_model is not None)
    if lmms:
        processes = local_processes(options.processes, env).count
        try:
            if options.eval_model is not None:
                found = _lmms_eval_case(options, model, topology, env, processes)
                if found is not None:
                    return found
            source = device_map_from_model_args(options.model_args or "", None)
        except ModelArgsError as exc:
            return MapCase(f"{_name(model)}-model-args", model, None, str(exc), "MAP-009")
        if source is not None:
            return _case(model, device_map_for_process(source, processes, local_rank(env) or 0))
    if options.kit == "vlmevalkit" or env.get("AUTO_SPLIT") == "1":
        found = _vlmevalkit_case(options, model, topology, env)
        if found is not None:
            return found
    return _case(model, DeviceMapSource("auto", "default", "device_map=auto (default)"))


def _lmms_eval_case(
    options: DiagOptions, model: ModelSpec | None, topology: Topology, env: Mapping[str, str], processes: int
) -> MapCase | None:
    """The lmms-eval class's verdict: the installed class run with its loaders intercepted, else the emulation."""
    from diag.devicemap.model_args import parse_model_args
    from diag.kits.lmms import lmms_eval_verdict
    from diag.layout import local_rank

    parse_model_args(options.model_args or "")  # MAP-009 first: lmms-eval stops there before any class
    assert options.eval_model is not None
    verdict = lmms_eval_verdict(
        options.eval_model, options.model_args or "", processes=processes, rank=local_rank(env) or 0,
        gpus=len(topology.cuda.devices), option_version=options.eval_kit_version, command=options.eval_command,
    )  # fmt: skip
    return _from_verdict(options, model, verdict, "model-args")


def _vlmevalkit_case(
    options: DiagOptions, model: ModelSpec | None, topology: Topology, env: Mapping[str, str]
) -> MapCase | None:
    """VLMEvalKit's verdict for this process: its installed model class in this view, else the emulation."""
    from diag.kits.vlmeval import build_installed_model, emulated_internvl, find_checkout, vlmevalkit_kit

    checkout = find_checkout(options.eval_command, env)
    kit = vlmevalkit_kit(checkout, options.eval_kit_version)
    name = _vlmevalkit_name(options, model, env)
    if checkout is not None and name is not None:
        if options.processes is not None and "LOCAL_WORLD_SIZE" not in env:
            env = {**env, "LOCAL_WORLD_SIZE": str(options.processes)}
        try:
            verdict = build_installed_model(checkout, kit, name, gpus=len(topology.cuda.devices), env=dict(env),
                                            rank=int(env.get("LOCAL_RANK") or 0),
                                            processes=int(env.get("LOCAL_WORLD_SIZE") or 1))  # fmt: skip
        except RuntimeError as exc:
            from diag.kits import emulated

            kit = emulated("vlmevalkit", options.eval_kit_version, f"the installed VLMEvalKit could not be run: {exc}")
            verdict = None
        if verdict is not None:
            return _from_verdict(options, model, verdict, "auto-split")
    elif checkout is not None:
        from diag.kits import emulated

        kit = emulated("vlmevalkit", options.eval_kit_version, f"{_name(model)} has no VLMEvalKit name diag knows")
    if not _auto_split_family(model):
        return None
    if options.processes is not None and "LOCAL_WORLD_SIZE" not in env:  # --processes stands for LOCAL_WORLD_SIZE
        env = {**env, "LOCAL_WORLD_SIZE": str(options.processes)}
    found = emulated_internvl(kit, model, topology, env)
    return None if found is None else _from_verdict(options, model, found, "auto-split")


def _vlmevalkit_name(options: DiagOptions, model: ModelSpec | None, env: Mapping[str, str]) -> str | None:
    """The VLMEvalKit model name: the command's --model, else the name of the model's checkpoint."""
    from diag.launch.commands import VLMEVALKIT_MODELS, CommandError, recognise

    if options.eval_command:
        try:
            found = recognise(options.eval_command, env)
        except CommandError:
            found = None
        if found is not None and found.kit == "vlmevalkit" and found.eval_model:
            return found.eval_model
    for name, checkpoint in VLMEVALKIT_MODELS.items():
        if model is not None and checkpoint in model.checkpoints:
            return name
    return None


def _from_verdict(options: DiagOptions, model: ModelSpec | None, verdict: KitVerdict, label: str) -> MapCase | None:
    """A case from a kit's verdict: its problem (with the fixed eval command), or its source; None: no say."""
    if verdict.problem is not None:
        fix, commands = _rejection_fix(options, verdict)
        return MapCase(f"{_name(model)}-{label}", model, None, verdict.problem, verdict.code, kit=verdict.kit,
                       fix=fix, commands=commands)  # fmt: skip
    if verdict.source is None:
        return None
    source = verdict.source
    told = verdict.kit.describe()
    if source.note and told not in source.note:
        source = replace(source, note=f"{source.note} ({told})")
    elif not source.note:
        source = replace(source, note=f"as {told} loads it")
    source = replace(source, text=f"{source.text} [{source.note}]")
    return replace(_case(model, verdict.source), source=source, kit=verdict.kit)


def _rejection_fix(options: DiagOptions, verdict: KitVerdict) -> tuple[str | None, tuple[str, ...]]:
    """For a key the class rejects: the eval command with the key removed (batch_size: moved to --batch_size)."""
    import shlex

    from diag.roots import eval_command_with_model_args, model_args_without, with_options

    key = verdict.key
    if key is None or options.model_args is None or key in ("--model",):
        return None, ()
    rest = model_args_without(options.model_args, key)
    if key == "batch_size":
        from diag.devicemap.model_args import parse_model_args

        value = str(parse_model_args(options.model_args).get("batch_size"))
        fix = f"Remove batch_size from --model_args and pass --batch_size {value} to lmms-eval."
        command = shlex.join(with_options(options.eval_command, {"--model_args": rest, "--batch_size": value})) \
            if options.eval_command else None  # fmt: skip
    else:
        fix = f"Remove {key} from --model_args: the {options.eval_model!r} class does not take it."
        command = eval_command_with_model_args(options.eval_command, rest) if options.eval_command else None
    return fix, (command,) if command else ()


def _auto_split_family(model: ModelSpec | None) -> bool:
    """True when VLMEvalKit's AUTO_SPLIT=1 builds its own map for the model's family (InternVL's split_model)."""
    from diag.twins.families import family_named

    return model is not None and family_named(model.family).vlmevalkit_auto_split


def auto_split_source(
    model: ModelSpec, topology: Topology, env: Mapping[str, str], variant: str = "dec30-2024"
) -> DeviceMapSource:
    """The map VLMEvalKit's InternVL split builds for this process (AUTO_SPLIT=1), as DeviceMapSource."""
    from diag.devicemap.autosplit import internvl_split, split_source
    from diag.twins import build_meta, language_model_layout

    layout = language_model_layout(build_meta(model))
    pinned = [name for name in (*layout.vision, layout.embed, layout.head, layout.norm, layout.rotary) if name]
    plan = internvl_split(
        num_layers=layout.num_layers,
        layers=layout.layers,
        pinned=pinned,
        visible_gpus=len(topology.cuda.devices),
        local_rank=int(env.get("LOCAL_RANK", "0") or 0),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", "1") or 1),
        gpus_per_process_env=env.get("GPUS_PER_PROCESS"),
        variant=variant,
    )
    return split_source(plan)


def _case(model: ModelSpec | None, source: DeviceMapSource) -> MapCase:
    label = {"--device-map": "device-map", "--model-args": "model-args", "AUTO_SPLIT": "auto-split"}.get(
        source.origin, str(source.value)
    )
    if source.origin == "--device-map" and source.kind in ("strategy", "device", "int"):
        label = str(source.value)
    return MapCase(f"{_name(model)}-{_slug(label)}", model, source)


def _name(model: ModelSpec | None) -> str:
    return model.name if model is not None else "model"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:-]+", "-", text).strip("-") or "empty"


def map_cases(options: DiagOptions, topology: Topology, env: Mapping[str, str] | None = None) -> list[MapCase]:
    """Every (model, map) the device-map checks run on; problems become cases that fail with their reason."""
    environ = os.environ if env is None else env
    models, problem = _models(options)
    if problem:  # no model: the map itself is still checked (its string, its GPUs); the model checks skip
        case = _source(options, None, topology, environ)
        return [replace(case, problem=case.problem or problem, problem_code=case.problem_code)]
    slices = _vlmevalkit_slices(options, topology, environ)
    if slices:
        return [_slice_case(options, model, topology, environ, piece, len(slices)) for piece in slices
                for model in models]  # fmt: skip
    return [_source(options, model, topology, environ) for model in models]


def _vlmevalkit_slices(options: DiagOptions, topology: Topology, env: Mapping[str, str]) -> list[ProcessSlice]:
    """The slices VLMEvalKit's run.py makes when several processes run (its own GPU block when installed, else
    the emulation of the kit's date); [] where it makes none or fails (UUID entries, more processes than GPUs:
    the launch-layout checks report those)."""
    from diag.kits.vlmeval import (
        emulated_run_py,
        find_checkout,
        installed_run_py,
        parent_gpu_list,
        rank_env,
        slice_tokens,
        vlmevalkit_kit,
    )
    from diag.layout import ProcessSlice, local_processes

    count = local_processes(options.processes, env)
    parent = parent_gpu_list(topology)
    if options.kit != "vlmevalkit" or count.count <= 1 or not parent or count.count > len(parent):
        return []
    if not all(entry.isdigit() for entry in parent):
        return []  # run.py's int() fails on UUID entries: SPLIT-002
    checkout = find_checkout(options.eval_command, env)
    kit = vlmevalkit_kit(checkout, options.eval_kit_version)
    ranks = [rank_env(count.origin, count.count, rank, env) for rank in range(count.count)]
    results: list[dict[str, str | None]] | None = None
    if checkout is not None and checkout.run_py is not None:
        try:
            results = installed_run_py(checkout.run_py, topology, ranks, env)
        except (RuntimeError, OSError, subprocess.SubprocessError):
            results = None
    if results is None:
        results = []
        for launched in ranks:
            try:
                results.append({"cvd": emulated_run_py(kit.date, parent, {**env, **launched})})
            except (AssertionError, ValueError):
                return []
    slices = []
    for rank, result in enumerate(results):
        if "error" in result:
            return []
        tokens = slice_tokens(result.get("cvd"), parent)
        slices.append(ProcessSlice(rank, tuple(parent.index(t) for t in tokens if t in parent), tokens))
    return slices


def _slice_case(
    options: DiagOptions, model: ModelSpec, topology: Topology, env: Mapping[str, str], piece: ProcessSlice,
    processes: int,
) -> MapCase:  # fmt: skip
    """The model's case as one VLMEvalKit process sees it: its slice of the GPUs, its launcher variables."""
    from diag.kits.vlmeval import rank_env
    from diag.layout import local_processes, slice_topology

    view = slice_topology(topology, piece)
    origin = local_processes(options.processes, env).origin
    launched = rank_env(origin, processes, piece.local_rank, env)
    rank_environ = {k: v for k, v in {**env, **launched}.items() if v is not None}
    rank_environ["CUDA_VISIBLE_DEVICES"] = piece.cuda_visible_devices
    case = _source(options, model, view, rank_environ)
    return replace(case, id=f"{piece.id}-{case.id}", topology=view, local_rank=piece.local_rank)


def write_map(report_dir: Path, case_id: str, device_map: Mapping[str, Any]) -> str:
    """Write a corrected map beside the report; the path goes into `fix.device_map_file`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / f"device-map-{_slug(case_id)}.json"
    path.write_text(json.dumps(dict(device_map), indent=2) + "\n", encoding="utf-8")
    return str(path)
