"""read_node against a fake NVML installed with monkeypatch, plus the real call on this GPU-less machine."""

from __future__ import annotations

import ctypes.util
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from diag.topology.nvml import read_node
from diag.topology.records import GpuProcess
from tests.fakes import GIB, MIB, NO_SUCH_PID, FakeGpu, FakeNvml, MigHandle  # noqa: F401


def proc(pid: int, used_bytes: int | None) -> SimpleNamespace:
    return SimpleNamespace(pid=pid, usedGpuMemory=used_bytes)


def four_gpus() -> list[FakeGpu]:
    return [
        FakeGpu(
            name=b"NVIDIA A100-SXM4-80GB",
            uuid=b"GPU-aaaaaaaa-0000-0000-0000-000000000000",
            bus_id=b"00000000:07:00.0",
            memory=SimpleNamespace(total=85_899_345_920, used=3 * MIB + 1),
        ),
        FakeGpu(
            name="NVIDIA A100-SXM4-80GB",
            uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000",
            bus_id="00000000:0F:00.0",
            memory=SimpleNamespace(total=85_899_345_920 + MIB - 1, used=MIB - 1),
        ),
        FakeGpu(name="Tesla V100-SXM2-32GB", uuid="GPU-cccccccc", bus_id=b"00000000:47:00.0\x00"),
        FakeGpu(name="NVIDIA H100 80GB HBM3", uuid="GPU-dddddddd", bus_id="00000000:4E:00.0"),
    ]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    return FakeNvml(four_gpus()).install(monkeypatch)


def test_gpus_come_in_nvml_index_order_with_decoded_identity(fake: FakeNvml) -> None:
    node = read_node("node-a")
    assert [g.nvml_index for g in node.gpus] == [0, 1, 2, 3]
    assert [g.name for g in node.gpus] == [
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA A100-SXM4-80GB",
        "Tesla V100-SXM2-32GB",
        "NVIDIA H100 80GB HBM3",
    ]
    assert node.gpus[0].uuid == "GPU-aaaaaaaa-0000-0000-0000-000000000000"
    assert node.gpus[1].uuid == "GPU-bbbbbbbb-0000-0000-0000-000000000000"
    assert [g.pci_bus_id for g in node.gpus] == [
        "00000000:07:00.0",
        "00000000:0F:00.0",
        "00000000:47:00.0",
        "00000000:4E:00.0",
    ]


def test_memory_is_floored_to_mib(fake: FakeNvml) -> None:
    gpu0, gpu1 = read_node("node-a").gpus[:2]
    assert (gpu0.memory_total_mib, gpu0.memory_used_mib) == (81920, 3)
    assert (gpu1.memory_total_mib, gpu1.memory_used_mib) == (81920, 0)
    assert gpu0.memory_free_mib == 81917


def test_compute_capability_is_a_pair(fake: FakeNvml) -> None:
    fake.gpus[2].compute_capability = [7, 0]
    node = read_node("node-a")
    assert node.gpus[0].compute_capability == (8, 0)
    assert node.gpus[2].compute_capability == (7, 0)


def test_node_wide_driver_facts(fake: FakeNvml) -> None:
    fake.driver_version = b"550.54.15"
    node = read_node("node-a")
    assert node.source == "nvml"
    assert node.hostname == "node-a"
    assert node.nvml_error is None
    assert node.driver_version == "550.54.15"
    assert node.cuda_driver_version == "12.4"


def test_hostname_defaults_to_this_machine(fake: FakeNvml) -> None:
    assert read_node().hostname == socket.gethostname()


@pytest.mark.parametrize(
    ("raw", "shown"),
    [(12040, "12.4"), (12020, "12.2"), (11080, "11.8"), (12090, "12.9"), (13000, "13.0")],
)
def test_cuda_driver_version_reads_like_nvidia_smi(fake: FakeNvml, raw: int, shown: str) -> None:
    fake.cuda_driver_version = raw
    assert read_node("node-a").cuda_driver_version == shown


