"""Shared helpers: run the shipped checks in a pytester sandbox and read the report they write."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

import diag.plugin  # noqa: F401  (see below)
from diag.topology.files import node_to_dict
from diag.topology.simulated import simulated_node

# pytester's in-process runs drop every module first imported during a run, but a package keeps its submodule
# attributes: a second run would import diag.plugin and diag.session anew while `from diag import fixtures` still
# found the first run's fixtures module, whose session STATE key is another object (KeyError in every check).
# Importing the plugin here, in this process, keeps one copy of each for all runs.
REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "diag" / "schema" / "diag-report-1.json").read_text())

# The property tests draw the same examples in every run, so a red CI is the code's doing, not the draw's. Drawing
# fresh examples finds defects (three so far, each now pinned by a test of its own): DIAG_HYPOTHESIS_EXPLORE=1.
settings.register_profile("diag-fixed", derandomize=True)
settings.register_profile("diag-explore", derandomize=False)
settings.load_profile("diag-explore" if os.environ.get("DIAG_HYPOTHESIS_EXPLORE") else "diag-fixed")


@dataclass
class Run:
    result: pytest.RunResult
    report: dict[str, Any]

    def check(self, name: str) -> dict[str, Any]:
        """The report entry of the one check whose node id ends with `::name`."""
        hits = [c for c in self.report["checks"] if c["nodeid"].endswith("::" + name)]
        assert len(hits) == 1, [c["nodeid"] for c in self.report["checks"]]
        return hits[0]

    def outcomes(self) -> dict[str, str]:
        return {c["nodeid"].split("::", 1)[1]: c["outcome"] for c in self.report["checks"]}

    def cuda_map(self) -> dict[int, int]:
        """nvidia-smi index -> cuda ordinal for the GPUs this run's torch sees."""
        gpus = self.report["topology"]["gpus"]
        return {g["nvml_index"]: g["cuda_index"] for g in gpus if g["cuda_index"] is not None}

    @property
    def text(self) -> str:
        return self.result.stdout.str()


@pytest.fixture(scope="session")
def warm_imports() -> None:
    """Import once, in this process, what the checks import lazily.

    pytester's in-process runs forget every module imported during a run; importing torch.distributed or a
    transformers model module a second time then fails in torch's operator registry. Importing them here,
    before any run, keeps them.
    """
    from diag.devicemap.plan import plan_device_map
    from diag.devicemap.validate import transformers_rejects
    from diag.twins import PRESETS, build_meta
    from diag.twins.families import family_named

    transformers_rejects("")
    seen = set()
    for spec in PRESETS.values():
        if spec.family not in seen and family_named(spec.family).unavailable(spec.config) is None:
            seen.add(spec.family)
            plan_device_map(build_meta(spec), "auto", {0: 2**40, "cpu": 2**40})


@pytest.fixture
def run_checks(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, warm_imports: None) -> Callable[..., Run]:
    """Run the shipped checks/ with the given options in a fresh directory, in process, and load the report."""
    shutil.copytree(REPO / "checks", pytester.path / "checks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "AUTO_SPLIT"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str, report: Path | None = None, target: str = "checks") -> Run:
        path = report or pytester.path / "reports" / "diag-report.json"
        # hypothesis's plugin imports hypothesis at the summary (about 1 s), and pytester forgets it after each run.
        result = pytester.runpytest(
            target, "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "--diag-report", str(path), *args
        )
        return Run(result, json.loads(path.read_text()))

    return run


@pytest.fixture
def node_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a replayable node: a simulated spec with per-GPU changes, e.g. {0: {"processes": [...]}}."""

    def make(spec: str, changes: dict[int, dict[str, Any]] | None = None, **node: Any) -> Path:
        data = node_to_dict(simulated_node(spec, hostname="gpu-node-17"))
        for nvml_index, fields in (changes or {}).items():
            data["gpus"][nvml_index].update(fields)
        data.update(node)
        path = tmp_path / f"node-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(data))
        return path

    return make


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test (diag reads the local Hugging Face cache only)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("diag tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def recorded_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The stage names run_twin goes through in this test, in order (run_stages wrapped to record them)."""
    import diag.samedevice.run as run_module

    seen: list[str] = []
    original = run_module.run_stages

    def recording(spec: Any, model: Any, inputs_device: str = "cuda:0") -> Iterator[str]:
        for stage in original(spec, model, inputs_device):
            seen.append(stage)
            yield stage

    monkeypatch.setattr(run_module, "run_stages", recording)
    return seen
