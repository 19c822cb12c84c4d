"""The report: schema, redaction, atomic replacement, and being written whatever happens to the run."""

from __future__ import annotations

import json
import os
import re
import stat
import types
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diag.fixes import CATALOG, catalog_markdown
from diag.report import REDACTED, build_report, installed_torch_cuda, redacted_command, redacted_env, write_report
from tests.conftest import REPO, SCHEMA


@pytest.mark.parametrize("name", ["HF_TOKEN", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "NCCL_PASSWORD", "HF_hub_token",
                                  "CUDA_CREDENTIALS"])  # fmt: skip
def test_secret_named_variables_never_reach_the_report(name):
    env = redacted_env({name: "s3cr3t-value", "CUDA_VISIBLE_DEVICES": "4,5", "HOME": "/root"})
    assert "s3cr3t-value" not in json.dumps(env)
    assert env["CUDA_VISIBLE_DEVICES"] == "4,5" and "HOME" not in env


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=4, max_size=30))
def test_a_token_in_model_args_is_hidden(secret):
    command = redacted_command(["pytest", "checks/", "--model-args", f"pretrained=x/y,token={secret},device_map=auto"])
    assert f"token={REDACTED}" in command and "device_map=auto" in command
    assert f"token={secret}" not in command


def test_a_secret_option_value_is_hidden():
    assert redacted_command(["run", "--hf-token", "hf_abc", "--gpus", "4"]) == f"run --hf-token {REDACTED} --gpus 4"


def test_write_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "diag-report.json"
    write_report(target, {"n": 1})
    inode_before = target.stat().st_ino
    write_report(target, {"n": 2})
    assert json.loads(target.read_text()) == {"n": 2}
    assert target.stat().st_ino != inode_before  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["diag-report.json"]


def test_a_failed_write_leaves_the_old_report(tmp_path, monkeypatch):
    target = tmp_path / "diag-report.json"
    write_report(target, {"n": 1})
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_report(target, {"n": 2})
    assert json.loads(target.read_text()) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["diag-report.json"]


def test_a_report_without_a_node_still_matches_the_schema():
    report = build_report(command=["pytest"], topology=None, checks=[], duration_s=0.5, environ={})
    jsonschema.validate(report, SCHEMA)


