"""diag's options exist only in diag's own runs: installing diag must not break another project's pytest."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; diag itself supports 3.10

FOREIGN_CONFTEST = """
def pytest_addoption(parser):
    parser.addoption("--model", default="resnet50")
    parser.addoption("--gpus", default="0")
    parser.addoption("--device-map", default="cpu")


def pytest_report_header(config):
    return f"foreign model={config.getoption('model')} gpus={config.getoption('gpus')}"
"""


def test_a_foreign_conftest_with_diags_option_names_runs(pytester: pytest.Pytester) -> None:
    """A project defining --model/--gpus/--device-map itself runs its tests, in a fresh interpreter."""
    pytester.makeconftest(FOREIGN_CONFTEST)
    pytester.makepyfile(test_model="def test_model(request):\n    assert request.config.getoption('model') == 'vit'\n")
    result = pytester.runpytest_subprocess("--model", "vit", "--gpus", "3", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["foreign model=vit gpus=3"])
    assert "already used" not in result.stderr.str()
    assert not (pytester.path / "reports").exists()


def test_diag_registers_no_pytest11_entry_point() -> None:
    plugins = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert not any(value.split(":")[0].startswith("diag") for value in plugins), plugins


def test_the_package_list_names_every_folder_of_diag() -> None:
    """pyproject lists the packages by hand (checks/ ships as diag.checks): a new subpackage must be added there."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"diag", "diag.checks"} | {
        "diag." + ".".join(path.relative_to(REPO / "diag").parts)
        for path in (REPO / "diag").rglob("*")
        if path.is_dir() and "__pycache__" not in path.parts
    }
    assert listed == folders


def test_the_installed_checks_run_by_module_name_from_any_folder(pytester: pytest.Pytester) -> None:
    """`pytest -p diag.plugin --pyargs diag.checks…` finds the checks wherever diag is installed."""
    report = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "-p", "diag.plugin", "--pyargs", "diag.checks.test_env", "--simulate", "2xA100-80GB",
        "--diag-report", str(report), "-p", "no:cacheprovider",
    )  # fmt: skip
    assert result.ret == 0, result.stdout.str()[-2000:]
    data = json.loads(report.read_text())
    assert data["summary"]["passed"] >= 5 and data["topology"]["source"] == "simulated"


def test_without_the_plugin_diag_options_are_unknown(pytester: pytest.Pytester) -> None:
    """Outside diag's runs `--simulate` is not an option at all: no diag code ran."""
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest_subprocess("--simulate", "2xA100-80GB", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --simulate*"])
