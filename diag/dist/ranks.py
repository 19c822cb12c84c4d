"""Which rank this process is, read from the environment the launcher set (torchrun, accelerate launch, srun).

Detection is a chain of providers, each returning a ``RankInfo`` or None: torch's env protocol first (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT; torchrun and accelerate launch set it, and so does `srun torchrun`), then
Slurm's own variables for `srun pytest …` (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID inside a job step).
A variable that is present but malformed raises ``LaunchEnvError``: the launcher is there, but misconfigured.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MASTER_PORT = 29500  # torchrun's default, also what Slurm recipes export
# ASCII digits only: str.isdigit() is also true for "²" or "٣", which int() refuses or reads differently.
_WHOLE = re.compile(r"[0-9]{1,18}")


def _whole(raw: str) -> int | None:
    """A launcher variable's whole number (surrounding spaces allowed), or None when it is not one."""
    text = raw.strip()
    return int(text) if _WHOLE.fullmatch(text) else None


class LaunchEnvError(ValueError):
    """A launcher variable is present but unusable (RANK=x, RANK >= WORLD_SIZE, srun without MASTER_ADDR)."""


@dataclass(frozen=True)
class RankInfo:
    """One process of a launched job: its place in the job and the rendezvous it meets the others at."""

    launcher: str  # "torchrun", "accelerate", "slurm" or "env" (the variables alone, set by hand or a script)
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int | None  # None: the launcher did not say
    node_rank: int | None  # GROUP_RANK (torchrun) or SLURM_NODEID
    master_addr: str
    master_port: int
    agent_store: bool  # torchrun's agent hosts the rendezvous store; every rank is a client of it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def hostname() -> str:
    """This machine's name as the launchers print it (short, without the domain)."""
    return socket.gethostname().split(".")[0] or "localhost"


def _int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    value = _whole(raw)
    if value is None or value < minimum:
        raise LaunchEnvError(f"{name}={raw!r}: expected a whole number >= {minimum}")
    return value


def _port(env: Mapping[str, str]) -> int:
    port = _int(env, "MASTER_PORT")
    if port is None:
        return DEFAULT_MASTER_PORT
    if not 0 < port < 65536:
        raise LaunchEnvError(f"MASTER_PORT={port}: expected a TCP port, 1-65535")
    return port


def _checked(info: RankInfo) -> RankInfo:
    if info.rank >= info.world_size:
        raise LaunchEnvError(f"rank {info.rank} is not below the world size {info.world_size}")
    if info.local_world_size is not None and info.local_rank >= info.local_world_size:
        raise LaunchEnvError(f"local rank {info.local_rank} is not below the local world size {info.local_world_size}")
    return info


def _launcher_name(env: Mapping[str, str]) -> str:
    if any(k.startswith("ACCELERATE_") for k in env):
        return "accelerate"  # accelerate launch runs torch's elastic agent and adds its ACCELERATE_* settings
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    return "env"


def from_torch_env(env: Mapping[str, str]) -> RankInfo | None:
    """torch's env:// protocol: RANK and WORLD_SIZE, MASTER_ADDR and MASTER_PORT, LOCAL_RANK."""
    if not env.get("RANK", "").strip():
        return None  # WORLD_SIZE alone is how some set the process count for --processes: not a launched rank
    rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE", minimum=1)
    if rank is None or world_size is None:
        raise LaunchEnvError("WORLD_SIZE is not set, but RANK is")
    master_addr = env.get("MASTER_ADDR", "").strip()
    if not master_addr:
        raise LaunchEnvError("MASTER_ADDR is not set: the ranks have no address to meet at")
    local_rank = _int(env, "LOCAL_RANK")
    return _checked(
        RankInfo(
            launcher=_launcher_name(env),
            rank=rank,
            world_size=world_size,
            local_rank=rank if local_rank is None else local_rank,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", minimum=1),
            node_rank=_int(env, "GROUP_RANK"),
            master_addr=master_addr,
            master_port=_port(env),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
        )
    )


def from_slurm(env: Mapping[str, str]) -> RankInfo | None:
    """`srun pytest …`: one task per rank. Only inside a job step (SLURM_STEP_ID), not in the batch script itself."""
    if "SLURM_STEP_ID" not in env or "SLURM_PROCID" not in env:
        return None
    rank, world_size = _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS", minimum=1)
    if rank is None or world_size is None:
        raise LaunchEnvError("SLURM_PROCID or SLURM_NTASKS is empty inside a job step")
    master_addr = env.get("MASTER_ADDR", "").strip()
    if not master_addr:
        raise LaunchEnvError(
            "MASTER_ADDR is not set under srun: export the first node's name, "
            'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
        )
    tasks_per_node = env.get("SLURM_TASKS_PER_NODE", "")
    local_world_size = _whole(tasks_per_node) if tasks_per_node else None  # "2(x3)" and "3,2" vary per node
    return _checked(
        RankInfo(
            launcher="slurm",
            rank=rank,
            world_size=world_size,
            local_rank=_int(env, "SLURM_LOCALID") or 0,
            local_world_size=local_world_size,
            node_rank=_int(env, "SLURM_NODEID"),
            master_addr=master_addr,
            master_port=_port(env),
            agent_store=False,
        )
    )


PROVIDERS: tuple[Callable[[Mapping[str, str]], RankInfo | None], ...] = (from_torch_env, from_slurm)


def rank_info(env: Mapping[str, str]) -> RankInfo | None:
    """This process's rank, or None when no launcher started it."""
    for provider in PROVIDERS:
        info = provider(env)
        if info is not None:
            return info
    return None


def launched_rank(env: Mapping[str, str]) -> int | None:
    """The rank for naming this rank's report: set only when the job has more than one process.

    Lenient on purpose (a malformed variable is the collective check's finding, not a reason to lose the report).
    """
    for rank_name, size_name in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        rank, size = _whole(env.get(rank_name, "")), _whole(env.get(size_name, ""))
        if rank is not None and size is not None and size > 1:
            return rank
    return None
