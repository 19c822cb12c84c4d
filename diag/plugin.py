"""The pytest hooks: options, applying --gpus before CUDA starts, the header, the report, the summary.

The plugin has no pytest11 entry point: it is loaded only by diag's own runs (checks/conftest.py, the wrapper,
or an explicit `-p diag.plugin`), so other projects' pytest runs in the same environment never see its options.
Once loaded it still stays dormant unless asked: it acts when a diag option is given or the run targets the
checks (a `checks` directory, or `--pyargs diag.checks`). A dormant plugin never touches hardware and writes
nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from diag import fixtures
from diag.checking import USER_PROPERTY, CheckFailed
from diag.dist import fixtures as dist_fixtures
from diag.fixes import lookup
from diag.noise import captured_warnings, describe, from_library, reemit
from diag.options import add_options, read_options
from diag.redact import redact_data, redact_text
from diag.session import STATE, WORKER_TOPOLOGY, DiagState, last_line
from diag.summary import NEXT_STEP, summary_lines
from diag.topology.files import cuda_view_to_dict, node_to_dict
from diag.topology.records import Topology
from diag.topology.selection import PCI_BUS_ID


def _targets_checks(config: pytest.Config) -> bool:
    for arg in config.args:
        if config.option.pyargs and arg.split("::")[0].startswith("diag.checks"):
            return True
        path = Path(config.invocation_params.dir, arg.split("::")[0])
        if "checks" in path.resolve().parts:
            return True
    return False


def _apply_gpus(state: DiagState, gpus: tuple[str, ...]) -> None:
    """Set CUDA_DEVICE_ORDER and CUDA_VISIBLE_DEVICES before anything starts CUDA (CUDA reads them once)."""
    wanted = {"CUDA_DEVICE_ORDER": PCI_BUS_ID, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
    torch = sys.modules.get("torch")
    cuda_started = bool(torch is not None and getattr(torch, "cuda", None) and torch.cuda.is_initialized())
    if cuda_started and any(os.environ.get(k) != v for k, v in wanted.items()):
        fix = lookup("ENV-010")
        summary = f"Run `CUDA_DEVICE_ORDER={PCI_BUS_ID} CUDA_VISIBLE_DEVICES={','.join(gpus)} pytest …` instead."
        state.record_configure_error("ENV-010", f"--gpus {','.join(gpus)} cannot apply: {fix.cause}", summary)
        raise pytest.UsageError(f"[ENV-010] --gpus {','.join(gpus)} cannot apply: {fix.cause} Fix: {summary}")
    for name, value in wanted.items():
        state.saved_env[name] = os.environ.get(name)
        os.environ[name] = value


def _restore_env(state: DiagState) -> None:
    for name, value in state.saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


# -- hooks -----------------------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    add_options(parser)
    config = pluginmanager.get_plugin("pytestconfig")
    if isinstance(config, pytest.Config):
        config.add_cleanup(lambda: _unstarted_run(config))


def _unstarted_run(config: pytest.Config) -> None:
    """A run that never configured (a usage error in the options) writes no report: remove the previous one.

    pytest runs a config's cleanups even when parsing its command line fails, before it prints the usage error.
    The path is the one the run would have written (--diag-report as given, else the default when the run
    targets the checks); only a diag report there is removed (diag.report.remove_stale_report).
    """
    if STATE in config.stash:
        return  # configured: the session's own hooks wrote (or removed) the report
    if getattr(config.option, "version", 0):
        return  # `--version` parses fine and stops before configuring: no run, and no usage error either
    from diag.dist.ranks import launched_rank
    from diag.report import ReportPathError, remove_stale_report, report_path

    args = [str(a) for a in config.invocation_params.args]
    template = _given_report_path(args)
    if template is None and not _args_target_checks(args, config.invocation_params.dir):
        return  # a dormant plugin writes nothing, and removes nothing
    try:
        from diag.dist import ranks

        rank, host = launched_rank(os.environ), ranks.hostname()
        remove_stale_report(report_path(template, config.rootpath, rank, host))
    except (ReportPathError, ValueError, OSError, AttributeError):  # AttributeError: no rootpath yet
        return  # the path itself is the usage error, or the launcher's variables are: nothing to remove


def _given_report_path(args: list[str]) -> str | None:
    found = None
    for i, arg in enumerate(args):
        if arg == "--diag-report" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--diag-report="):
            found = arg.partition("=")[2]
    return found


def _args_target_checks(args: list[str], invocation_dir: Path) -> bool:
    for arg in args:
        if arg.startswith("-"):
            continue
        if arg.split("::")[0].startswith("diag.checks"):
            return True
        with contextlib.suppress(OSError, ValueError):
            if "checks" in Path(invocation_dir, arg.split("::")[0]).resolve().parts:
                return True
    return False


class _Interruption:
    """SIGTERM in the controller of an active session: stop the run as Ctrl-C does, so the report is written
    and says so. Installed at session start, the previous handler restored when the session is unconfigured."""

    def __init__(self, state: DiagState) -> None:
        self.state = state
        self.previous: Any = None
        self.installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (an embedding program's thread: leave its signals)
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        self.installed = True

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.state.interrupted = "SIGTERM"
        raise KeyboardInterrupt("SIGTERM")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    options = read_options(config)
    state = DiagState(config, options, active=options.any_given or _targets_checks(config))
    config.stash[STATE] = state
    config.addinivalue_line("markers", "diag: a diag pre-flight check")
    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "diag.fixtures")
    if not config.pluginmanager.is_registered(dist_fixtures):
        config.pluginmanager.register(dist_fixtures, "diag.dist.fixtures")
    if state.active:
        config.pluginmanager.register(SessionHooks(state), "diag.session")
    if options.gpus is not None:
        _apply_gpus(state, options.gpus)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is not None:
        _restore_env(state)


class SessionHooks:
    """The hooks of an active session, bound to its state (pytester's nested runs each get their own)."""

    def __init__(self, state: DiagState) -> None:
        self.state = state
        self.interruption = _Interruption(state)

    def pytest_report_header(self, config: pytest.Config) -> str | None:
        try:
            return redact_text(header_line(self.state.topology))
        except Exception as exc:  # never block the run on the header; the checks will say what is wrong
            return redact_text(f"diag: could not read the node ({type(exc).__name__}: {exc})")

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist: hand each worker the controller's node and CUDA view, so NVML and the probe run once."""
        topology = self.state.topology
        node.workerinput[WORKER_TOPOLOGY] = {
            "node": node_to_dict(topology.node),
            "cuda": cuda_view_to_dict(topology.cuda),
        }

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
        report = yield
        if call.excinfo is not None and isinstance(call.excinfo.value, CheckFailed):
            report.user_properties.append((USER_PROPERTY, {"failure": call.excinfo.value.payload}))
        # JUnit XML writes every user property as it is (and xdist ships them to the controller): redacted here.
        report.user_properties = [(name, redact_data(value)) for name, value in report.user_properties]
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        with _library_warnings_kept(item):
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        with _library_warnings_kept(item):
            return (yield)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Under xdist the controller receives every worker's reports through this hook.
        if self.state.is_controller:
            self.state.record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and self.state.is_controller:
            self.state.record_collect_error(report)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.state.is_controller and not self.state.collect_only:
            self.interruption.install()
        self.state.remove_stale_maps()

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        if isinstance(excinfo.value, KeyboardInterrupt) and self.state.interrupted is None:
            self.state.interrupted = "KeyboardInterrupt"  # Ctrl-C (SIGTERM's handler set its own name first)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.state.write()

    def pytest_internalerror(self, excrepr: Any, excinfo: Any) -> None:
        self.state.internal_error = last_line(str(excrepr))
        self.state.write()

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        try:
            if self.state.written is None and self.state.write_error is None:
                self.state.write()  # the session ended before sessionfinish (interrupt, usage error): keep the report
        finally:
            self.interruption.restore()

    @pytest.hookimpl(optionalhook=True)
    def pytest_json_modifyreport(self, json_report: dict[str, Any]) -> None:
        """pytest-json-report: add the diag report as its `diag` section, and redact the whole file's content
        (test ids, captured output and tracebacks can quote the command line too)."""
        json_report["diag"] = self.state.report()
        redacted = redact_data(json_report)
        json_report.clear()
        json_report.update(redacted)

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if not self.state.is_controller:
            return
        terminalreporter.write_sep("-", "diag")

        def say(line: str, bold: bool = False) -> None:  # every line diag prints, through the one redaction
            terminalreporter.write_line(redact_text(line), bold=bold)

        if self.state.collect_only:
            say("diag report: not written (--collect-only: no check ran)")
            return
        for entry in self.state.results.values():
            plan = entry.get("data", {}).get("plan")
            if plan:
                say(f"plan for {entry['nodeid'].rsplit('[', 1)[-1].rstrip(']')}:")
                for line in plan_table(plan):
                    say("  " + line)
        for line in summary_lines(self.state.report()):
            say(line, bold=line.startswith(NEXT_STEP))
        if self.state.written is not None:
            say(f"diag report: {self.state.written}")
        else:
            say(f"diag report: could not write {self.state.report_path}: {self.state.write_error}")


_LIBRARY_WARNINGS = pytest.StashKey[list[str]]()


@contextlib.contextmanager
def _library_warnings_kept(item: pytest.Item) -> Iterator[None]:
    """Inside a diag check, the libraries' warnings go to the check's report entry, not pytest's warnings summary.

    Everything a check runs is diag's own use of accelerate, transformers and torch (planning, twins on simulated
    GPUs); their warnings there are not about the user's code (diag.noise). Other warnings pass on unchanged.
    """
    if item.get_closest_marker("diag") is None:
        yield
        return
    capture = contextlib.ExitStack()
    caught = capture.enter_context(captured_warnings())
    try:
        yield
    finally:
        capture.close()  # the filters in force before: what is handed on goes where it would have gone
        kept = item.stash.setdefault(_LIBRARY_WARNINGS, [])
        for warning in caught:
            if not from_library(warning):
                reemit(warning)
            elif (text := describe(warning)) not in kept:
                kept.append(text)
        if kept:
            item.user_properties.append((USER_PROPERTY, {"data": {"library_warnings": list(kept)}}))


def plan_table(rows: list[dict[str, Any]]) -> list[str]:
    """The plan as text: device, GPU, GiB planned, reserve and free, then what it holds."""
    lines = [f"{'device':8} {'GPU':>4} {'weights GiB':>11} {'reserve GiB':>11} {'free GiB':>9}  modules"]
    for row in rows:
        gpu = "" if row["nvml_index"] is None else str(row["nvml_index"])
        free = "" if row["free_gib"] is None else f"{row['free_gib']:.1f}"
        mark = f"  <- short by {row['shortfall_gib']:.1f} GiB" if row["shortfall_gib"] else ""
        lines.append(f"{row['device']:8} {gpu:>4} {row['planned_gib']:11.1f} {row['reserve_gib']:11.1f} "
                     f"{free:>9}  {row['modules'] or '-'}{mark}")  # fmt: skip
    return lines


def header_line(topology: Topology) -> str:
    """`diag: 4 of 8 GPUs selected: 4,5,6,7 -> cuda:0-3, NVIDIA A100-SXM4-80GB, driver …, simulated`."""
    node = topology.node
    if node.nvml_error is not None:
        return f"diag: no GPU node ({node.nvml_error.reason}); check anywhere with --simulate 8xA100-80GB"
    selection = topology.selection
    cuda = topology.cuda.devices
    cuda_text = f"cuda:0-{len(cuda) - 1}" if len(cuda) > 1 else ("cuda:0" if cuda else "no CUDA device")
    names = sorted({node.gpus[i].name for i in selection.nvml_indices}) or sorted({g.name for g in node.gpus})
    missing = f" (not on this node: {','.join(selection.missing)})" if selection.missing else ""
    driver = f"driver {node.driver_version} (CUDA {node.cuda_driver_version})"
    source = {"nvml": "nvml", "simulated": "simulated", "file": "replayed"}[node.source]
    return (
        f"diag: {len(selection.found)} of {len(node.gpus)} GPUs selected: "
        f"{','.join(e.token for e in selection.entries)}{missing} -> {cuda_text}, {' + '.join(names)}, "
        f"{driver}, {source}"
    )
