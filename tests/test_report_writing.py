"""How the report is written: only over a regular file, no temporary file left behind, never a stale report a script
could take for this run's, and an interrupted run (SIGTERM, Ctrl-C) writes a report that says so."""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from diag.options import _report_path
from diag.report import ReportTargetError, build_report, remove_stale_report, write_report
from tests.conftest import REPO, SCHEMA

PLUGIN = ("-p", "diag.plugin", "-p", "no:hypothesispytest", "-p", "no:cacheprovider")


def _report() -> dict[str, object]:
    return build_report(command=["pytest"], topology=None, checks=[], duration_s=0.0, environ={})


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def device_link(tmp_path: Path) -> Path:
    link = tmp_path / "link.json"
    link.symlink_to("/dev/null")
    return link


# -- what is refused ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["/dev/null", "fifo", "directory", "device_link"])
def test_write_report_replaces_nothing_but_a_regular_file(kind, tmp_path, fifo, device_link):
    target = {"/dev/null": Path("/dev/null"), "fifo": fifo, "directory": tmp_path, "device_link": device_link}[kind]
    before = os.lstat(target)
    with pytest.raises(ReportTargetError, match="not a regular file"):
        write_report(target, _report())
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert _temp_files(tmp_path) == [] and _temp_files(Path("/dev")) == []


@pytest.mark.parametrize("kind", ["/dev/null", "fifo", "directory", "device_link"])
def test_the_option_refuses_an_existing_path_that_is_no_regular_file(kind, tmp_path, fifo, device_link):
    target = {"/dev/null": "/dev/null", "fifo": str(fifo), "directory": str(tmp_path), "device_link": str(device_link)}
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        _report_path(target[kind])
    expected = {"/dev/null": "a character device", "fifo": "a FIFO", "directory": "a directory",
                "device_link": "a symbolic link"}[kind]  # fmt: skip
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert _report_path(str(tmp_path / "new.json")) == str(tmp_path / "new.json")
    assert _report_path(str(tmp_path / "r-{rank}.json")) == str(tmp_path / "r-{rank}.json")


def test_a_fifo_as_diag_report_is_a_one_line_usage_error(pytester, fifo):
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--simulate", "1xA100-80GB", "--diag-report", str(fifo))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "is a FIFO (named pipe), not a regular file" in result.stderr.str() and "Traceback" not in result.stderr.str()
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_the_umask_still_shapes_the_report(tmp_path):
    old = os.umask(0o027)
    try:
        path = write_report(tmp_path / "r.json", _report())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# -- temporary files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temporary_file_and_the_old_report(tmp_path, monkeypatch, error):
    target = write_report(tmp_path / "r.json", _report())
    old = target.read_text()

    def fail(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("diag.report.json.dump", fail)
    with pytest.raises(type(error)):
        write_report(target, _report())
    assert _temp_files(tmp_path) == [] and target.read_text() == old


def test_temporary_files_a_killed_run_left_are_removed_by_the_next_write(tmp_path):
    stale, fresh, other = (tmp_path / ".r.json.0123456789ab.tmp", tmp_path / ".r.json.ba9876543210.tmp",
                           tmp_path / ".other.json.0123456789ab.tmp")  # fmt: skip
    for path in (stale, fresh, other):
        path.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    os.utime(other, (time.time() - 3600, time.time() - 3600))
    write_report(tmp_path / "r.json", _report())
    # A fresh one may be another run's write in progress; another report's are not ours.
    assert _temp_files(tmp_path) == [other.name, fresh.name]


# -- stale reports ---------------------------------------------------------------------------------------------------
def test_only_a_diag_report_is_removed_as_stale(tmp_path):
    report = write_report(tmp_path / "r.json", _report())
    mine = tmp_path / "mine.json"
    mine.write_text('{"schema": "something else"}')
    assert remove_stale_report(report) and not report.exists()
    assert not remove_stale_report(mine) and mine.exists()
    assert not remove_stale_report(tmp_path / "absent.json") and not remove_stale_report(tmp_path)


@pytest.mark.parametrize("bad", [("--gpus", "4,x"), ("--processes", "none"), ("--no-such-option",)])
def test_a_usage_error_removes_the_previous_report(pytester, bad):
    target = pytester.path / "r.json"
    write_report(target, _report())
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--simulate", "1xA100-80GB", "--diag-report", str(target), *bad)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not target.exists()


def test_version_keeps_the_previous_report(pytester):
    target = pytester.path / "r.json"
    write_report(target, _report())
    result = pytester.runpytest(*PLUGIN, "--diag-report", str(target), "--version")
    assert result.ret == 0 and target.exists()


def test_a_usage_error_keeps_a_file_that_is_no_diag_report(pytester):
    target = pytester.path / "r.json"
    target.write_text('{"mine": true}\n')
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--diag-report", str(target), "--gpus", "4,x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and target.read_text() == '{"mine": true}\n'


def test_a_failed_write_removes_the_previous_report_and_says_so(pytester, monkeypatch):
    target = pytester.path / "r.json"
    write_report(target, _report())

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("diag.session.write_report", full)
    pytester.makepyfile(test_one="def test_one():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "--simulate", "1xA100-80GB", "--diag-report", str(target))
    result.stdout.fnmatch_lines(["diag report: could not write *r.json: *No space left*the previous report there "
                                 "was removed"])  # fmt: skip
    assert not target.exists()


# -- interrupted runs -------------------------------------------------------------------------------------------------
def test_ctrl_c_writes_a_report_that_says_the_run_was_interrupted(pytester):
    target = pytester.path / "r.json"
    pytester.makepyfile(test_a="def test_one():\n    pass\n\ndef test_two():\n    raise KeyboardInterrupt\n")
    before = signal.getsignal(signal.SIGTERM)
    # In process, pytester re-raises the inner run's KeyboardInterrupt unless told not to.
    result = pytester.runpytest(*PLUGIN, "--simulate", "1xA100-80GB", "--diag-report", str(target),
                                no_reraise_ctrlc=True)  # fmt: skip
    assert result.ret == pytest.ExitCode.INTERRUPTED
    report = json.loads(target.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["interrupted"] == "KeyboardInterrupt" and report["summary"]["passed"] == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the controller's handler is gone with its session


def test_a_finished_run_says_it_was_not_interrupted(pytester):
    target = pytester.path / "r.json"
    pytester.makepyfile(test_a="def test_one():\n    pass\n")
    pytester.runpytest(*PLUGIN, "--simulate", "1xA100-80GB", "--diag-report", str(target))
    assert json.loads(target.read_text())["interrupted"] is None


def test_sigterm_writes_a_report_that_says_the_run_was_interrupted(tmp_path):
    started = tmp_path / "started"
    (tmp_path / "test_slow.py").write_text(
        "import pathlib, time\n\n"
        "def test_quick():\n    pass\n\n"
        f"def test_slow():\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(60)\n"
    )
    target = tmp_path / "r.json"
    write_report(target, {**_report(), "summary": {"stale": True}})  # a previous run's report, to be replaced
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "pytest", *PLUGIN, "test_slow.py", "--simulate", "1xA100-80GB",
               "--diag-report", str(target)]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run did not reach the slow test"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, out.decode()
    report = json.loads(target.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["interrupted"] == "SIGTERM"
    assert report["summary"]["passed"] == 1 and report["summary"]["failed"] == 0
    (slow,) = [c for c in report["checks"] if c["nodeid"].endswith("test_slow")]
    assert slow["outcome"] == "skipped" and slow["message"] == "not finished: the run was interrupted (SIGTERM)"
    assert _temp_files(tmp_path) == []
    assert f"diag report: {target}" in out.decode()
