"""Bad input on the command line: one line naming the option, the value and what is expected; no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diag.__main__ import main
from diag.topology.files import load_node


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--gpus", "4,x"], "*argument --gpus: '4,x' has 'x': expected comma-separated GPU indices*"),
        (["--gpus", ""], "*argument --gpus: empty value '': expected*"),
        (["--gpus", "1,1"], "*argument --gpus: '1,1' names '1' twice*"),
        (["--simulate", "0xA100-80GB"], "*argument --simulate: '0xA100-80GB' has *: count and memory must be 1*"),
        (["--simulate", "banana"], "*argument --simulate: 'banana' is not a node: expected NxNAME-MEMGB*"),
        (["--topology", "missing.json"], "*argument --topology: missing.json: no such file*"),
        (["--topology", "bad.json"], "*argument --topology: bad.json: not valid JSON (Expecting*"),
        (["--topology", "other.json"], "*argument --topology: other.json: schema is null, expected 'diag-topology/1'*"),
        (["--processes", "0"], "*argument --processes: '0': expected a whole number of processes, 1 or more*"),
        (
            ["--simulate", "2xA100-80GB", "--topology", "node.json"],
            "*--simulate and --topology both describe the node*",
        ),
    ],
)
def test_bad_options_are_one_line_usage_errors(pytester, args, line):
    pytester.makefile(".json", bad="{not json", other='{"gpus": []}')
    pytester.path.joinpath("node.json").write_text(pytester.path.joinpath("other.json").read_text())
    if "node.json" in args:  # a valid node, so the conflict itself is what fails
        from diag.topology.files import node_to_dict
        from diag.topology.simulated import simulated_node

        pytester.path.joinpath("node.json").write_text(json.dumps(node_to_dict(simulated_node("2xA100-80GB"))))
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_topology_command_round_trips_through_replay(tmp_path, capsys):
    assert main(["topology", "--simulate", "4xH100-80GB"]) == 0
    data = json.loads(capsys.readouterr().out)
    path = tmp_path / "node.json"
    path.write_text(json.dumps(data))
    node = load_node(str(path))
    assert node.source == "file" and len(node.gpus) == 4 and node.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert main(["topology", "--topology", str(path), "--gpus", "2,3"]) == 0
    view = json.loads(capsys.readouterr().out)["view"]
    assert view["nvml_indices"] == [2, 3] and [d["cuda_index"] for d in view["cuda"]["devices"]] == [0, 1]


def test_topology_command_on_a_machine_without_a_driver_says_so():
    result = subprocess.run([sys.executable, "-m", "diag", "topology"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "NVML library not found" in json.loads(result.stdout)["nvml_error"]["reason"]


def test_topology_command_rejects_a_bad_spec_in_one_line():
    result = subprocess.run([sys.executable, "-m", "diag", "topology", "--simulate", "banana"], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m diag topology: error: argument --simulate")


def test_pytest_without_arguments_collects_tests_only():
    from tests.conftest import REPO

    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    assert ids and all(line.startswith("tests/") for line in ids)
