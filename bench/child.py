"""Measurements that run inside a fresh child process of `bench/run.py`, one JSON object on the last stdout line.

    python bench/child.py plan PRESET GPUS
    python bench/child.py twins '{"preset": "internvl2-76b", "points": [[8, 8], [80, 8]], "repeat": 3}'
    python bench/child.py bounds-files DIR GPUS KEYS

A child of its own per measurement keeps one run's imports, caches and memory out of the next; the parent
(`bench/run.py`) never imports torch, so its own footprint does not colour the figures.
"""

from __future__ import annotations

import copy
import json
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

GIB = 1024**3


def with_layers(spec: Any, num_layers: int) -> Any:
    """The preset with its language model's decoder depth set to `num_layers`, everything else unchanged.

    The language model's config is `llm_config` (InternVL-Chat), `text_config` (LLaVA, LLaVA-NeXT) or the top level
    (Qwen2-VL, CogVLM), as the presets hold them.
    """
    from diag.twins import ModelSpec

    config = copy.deepcopy(dict(spec.config))
    text = next((config[key] for key in ("llm_config", "text_config") if key in config), config)
    if "num_hidden_layers" not in text:
        raise ValueError(f"{spec.name}: no num_hidden_layers in its language model config")
    text["num_hidden_layers"] = num_layers
    name = f"{spec.name}-{num_layers}l"
    return ModelSpec(name, spec.family, MappingProxyType(config), (), spec.dtype)


def plan(preset: str, gpus: int) -> dict[str, Any]:
    """Imports, the full-width meta build and `auto` planning over `gpus` GPUs of 80 GiB, timed apart."""
    start = time.perf_counter()
    import accelerate  # noqa: F401  (the import floor: timed apart from the figure)
    import torch
    import transformers  # noqa: F401

    from diag.devicemap.plan import plan_device_map
    from diag.twins import PRESETS, build_meta

    imported = time.perf_counter()
    model = build_meta(PRESETS[preset]).to(torch.bfloat16)
    built = time.perf_counter()
    device_map = plan_device_map(model, "auto", {**{i: 80 * GIB for i in range(gpus)}, "cpu": 512 * GIB})
    planned = time.perf_counter()
    return {
        "import_s": imported - start,
        "build_s": built - imported,
        "plan_s": planned - built,
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        # Planning must allocate no weight: every parameter stays on the meta device.
        "real_params": sum(t.numel() for t in model.parameters() if not t.is_meta),
        "devices": sorted({str(v) for v in device_map.values()}),
    }


def twins(request: Mapping[str, Any]) -> dict[str, Any]:
    """Tiny-twin runs (build, dispatch, forward + 2-token generate) at each (layers, virtual GPUs) point, with
    every block run (what the ratios measure: the cost of depth and of virtual GPUs), and as the check runs them
    (repeated blocks passed through).

    One untimed warm-up run first (lazy imports, transformers' first-call caches); then `repeat` rounds, each
    running every point once, so the points of one round are measured in the same minute.
    """
    warnings.simplefilter("ignore")
    from diag.samedevice.run import RunResult, run_twin
    from diag.samedevice.verify import forced_map
    from diag.twins import PRESETS, build_meta

    base = PRESETS[request["preset"]]
    points = [(int(layers), int(gpus)) for layers, gpus in request["points"]]
    prepared = []
    for layers, gpus in points:
        spec = with_layers(base, layers) if layers else base
        device_map = forced_map(build_meta(spec), gpus, spec.family)
        prepared.append((spec, device_map, gpus))

    def once(index: int, every_block: bool = True) -> RunResult:
        spec, device_map, gpus = prepared[index]
        result = run_twin(spec, device_map, simulated_gpus=gpus, every_block=every_block)
        if not result.ok:  # a failed run is no timing: say so loudly
            raise RuntimeError(f"{spec.name} over {gpus} virtual GPUs failed at {result.stage}: {result.error}")
        return result

    warmup = once(0)
    samples: list[list[dict[str, float]]] = [[] for _ in points]
    for _ in range(int(request["repeat"])):
        for index in range(len(points)):
            result = once(index)
            fast = once(index, every_block=False)
            samples[index].append({"total_s": result.seconds, **{f"{k}_s": v for k, v in result.parts},
                                   "repeats_total_s": fast.seconds})  # fmt: skip
    return {
        "preset": base.name,
        "family": base.family,
        "warmup_s": warmup.seconds,
        "points": [
            {
                "layers": layers or _layers(base),
                "gpus": gpus,
                "devices_used": len({str(v) for v in prepared[i][1].values()}),
                "samples": samples[i],
            }
            for i, (layers, gpus) in enumerate(points)
        ],
    }


