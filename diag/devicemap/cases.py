"""What the device-map checks run on: a model and the one device_map value the eval will pass for it.

The value comes from the first source that says something: `--device-map`, then `device_map=` in
`--model-args` (or the lmms-eval class default), then VLMEvalKit's AUTO_SPLIT=1 map for InternVL, then `auto`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.devicemap.sources import DeviceMapSource

if TYPE_CHECKING:
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
    if options.model_args is not None or options.eval_model is not None:
        try:
            source = device_map_from_model_args(options.model_args or "", options.eval_model)
        except ModelArgsError as exc:
            return MapCase(f"{_name(model)}-model-args", model, None, str(exc), "MAP-009")
        if source is not None:
            processes = local_processes(options.processes, env).count
            return _case(model, device_map_for_process(source, processes, local_rank(env) or 0))
    if env.get("AUTO_SPLIT") == "1" and model is not None and model.family == "internvl-chat":
        if options.processes is not None:  # --processes stands for the launcher's LOCAL_WORLD_SIZE
            env = {**env, "LOCAL_WORLD_SIZE": str(options.processes)}
        try:
            return _case(model, auto_split_source(model, topology, env))
        except (AssertionError, ValueError) as exc:  # what VLMEvalKit's own split raises for this layout
            return MapCase(f"{model.name}-auto-split", model, None, f"AUTO_SPLIT=1: {exc}", "SPLIT-001")
    return _case(model, DeviceMapSource("auto", "default", "device_map=auto (default)"))


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
    """The slices VLMEvalKit's run.py makes when several processes run; [] where it makes none or fails
    (UUID entries, more processes than GPUs: the launch-layout checks report those)."""
    from diag.layout import local_processes, vlmevalkit_layout

    processes = local_processes(options.processes, env).count
    if options.kit != "vlmevalkit" or processes <= 1:
        return []
    try:
        return list(vlmevalkit_layout(topology, processes).slices)
    except (AssertionError, ValueError):
        return []


def _slice_case(
    options: DiagOptions, model: ModelSpec, topology: Topology, env: Mapping[str, str], piece: ProcessSlice,
    processes: int,
) -> MapCase:  # fmt: skip
    """The model's case as one VLMEvalKit process sees it: its slice of the GPUs, its LOCAL_RANK."""
    from diag.layout import slice_topology

    view = slice_topology(topology, piece)
    rank_env = {**env, "LOCAL_RANK": str(piece.local_rank), "LOCAL_WORLD_SIZE": str(processes)}
    case = _source(replace(options, processes=processes), model, view, rank_env)
    return replace(case, id=f"{piece.id}-{case.id}", topology=view, local_rank=piece.local_rank)


def write_map(report_dir: Path, case_id: str, device_map: Mapping[str, Any]) -> str:
    """Write a corrected map beside the report; the path goes into `fix.device_map_file`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / f"device-map-{_slug(case_id)}.json"
    path.write_text(json.dumps(dict(device_map), indent=2) + "\n", encoding="utf-8")
    return str(path)
