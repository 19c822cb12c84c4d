"""Building the full-width meta model and planning `auto` over simulated GPUs, per preset.

    python bench/plan.py [--repeat 3] [--gpus 8] [--json reports/bench-plan.json]

Each preset runs in a fresh process (so peak RSS is its own): imports first (not timed), then the meta build
and the plan are timed separately; peak RSS is the process's ru_maxrss at the end, imports included.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import torch
from diag.devicemap.fit import plan_rows, rows_for
from diag.devicemap.plan import GIB, plan_device_map
from diag.twins import PRESETS, build_meta
import transformers, accelerate  # noqa: F401  (imports are the floor, not part of the figure)
name, gpus = sys.argv[1], int(sys.argv[2])
start = time.perf_counter()
model = build_meta(PRESETS[name]).to(torch.bfloat16)
built = time.perf_counter()
device_map = plan_device_map(model, "auto", {**{i: 80 * GIB for i in range(gpus)}, "cpu": 512 * GIB})
planned = time.perf_counter()
real = sum(t.numel() for t in model.parameters() if not t.is_meta)
params_b = sum(p.numel() for p in model.parameters()) / 1e9
rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"build_s": built - start, "plan_s": planned - built, "params_b": params_b, "real_params": real,
                  "peak_rss_mib": rss_mib, "devices": sorted({str(v) for v in device_map.values()})}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--json", default=str(REPO / "reports" / "bench-plan.json"))
    options = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from diag.twins import PRESETS

    rows = []
    header = ("params B", "build s", "plan s", "total s", "spread s", "peak RSS MiB")
    print(f"{'preset':16} " + " ".join(f"{h:>8}" for h in header))
    for name in sorted(PRESETS):
        runs = []
        for _ in range(options.repeat):
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(options.gpus)], capture_output=True,
                                 text=True, check=True, cwd=REPO).stdout  # fmt: skip
            runs.append(json.loads(out.strip().splitlines()[-1]))
        totals = [r["build_s"] + r["plan_s"] for r in runs]
        row = {
            "preset": name,
            "params_b": round(runs[0]["params_b"], 2),
            "build_s": statistics.median(r["build_s"] for r in runs),
            "plan_s": statistics.median(r["plan_s"] for r in runs),
            "total_s": statistics.median(totals),
            "spread_s": max(totals) - min(totals),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "real_params": max(r["real_params"] for r in runs),
        }
        rows.append(row)
        print(
            f"{name:16} {row['params_b']:8.2f} {row['build_s']:8.3f} {row['plan_s']:7.3f} {row['total_s']:8.3f} "
            f"{row['spread_s']:8.3f} {row['peak_rss_mib']:12.0f}"
        )
    Path(options.json).parent.mkdir(parents=True, exist_ok=True)
    Path(options.json).write_text(json.dumps({"gpus": options.gpus, "repeat": options.repeat, "rows": rows}, indent=2))
    print(f"written: {options.json}  (real_params must be 0: planning allocates no weight)")


if __name__ == "__main__":
    main()