def preset_twins(request: Mapping[str, Any]) -> dict[str, Any]:
    """Every preset's tiny twin over `gpus` virtual GPUs (forced_map), every input set its family gives: one
    untimed warm-up run per preset, then `repeat` rounds over the presets. Presets whose transformers class is
    not installed are listed apart (they cannot run on this stack)."""
    warnings.simplefilter("ignore")
    from diag.samedevice.run import run_twin
    from diag.samedevice.verify import forced_map
    from diag.twins import PRESETS, build_meta
    from diag.twins.families import family_named

    gpus = int(request["gpus"])
    prepared, unavailable = [], {}
    for name in request["presets"]:
        spec = PRESETS[name]
        reason = family_named(spec.family).unavailable(spec.config)
        if reason is not None:
            unavailable[name] = reason
            continue
        prepared.append((spec, forced_map(build_meta(spec), gpus, spec.family)))
    samples: dict[str, list[float]] = {spec.name: [] for spec, _ in prepared}
    parts: dict[str, list[dict[str, float]]] = {spec.name: [] for spec, _ in prepared}
    failed: dict[str, str] = {}
    verdicts: dict[str, tuple[Any, ...]] = {}
    skipped: dict[str, int] = {}
    for round_ in range(int(request["repeat"]) + 1):
        for spec, device_map in prepared:
            result = run_twin(spec, device_map, simulated_gpus=gpus)
            if not result.ok:  # the forced map itself fails (the check would go on to its cause): timed to there
                failed[spec.name] = f"{result.stage}: {(result.error or '')[:100]}"
            if round_:  # round 0 is the warm-up
                samples[spec.name].append(result.seconds)
                parts[spec.name].append(dict(result.parts))
            verdicts[spec.name] = (result.stage, result.op, result.devices, result.module, result.error)
            skipped[spec.name] = result.repeats_skipped
    # Once more with every block run (no repeats passed through): the verdict must be the same, and the time
    # says what passing repeats through saves.
    every: dict[str, dict[str, Any]] = {}
    for spec, device_map in prepared:
        result = run_twin(spec, device_map, simulated_gpus=gpus, every_block=True)
        full = (result.stage, result.op, result.devices, result.module, result.error)
        every[spec.name] = {
            "seconds": result.seconds,
            "same_verdict": full == verdicts[spec.name],
            "verdict": [str(v) for v in full],
            "fast_verdict": [str(v) for v in verdicts[spec.name]],
        }
    return {"gpus": gpus, "samples": samples, "parts": parts, "unavailable": unavailable, "failed": failed,
            "families": {spec.name: spec.family for spec, _ in prepared}, "every_block": every,
            "repeats_skipped": skipped}  # fmt: skip


def _layers(spec: Any) -> int:
    from diag.twins import build_meta, language_model_layout

    return int(language_model_layout(build_meta(spec)).num_layers)


def bounds_files(folder: str, gpus: int, keys: int) -> dict[str, Any]:
    """Write the bounds section's inputs: a `gpus`-GPU topology and a `keys`-key device map for llava-1.5-7b.

    The topology is what `python -m diag topology` writes for such a node: GPUs 0..N-1 in NVLink islands of 8, and
    every pair listed in `p2p` (true inside an island, false across), as NVML reports them. The map gives every
    module of the model a GPU (cuda:0) and pads it with keys no module has (`model.layers.N.extra_M`), the shape
    of a map written for another model, each key of which MAP-005 must account for.
    """
    from dataclasses import replace

    from diag.topology.files import node_to_dict
    from diag.topology.simulated import simulated_node
    from diag.twins import PRESETS, build_meta

    node = simulated_node("8xA100-80GB")
    template = node.gpus[0]
    many = tuple(
        replace(template, nvml_index=i, uuid=f"GPU-{i:08x}-0000-4000-8000-{i:012x}", pci_bus_id=f"00000000:{i:05X}.0")
        for i in range(gpus)
    )
    p2p = tuple((a, b, a // 8 == b // 8) for a in range(gpus) for b in range(a + 1, gpus))
    data = node_to_dict(replace(node, gpus=many, p2p=p2p, hostname=f"bench-{gpus}gpus"))
    data["source"] = "file"
    topology = Path(folder, f"topology-{gpus}.json")
    topology.write_text(json.dumps(data))
    modules = [name for name, _ in build_meta(PRESETS["llava-1.5-7b"]).named_modules() if name and "." not in name]
    device_map: dict[str, Any] = {name: 0 for name in modules}
    for index in range(keys - len(device_map)):
        device_map[f"model.layers.{index % 32}.extra_{index}"] = 0
    mapping = Path(folder, f"map-{keys}.json")
    mapping.write_text(json.dumps(device_map))
    return {"topology": str(topology), "topology_bytes": topology.stat().st_size, "p2p_pairs": len(p2p),
            "map": str(mapping), "map_bytes": mapping.stat().st_size, "map_keys": len(device_map)}  # fmt: skip


def main(argv: list[str]) -> None:
    if argv[:1] == ["plan"] and len(argv) == 3:
        out = plan(argv[1], int(argv[2]))
    elif argv[:1] == ["twins"] and len(argv) == 2:
        out = twins(json.loads(argv[1]))
    elif argv[:1] == ["preset-twins"] and len(argv) == 2:
        out = preset_twins(json.loads(argv[1]))
    elif argv[:1] == ["bounds-files"] and len(argv) == 4:
        out = bounds_files(argv[1], int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(
            f"usage: {sys.argv[0]} plan PRESET GPUS | twins JSON | preset-twins JSON | bounds-files DIR GPUS KEYS"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
