"""End to end: the shipped checks/test_env.py on simulated and replayed nodes, through pytester."""

from __future__ import annotations

import os

import jsonschema
import pytest

from tests.conftest import SCHEMA


@pytest.fixture
def run_checks(run_checks):
    """The environment checks alone: checks/test_env.py."""
    return lambda *args, **kw: run_checks(*args, target="checks/test_env.py", **kw)


ENV_CHECKS = {
    "test_nvidia_driver_and_nvml_answer",
    "test_selected_gpus_exist",
    "test_torch_is_a_cuda_build_the_driver_supports",
    "test_torch_sees_exactly_the_selected_gpus",
    "test_cuda_numbering_agrees_with_nvidia_smi",
    "test_selected_gpus_can_reach_their_peers",
}


@pytest.mark.parametrize("spec", ["1xP40-24GB", "4xA100-80GB", "8xA100-80GB"])
def test_an_idle_simulated_node_passes(run_checks, spec):
    run = run_checks("--simulate", spec)
    count = int(spec.split("x")[0])
    run.result.assert_outcomes(passed=len(ENV_CHECKS) - (count == 1) + 3 * count, skipped=int(count == 1))
    assert run.report["summary"]["failed"] == 0
    assert [g["cuda_index"] for g in run.report["topology"]["gpus"]] == list(range(count))
    jsonschema.validate(run.report, SCHEMA)


def test_a_subset_maps_physical_gpus_to_cuda_0_to_3(run_checks):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5,6,7")
    run.result.assert_outcomes(passed=len(ENV_CHECKS) + 12)
    cuda = {g["nvml_index"]: g["cuda_index"] for g in run.report["topology"]["gpus"]}
    assert cuda == {0: None, 1: None, 2: None, 3: None, 4: 0, 5: 1, 6: 2, 7: 3}
    assert run.report["topology"]["selected"] == ["4", "5", "6", "7"]
    assert run.report["environment"]["env"]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert run.report["environment"]["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    run.result.stdout.fnmatch_lines(
        [
            "diag: 4 of 8 GPUs selected: 4,5,6,7 -> cuda:0-3, NVIDIA A100-SXM4-80GB, "
            "driver 550.54.15 (CUDA 12.4), simulated"
        ]
    )
    assert {"test_selected_gpu_is_free[gpu4]", "test_selected_gpu_is_free[gpu7]"} <= set(run.outcomes())


