"""A pytest plugin for the multi-process tests (`-p tests.dist_faults`): it makes one rank misbehave.

DIAG_TEST_EXIT_RANK=N   rank N exits at start-up, before it reaches the rendezvous
DIAG_TEST_HANG_RANK=N   rank N joins the process group, then hangs instead of entering the all-reduce
DIAG_TEST_HOST=NAME     this process reports NAME as its host (several "nodes" on one machine)

Test-only: the shipped checks know nothing of these variables.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

_patches = pytest.MonkeyPatch()

if os.environ.get("DIAG_TEST_HOST"):  # at import: the report's name is chosen before any pytest_configure here
    from diag.dist import ranks

    _patches.setattr(ranks, "hostname", lambda: os.environ["DIAG_TEST_HOST"])


def pytest_configure(config: pytest.Config) -> None:
    rank = os.environ.get("RANK")
    if rank is not None and os.environ.get("DIAG_TEST_EXIT_RANK") == rank:
        os._exit(3)
    if rank is not None and os.environ.get("DIAG_TEST_HANG_RANK") == rank:
        from diag.dist import collective

        join = collective.join_process_group

        def join_then_hang(*args: Any, **kwargs: Any) -> None:
            join(*args, **kwargs)
            time.sleep(600)

        _patches.setattr(collective, "join_process_group", join_then_hang)


def pytest_unconfigure(config: pytest.Config) -> None:
    _patches.undo()
