"""The logical view: what torch.cuda shows a process started with a given environment.

The probe runs in a child process (``python -m diag.topology.probe``) so the parent never initialises CUDA:
an initialised parent would pin its CUDA_VISIBLE_DEVICES and hold a context on every GPU it touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from diag.topology.records import CudaDevice, CudaView

_MIB = 1024 * 1024
# The directory holding the ``diag`` package, so the child can import it even when diag is not installed.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


def normalise_uuid(raw: str) -> str:
    """A device UUID in NVML's form ("GPU-…" or "MIG-…"); torch prints the bare uuid."""
    uuid = raw.strip()
    if not uuid or uuid.startswith(("GPU-", "MIG-")):
        return uuid
    return f"GPU-{uuid}"


def probe_script_main() -> None:
    """Print one JSON object describing torch.cuda's devices in this process; never crashes."""
    print(json.dumps(_probe()), flush=True)


def _probe() -> dict[str, Any]:
    result: dict[str, Any] = {
        "torch_version": None,
        "torch_cuda": None,
        "devices": [],
        "peer_access": [],
        "error": None,
    }
    try:
        import torch
    except ModuleNotFoundError as exc:
        result["error"] = "torch is not installed" if exc.name == "torch" else _import_failure(exc)
        return result
    except Exception as exc:  # a broken install (missing CUDA libraries) can raise anything
        result["error"] = _import_failure(exc)
        return result
    result["torch_version"] = str(torch.__version__)
    result["torch_cuda"] = torch.version.cuda
    try:
        _probe_cuda(torch, result)
    except Exception as exc:  # the probe reports, never crashes: CUDA errors are RuntimeErrors
        result.update(devices=[], peer_access=[], error=f"{type(exc).__name__}: {exc}")
    return result


def _import_failure(exc: BaseException) -> str:
    return f"importing torch failed: {type(exc).__name__}: {exc}"


def _probe_cuda(torch: Any, result: dict[str, Any]) -> None:
    """Fill devices and peer_access, or error when this torch cannot see CUDA devices."""
    if torch.version.cuda is None:
        hip = getattr(torch.version, "hip", None)
        result["error"] = (
            f"torch is a ROCm build (HIP {hip}), not a CUDA build"
            if hip
            else "torch is a CPU-only build (torch.version.cuda is None)"
        )
        return
    if not torch.cuda.is_available():
        count = _device_count(torch)
        result["device_count"] = count
        result["error"] = f"torch.cuda.is_available() is False (torch.cuda.device_count() = {count})"
        return
    count = torch.cuda.device_count()
    result["devices"] = [_device(torch, i) for i in range(count)]
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    result["peer_access"] = [[i, j, bool(torch.cuda.can_device_access_peer(i, j))] for i, j in pairs]


def _device_count(torch: Any) -> int | None:
    try:
        return int(torch.cuda.device_count())
    except Exception:  # only a hint inside an error message already being reported
        return None


def _device(torch: Any, index: int) -> dict[str, Any]:
    # props.total_memory, not mem_get_info: the latter creates a context and allocates on every GPU.
    props = torch.cuda.get_device_properties(index)
    return {
        "cuda_index": index,
        "uuid": normalise_uuid(str(props.uuid)),
        "name": str(props.name),
        "memory_total_mib": int(props.total_memory) // _MIB,
    }


def run_probe(
    env: Mapping[str, str],
    *,
    timeout_s: float = 60.0,
    python: str = sys.executable,
    runner: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> CudaView:
    """Run the probe in a child with exactly ``env`` and return its view; failures become ``error``."""
    command = [python, "-m", "diag.topology.probe"]
    try:
        done = runner(
            command,
            env=dict(env),
            cwd=_IMPORT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return _failed(f"CUDA probe timed out after {timeout_s:g} s", exc.stderr)
    except OSError as exc:
        return _failed(f"CUDA probe could not start ({python}): {exc}", None)
    if done.returncode != 0:
        return _failed(f"CUDA probe exited with status {done.returncode}", done.stderr)
    payload = _last_json_object(done.stdout)
    if payload is None:
        return _failed("CUDA probe printed no JSON result", done.stderr)
    try:
        return _view(payload)
    except (KeyError, TypeError, ValueError) as exc:
        return _failed(f"CUDA probe result is malformed ({type(exc).__name__}: {exc})", done.stderr)


def _failed(what: str, stderr: str | bytes | None) -> CudaView:
    tail = _last_line(stderr)
    return CudaView(torch_version=None, torch_cuda=None, error=f"{what}: {tail}" if tail else what)


def _last_line(stream: str | bytes | None) -> str:
    # TimeoutExpired carries bytes even when the run asked for text.
    if isinstance(stream, bytes):
        stream = stream.decode("utf-8", errors="replace")
    lines = [line.strip() for line in (stream or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _last_json_object(stdout: str | None) -> dict[str, Any] | None:
    # Libraries may print to stdout on import; the probe's own line is the last JSON object.
    for line in reversed((stdout or "").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _view(payload: dict[str, Any]) -> CudaView:
    devices = tuple(
        CudaDevice(
            cuda_index=int(d["cuda_index"]),
            uuid=normalise_uuid(str(d["uuid"])),
            name=str(d["name"]),
            memory_total_mib=int(d["memory_total_mib"]),
        )
        for d in payload.get("devices") or ()
    )
    peers = tuple((int(i), int(j), bool(ok)) for i, j, ok in payload.get("peer_access") or ())
    return CudaView(
        torch_version=_optional_str(payload.get("torch_version")),
        torch_cuda=_optional_str(payload.get("torch_cuda")),
        devices=devices,
        peer_access=peers,
        error=_optional_str(payload.get("error")),
        simulated=False,
    )


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


if __name__ == "__main__":
    probe_script_main()
