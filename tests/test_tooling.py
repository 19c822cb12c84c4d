"""The linters see every package: ruff's default exclude list skips folders named `dist`, mypy only what it is told."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; diag itself supports 3.10


def _sources() -> set[Path]:
    return {p.relative_to(REPO) for folder in ("diag", "checks") for p in (REPO / folder).rglob("*.py")}


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is a dev dependency")
def test_ruff_checks_every_source_file() -> None:
    listed = subprocess.run(
        ["ruff", "check", "--show-files", "."], cwd=REPO, capture_output=True, text=True, check=True
    )
    seen = {Path(line.strip()).resolve().relative_to(REPO) for line in listed.stdout.splitlines() if line.strip()}
    missing = sorted(str(p) for p in _sources() - seen)
    assert not missing, missing
    assert Path("diag/dist/collective.py") in seen


def test_mypy_type_checks_the_library_and_the_checks() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["strict"] is True
    assert set(config["packages"]) == {"diag", "checks"}
