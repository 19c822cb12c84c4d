"""Every file diag reads goes through diag.reader: bad files and values are one-line errors, never a traceback or a
hang, with the exit code of the entry point (pytest options: 4, the wrapper: 2, merge: 2)."""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from diag.__main__ import main
from diag.devicemap.sources import DeviceMapSyntaxError, parse_device_map_option
from diag.dist.ranks import LaunchEnvError, launched_rank, rank_info
from diag.fleet import FleetError, load_report
from diag.launch.wrapper import main as wrapper_main
from diag.layout import local_rank
from diag.options import _processes
from diag.reader import InputError, load_json, read_text
from diag.report import build_report, write_report
from diag.topology.files import load_node, node_to_dict
from diag.topology.simulated import simulated_node
from diag.twins.spec import UnknownModel, resolve_model

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads raises RecursionError on this
FAST_S = 5.0  # every refusal below takes milliseconds; this only catches a hang or a read of /dev/zero


def _one_line(message: str) -> str:
    assert message and "\n" not in message and "Traceback" not in message
    return message


def _refused(call: Callable[[], Any], error: type[Exception]) -> str:
    started = time.monotonic()
    with pytest.raises(error) as caught:
        call()
    assert time.monotonic() - started < FAST_S
    return _one_line(str(caught.value))


def _node() -> dict[str, Any]:
    return node_to_dict(simulated_node("2xA100-80GB"))


def _write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# -- --topology ------------------------------------------------------------------------------------------------------
def _gpu0(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["gpus"][0].update(fields)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda d: d.update(gpus={"0": {}}), 'gpus: expected a list of GPUs, got {"0": {}}'),
        (lambda d: d.update(gpus=["GPU-0", "GPU-1"]), 'gpus[0]: expected an object, got "GPU-0"'),
        (_gpu0(memory_total_mib=float("inf")), "gpus[0].memory_total_mib: inf is not a finite number"),
        (_gpu0(compute_capability=[8]), "gpus[0].compute_capability: expected a pair [major, minor]"),
        (_gpu0(memory_total_mib="80GB"), 'gpus[0].memory_total_mib: expected a whole number of MiB >= 0, got "80GB"'),
        (_gpu0(memory_total_mib=-1), "gpus[0].memory_total_mib: expected a whole number of MiB >= 0, got -1"),
        (_gpu0(memory_used_mib=-5), "gpus[0].memory_used_mib: expected a whole number of MiB >= 0, got -5"),
        (_gpu0(processes=[{"pid": 7, "name": "python", "used_mib": "512"}]),
         'gpus[0].processes[0].used_mib: expected a whole number of MiB >= 0, got "512"'),
        (lambda d: d.update(driver_version=550), "driver_version: expected a string or null, got 550"),
        (lambda d: d["gpus"][1].update(uuid=d["gpus"][0]["uuid"]), "GPUs 0 and 1 share the UUID"),
        (lambda d: d["gpus"][0].pop("uuid"), "gpus[0].uuid: missing"),
        (lambda d: d.update(gpus=[{**d["gpus"][0], "nvml_index": i, "uuid": f"GPU-{i}"} for i in range(1025)]),
         "gpus: 1,025 GPUs, more than the 1,024 diag reads"),
        (lambda d: d.update(p2p=[[0, 5, True]]), "p2p[0][1]: expected a GPU index 0..1, got 5"),
        (lambda d: d.update(schema="diag-topology/0"), "schema is \"diag-topology/0\", expected 'diag-topology/1'"),
    ],
    ids=["gpus-object", "gpus-strings", "memory-1e999", "capability-[8]", "memory-80GB", "memory-negative",
         "used-negative", "process-used-string", "driver-int", "duplicate-uuid", "no-uuid", "1025-gpus",
         "p2p-out-of-range", "schema"],
)  # fmt: skip
def test_a_malformed_topology_names_the_field(tmp_path, change, said):
    data = _node()
    change(data)
    path = _write(tmp_path / "node.json", json.dumps(data).replace("Infinity", "1e999"))
    message = _refused(lambda: load_node(str(path)), argparse.ArgumentTypeError)
    assert message.startswith(f"{path}: ") and said in message