def test_processes_merge_compute_and_graphics_by_pid(fake: FakeNvml) -> None:
    fake.gpus[0].compute_processes = [proc(4242, None), proc(4343, None), proc(4545, 2 * GIB)]
    fake.gpus[0].graphics_processes = [proc(4242, 10 * GIB + 5), proc(4444, 512 * MIB), proc(4545, None)]
    fake.process_names = {4242: b"python3", 4343: "vllm", 4444: "Xorg", 4545: "torchrun"}
    gpu = read_node("node-a").gpus[0]
    # One entry per pid; a known amount of memory wins over an unknown one, whichever list it came from.
    assert gpu.processes == (
        GpuProcess(pid=4242, name="python3", used_mib=10240),
        GpuProcess(pid=4343, name="vllm", used_mib=None),
        GpuProcess(pid=4545, name="torchrun", used_mib=2048),
        GpuProcess(pid=4444, name="Xorg", used_mib=512),
    )
    assert read_node("node-a").gpus[1].processes == ()


def test_process_name_falls_back_to_proc_comm_then_question_mark(fake: FakeNvml) -> None:
    own_pid = os.getpid()
    fake.gpus[1].compute_processes = [proc(own_pid, GIB), proc(NO_SUCH_PID, GIB)]
    names = {p.pid: p.name for p in read_node("node-a").gpus[1].processes}
    assert names[own_pid] == Path(f"/proc/{own_pid}/comm").read_text(encoding="utf-8").strip()
    assert names[own_pid] != "?"
    assert names[NO_SUCH_PID] == "?"


def test_mig_enabled_lists_existing_instances(fake: FakeNvml) -> None:
    fake.gpus[3].mig_mode = (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE)
    fake.gpus[3].mig_slots = [
        b"MIG-11111111-2222-3333-4444-555555555555",
        pynvml.NVMLError_NotFound(),
        "MIG-66666666-7777-8888-9999-000000000000",
        pynvml.NVMLError_Unknown(),  # a handle whose UUID cannot be read is skipped too
    ]
    gpu = read_node("node-a").gpus[3]
    assert gpu.mig_mode is True
    assert gpu.mig_uuids == (
        "MIG-11111111-2222-3333-4444-555555555555",
        "MIG-66666666-7777-8888-9999-000000000000",
    )


def test_mig_pending_but_not_current_is_off(fake: FakeNvml) -> None:
    fake.gpus[0].mig_mode = (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE)
    fake.gpus[0].mig_slots = ["MIG-should-not-be-listed"]
    gpu = read_node("node-a").gpus[0]
    assert gpu.mig_mode is False
    assert gpu.mig_uuids == ()


def test_mig_instance_count_error_is_skipped_silently(fake: FakeNvml) -> None:
    fake.gpus[0].mig_mode = (pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE)
    fake.gpus[0].max_mig_devices = pynvml.NVMLError_NotSupported()
    gpu = read_node("node-a").gpus[0]
    assert gpu.mig_mode is True
    assert gpu.mig_uuids == ()


def test_retired_pages_and_remapped_rows_pending(fake: FakeNvml) -> None:
    fake.gpus[1].retired_pages_pending = pynvml.NVML_FEATURE_ENABLED
    fake.gpus[2].remapped_rows = (3, 1, 1, 0)
    fake.gpus[3].remapped_rows = (0, 9, 0, 1)
    node = read_node("node-a")
    assert [g.retired_pages_pending for g in node.gpus] == [False, True, False, False]
    assert [g.remapped_rows_pending for g in node.gpus] == [False, False, True, False]
    assert [g.remapping_failed for g in node.gpus] == [False, False, False, True]


def test_not_supported_answers_become_none(fake: FakeNvml) -> None:
    gpu = fake.gpus[2]
    for name in (
        "compute_capability",
        "mig_mode",
        "retired_pages_pending",
        "remapped_rows",
        "compute_processes",
        "graphics_processes",
    ):
        setattr(gpu, name, pynvml.NVMLError_NotSupported())
    fake.driver_version = pynvml.NVMLError_NotSupported()
    fake.cuda_driver_version = pynvml.NVMLError_FunctionNotFound()
    node = read_node("node-a")
    read = node.gpus[2]
    assert read.compute_capability is None
    assert read.mig_mode is None
    assert read.mig_uuids == ()
    assert read.retired_pages_pending is None
    assert read.remapped_rows_pending is None
    assert read.remapping_failed is None
    assert read.processes == ()
    assert (node.driver_version, node.cuda_driver_version) == (None, None)
    assert node.nvml_error is None
    assert node.gpus[1].compute_capability == (8, 0)


