"""Fixtures of the collective checks: this process's rank (the checks skip without a launcher) and the exchange."""

from __future__ import annotations

import os

import pytest

from diag.dist.collective import (
    Outcome,
    TimeoutValueError,
    collective_timeout,
    own_record,
    run_collective,
    select_backend,
)
from diag.dist.ranks import LaunchEnvError, RankInfo, rank_info
from diag.session import state_of

NOT_LAUNCHED = (
    "not started by a launcher (no RANK/WORLD_SIZE/MASTER_ADDR, no srun job step): run under torchrun, srun or "
    "accelerate launch to check the collective (docs/multi-node.md)"
)
BAD_ENV = "the launcher's environment is not usable (see test_launcher_environment_is_usable, DIST-008)"


@pytest.fixture(scope="session")
def launched_rank() -> RankInfo:
    """This process's rank; the check skips when no launcher started the run."""
    try:
        info = rank_info(os.environ)
    except LaunchEnvError:
        pytest.skip(BAD_ENV)
    if info is None:
        pytest.skip(NOT_LAUNCHED)
    return info


@pytest.fixture(scope="session")
def collective(request: pytest.FixtureRequest, launched_rank: RankInfo) -> Outcome:
    """The exchange, run once per session: every rank meets, joins a process group and all-reduces."""
    state = state_of(request.config)
    if not state.is_controller:
        pytest.skip("run the collective check without -n (pytest-xdist): every worker would join as the same rank")
    try:
        timeout_s = collective_timeout(os.environ)
    except TimeoutValueError:
        pytest.skip(BAD_ENV)
    topology = state.topology
    record = own_record(launched_rank, topology, os.environ)
    return run_collective(launched_rank, record, select_backend(topology), timeout_s)