def test_a_valid_topology_still_loads_and_a_1000_gpu_one_in_seconds(tmp_path):
    node = load_node(str(_write(tmp_path / "node.json", _node())))
    assert len(node.gpus) == 2 and node.source == "file"
    data = _node()
    data["gpus"] = [{**data["gpus"][0], "nvml_index": i, "uuid": f"GPU-{i:04}"} for i in range(1000)]
    started = time.monotonic()
    assert len(load_node(str(_write(tmp_path / "big.json", data))).gpus) == 1000
    assert time.monotonic() - started < FAST_S


# -- files that are not regular files, for every reader ----------------------------------------------------------------
def _special(kind: str, tmp_path: Path) -> tuple[Path, str]:
    if kind == "fifo":
        path = tmp_path / "pipe.json"
        os.mkfifo(path)  # nothing ever writes to it: reading it would block forever
        return path, "is a FIFO (named pipe), not a regular file"
    if kind == "dev-zero":
        return Path("/dev/zero"), "is a character device, not a regular file"
    path = tmp_path / "folder.json"
    path.mkdir()
    return path, "is a directory, not a regular file"


READERS: dict[str, tuple[Callable[[str], Any], type[Exception]]] = {
    "topology": (load_node, argparse.ArgumentTypeError),
    "device-map-at": (lambda p: parse_device_map_option(f"@{p}"), DeviceMapSyntaxError),
    "merge": (load_report, FleetError),
    "model": (resolve_model, UnknownModel),
}


@pytest.mark.parametrize(
    ("reader_name", "kind"),
    # A folder given to --model is a checkpoint folder: its config.json is what is read (the next test).
    [(r, k) for r in sorted(READERS) for k in ("fifo", "dev-zero", "directory") if (r, k) != ("model", "directory")],
)
def test_only_regular_files_are_read(tmp_path, reader_name, kind):
    path, said = _special(kind, tmp_path)
    call, error = READERS[reader_name]
    message = _refused(lambda: call(str(path)), error)
    assert f"{path}: {said}" in message


def test_a_checkpoint_folder_whose_config_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "config.json")
    message = _refused(lambda: resolve_model(str(tmp_path)), UnknownModel)
    assert "config.json: is a FIFO (named pipe), not a regular file" in message


def test_the_size_is_capped_before_reading(tmp_path):
    path = _write(tmp_path / "big.json", "[" + "0," * 1000 + "0]")
    with pytest.raises(InputError, match=r"big\.json: 2003 bytes, larger than the 1000 bytes diag reads"):
        read_text(path, limit=1000)
    assert read_text(path, limit=2003).startswith("[0,")


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (DEEP, "nested deeper than 64 levels"),
        ('{"a": ' * 65 + "1" + "}" * 65, "a.a.a.a.a.a…: nested deeper than 64 levels"),
        ('{"x": 1e999}', "x: inf is not a finite number"),
        ('{"x": NaN}', "x: nan is not a finite number"),
        ('{"x": ' + "9" * 5000 + "}", "not usable JSON (Exceeds the limit"),
        ("{", "not valid JSON (Expecting property name"),
    ],
    ids=["100000-deep", "65-deep", "infinite", "nan", "5000-digits", "cut-off"],
)
def test_json_structure_is_bounded(tmp_path, text, said):
    path = _write(tmp_path / "in.json", text)
    message = _refused(lambda: load_json(path), InputError)
    assert message.startswith(f"{path}: ") and said in message


# -- --model configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "said"),
    [
        ([{"model_type": "llava"}], "holds a JSON list, not a config object"),
        ({"model_type": "llava", "text_config": [], "vision_config": {}}, "text_config: expected an object"),
        ({"model_type": "llava", "text_config": {}, "vision_config": [1]}, "vision_config: expected an object"),
        ({"architectures": ["InternVLChatModel"], "llm_config": ["LlamaForCausalLM"]},
         "llm_config: expected an object"),
        ({"model_type": "llava", "architectures": {"a": 1}}, "architectures: expected a list of class names"),
        ({"model_type": "llava", "text_config": {"num_hidden_layers": 1_000_000}},
         "text_config.num_hidden_layers: expected a whole number of layers, 0 to 10,000, got 1000000"),
        ({"architectures": ["InternVLChatModel"], "vision_config": {"num_hidden_layers": 10_001}},
         "vision_config.num_hidden_layers: expected a whole number of layers"),
    ],
    ids=["top-level-list", "text-config-list", "vision-config-list", "llm-config-list", "architectures-object",
         "million-layers", "vision-layers"],
)  # fmt: skip
def test_a_malformed_config_names_the_field_in_milliseconds(tmp_path, config, said):
    path = _write(tmp_path / "config.json", config)
    message = _refused(lambda: resolve_model(str(path)), UnknownModel)
    assert message.startswith(f"--model {path}: {path}: ") and said in message