def test_torch_cuda_is_read_without_importing_torch():
    import torch

    assert installed_torch_cuda() == torch.version.cuda  # None for the CPU build, "12.4" for a cu124 wheel
    code = "import sys, diag.report as r; r.installed_torch_cuda(); print('torch' in sys.modules)"
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_torch_cuda_is_read_from_a_cuda_build_file(tmp_path: Path) -> None:
    """A CUDA wheel's torch/version.py, found on the path and read as text: the process never imports it."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (tmp_path / "torch" / "version.py").write_text("__version__ = '2.14.1+cu124'\ncuda: Optional[str] = '12.4'\n")
    code = "import diag.report as r; print(r.installed_torch_cuda())"
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "12.4"


def test_fix_code_docs_are_in_step_with_the_catalog():
    assert (REPO / "docs" / "fix-codes.md").read_text() == catalog_markdown() + "\n"


def test_every_code_the_checks_use_is_in_the_catalog():
    used = set()
    for path in [*REPO.joinpath("checks").glob("*.py"), *REPO.joinpath("diag").rglob("*.py")]:
        used |= set(re.findall(r"\b(?:ENV|MAP|SPLIT|FWD|MEM|LAYOUT|DIST|MODEL|DIAG)-\d{3}\b", path.read_text()))
    assert used and used <= set(CATALOG)


def test_every_catalog_entry_has_a_cause_and_a_fix():
    for fix in CATALOG.values():
        assert re.fullmatch(r"(ENV|MAP|SPLIT|FWD|MEM|LAYOUT|DIST|MODEL|DIAG)-\d{3}", fix.code)
        assert fix.title and fix.cause.endswith(".") and fix.fix


# -- the report is written whatever the run does ------------------------------------------------------------------
def test_a_crash_inside_a_check_is_reported_as_a_diag_defect(run_checks, pytester):
    pytester.makepyfile(**{"checks/test_crash.py": "def test_boom(diag_node):\n    raise KeyError('nvml_index')\n"})
    run = run_checks("--simulate", "2xA100-80GB")
    entry = run.check("test_boom")
    assert entry["outcome"] == "failed" and entry["code"] == "DIAG-001" and "KeyError" in entry["message"]
    assert entry["fix"]["summary"]
    jsonschema.validate(run.report, SCHEMA)


def test_a_checks_module_that_does_not_import_is_reported(run_checks, pytester):
    pytester.makepyfile(**{"checks/test_broken.py": "import no_such_module_here\n"})
    run = run_checks("--simulate", "2xA100-80GB")
    broken = [c for c in run.report["checks"] if c["nodeid"].endswith("test_broken.py")]
    assert broken and broken[0]["code"] == "DIAG-003" and "no_such_module_here" in broken[0]["message"]
    assert run.report["summary"]["errors"] == 1


def test_an_internal_error_still_writes_the_report(run_checks, pytester):
    pytester.makeconftest("def pytest_collection_modifyitems(items):\n    raise RuntimeError('plugin exploded')\n")
    run = run_checks("--simulate", "2xA100-80GB")
    assert run.result.ret == pytest.ExitCode.INTERNAL_ERROR
    internal = run.check("internal")
    assert internal["code"] == "DIAG-002" and "plugin exploded" in internal["message"]
    jsonschema.validate(run.report, SCHEMA)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_report_is_a_summary_line_not_a_crash(pytester, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(
        "-p", "diag.plugin", "--simulate", "1xA100-80GB", "--diag-report", str(locked / "r.json")
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["diag report: could not write *r.json: PermissionError*"])


def test_a_report_path_under_a_file_is_a_summary_line_not_a_crash(pytester, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "1xA100-80GB",
                                "--diag-report", str(blocker / "r.json"))  # fmt: skip
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["diag report: could not write *r.json: *Error*"])
    assert "Traceback" not in result.stdout.str()


def test_the_plugin_is_dormant_without_diag_options_or_checks(pytester, monkeypatch):
    monkeypatch.setattr("diag.session.build_topology", lambda **kw: pytest.fail("the node was read"))
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    assert not re.search(r"^diag[: ]", result.stdout.str(), re.MULTILINE)
    assert not Path(pytester.path, "reports").exists()


def test_cuda_already_initialised_is_a_loud_usage_error(pytester, monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(__import__("sys").modules, "torch", fake_torch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    result = pytester.runpytest(
        "-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "8xA100-80GB", "--gpus", "4,5"
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]ENV-010[]] --gpus 4,5 cannot apply*CUDA_VISIBLE_DEVICES=4,5 pytest*"])


@pytest.mark.parametrize(
    ("arg", "secret"),
    [("--model-args=token=hf_abc,device_map=auto", "hf_abc"), ('api_key="a b",x=1', "b"),
     ("pretrained=x,HF_TOKEN=zz9", "zz9"), ("password='p w'", "p w")],
)  # fmt: skip
def test_secrets_are_hidden_in_every_argument_shape(arg, secret):
    command = redacted_command(["pytest", arg])
    assert secret not in command.replace("api_key", "").replace("device_map=auto", "")
    assert REDACTED in command


def test_an_env010_run_leaves_a_report_that_says_so(pytester, monkeypatch):
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setitem(__import__("sys").modules, "torch", fake_torch)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report = pytester.path / "r.json"
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "2xA100-80GB",
                                "--gpus", "1", "--diag-report", str(report))  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    data = json.loads(report.read_text())
    assert [(c["code"], c["outcome"]) for c in data["checks"]] == [("ENV-010", "error")]
    assert data["summary"]["errors"] == 1


def test_the_report_keeps_what_gpus_replaced(run_checks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5")
    assert run.report["environment"]["env"]["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert run.report["environment"]["env_before_diag"] == {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": None}
