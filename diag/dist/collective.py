"""The collective check: every rank meets at the launcher's rendezvous, joins a process group, all-reduces a small
tensor and verifies the sum, each step bounded by one stated timeout.

Every rank first writes a record of itself into the rendezvous store (host, rank, pid, CUDA_VISIBLE_DEVICES, the
GPU it would use) and marks each step it reaches. When a step times out, the ranks that did arrive read which
records or marks are missing, so the failure names the rank and the host that did not answer instead of hanging
until the eval's own timeout (hours, or 52 weeks in lmms-eval's model classes).

NCCL on real GPUs, gloo in simulation and where torch has no CUDA: the same code, only the backend and the tensor's
device differ. Only gloo runs on the developers' machines.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from diag.dist import ranks
from diag.dist.ranks import RankInfo
from diag.topology.records import Topology

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import Store

DEFAULT_TIMEOUT_S = 30.0
# The deadline starts when each rank reaches the check, and the ranks get there at different moments: each starts
# Python, imports torch and collects the checks on its own (0.3 s apart on an idle 2-core machine, seconds on a
# busy node), and TCPStore's client never waits less than 1 s to connect. Below this a healthy job was reported as
# a missing rank (DIST-001/DIST-002), so shorter values are refused as malformed.
MIN_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 86400.0
TIMEOUT_ENV = "DIAG_COLLECTIVE_TIMEOUT"
_PREFIX = "diag-collective"
STEPS = ("rendezvous", "process_group", "all_reduce")  # the marks a rank sets, in order


class TimeoutValueError(ValueError):
    """DIAG_COLLECTIVE_TIMEOUT is not a positive number of seconds."""


def parse_timeout(value: str) -> float:
    """A timeout in seconds: at least MIN_TIMEOUT_S (the ranks' start-up skew) and at most a day (a pre-flight
    check that waits longer is no check)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not MIN_TIMEOUT_S <= seconds <= MAX_TIMEOUT_S:  # also false for nan
        raise TimeoutValueError(
            f"{TIMEOUT_ENV}={value!r}: expected a number of seconds from {MIN_TIMEOUT_S:g} (the ranks start at "
            f"different moments; less reports a healthy job as a missing rank) to {MAX_TIMEOUT_S:g}"
        )
    return seconds


def collective_timeout(env: Mapping[str, str]) -> float:
    """DIAG_COLLECTIVE_TIMEOUT, else 30 s: an environment variable, so every rank a launcher starts gets the same."""
    raw = env.get(TIMEOUT_ENV)
    return parse_timeout(raw) if raw is not None and raw.strip() else DEFAULT_TIMEOUT_S


def select_backend(topology: Topology) -> str:
    """nccl where torch sees real CUDA GPUs; gloo in simulation and with a torch that has no CUDA."""
    if topology.cuda.simulated or not topology.cuda.devices or topology.cuda.torch_cuda is None:
        return "gloo"
    return "nccl"


@dataclass(frozen=True)
class RankRecord:
    """What one rank says about itself in the store: where it runs and which GPU `cuda:LOCAL_RANK` is there."""

    rank: int
    local_rank: int
    host: str
    pid: int
    cuda_visible_devices: str | None
    visible_gpus: int  # how many GPUs torch shows this process
    gpu_uuid: str | None  # the GPU of cuda:LOCAL_RANK; None: the process has no such ordinal
    gpu_name: str | None

    def where(self) -> str:
        return f"rank {self.rank} on {self.host}"


def own_record(info: RankInfo, topology: Topology, env: Mapping[str, str]) -> RankRecord:
    devices = sorted(topology.cuda.devices, key=lambda d: d.cuda_index)
    gpu = devices[info.local_rank] if info.local_rank < len(devices) else None
    return RankRecord(
        rank=info.rank,
        local_rank=info.local_rank,
        host=ranks.hostname(),
        pid=os.getpid(),
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        visible_gpus=len(devices),
        gpu_uuid=gpu.uuid if gpu else None,
        gpu_name=gpu.name if gpu else None,
    )


