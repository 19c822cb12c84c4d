"""run_probe with a fake child result, plus one real child run on this CPU-only torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diag.topology.probe import normalise_uuid, probe_script_main, run_probe
from diag.topology.records import CudaDevice

ROOT = Path(__file__).resolve().parents[1]

TWO_GPUS = {
    "torch_version": "2.4.1+cu121",
    "torch_cuda": "12.1",
    "devices": [
        {
            "cuda_index": 0,
            "uuid": "8f3a1c2e-1111-2222-3333-444455556666",
            "name": "NVIDIA A100-SXM4-80GB",
            "memory_total_mib": 81050,
        },
        {
            "cuda_index": 1,
            "uuid": "GPU-0b7d9e4f-1111-2222-3333-444455556666",
            "name": "NVIDIA A100-SXM4-80GB",
            "memory_total_mib": 81050,
        },
    ],
    "peer_access": [[0, 1, True]],
    "error": None,
}


class FakeRunner:
    """Stands in for subprocess.run: records the call and returns (or raises) what it was given."""

    def __init__(self, stdout: str = "", stderr: str = "", returncode: int = 0) -> None:
        self.result = subprocess.CompletedProcess(["python"], returncode, stdout, stderr)
        self.raises: BaseException | None = None
        self.args: list[str] = []
        self.kwargs: dict[str, Any] = {}

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.args, self.kwargs = args, kwargs
        if self.raises is not None:
            raise self.raises
        return self.result


def test_two_devices_with_uuids_normalised_and_peer_access() -> None:
    runner = FakeRunner(stdout=json.dumps(TWO_GPUS) + "\n")
    view = run_probe({"PATH": "/usr/bin"}, runner=runner)
    assert view.error is None
    assert (view.torch_version, view.torch_cuda) == ("2.4.1+cu121", "12.1")
    assert view.devices == (
        CudaDevice(0, "GPU-8f3a1c2e-1111-2222-3333-444455556666", "NVIDIA A100-SXM4-80GB", 81050),
        CudaDevice(1, "GPU-0b7d9e4f-1111-2222-3333-444455556666", "NVIDIA A100-SXM4-80GB", 81050),
    )
    assert view.peer_access == ((0, 1, True),)
    assert view.simulated is False


def test_child_command_and_environment_are_exactly_as_given() -> None:
    env = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "4,5,6,7", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    runner = FakeRunner(stdout=json.dumps(TWO_GPUS))
    run_probe(env, timeout_s=7.5, python="/opt/py/bin/python", runner=runner)
    assert runner.args == ["/opt/py/bin/python", "-m", "diag.topology.probe"]
    assert runner.kwargs["env"] == env
    assert runner.kwargs["timeout"] == 7.5
    assert runner.kwargs["capture_output"] is True
    assert runner.kwargs["text"] is True


def test_library_noise_before_the_json_line_is_ignored() -> None:
    runner = FakeRunner(stdout="some library banner\n" + json.dumps(TWO_GPUS) + "\n")
    assert len(run_probe({}, runner=runner).devices) == 2


def test_error_reported_by_the_child_is_kept() -> None:
    payload = {**TWO_GPUS, "devices": [], "peer_access": [], "error": "torch.cuda.is_available() is False"}
    view = run_probe({}, runner=FakeRunner(stdout=json.dumps(payload)))
    assert view.error == "torch.cuda.is_available() is False"
    assert view.devices == ()
    assert view.torch_cuda == "12.1"


def test_non_zero_exit_names_the_status_and_last_stderr_line() -> None:
    stderr = "Traceback (most recent call last):\n  ...\nImportError: libcudart.so.12: cannot open\n"
    view = run_probe({}, runner=FakeRunner(stderr=stderr, returncode=1))
    assert view.devices == ()
    assert view.error is not None
    assert "exited with status 1" in view.error
    assert view.error.endswith("ImportError: libcudart.so.12: cannot open")
    assert "\n" not in view.error


def test_timeout_is_an_error_not_an_exception() -> None:
    runner = FakeRunner()
    runner.raises = subprocess.TimeoutExpired(["python"], 3.0, output=b"", stderr=b"initialising CUDA\n")
    view = run_probe({}, timeout_s=3.0, runner=runner)
    assert view.devices == ()
    assert view.error == "CUDA probe timed out after 3 s: initialising CUDA"


def test_a_missing_interpreter_is_an_error_not_an_exception() -> None:
    view = run_probe({}, python="/nonexistent/python", runner=subprocess.run)
    assert view.error is not None
    assert "could not start" in view.error
    assert "/nonexistent/python" in view.error


@pytest.mark.parametrize(
    "stdout",
    [
        pytest.param("", id="empty"),
        pytest.param("Segmentation fault? no, just garbage\n", id="garbage"),
        pytest.param("[1, 2, 3]\n", id="json-not-an-object"),
        pytest.param('{"devices": [', id="truncated"),
    ],
)
def test_unparsable_output_is_an_error(stdout: str) -> None:
    view = run_probe({}, runner=FakeRunner(stdout=stdout, stderr="warning: something\n"))
    assert view.devices == ()
    assert view.error == "CUDA probe printed no JSON result: warning: something"


def test_malformed_device_entry_is_an_error() -> None:
    payload = {**TWO_GPUS, "devices": [{"cuda_index": 0, "name": "x"}]}
    view = run_probe({}, runner=FakeRunner(stdout=json.dumps(payload)))
    assert view.devices == ()
    assert view.error is not None
    assert "malformed" in view.error
    assert "uuid" in view.error


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("8f3a1c2e-1111-2222-3333-444455556666", "GPU-8f3a1c2e-1111-2222-3333-444455556666"),
        ("GPU-8f3a1c2e-1111-2222-3333-444455556666", "GPU-8f3a1c2e-1111-2222-3333-444455556666"),
        ("MIG-8f3a1c2e-1111-2222-3333-444455556666", "MIG-8f3a1c2e-1111-2222-3333-444455556666"),
        (" 8f3a1c2e-1111 \n", "GPU-8f3a1c2e-1111"),
        ("", ""),
    ],
)
def test_normalise_uuid(raw: str, normalised: str) -> None:
    assert normalise_uuid(raw) == normalised


@given(st.text(alphabet="0123456789abcdefGPUMI-", min_size=1).filter(lambda s: s.strip()))
def test_normalised_uuid_has_an_nvml_prefix_and_is_stable(raw: str) -> None:
    once = normalise_uuid(raw)
    assert once.startswith(("GPU-", "MIG-"))
    assert once.endswith(raw.strip())
    assert normalise_uuid(once) == once


class BareUuid:
    """Prints like torch's _CUuuid: the bare 8-4-4-4-12 form."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def fake_torch(
    cuda: str | None = "12.1", available: bool = True, props: list[Any] | None = None, hip: str | None = None
) -> SimpleNamespace:
    """Just the torch surface the probe touches."""
    devices = props or []

    def get_device_properties(cuda_index: int) -> Any:
        return answer_or_raise(devices[cuda_index])

    return SimpleNamespace(
        __version__="2.4.1+cu121",
        version=SimpleNamespace(cuda=cuda, hip=hip),
        cuda=SimpleNamespace(
            is_available=lambda: available,
            device_count=lambda: len(devices),
            get_device_properties=get_device_properties,
            can_device_access_peer=lambda a, b: (a, b) != (0, 2),
        ),
    )