def test_gpus_option_does_not_leak_into_the_calling_process(run_checks):
    before = (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER"))
    run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5")
    assert (os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("CUDA_DEVICE_ORDER")) == before


def test_existing_cuda_visible_devices_is_respected_without_gpus(run_checks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    run = run_checks("--simulate", "8xA100-80GB")
    assert run.report["topology"]["selection"]["origin"] == "CUDA_VISIBLE_DEVICES"
    assert run.report["topology"]["selected"] == ["2", "3"]
    assert run.cuda_map() == {
        2: 0,
        3: 1,
    }
    assert run.report["summary"]["failed"] == 0


def test_gpus_by_uuid_and_unique_prefix(run_checks, node_file):
    from diag.topology.simulated import simulated_node

    node = simulated_node("8xA100-80GB")
    six, three = node.gpus[6].uuid, node.gpus[3].uuid
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", f"{six},{three[:12]}")
    assert run.report["summary"]["failed"] == 0, run.text
    assert run.cuda_map() == {
        6: 0,
        3: 1,
    }


def test_a_busy_gpu_fails_exactly_its_check_and_names_free_gpus(run_checks, node_file):
    busy = {"processes": [{"pid": 4242, "name": "python", "used_mib": 30512}], "memory_used_mib": 31000}
    run = run_checks("--topology", str(node_file("8xA100-80GB", {0: busy})), "--gpus", "0,1,2,3")
    failed = [c for c in run.report["checks"] if c["outcome"] == "failed"]
    assert [c["nodeid"].split("::")[1] for c in failed] == ["test_selected_gpu_is_free[gpu0]"]
    entry = failed[0]
    assert entry["code"] == "ENV-006"
    assert "pid 4242 (python, 30512 MiB)" in entry["message"]
    assert "--gpus 1,2,3,4" in entry["fix"]["summary"]
    assert entry["fix"]["env"] == {"CUDA_VISIBLE_DEVICES": "1,2,3,4", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert entry["fix"]["verified"] is False
    assert entry["references"]
    assert run.report["topology"]["source"] == "file"
    run.result.stdout.fnmatch_lines(
        ["next step: [[]ENV-006[]] GPU 0: Use free GPUs: --gpus 1,2,3,4*", "diag report: *diag-report.json"]
    )
    jsonschema.validate(run.report, SCHEMA)


def test_memory_held_by_an_unlisted_process_counts_as_busy(run_checks, node_file):
    run = run_checks("--topology", str(node_file("4xA100-80GB", {2: {"memory_used_mib": 20000}})))
    entry = run.check("test_selected_gpu_is_free[gpu2]")
    assert entry["outcome"] == "failed" and "20000 MiB used by a process NVML does not list" in entry["message"]
    assert "--gpus 0,1,3" in entry["fix"]["summary"] and "Only 3 GPUs are free" in entry["fix"]["summary"]


def test_a_gpu_missing_from_the_node_fails_visibility_and_the_report_is_written(run_checks):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "9")
    entry = run.check("test_selected_gpus_exist")
    assert entry["outcome"] == "failed" and entry["code"] == "ENV-002"
    assert "9" in entry["message"] and "0-7" in entry["message"]
    assert run.report["topology"]["selection"]["missing"] == ["9"]
    assert run.check("test_selected_gpu_is_free[no-gpu]")["outcome"] == "skipped"


def test_an_unknown_uuid_is_named(run_checks):
    run = run_checks("--simulate", "4xA100-80GB", "--gpus", "0,GPU-deadbeef")
    entry = run.check("test_selected_gpus_exist")
    assert entry["outcome"] == "failed" and "GPU-deadbeef" in entry["message"]


def test_on_a_mixed_node_cuda_order_differs_unless_pci_bus_id(run_checks, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    run = run_checks("--simulate", "2xV100-32GB+2xA100-80GB")
    entry = run.check("test_torch_sees_exactly_the_selected_gpus")
    assert entry["outcome"] == "failed" and entry["code"] == "ENV-005"
    assert entry["fix"]["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    # To paste: this run again with the variables set (no eval command was given).
    assert entry["fix"]["commands"][0].startswith("CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1 pytest ")
    # With --eval-command, that command with the variables set in front of it.
    eval_run = run_checks("--simulate", "2xV100-32GB+2xA100-80GB", "--eval-command",
                          "CUDA_VISIBLE_DEVICES=0,1 python -m lmms_eval --model llava_hf")  # fmt: skip
    assert eval_run.check("test_torch_sees_exactly_the_selected_gpus")["fix"]["commands"] == [
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=0,1 python -m lmms_eval --model llava_hf"]  # fmt: skip
    # With --gpus diag sets PCI_BUS_ID itself: the same GPUs pass.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert run_checks("--simulate", "2xV100-32GB+2xA100-80GB", "--gpus", "0,1").report["summary"]["failed"] == 0


def test_all_gpus_of_a_mixed_node_in_fastest_first_order_fail_numbering(run_checks):
    run = run_checks("--simulate", "2xV100-32GB+2xA100-80GB")
    entry = run.check("test_cuda_numbering_agrees_with_nvidia_smi")
    assert entry["outcome"] == "failed" and entry["code"] == "ENV-005"
    assert "cuda:0 is GPU 2" in entry["message"]
    peers = run.check("test_selected_gpus_can_reach_their_peers")
    assert peers["outcome"] == "passed" and [w["code"] for w in peers["warnings"]] == ["ENV-009"]
    assert peers["data"]["p2p"]["matrix"][0][2] is False


def test_mig_mode_and_pending_repairs_fail_their_own_checks(run_checks, node_file):
    path = node_file("4xA100-80GB", {1: {"mig_mode": True}, 3: {"remapped_rows_pending": True}})
    run = run_checks("--topology", str(path))
    assert {k: v for k, v in run.outcomes().items() if v != "passed"} == {
        "test_selected_gpu_is_not_in_mig_mode[gpu1]": "failed",
        "test_selected_gpu_has_no_memory_repairs_pending[gpu3]": "failed",
    }
    assert run.check("test_selected_gpu_is_not_in_mig_mode[gpu1]")["code"] == "ENV-007"
    assert run.check("test_selected_gpu_has_no_memory_repairs_pending[gpu3]")["code"] == "ENV-008"


def test_a_driver_too_old_for_torch_fails_and_a_minor_gap_warns(run_checks, node_file):
    old = run_checks("--topology", str(node_file("2xA100-80GB", cuda_driver_version="11.8", torch_cuda="12.4")))
    assert old.check("test_torch_is_a_cuda_build_the_driver_supports")["code"] == "ENV-004"
    minor = run_checks("--topology", str(node_file("2xA100-80GB", cuda_driver_version="12.2", torch_cuda="12.4")))
    entry = minor.check("test_torch_is_a_cuda_build_the_driver_supports")
    assert entry["outcome"] == "passed" and [w["code"] for w in entry["warnings"]] == ["ENV-004"]


def test_a_replayed_cpu_only_torch_fails_the_build_check_and_skips_visibility(run_checks, node_file):
    run = run_checks("--topology", str(node_file("2xA100-80GB", torch_cuda=None, torch_version="2.4.1+cpu")))
    entry = run.check("test_torch_is_a_cuda_build_the_driver_supports")
    assert entry["code"] == "ENV-004"
    assert entry["message"].startswith("torch 2.4.1+cpu where the node was captured cannot use any GPU")
    assert run.check("test_torch_sees_exactly_the_selected_gpus")["outcome"] == "skipped"


def test_a_replay_is_judged_by_the_captured_cuda_torch_not_this_machines(run_checks, node_file):
    """This machine's torch is a CPU-only build; the capture's torch (CUDA 12.1, driver 12.4) is what counts."""
    from diag.report import installed_torch_cuda

    assert installed_torch_cuda() is None
    run = run_checks("--topology", str(node_file("2xA100-80GB", torch_cuda="12.1", torch_version="2.4.1+cu121")))
    assert run.check("test_torch_is_a_cuda_build_the_driver_supports")["outcome"] == "passed"
    assert run.report["summary"]["failed"] == 0, run.text


def test_a_capture_that_does_not_record_torch_skips_the_build_check(run_checks, node_file):
    run = run_checks("--topology", str(node_file("2xA100-80GB", torch_cuda=None, torch_version=None)))
    entry = run.check("test_torch_is_a_cuda_build_the_driver_supports")
    assert entry["outcome"] == "skipped"
    assert "the capture does not record the eval environment's torch" in entry["message"]
    # The selection is still judged as a CUDA build of torch would see it.
    assert run.check("test_torch_sees_exactly_the_selected_gpus")["outcome"] == "passed"
    assert run.report["summary"]["failed"] == 0, run.text


def test_without_a_driver_only_the_driver_check_fails(run_checks):
    # This machine has no NVIDIA driver: the real provider's answer, not a fake.
    run = run_checks()
    failed = {k for k, v in run.outcomes().items() if v == "failed"}
    assert failed == {"test_nvidia_driver_and_nvml_answer"}
    entry = run.check("test_nvidia_driver_and_nvml_answer")
    assert entry["code"] == "ENV-001" and "--simulate" in entry["fix"]["summary"]
    assert run.report["topology"]["source"] == "nvml"
    run.result.stdout.fnmatch_lines(["diag: no GPU node (*); check anywhere with --simulate 8xA100-80GB"])


def test_xdist_workers_get_the_selection_and_the_controller_writes_one_report(run_checks, node_file):
    busy = {"processes": [{"pid": 7, "name": "vllm", "used_mib": 70000}], "memory_used_mib": 70000}
    run = run_checks("--topology", str(node_file("8xA100-80GB", {5: busy})), "--gpus", "4,5,6,7", "-n", "2")
    assert run.report["summary"]["failed"] == 1
    assert run.check("test_selected_gpu_is_free[gpu5]")["code"] == "ENV-006"
    assert run.report["summary"]["passed"] == len(ENV_CHECKS) + 11


def test_pytest_json_report_gets_a_diag_section(run_checks, pytester):
    path = pytester.path / "j.json"
    run = run_checks("--simulate", "2xA100-80GB", "--json-report", f"--json-report-file={path}")
    import json

    data = json.loads(path.read_text())
    assert data["diag"]["schema"] == "diag-report/1"
    assert data["diag"]["summary"]["passed"] == run.report["summary"]["passed"]