@dataclass(frozen=True)
class Outcome:
    """How the exchange ended on this rank."""

    backend: str
    timeout_s: float
    step: str  # the step that failed, or "done"
    code: str | None  # None: every rank answered and the sum was right
    error: str | None  # the exception or mismatch, one line
    silent: tuple[int, ...] = ()  # ranks that did not reach the failed step
    records: tuple[RankRecord, ...] = ()  # every rank that wrote its record
    gave_up: Mapping[int, str] = field(default_factory=dict)  # rank -> why it stopped on its own
    total: float | None = None
    expected: float | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.code is None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gave_up"] = {str(k): v for k, v in self.gave_up.items()}
        return data


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, floor: float = 0.1) -> timedelta:
        return timedelta(seconds=max(floor, self.end - time.monotonic()))


def _key(kind: str, rank: int) -> str:
    return f"{kind}/{rank}"


def wait_for_port(host: str, port: int, deadline: _Deadline) -> None:
    """Return once host:port accepts a connection; raise TimeoutError at the deadline.

    TCPStore's own client retries past its timeout (12 s for 5 s on torch 2.13), so the wait is bounded here.
    """
    last: OSError | None = None
    while True:
        left = deadline.left(floor=0.0).total_seconds()
        if left <= 0:
            raise TimeoutError(f"{host}:{port} did not accept a connection ({last or 'no answer'})")
        try:
            socket.create_connection((host, port), timeout=min(1.0, left)).close()
            return
        except OSError as exc:
            last = exc
            time.sleep(min(0.2, max(0.0, left - 0.01)))