def test_p2p_statuses_for_every_unordered_pair(fake: FakeNvml) -> None:
    fake.p2p[0, 2] = pynvml.NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED
    fake.p2p[1, 3] = pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
    fake.p2p[2, 3] = pynvml.NVMLError_NotSupported()
    node = read_node("node-a")
    assert node.p2p == (
        (0, 1, True),
        (0, 2, False),
        (0, 3, True),
        (1, 2, True),
        (1, 3, False),
        (2, 3, None),
    )
    assert node.p2p_status(3, 2) is None
    assert node.p2p_status(2, 0) is False


def test_p2p_asks_for_read_capability_as_an_int(fake: FakeNvml) -> None:
    # nvidia-ml-py 13 spells NVML_P2P_CAPS_INDEX_READ as the tuple (0,); ctypes would reject it.
    read_node("node-a")
    assert fake.p2p_indices == [0] * 6
    assert all(type(index) is int for index in fake.p2p_indices)


def test_one_gpu_has_no_p2p_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeNvml([FakeGpu()]).install(monkeypatch)
    node = read_node("node-a")
    assert len(node.gpus) == 1
    assert node.p2p == ()


def test_shutdown_follows_a_successful_read(fake: FakeNvml) -> None:
    read_node("node-a")
    assert fake.calls == ["init", "shutdown"]


def test_shutdown_follows_an_unexpected_failure(fake: FakeNvml) -> None:
    fake.gpus[1].name = RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        read_node("node-a")
    assert fake.calls == ["init", "shutdown"]


def test_nvml_error_in_a_required_query_is_reported_not_raised(fake: FakeNvml) -> None:
    fake.gpus[2].uuid = pynvml.NVMLError_GpuIsLost()
    node = read_node("node-a")
    assert node.gpus == ()
    assert node.nvml_error is not None
    assert "GPU is lost" in node.nvml_error.reason
    assert "NVMLError_GpuIsLost" in node.nvml_error.detail
    assert fake.calls == ["init", "shutdown"]


def test_a_failing_shutdown_does_not_hide_the_node(fake: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    def shutdown() -> None:
        raise pynvml.NVMLError_Uninitialized()

    monkeypatch.setattr(pynvml, "nvmlShutdown", shutdown)
    node = read_node("node-a")
    assert len(node.gpus) == 4
    assert node.nvml_error is None


@pytest.mark.parametrize(
    ("error", "words"),
    [
        pytest.param(pynvml.NVMLError_LibraryNotFound(), ("library not found", "no nvidia"), id="no-lib"),
        pytest.param(pynvml.NVMLError_DriverNotLoaded(), ("driver", "not loaded"), id="driver-not-loaded"),
        pytest.param(pynvml.NVMLError_NoPermission(), ("no permission", "/dev/nvidia"), id="no-permission"),
        pytest.param(pynvml.NVMLError_LibRmVersionMismatch(), ("version mismatch",), id="version-mismatch"),
        pytest.param(pynvml.NVMLError_Unknown(), ("could not be initialised", "unknown error"), id="other"),
    ],
)
def test_init_failure_gives_a_reason_and_no_gpus(
    fake: FakeNvml, error: pynvml.NVMLError, words: tuple[str, ...]
) -> None:
    fake.init_error = error
    node = read_node("node-a")
    assert node.gpus == ()
    assert node.source == "nvml"
    assert node.hostname == "node-a"
    assert node.nvml_error is not None
    reason = node.nvml_error.reason.lower()
    assert all(word in reason for word in words), reason
    assert "\n" not in reason
    assert type(error).__name__ in node.nvml_error.detail
    # Shutting down an NVML that never started would only raise Uninitialized.
    assert fake.calls == ["init"]


def test_missing_nvidia_ml_py_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    node = read_node("node-a")
    assert node.gpus == ()
    assert node.nvml_error is not None
    assert "nvidia-ml-py is not installed" in node.nvml_error.reason


HAS_NVML_LIBRARY = ctypes.util.find_library("nvidia-ml") is not None


@pytest.mark.skipif(HAS_NVML_LIBRARY, reason="this machine has an NVIDIA driver")
def test_real_nvml_on_a_machine_without_a_driver() -> None:
    node = read_node()
    assert node.gpus == ()
    assert node.p2p == ()
    assert node.nvml_error is not None
    assert "library not found" in node.nvml_error.reason.lower()
    assert "driver" in node.nvml_error.reason.lower()
    assert "NVMLError_LibraryNotFound" in node.nvml_error.detail
