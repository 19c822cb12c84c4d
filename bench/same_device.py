"""The same-device run: tiny twins' forward + generate, the 80-layer twin over 8 virtual GPUs, and the whole suite
against the import floor, measured in one run so the figures are ratios on the same machine.

    python bench/same_device.py [--repeat 3] [--json reports/bench-same-device.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch, transformers, accelerate  # noqa: F401  (the floor, not timed)
from diag.samedevice.run import run_twin
from diag.samedevice.verify import forced_map
from diag.twins import PRESETS, build_meta
name, gpus = sys.argv[1], int(sys.argv[2])
spec = PRESETS[name]
device_map = forced_map(build_meta(spec), gpus, spec.family) if gpus else {"": "cpu"}
times = []
for _ in range(3):
    result = run_twin(spec, device_map, simulated_gpus=gpus or None, inputs_device="cuda:0" if gpus else "cpu")
    assert result.ok, result.error
    times.append(result.seconds)
print(json.dumps({"first_s": times[0], "warm_s": min(times[1:]),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(name: str, gpus: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(gpus)], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, cwd=REPO, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=str(REPO / "reports" / "bench-same-device.json"))
    options = parser.parse_args()
    rows = []
    print(
        f"{'twin run (build + dispatch + forward + 2-token generate)':62} {'first s':>8} {'warm s':>8} {'RSS MiB':>8}"
    )
    for name, gpus in (("llava-1.5-7b", 0), ("internvl2-8b", 0), ("llava-1.5-7b", 4), ("internvl2-8b", 4),
                       ("internvl2-76b", 8)):  # fmt: skip
        runs = [_child(name, gpus) for _ in range(options.repeat)]
        row = {"twin": name, "virtual_gpus": gpus, "first_s": statistics.median(r["first_s"] for r in runs),
               "warm_s": statistics.median(r["warm_s"] for r in runs),
               "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}  # fmt: skip
        rows.append(row)
        where = f"over {gpus} virtual GPUs" if gpus else "on the CPU, no virtual devices"
        print(f"{name + ' ' + where:62} {row['first_s']:8.3f} {row['warm_s']:8.3f} {row['peak_rss_mib']:8.0f}")
    floor_cmd = [sys.executable, "-c", "import torch, transformers, accelerate"]
    suite_cmd = [sys.executable, "-m", "pytest", "checks/", "--simulate", "8xA100-80GB", "--model", "internvl2-76b",
                 "-q", "-p", "no:cacheprovider", "--diag-report", "/tmp/bench-diag-report.json"]  # fmt: skip
    floor, suite = [], []
    for _ in range(options.repeat):
        floor.append(_wall(floor_cmd))
        suite.append(_wall(suite_cmd))
    ratio = statistics.median(suite) / statistics.median(floor)
    print(
        f"import floor {statistics.median(floor):.2f} s; pytest checks/ --simulate 8xA100-80GB --model internvl2-76b "
        f"{statistics.median(suite):.2f} s; ratio {ratio:.2f}"
    )
    Path(options.json).parent.mkdir(parents=True, exist_ok=True)
    Path(options.json).write_text(json.dumps({"rows": rows, "floor_s": floor, "suite_s": suite, "ratio": ratio},
                                             indent=2))  # fmt: skip
    print(f"written: {options.json}")


if __name__ == "__main__":
    main()
