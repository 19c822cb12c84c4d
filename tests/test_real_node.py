"""The real-node path (NVML + CUDA probe) through the plugin, with NVML and the probe's child faked.

The same checks run as in simulation; only the providers differ. The probe's child is replaced by a runner
that answers as torch would for the environment it is given, so these tests also show that diag hands the
child the CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER it applied.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

import diag.topology.probe as probe
from tests.fakes import FakeGpu, FakeNvml

UUIDS = [f"GPU-{n:08x}-aaaa-bbbb-cccc-0000000000{n:02d}" for n in range(8)]


def _node(busy: dict[int, Any] | None = None) -> list[FakeGpu]:
    gpus = [FakeGpu(uuid=UUIDS[n], bus_id=f"00000000:{0x10 + n:02X}:00.0") for n in range(8)]
    for nvml_index, processes in (busy or {}).items():
        gpus[nvml_index].compute_processes = processes
    return gpus


class TorchLikeChild:
    """Answers the probe like torch on this node would: the GPUs CUDA_VISIBLE_DEVICES names, as bare UUIDs."""

    def __init__(self, order: list[int] | None = None, torch_cuda: str | None = "12.1") -> None:
        self.order = order
        self.torch_cuda = torch_cuda
        self.envs: list[dict[str, str]] = []

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        env = kwargs["env"]
        self.envs.append(dict(env))
        visible = [int(t) for t in env.get("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7").split(",")]
        chosen = self.order if self.order is not None else visible
        devices = [
            {"cuda_index": i, "uuid": UUIDS[n].removeprefix("GPU-"), "name": "NVIDIA A100-SXM4-80GB",
             "memory_total_mib": 81050}
            for i, n in enumerate(chosen)
        ]  # fmt: skip
        answer = {"torch_version": "2.4.1+cu121", "torch_cuda": self.torch_cuda, "error": None,
                  "devices": devices if self.torch_cuda else [], "peer_access": []}  # fmt: skip
        return subprocess.CompletedProcess(args, 0, json.dumps(answer) + "\n", "")


@pytest.fixture
def run_checks(run_checks):
    """The environment checks alone: the faked node has no GPU a twin could run on."""
    return lambda *args, **kw: run_checks(*args, target="checks/test_env.py", **kw)


@pytest.fixture
def real_node(monkeypatch):
    def install(gpus: list[FakeGpu], child: TorchLikeChild) -> TorchLikeChild:
        FakeNvml(gpus).install(monkeypatch)
        real_run_probe = probe.run_probe
        monkeypatch.setattr(probe, "run_probe", lambda env, **kw: real_run_probe(env, runner=child))
        return child

    return install


def test_a_free_selection_passes_and_the_child_gets_the_applied_environment(run_checks, real_node):
    child = real_node(_node(), TorchLikeChild())
    run = run_checks("--gpus", "4,5,6,7")
    assert run.report["summary"]["failed"] == 0, run.text
    assert run.report["topology"]["source"] == "nvml"
    assert run.cuda_map() == {4: 0, 5: 1, 6: 2, 7: 3}
    assert len(child.envs) == 1  # the probe runs once per session
    assert child.envs[0]["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    assert child.envs[0]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    run.result.stdout.fnmatch_lines(["diag: 4 of 8 GPUs selected: 4,5,6,7 -> cuda:0-3, *driver 550.54.15*, nvml"])


def test_a_busy_gpu_on_a_real_node(run_checks, real_node):
    from types import SimpleNamespace

    busy = {1: [SimpleNamespace(pid=31337, usedGpuMemory=40 * 1024**3)]}
    real_node(_node(busy), TorchLikeChild())
    run = run_checks("--gpus", "0,1")
    entry = run.check("test_selected_gpu_is_free[gpu1]")
    assert entry["code"] == "ENV-006" and "pid 31337" in entry["message"] and "40960 MiB" in entry["message"]
    assert "--gpus 0,2" in entry["fix"]["summary"]


def test_torch_seeing_other_gpus_fails_visibility(run_checks, real_node):
    real_node(_node(), TorchLikeChild(order=[0, 1]))  # e.g. a launcher reset CUDA_VISIBLE_DEVICES
    run = run_checks("--gpus", "4,5")
    entry = run.check("test_torch_sees_exactly_the_selected_gpus")
    assert entry["outcome"] == "failed" and entry["code"] == "ENV-003"
    assert "GPU 4" in entry["message"] and "cuda:0 = GPU 0" in entry["message"]
    assert entry["fix"]["env"] == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "4,5"}


def test_torch_numbering_the_selection_in_another_order_fails_numbering(run_checks, real_node):
    real_node(_node(), TorchLikeChild(order=[5, 4]))
    run = run_checks("--gpus", "4,5")
    assert run.check("test_torch_sees_exactly_the_selected_gpus")["outcome"] == "passed"
    entry = run.check("test_cuda_numbering_agrees_with_nvidia_smi")
    assert entry["outcome"] == "failed" and entry["code"] == "ENV-005" and "cuda:0 is GPU 5" in entry["message"]


def test_a_cpu_only_torch_on_a_gpu_node(run_checks, real_node):
    real_node(_node(), TorchLikeChild(torch_cuda=None))
    run = run_checks("--gpus", "0")
    assert run.check("test_torch_is_a_cuda_build_the_driver_supports")["code"] == "ENV-004"
    assert run.check("test_torch_sees_exactly_the_selected_gpus")["outcome"] == "skipped"


def test_xdist_workers_do_not_repeat_nvml_or_the_probe(run_checks, real_node, tmp_path):
    child = real_node(_node(), TorchLikeChild())
    run = run_checks("--gpus", "2,3", "-n", "2")
    assert run.report["summary"]["failed"] == 0
    # Workers are separate processes without the fakes: had they read NVML themselves (no driver here),
    # the driver check would fail in them. The controller ran the probe once and handed its answer down.
    assert len(child.envs) == 1
    assert run.report["summary"]["passed"] > 6


@pytest.mark.parametrize(("torch_cuda", "outcome"), [("12.1", "passed"), (None, "failed")])
def test_a_capture_records_the_eval_torch_and_its_replay_is_judged_by_it(
    run_checks, real_node, tmp_path, capsys, torch_cuda, outcome
):
    """`python -m diag topology` on the GPU node records its torch; replayed here (a CPU-only torch), ENV-004
    judges the recorded one: a CUDA build passes, a CPU-only one fails with the captured version."""
    from diag.__main__ import main
    from diag.topology.files import load_node

    real_node(_node(), TorchLikeChild(torch_cuda=torch_cuda))
    assert main(["topology"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["torch_version"], data["torch_cuda"]) == ("2.4.1+cu121", torch_cuda)
    path = tmp_path / "node.json"
    path.write_text(json.dumps(data))
    assert load_node(str(path)).torch_recorded
    run = run_checks("--topology", str(path))
    entry = run.check("test_torch_is_a_cuda_build_the_driver_supports")
    assert entry["outcome"] == outcome, run.text
    if outcome == "failed":
        assert entry["code"] == "ENV-004" and entry["message"].startswith("torch 2.4.1+cu121 where the node was")