# -- --device-map ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('{"a": ' + DEEP + "}", "nested deeper than 64 levels"),
        (DEEP, "nested deeper than 64 levels"),
        ("@/dev/zero", "file /dev/zero: is a character device, not a regular file"),
        ('{"a": [1], "b": {}, "c": 1.5, "d": null, "e": 0}', "(and 1 more) must be a GPU number"),
    ],
    ids=["deep-inline", "deep-list-inline", "at-dev-zero", "bad-values"],
)
def test_a_bad_device_map_is_one_line(value, said):
    message = _refused(lambda: parse_device_map_option(value), DeviceMapSyntaxError)
    assert said in message and len(message) < 600  # a 200,000-character value is not echoed whole


def test_a_deep_or_huge_map_file_is_refused(tmp_path):
    deep = _write(tmp_path / "deep.json", DEEP)
    assert "nested deeper than 64 levels" in _refused(lambda: parse_device_map_option(f"@{deep}"),
                                                      DeviceMapSyntaxError)  # fmt: skip
    huge = _write(tmp_path / "huge.json", {f"layers.{i}": 0 for i in range(100_001)})
    message = _refused(lambda: parse_device_map_option(f"--device-map={huge}"[13:]), DeviceMapSyntaxError)
    assert "100,001 modules, more than the 100,000 diag reads" in message
    fine = _write(tmp_path / "fine.json", {f"layers.{i}": i % 8 for i in range(100_000)})
    assert len(parse_device_map_option(f"@{fine}").value) == 100_000  # type: ignore[arg-type]


# -- launcher variables, --processes, the wrapper ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["²", "٣", "1²", " ", "-1", "1e3"])
def test_rank_variables_take_ascii_whole_numbers_only(value):
    env = {"RANK": value, "WORLD_SIZE": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "29500", "LOCAL_RANK": "0"}
    if value.strip():
        message = _refused(lambda: rank_info(env), LaunchEnvError)
        assert message == f"RANK={value!r}: expected a whole number >= 0"
    assert launched_rank(env) is None
    assert local_rank({"LOCAL_RANK": value}) is None


@pytest.mark.parametrize(
    ("value", "said"),
    [("0", "1 or more"), ("²", "1 or more"), ("4097", "more than the 4,096 processes per node"),
     ("1000000000", "more than the 4,096"), ("9" * 5000, "1 or more")],
)  # fmt: skip
def test_processes_are_bounded_at_parse_time(value, said):
    assert said in _refused(lambda: _processes(value), argparse.ArgumentTypeError)
    assert _processes("4096") == 4096 and _processes(" 8 ") == 8


