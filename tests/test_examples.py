"""The GitHub Actions example: installs diag without touching the eval environment, takes the eval command safely."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import pytest

from tests.conftest import REPO

yaml = pytest.importorskip("yaml")
WORKFLOW = REPO / "examples" / "github-actions" / "preflight.yml"


def _steps(job: str) -> dict[str, str]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return {step.get("name", step.get("uses", "")): step.get("run", "") for step in data["jobs"][job]["steps"]}


def test_the_gpu_job_installs_diag_alone_and_checks_its_requirements() -> None:
    install = _steps("preflight")["Install diag without changing the eval environment"]
    pip_lines = [line for line in install.splitlines() if "pip install" in line]
    assert "--no-deps" in pip_lines[0]
    assert not any(re.search(r"torch|transformers|accelerate|-U|--upgrade", line) for line in pip_lines)
    assert "pip check" in install


def test_the_report_and_the_map_files_are_uploaded() -> None:
    data = yaml.safe_load(WORKFLOW.read_text())
    for job in ("preflight", "simulate"):
        upload = next(s for s in data["jobs"][job]["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
        assert "reports/device-map-*.json" in upload["with"]["path"]


def test_the_eval_command_input_is_split_by_shlex_never_by_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert "eval_command" in data[True]["workflow_dispatch"]["inputs"]  # YAML 1.1 reads the key `on` as True
    run = _steps("preflight")["Run the checks"]
    snippet = run.split("<<'PY'\n", 1)[1].split("\nPY", 1)[0]
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda path, argv: started.append(list(argv)))
    monkeypatch.setenv("GITHUB_WORKSPACE", "/ws")
    monkeypatch.setenv("GPUS", "4,5")
    monkeypatch.setenv("EVAL_COMMAND", "python -m lmms_eval --model_args 'pretrained=a b' ; rm -rf /")
    monkeypatch.setattr(sys, "argv", ["-", "--check-only"])
    exec(compile(snippet, "preflight.yml", "exec"), {})
    assert started == [[sys.executable, "-m", "diag", "run", "--gpus", "4,5", "--diag-report",
                        "/ws/reports/diag-report.json", "--check-only", "--", "python", "-m", "lmms_eval",
                        "--model_args", "pretrained=a b", ";", "rm", "-rf", "/"]]  # fmt: skip
