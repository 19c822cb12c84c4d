"""What the environment checks add to pytest's own start-up, on simulated nodes of 1 to 64 GPUs.

    python bench/env_checks.py [--repeat 7] [--json reports/bench-env.json]

Each row is a whole `pytest` process, timed from outside, median and spread over repeated runs taken
alternately with the baseline, so the figure that matters is the difference to the baseline on the same
machine in the same minute: pytest with the same plugins running one trivial test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _time(args: list[str], cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "PYTEST_"))}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                   check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", default=str(REPO / "reports" / "bench-env.json"))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline_dir = Path(tmp)
        (baseline_dir / "test_trivial.py").write_text("def test_trivial():\n    pass\n")
        report = str(Path(tmp, "diag-report.json"))
        cases = {"baseline: pytest, one trivial test": (["test_trivial.py"], baseline_dir)}
        for gpus in (1, 8, 64):
            cases[f"pytest checks/test_env.py --simulate {gpus}xA100-80GB"] = (
                ["checks/test_env.py", "--simulate", f"{gpus}xA100-80GB", "--diag-report", report],
                REPO,
            )
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(options.repeat):
            for name, (args, cwd) in cases.items():
                samples[name].append(_time(args, cwd))
    base = statistics.median(samples["baseline: pytest, one trivial test"])
    rows = []
    print(f"{'case':56} {'median s':>9} {'spread s':>9} {'added s':>8}")
    for name, values in samples.items():
        median = statistics.median(values)
        spread = max(values) - min(values)
        rows.append({"case": name, "median_s": median, "spread_s": spread, "added_s": median - base})
        print(f"{name:56} {median:9.3f} {spread:9.3f} {median - base:8.3f}")
    Path(options.json).parent.mkdir(parents=True, exist_ok=True)
    Path(options.json).write_text(json.dumps({"repeat": options.repeat, "rows": rows}, indent=2) + "\n")
    print(f"written: {options.json}")


if __name__ == "__main__":
    main()