@pytest.mark.parametrize("command", [[""], ["  ", "--model", "llava_hf"]])
def test_the_wrapper_refuses_an_empty_program(capsys, command):
    assert wrapper_main(["--simulate", "2xA100-80GB", "--", *command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: the command after `--` starts with an empty word" in err
    assert "Traceback" not in err


# -- python -m diag merge ----------------------------------------------------------------------------------------------
def _report() -> dict[str, Any]:
    return build_report(command=["pytest"], topology=None, checks=[], duration_s=0.1, environ={}, host="h")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (lambda r: r.update(topology=None), "topology: expected an object, got null"),
        (lambda r: r.update(summary=None), "summary: expected an object, got null"),
        (lambda r: r.update(checks=[1, 2]), "checks[0]: expected an object, got 1"),
        (lambda r: r.update(checks={"a": 1}), 'checks: expected a list of checks, got {"a": 1}'),
        (lambda r: r.update(checks=[{"nodeid": ["x"], "outcome": "failed"}]),
         'checks[0].nodeid: expected a pytest node id, got ["x"]'),
        (lambda r: r.update(launch={"rank": "0"}), 'launch.rank: expected a whole number from 0 to 1,048,576, got "0"'),
        (lambda r: r["topology"].update(gpus={"0": 1}), "topology.gpus: expected a list of objects"),
        (lambda r: r.update(extra=json.loads("[" * 900 + "]" * 900)), "nested deeper than 64 levels"),
        (DEEP, "nested deeper than 64 levels"),
        ("/dev/zero", "/dev/zero: is a character device, not a regular file"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
    ],
    ids=["null-topology", "null-summary", "checks-not-objects", "checks-object", "nodeid-list", "rank-string",
         "gpus-object", "deep-field", "100000-deep", "dev-zero", "fifo"],
)  # fmt: skip
def test_merge_refuses_bad_reports_with_one_line_and_exit_2(tmp_path, capsys, content, said):
    if content == "/dev/zero":
        path = Path("/dev/zero")
    elif content == "fifo":
        path = tmp_path / "r.json"
        os.mkfifo(path)
    elif isinstance(content, str):
        path = _write(tmp_path / "r.json", content)
    else:
        report = copy.deepcopy(_report())
        content(report)
        path = _write(tmp_path / "r.json", report)
    started = time.monotonic()
    assert main(["merge", str(path), "-o", str(tmp_path / "fleet.json")]) == 2
    assert time.monotonic() - started < FAST_S
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"python -m diag merge: error: {path}: ") and said in err
    assert "Traceback" not in err and not (tmp_path / "fleet.json").exists()


def test_merge_still_merges_a_report_without_a_launcher(tmp_path, capsys):
    path = write_report(tmp_path / "r.json", _report())
    assert main(["merge", str(path), "-o", str(tmp_path / "fleet.json")]) == 0
    assert json.loads((tmp_path / "fleet.json").read_text())["summary"]["reports"] == 1


# -- end to end: pytest's usage error (exit 4), no traceback, in seconds -----------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--topology", "pipe.json"], {}, "*argument --topology: pipe.json: is a FIFO (named pipe), not a regular*"),
        (["--topology", "bad.json"], {}, "*argument --topology: bad.json: gpus: expected a list of GPUs, got {}*"),
        (["--device-map=@/dev/zero"], {}, "*--device-map '@/dev/zero': file /dev/zero: is a character device*"),
        (["--processes", "1000000000"], {}, "*argument --processes: '1000000000': more than the 4,096 processes*"),
        ([], {"LOCAL_WORLD_SIZE": "1000000000"}, "*LOCAL_WORLD_SIZE=1000000000: more than the 4,096 processes*"),
    ],
    ids=["topology-fifo", "topology-gpus-object", "device-map-dev-zero", "processes", "local-world-size"],
)
def test_bad_inputs_are_usage_errors_end_to_end(pytester, monkeypatch, args, env, line):
    os.mkfifo(pytester.path / "pipe.json")
    pytester.path.joinpath("bad.json").write_text(json.dumps({**_node(), "gpus": {}}))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "2xA100-80GB", *args)
    assert time.monotonic() - started < 30
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_a_unicode_digit_rank_is_a_dist_008_finding_with_a_report(run_checks, monkeypatch):
    for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "²")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = run_checks("--simulate", "2xA100-80GB", target="checks/test_collective.py")
    entry = run.check("test_launcher_environment_is_usable")
    assert entry["code"] == "DIST-008" and entry["message"] == "RANK='²': expected a whole number >= 0."
    assert run.report["launch"] == {"error": "RANK='²': expected a whole number >= 0"}
    assert "Traceback" not in run.result.stdout.str() + run.result.stderr.str()


def test_a_fifo_at_the_report_path_does_not_block_the_look_for_stale_maps(tmp_path):
    from diag.session import stale_map_files

    os.mkfifo(tmp_path / "diag-report.json")  # reading the previous report there would block forever
    started = time.monotonic()
    assert stale_map_files(tmp_path / "diag-report.json") == []
    assert time.monotonic() - started < FAST_S


def test_a_unicode_digit_in_cuda_visible_devices_names_no_gpu():
    from diag.topology.selection import resolve_selection

    selection = resolve_selection(simulated_node("2xA100-80GB"), None, {"CUDA_VISIBLE_DEVICES": "0,²"})
    assert selection.nvml_indices == (0,) and selection.missing == ("²",)