def connect_store(info: RankInfo, deadline: _Deadline) -> Store:
    """The launcher's rendezvous: torchrun's agent store, else a TCPStore that rank 0 hosts at MASTER_ADDR:PORT."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # public, not re-exported for mypy
    from torch.distributed.distributed_c10d import PrefixStore

    if info.agent_store or info.rank != 0:
        wait_for_port(info.master_addr, info.master_port, deadline)
    timeout = deadline.left(floor=1.0)
    if info.agent_store:  # torchrun: its agent already serves the store; every rank is a client
        base = TCPStore(info.master_addr, info.master_port, info.world_size, False, timeout)
    else:  # rank 0 serves it; it does not wait for the others here, so a missing rank can be named afterwards
        base = TCPStore(
            info.master_addr, info.master_port, info.world_size, info.rank == 0, timeout, wait_for_workers=False
        )
    return PrefixStore(_PREFIX, base)


def join_process_group(backend: str, store: Store, info: RankInfo, timeout: timedelta) -> None:
    """init_process_group on the shared store (a seam: the tests make one rank hang here)."""
    import torch.distributed as dist

    dist.init_process_group(
        backend, store=ranks_store(store, "pg"), rank=info.rank, world_size=info.world_size, timeout=timeout
    )


def ranks_store(store: Store, prefix: str) -> Store:
    from torch.distributed.distributed_c10d import PrefixStore

    return PrefixStore(prefix, store)


def _present(store: Store, kind: str, world_size: int) -> set[int]:
    return {r for r in range(world_size) if store.check([_key(kind, r)])}


def _gave_up(store: Store, world_size: int) -> dict[int, str]:
    return {r: store.get(_key("gave_up", r)).decode() for r in _present(store, "gave_up", world_size)}


def _records(store: Store, world_size: int) -> tuple[RankRecord, ...]:
    present = sorted(_present(store, "record", world_size))
    return tuple(RankRecord(**json.loads(store.get(_key("record", r)))) for r in present)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@contextmanager
def _nccl_raises_on_timeout(backend: str) -> Iterator[None]:
    """NCCL's watchdog tears the process down on a timeout; blocking wait raises instead, so the report is written.

    Not exercised here (no GPU): the gloo path raises on its own.
    """
    name = "TORCH_NCCL_BLOCKING_WAIT"
    before = os.environ.get(name)
    if backend == "nccl" and before is None:
        os.environ[name] = "1"
    try:
        yield
    finally:
        if backend == "nccl" and before is None:
            os.environ.pop(name, None)


def local_problem(backend: str, record: RankRecord) -> str | None:
    """Why this rank cannot take part at all, found before it joins (the others are told through the store)."""
    import torch.distributed as dist

    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if not dist.is_backend_available(backend):
        return f"this torch build has no {backend} backend"
    if backend == "nccl" and record.gpu_uuid is None:
        return (
            f"it is local rank {record.local_rank} but sees {record.visible_gpus} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={record.cuda_visible_devices!r}), so cuda:{record.local_rank} does not exist"
        )
    return None


def run_collective(info: RankInfo, record: RankRecord, backend: str, timeout_s: float) -> Outcome:
    """Meet, join, all-reduce [rank + 1] and verify the sum; every wait ends within `timeout_s` of the start."""
    import torch
    import torch.distributed as dist

    started = time.monotonic()
    deadline = _Deadline(timeout_s)

    def ended(step: str, code: str | None, error: str | None, **more: Any) -> Outcome:
        elapsed_s = round(time.monotonic() - started, 3)
        return Outcome(backend, timeout_s, step, code, error, elapsed_s=elapsed_s, **more)

    try:
        store = connect_store(info, deadline)
        store.set(_key("record", info.rank), json.dumps(asdict(record)))
    except Exception as exc:  # the store is unreachable: wrong address, blocked port, or rank 0 never started
        return ended("rendezvous", "DIST-002", _one_line(exc))
    world = info.world_size
    outcome: Outcome | None = None
    try:
        problem = local_problem(backend, record)
        if problem is not None:
            store.set(_key("gave_up", info.rank), problem)
            return ended("rendezvous", "DIST-004", problem, records=(record,))
        store.set(_key("rendezvous", info.rank), "1")
        try:
            store.wait([_key("rendezvous", r) for r in range(world)], deadline.left())
        except Exception as exc:
            outcome = _silent(store, "rendezvous", world, info.rank, exc, ended)
            return outcome
        records = _records(store, world)
        store.set(_key("process_group", info.rank), "1")
        try:
            with _nccl_raises_on_timeout(backend):
                join_process_group(backend, store, info, deadline.left(floor=1.0))
        except Exception as exc:
            outcome = _silent(store, "process_group", world, info.rank, exc, ended, records=records)
            return outcome
        device = torch.device("cuda", info.local_rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(device)
        tensor = torch.tensor([float(info.rank + 1)], dtype=torch.float64, device=device)
        store.set(_key("all_reduce", info.rank), "1")
        try:
            with _nccl_raises_on_timeout(backend):
                dist.all_reduce(tensor)
        except Exception as exc:
            outcome = _silent(store, "all_reduce", world, info.rank, exc, ended, records=records)
            return outcome
        total, expected = float(tensor.item()), world * (world + 1) / 2
        if total != expected:
            error = f"the all-reduce of [rank + 1] over {world} ranks gave {total:g}, not {expected:g}"
            return ended("verify", "DIST-003", error, records=records, total=total, expected=expected)
        return ended("done", None, None, records=records, total=total, expected=expected)
    finally:
        _leave(store, info, deadline, outcome)


def _silent(
    store: Store, step: str, world: int, me: int, exc: Exception, ended: Callable[..., Outcome], **more: Any
) -> Outcome:
    """A step failed: the ranks that never marked it are the ones that did not answer."""
    missing = tuple(sorted(set(range(world)) - _present(store, step, world) - {me}))
    records = more.pop("records", None) or _records(store, world)
    code = "DIST-001" if missing else "DIST-003"
    return ended(step, code, _one_line(exc), silent=missing, records=records, gave_up=_gave_up(store, world), **more)


def _leave(store: Store, info: RankInfo, deadline: _Deadline, outcome: Outcome | None) -> None:
    """Mark this rank done, keep a store that rank 0 serves alive until the others have read it, leave the group."""
    import torch.distributed as dist

    try:
        store.set(_key("done", info.rank), "1")
        if info.rank == 0 and not info.agent_store:
            live = [r for r in range(info.world_size) if outcome is None or r not in outcome.silent]
            grace = max(2.0, deadline.left().total_seconds() + 2.0)
            store.wait([_key("done", r) for r in live], timedelta(seconds=grace))
    except Exception:  # a rank that never arrives cannot say it is done; rank 0 stops waiting after the grace
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
