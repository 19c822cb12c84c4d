"""Which GPU each rank would use, judged from the records every rank wrote: `cuda:LOCAL_RANK`, as lmms-eval
(`cuda:{accelerator.local_process_index}`) and torchrun scripts take it; VLMEvalKit slices the visible GPUs by
LOCAL_RANK and also needs at least as many GPUs as processes on the node."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diag.dist.collective import RankRecord


@dataclass(frozen=True)
class GpuFinding:
    code: str
    message: str
    fatal: bool  # False: a warning


def judge_own_gpu(me: RankRecord, records: Sequence[RankRecord]) -> list[GpuFinding]:
    """This rank's findings: no GPU at its local rank, a GPU shared with another rank, a different GPU list."""
    findings: list[GpuFinding] = []
    neighbours = [r for r in records if r.host == me.host and r.rank != me.rank]
    if me.gpu_uuid is None:
        findings.append(GpuFinding("LAYOUT-001", (
            f"{me.where()} is local rank {me.local_rank} but sees {me.visible_gpus} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES={me.cuda_visible_devices!r}): cuda:{me.local_rank} does not exist, so the eval "
            f"fails with `CUDA error: invalid device ordinal`; {len(neighbours) + 1} ranks run on {me.host}."
        ), True))  # fmt: skip
    shared = [r for r in neighbours if me.gpu_uuid is not None and r.gpu_uuid == me.gpu_uuid]
    if shared:
        others = ", ".join(f"rank {r.rank}" for r in shared)
        findings.append(GpuFinding("DIST-005", (
            f"{me.where()} and {others} would all use {me.gpu_name or 'the GPU'} {me.gpu_uuid} as their "
            f"cuda:LOCAL_RANK: NCCL refuses it (`Duplicate GPU detected : rank {me.rank} and rank {shared[0].rank} "
            "both on CUDA device …`)."
        ), True))  # fmt: skip
    different = [r for r in neighbours if r.cuda_visible_devices != me.cuda_visible_devices]
    if different:
        views = "; ".join(f"rank {r.rank}: {r.cuda_visible_devices!r}" for r in different)
        findings.append(GpuFinding("DIST-005", (
            f"the ranks on {me.host} see different GPUs: {me.where()} has CUDA_VISIBLE_DEVICES="
            f"{me.cuda_visible_devices!r}, {views}. lmms-eval takes cuda:LOCAL_RANK and VLMEvalKit slices the "
            "visible list by LOCAL_RANK, both assuming every rank of a node sees the same GPUs."
        ), False))  # fmt: skip
    return findings
