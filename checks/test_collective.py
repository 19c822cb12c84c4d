"""Beyond one node: do all ranks of the launched job answer a collective, each on a GPU of its own, and will a
rank that dies fail the eval soon rather than after the eval kit's hours-long process-group timeout?"""

from __future__ import annotations

import os

import pytest

from diag.checking import Check
from diag.dist.collective import Outcome, RankRecord, TimeoutValueError, collective_timeout
from diag.dist.gpus import judge_own_gpu
from diag.dist.ranks import LaunchEnvError, RankInfo, rank_info
from diag.dist.timeouts import LONG_WAIT_S, dist_timeout, human, lmms_eval_timeouts, package_dir

pytestmark = pytest.mark.diag

CAUSES = (
    "the usual causes: a firewall between the nodes (MASTER_PORT and the ports the backend opens), "
    "NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME naming an interface the nodes do not share, a NCCL peer-to-peer path "
    "that hangs (try NCCL_P2P_DISABLE=1), a CUDA_VISIBLE_DEVICES that differs between the ranks of a node"
)


def test_launcher_environment_is_usable(check: Check) -> None:
    try:
        info = rank_info(os.environ)
        timeout_s = collective_timeout(os.environ)
    except (LaunchEnvError, TimeoutValueError) as exc:
        check.fail("DIST-008", f"{exc}.")
    if info is None:
        pytest.skip("not started by a launcher: nothing to check")
    check.record("launch", info.as_dict() | {"collective_timeout_s": timeout_s})


def _named(rank: int, records: dict[int, RankRecord]) -> str:
    record = records.get(rank)
    return f"rank {rank} on {record.host} (pid {record.pid})" if record else f"rank {rank}"


def test_all_ranks_answer_an_all_reduce(collective: Outcome, launched_rank: RankInfo, check: Check) -> None:
    check.record("collective", collective.as_dict())
    if collective.ok:
        return
    me, where = launched_rank, f"{launched_rank.master_addr}:{launched_rank.master_port}"
    records = {r.rank: r for r in collective.records}
    limit = f"within {collective.timeout_s:g} s ({collective.backend})"
    step = collective.step.replace("_", "-").replace("process-group", "process-group setup")
    if collective.code == "DIST-002":
        check.fail(
            "DIST-002",
            f"rank {me.rank} could not reach the rendezvous store at {where} {limit}: {collective.error}.",
            f"Start rank 0 (it, or torchrun's agent on the first node, serves {where}); check that MASTER_ADDR "
            f"resolves to that node from here and that port {me.master_port} is open between the nodes.",
            subject=f"rank {me.rank}",
            commands=[f"python -c \"import socket; socket.create_connection(('{me.master_addr}', {me.master_port}), 5)\""],  # noqa: E501
        )  # fmt: skip
    if collective.code == "DIST-004":
        check.fail("DIST-004", f"rank {me.rank} cannot take part in the collective: {collective.error}.",
                   subject=f"rank {me.rank}")  # fmt: skip
    if collective.code == "DIST-001":
        silent = [_named(r, records) for r in collective.silent]
        late = [_named(r, records) for r in collective.silent if r in records]
        never = [f"rank {r}" for r in collective.silent if r not in records]
        parts = [f"{', '.join(late)} did not reach the {step} {limit}"] if late else []
        if never:
            parts.append(f"{', '.join(never)} never reached the rendezvous at {where} {limit}: it did not start, "
                         "exited, or cannot reach that address")  # fmt: skip
        parts += [f"rank {r} gave up: {why}" for r, why in sorted(collective.gave_up.items())]
        check.fail(
            "DIST-001",
            "; ".join(parts) + ". The eval would wait here for its own process-group timeout instead. "
            f"({collective.error})",
            f"Look at {', '.join(silent)} first: is it running, and what is it waiting for? Then check {CAUSES}.",
            subject=", ".join(silent),
            env={"NCCL_DEBUG": "INFO"},
        )
    check.fail(
        collective.code or "DIST-003",
        f"every rank reached the {step}, but it failed {limit}: {collective.error}.",
        f"The ranks met at {where} but could not exchange data; check {CAUSES}.",
        subject=f"rank {me.rank}",
        env={"NCCL_DEBUG": "INFO"},
    )


def test_each_rank_has_a_gpu_of_its_own(collective: Outcome, launched_rank: RankInfo, check: Check) -> None:
    records = {r.rank: r for r in collective.records}
    if launched_rank.rank not in records or len(records) < launched_rank.world_size:
        pytest.skip("not every rank wrote its record (see test_all_ranks_answer_an_all_reduce)")
    me = records[launched_rank.rank]
    check.record("ranks", [vars(r) for r in records.values()])
    findings = judge_own_gpu(me, list(records.values()))
    for finding in findings:
        if not finding.fatal:
            check.warn(finding.code, finding.message)
    fatal = [f for f in findings if f.fatal]
    if fatal:
        check.fail(fatal[0].code, " ".join(f.message for f in fatal), subject=me.where())


def test_process_group_timeouts_cannot_hide_a_hang(check: Check) -> None:
    try:
        vlmevalkit = dist_timeout(os.environ)
    except ValueError as exc:
        check.fail("DIST-007", f"{exc}: VLMEvalKit's run.py reads it with int() and raises ValueError before "
                   "any rank starts.", env={"DIST_TIMEOUT": "1800"})  # fmt: skip
    settings = [vlmevalkit] if vlmevalkit else []
    root = package_dir("lmms_eval")
    settings += lmms_eval_timeouts(root) if root else []
    check.record("process_group_timeouts", [{"where": s.where, "seconds": s.seconds, "text": s.text} for s in settings])
    long = [s for s in settings if s.seconds > LONG_WAIT_S]
    if long:
        longest = max(long, key=lambda s: s.seconds)
        places = "; ".join(f"{s.where}: {human(s.seconds)}" for s in long[:5]) + (" …" if len(long) > 5 else "")
        check.warn(
            "DIST-006",
            f"a rank that dies mid-run leaves the others waiting up to {human(longest.seconds)} before the job "
            f"fails, holding every GPU ({places}).",
        )