def answer_or_raise(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


def a100(uuid: str) -> SimpleNamespace:
    total_memory = 81110 * 1024 * 1024 + 12345
    return SimpleNamespace(uuid=BareUuid(uuid), name="NVIDIA A100-SXM4-80GB", total_memory=total_memory)


def run_child_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], torch: Any) -> Any:
    """probe_script_main in this process with ``torch`` standing in for the real module."""
    monkeypatch.setitem(sys.modules, "torch", torch)
    probe_script_main()
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def test_child_reports_devices_with_normalised_uuids_and_peer_access(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    props = [a100("aaaaaaaa-1111-2222-3333-444455556666"), a100("bbbbbbbb-1111"), a100("cccccccc-1111")]
    payload = run_child_main(monkeypatch, capsys, fake_torch(props=props))
    assert payload["error"] is None
    assert [d["uuid"] for d in payload["devices"]] == [
        "GPU-aaaaaaaa-1111-2222-3333-444455556666",
        "GPU-bbbbbbbb-1111",
        "GPU-cccccccc-1111",
    ]
    assert payload["devices"][0] == {
        "cuda_index": 0,
        "uuid": "GPU-aaaaaaaa-1111-2222-3333-444455556666",
        "name": "NVIDIA A100-SXM4-80GB",
        "memory_total_mib": 81110,
    }
    assert payload["peer_access"] == [[0, 1, True], [0, 2, False], [1, 2, True]]
    view = run_probe({}, runner=FakeRunner(stdout=json.dumps(payload)))
    assert view.peer_access == ((0, 1, True), (0, 2, False), (1, 2, True))


def test_child_without_torch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_child_main(monkeypatch, capsys, None)
    assert payload["error"] == "torch is not installed"
    assert payload["torch_version"] is None


def test_child_on_a_cuda_build_without_usable_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = run_child_main(monkeypatch, capsys, fake_torch(available=False, props=[a100("x"), a100("y")]))
    assert payload["devices"] == []
    assert payload["device_count"] == 2
    assert "torch.cuda.is_available() is False" in payload["error"]
    assert "= 2" in payload["error"]


def test_child_on_a_rocm_build(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    payload = run_child_main(monkeypatch, capsys, fake_torch(cuda=None, hip="6.2.41133"))
    assert payload["error"] == "torch is a ROCm build (HIP 6.2.41133), not a CUDA build"


def test_child_turns_a_cuda_exception_into_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    props = [a100("aaaaaaaa"), RuntimeError("CUDA error: unknown error")]
    payload = run_child_main(monkeypatch, capsys, fake_torch(props=props))
    assert payload["devices"] == []
    assert payload["peer_access"] == []
    assert payload["error"] == "RuntimeError: CUDA error: unknown error"


def _installed_torch_is_cpu_only() -> bool:
    from diag.report import installed_torch_cuda

    return installed_torch_cuda() is None


# The real child must never query GPUs from `pytest` (tests/ never touch hardware): with a CUDA build of torch
# installed, these two tests are skipped; the faked-child tests above cover that path.
cpu_only = pytest.mark.skipif(not _installed_torch_is_cpu_only(), reason="torch is a CUDA build: not probing GPUs")


@cpu_only
def test_real_child_on_a_cpu_only_torch() -> None:
    torch_was_imported = "torch" in sys.modules
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    view = run_probe(env, timeout_s=120.0)
    assert view.torch_version is not None
    assert view.torch_cuda is None
    assert view.devices == ()
    assert view.peer_access == ()
    assert view.error is not None
    assert "CPU-only" in view.error
    if not torch_was_imported:
        assert "torch" not in sys.modules


@cpu_only
def test_run_probe_does_not_import_torch_in_the_parent() -> None:
    # A fresh interpreter, since this test process may have imported torch for other reasons.
    code = (
        "import json, os, sys\n"
        "from diag.topology.probe import run_probe\n"
        "view = run_probe(dict(os.environ), timeout_s=120.0)\n"
        "print(json.dumps({'torch_in_parent': 'torch' in sys.modules, 'error': view.error}))\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch_in_parent"] is False
    assert "CPU-only" in result["error"]
