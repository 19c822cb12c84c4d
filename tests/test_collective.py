"""The collective check: rank detection, backend and timeout choices, GPU assignment across ranks, launcher
timeouts, the per-rank report name; and real multi-process runs over gloo on the loopback interface."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diag.dist.collective import (
    DEFAULT_TIMEOUT_S,
    RankRecord,
    TimeoutValueError,
    collective_timeout,
    parse_timeout,
    select_backend,
)
from diag.dist.gpus import judge_own_gpu
from diag.dist.ranks import LaunchEnvError, launched_rank, rank_info
from diag.dist.timeouts import dist_timeout, human, lmms_eval_timeouts
from diag.report import ReportPathError, report_path
from diag.topology.records import CudaDevice, CudaView, Topology
from diag.topology.selection import resolve_selection
from diag.topology.simulated import simulated_node
from tests.conftest import REPO

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
            "MASTER_ADDR": "node-a", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x",
            "TORCHELASTIC_USE_AGENT_STORE": "True"}  # fmt: skip
SRUN = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
        "SLURM_TASKS_PER_NODE": "2(x2)", "MASTER_ADDR": "node-a"}  # fmt: skip


# -- which rank this is ----------------------------------------------------------------------------------------
def test_torchrun_variables_give_the_rank_and_the_agent_store():
    info = rank_info(TORCHRUN)
    assert info is not None
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_world_size) == (
        "torchrun",
        1,
        4,
        1,
        2,
    )
    assert (info.master_addr, info.master_port, info.agent_store, info.node_rank) == ("node-a", 29400, True, 0)


def test_accelerate_launch_is_named_and_plain_variables_are_env():
    assert rank_info({**TORCHRUN, "ACCELERATE_MIXED_PRECISION": "bf16"}).launcher == "accelerate"
    plain = rank_info({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"})
    assert plain.launcher == "env" and plain.master_port == 29500 and not plain.agent_store and plain.local_rank == 0


def test_srun_tasks_are_ranks_inside_a_job_step_only():
    info = rank_info(SRUN)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.node_rank) == ("slurm", 3, 4, 1, 1)
    assert info.local_world_size is None  # "2(x2)" varies per node in general
    batch_script = {k: v for k, v in SRUN.items() if k != "SLURM_STEP_ID"}
    assert rank_info(batch_script) is None  # `pytest checks/` in an sbatch script is not a rank


def test_no_launcher_is_none():
    assert rank_info({"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert rank_info({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}) is None  # a process count for --processes


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({**TORCHRUN, "RANK": "x"}, "RANK='x'"),
        ({**TORCHRUN, "RANK": "4"}, "rank 4 is not below the world size 4"),
        ({**TORCHRUN, "LOCAL_RANK": "2"}, "local rank 2 is not below the local world size 2"),
        ({**TORCHRUN, "MASTER_ADDR": ""}, "MASTER_ADDR is not set"),
        ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
        ({"RANK": "0"}, "WORLD_SIZE is not set"),
        ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE='0'"),
        ({k: v for k, v in SRUN.items() if k != "MASTER_ADDR"}, "scontrol show hostnames"),
    ],
    ids=["rank-not-a-number", "rank-too-big", "local-rank-too-big", "no-master-addr", "bad-port", "no-world-size",
         "world-size-0", "srun-without-master-addr"],
)  # fmt: skip
def test_a_malformed_launcher_variable_is_a_one_line_error(env, said):
    with pytest.raises(LaunchEnvError, match=said.replace("(", r"\(").replace(")", r"\)")) as caught:
        rank_info(env)
    assert "\n" not in str(caught.value)


def test_the_report_is_named_by_rank_only_when_the_job_has_several_processes():
    assert launched_rank({"RANK": "3", "WORLD_SIZE": "4"}) == 3
    assert launched_rank({"SLURM_PROCID": "2", "SLURM_NTASKS": "8"}) == 2
    assert launched_rank({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert launched_rank({"RANK": "x", "WORLD_SIZE": "2"}) is None


def test_report_paths_default_per_rank_and_fill_placeholders(tmp_path):
    assert report_path(None, tmp_path, None, "n1") == tmp_path / "reports/diag-report.json"
    assert report_path(None, tmp_path, 3, "n1") == tmp_path / "reports/diag-report-n1-rank3.json"
    assert report_path("out/{host}-{rank}.json", tmp_path, 3, "n1") == tmp_path / "out/n1-3.json"
    assert report_path("/abs/r.json", tmp_path, 3, "n1") == Path("/abs/r.json")  # explicit wins, as written
    for bad, said in (("r-{node}.json", "{node}"), ("r-{rank.json", "expected {rank} and {host}")):
        with pytest.raises(ReportPathError, match=said.replace("{", r"\{")):
            report_path(bad, tmp_path, 0, "n1")


# -- backend and timeout -----------------------------------------------------------------------------------------
def _topology(spec: str, *, simulated: bool, torch_cuda: str | None, devices: int) -> Topology:
    node = simulated_node(spec)
    cuda = CudaView(
        torch_version="2.13.0", torch_cuda=torch_cuda, simulated=simulated,
        devices=tuple(CudaDevice(i, g.uuid, g.name, g.memory_total_mib) for i, g in enumerate(node.gpus[:devices])),
    )  # fmt: skip
    return Topology(node, cuda, resolve_selection(node, None, {}))


@pytest.mark.parametrize(
    ("simulated", "torch_cuda", "devices", "backend"),
    [(True, "12.4", 2, "gloo"), (False, "12.4", 2, "nccl"), (False, None, 0, "gloo"), (False, "12.4", 0, "gloo")],
    ids=["simulated", "real-gpus", "cpu-torch", "no-visible-gpu"],
)
def test_nccl_only_on_real_gpus_torch_can_use(simulated, torch_cuda, devices, backend):
    assert (
        select_backend(_topology("2xA100-80GB", simulated=simulated, torch_cuda=torch_cuda, devices=devices)) == backend
    )


def test_the_timeout_is_stated_by_an_environment_variable():
    assert collective_timeout({}) == DEFAULT_TIMEOUT_S == 30.0
    assert collective_timeout({"DIAG_COLLECTIVE_TIMEOUT": "7.5"}) == 7.5
    for bad in ("0", "-3", "abc", "1e9", "nan"):
        with pytest.raises(TimeoutValueError, match="DIAG_COLLECTIVE_TIMEOUT="):
            parse_timeout(bad)


# -- GPU per rank ------------------------------------------------------------------------------------------------
def _record(rank: int, local: int, host: str = "n1", gpu: str | None = "GPU-a", cvd: str | None = "0,1") -> RankRecord:
    return RankRecord(rank, local, host, 100 + rank, cvd, 2 if gpu else 1, gpu, "A100" if gpu else None)


def test_ranks_on_their_own_gpus_have_no_finding():
    records = [_record(0, 0, gpu="GPU-a"), _record(1, 1, gpu="GPU-b"), _record(2, 0, "n2", "GPU-a")]
    assert [judge_own_gpu(r, records) for r in records] == [[], [], []]  # the same UUID on another node is fine


def test_two_ranks_on_one_gpu_fail_naming_each_other():
    records = [_record(0, 0, gpu="GPU-a"), _record(1, 1, gpu="GPU-a")]
    (finding,) = judge_own_gpu(records[1], records)
    assert finding.fatal and finding.code == "DIST-005" and "rank 1 on n1 and rank 0" in finding.message
    assert "Duplicate GPU detected" in finding.message


def test_a_local_rank_beyond_the_visible_gpus_is_the_layout_finding():
    records = [_record(0, 0, cvd="0"), _record(1, 1, gpu=None, cvd="0")]
    (finding,) = judge_own_gpu(records[1], records)
    assert finding.fatal and finding.code == "LAYOUT-001" and "cuda:1 does not exist" in finding.message


def test_different_visible_gpus_on_one_node_are_a_warning():
    records = [_record(0, 0, gpu="GPU-a", cvd="0,1"), _record(1, 1, gpu="GPU-d", cvd="2,3")]
    (finding,) = judge_own_gpu(records[0], records)
    assert not finding.fatal and finding.code == "DIST-005" and "'2,3'" in finding.message


# -- launcher timeouts ------------------------------------------------------------------------------------------
def test_dist_timeout_is_read_as_vlmevalkit_reads_it():
    assert dist_timeout({}) is None
    assert dist_timeout({"DIST_TIMEOUT": " 7200 "}).seconds == 7200
    with pytest.raises(ValueError, match="not a whole number"):
        dist_timeout({"DIST_TIMEOUT": "1.5"})


LMMS_MAIN = "    kwargs_handler = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=60000))\n"
LMMS_LLAVA = "\n\n        accelerator_kwargs = InitProcessGroupKwargs(timeout=timedelta(weeks=52))\n"


def _fake_lmms_eval(root: Path) -> Path:
    package = root / "lmms_eval"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('diag must not import lmms_eval')\n")
    (package / "__main__.py").write_text("import datetime\n" + LMMS_MAIN)
    (package / "models" / "llava.py").write_text("from datetime import timedelta\n" + LMMS_LLAVA)
    (package / "models" / "plain.py").write_text("x = timedelta(weeks=52)\n")  # not a process-group timeout
    return package


def test_lmms_eval_timeouts_are_found_in_its_source(tmp_path):
    found = lmms_eval_timeouts(_fake_lmms_eval(tmp_path))
    assert [(s.where, s.seconds) for s in found] == [
        ("lmms_eval/__main__.py:2", 60000.0),
        ("lmms_eval/models/llava.py:4", 52 * 7 * 86400.0),
    ]
    assert [human(s.seconds) for s in found] == ["16.7 h", "52 weeks"]


# -- through pytest, without a launcher ---------------------------------------------------------------------------
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK",
               "TORCHELASTIC_USE_AGENT_STORE", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_NTASKS", "DIST_TIMEOUT",
               "DIAG_COLLECTIVE_TIMEOUT")  # fmt: skip


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


def test_without_a_launcher_the_collective_checks_skip_and_say_how_to_run_them(run_checks, no_launcher):
    run = run_checks("--simulate", "4xA100-80GB", target="checks/test_collective.py")
    assert run.outcomes() == {
        "test_launcher_environment_is_usable": "skipped",
        "test_all_ranks_answer_an_all_reduce": "skipped",
        "test_each_rank_has_a_gpu_of_its_own": "skipped",
        "test_process_group_timeouts_cannot_hide_a_hang": "passed",
    }
    assert "torchrun, srun or accelerate launch" in run.check("test_all_ranks_answer_an_all_reduce")["message"]
    assert run.report["launch"] is None and run.report["host"]
    assert run.result.ret == 0


def test_a_malformed_dist_timeout_fails_before_the_eval_would(run_checks, no_launcher, monkeypatch):
    monkeypatch.setenv("DIST_TIMEOUT", "1h")
    entry = run_checks("--simulate", "2xA100-80GB", target="checks/test_collective.py").check(
        "test_process_group_timeouts_cannot_hide_a_hang"
    )
    assert entry["outcome"] == "failed" and entry["code"] == "DIST-007" and "DIST_TIMEOUT='1h'" in entry["message"]


def test_long_process_group_timeouts_are_warnings_naming_where_they_are_set(
    run_checks, no_launcher, monkeypatch, pytester
):
    _fake_lmms_eval(pytester.path / "site")
    monkeypatch.syspath_prepend(str(pytester.path / "site"))
    monkeypatch.setenv("DIST_TIMEOUT", "86400")
    entry = run_checks("--simulate", "2xA100-80GB", target="checks/test_collective.py").check(
        "test_process_group_timeouts_cannot_hide_a_hang"
    )
    assert entry["outcome"] == "passed"
    (warning,) = entry["warnings"]
    assert warning["code"] == "DIST-006" and "up to 52 weeks" in warning["message"]
    assert "lmms_eval/models/llava.py:4: 52 weeks" in warning["message"]
    assert "DIST_TIMEOUT: 1.0 days" in warning["message"] and "lmms_eval/__main__.py:2: 16.7 h" in warning["message"]
    assert entry["data"]["process_group_timeouts"][0]["where"] == "DIST_TIMEOUT"


def test_a_malformed_launcher_variable_fails_the_check_and_skips_the_collective(run_checks, no_launcher, monkeypatch):
    monkeypatch.setenv("RANK", "one")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = run_checks("--simulate", "2xA100-80GB", target="checks/test_collective.py")
    entry = run.check("test_launcher_environment_is_usable")
    assert entry["code"] == "DIST-008" and entry["message"] == "RANK='one': expected a whole number >= 0."
    assert run.check("test_all_ranks_answer_an_all_reduce")["outcome"] == "skipped"
    assert run.report["launch"] == {"error": "RANK='one': expected a whole number >= 0"}


def test_an_unknown_report_placeholder_is_a_usage_error(pytester, no_launcher):
    result = pytester.runpytest(
        "-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "1xA100-80GB", "--diag-report", "r-{node}.json"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "has {node}: expected only the placeholders {rank} and {host}" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()


# -- real processes over gloo on the loopback interface ---------------------------------------------------------------
RUN_LIMIT_S = 90  # a run that takes longer has hung: the test fails instead of waiting
PYTEST_ARGS = ["-m", "pytest", "checks/test_collective.py", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
               "-p", "tests.dist_faults", "-q"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(("TORCHELASTIC", "SLURM_"))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return {**env, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO), **extra}


def _start_ranks(tmp_path: Path, world: int, spec: str, *, per_node: int | None = None, timeout_s: float = 5,
                 **extra: str) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    """One pytest per rank, as a launcher would start them: RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free port."""
    port, per_node = _free_port(), per_node or world
    ranks = []
    for rank in range(world):
        env = _clean_env(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank % per_node), LOCAL_WORLD_SIZE=str(per_node),
            GROUP_RANK=str(rank // per_node), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
            DIAG_COLLECTIVE_TIMEOUT=str(timeout_s), **extra,
        )  # fmt: skip
        if per_node < world:
            env["DIAG_TEST_HOST"] = f"node{rank // per_node}"
        args = [
            sys.executable,
            *PYTEST_ARGS,
            "--simulate",
            spec,
            "--diag-report",
            str(tmp_path / "r-{host}-{rank}.json"),
        ]
        with open(tmp_path / f"out{rank}.txt", "wb") as out:
            ranks.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    return ranks


def _wait(process: subprocess.Popen[bytes], limit_s: float = RUN_LIMIT_S) -> int:
    try:
        return process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"pid {process.pid} ran longer than {limit_s} s: the check hung")


def _report(tmp_path: Path, host: str, rank: int) -> dict:
    return json.loads((tmp_path / f"r-{host}-{rank}.json").read_text())


def _merge(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "diag", "merge", *args]
    return subprocess.run(command, cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=60)


def test_torchrun_with_two_ranks_passes_and_writes_two_reports_that_merge(tmp_path):
    """The issue's acceptance run: torchrun --standalone --nproc-per-node 2 -m pytest checks/test_collective.py."""
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *PYTEST_ARGS,
            "--simulate", "2xA100-80GB", "--diag-report", str(tmp_path / "r-{host}-{rank}.json")]  # fmt: skip
    env = _clean_env(DIAG_COLLECTIVE_TIMEOUT="20")
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    host = socket.gethostname().split(".")[0]
    reports = [_report(tmp_path, host, rank) for rank in (0, 1)]
    for rank, report in enumerate(reports):
        assert report["launch"]["rank"] == rank and report["launch"]["launcher"] == "torchrun"
        entry = next(c for c in report["checks"] if c["nodeid"].endswith("test_all_ranks_answer_an_all_reduce"))
        assert entry["outcome"] == "passed"
        collective = entry["data"]["collective"]
        assert (collective["backend"], collective["total"], collective["expected"]) == ("gloo", 3.0, 3.0)
        assert [r["rank"] for r in collective["records"]] == [0, 1]
    merged = _merge(*(str(tmp_path / f"r-{host}-{rank}.json") for rank in (0, 1)), "-o", str(tmp_path / "fleet.json"))
    assert merged.returncode == 0, merged.stderr
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    assert [(r["rank"], r["gpu_nvml_index"]) for r in fleet["ranks"]] == [(0, 0), (1, 1)]
    assert fleet["summary"]["missing_ranks"] == [] and fleet["summary"]["failed"] == 0


def test_four_ranks_on_two_nodes_pass_and_the_fleet_shows_each_gpu_in_use(tmp_path):
    ranks = _start_ranks(tmp_path, 4, "2xA100-80GB", per_node=2, timeout_s=30)
    codes = [_wait(p) for p in ranks]
    assert codes == [0, 0, 0, 0], [(tmp_path / f"out{r}.txt").read_text()[-2000:] for r in range(4)]
    paths = [str(tmp_path / f"r-node{r // 2}-{r}.json") for r in range(4)]
    merged = _merge(*paths, "-o", str(tmp_path / "fleet.json"))
    assert merged.returncode == 0, merged.stderr
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    assert [n["host"] for n in fleet["nodes"]] == ["node0", "node1"]
    assert [[g["ranks"] for g in n["gpus"]] for n in fleet["nodes"]] == [[[0], [1]], [[2], [3]]]
    assert "node1  3     1      1" in merged.stdout


def test_a_rank_that_exits_early_fails_the_others_within_the_timeout_naming_it(tmp_path):
    ranks = _start_ranks(tmp_path, 2, "2xA100-80GB", timeout_s=4, DIAG_TEST_EXIT_RANK="1")
    assert _wait(ranks[1]) == 3  # the plugin's exit code: it never reached the rendezvous
    assert _wait(ranks[0]) == 1
    host = socket.gethostname().split(".")[0]
    entry = next(c for c in _report(tmp_path, host, 0)["checks"] if c["nodeid"].endswith("all_reduce"))
    assert entry["code"] == "DIST-001" and entry["subject"] == "rank 1"
    assert entry["message"].startswith("rank 1 never reached the rendezvous at 127.0.0.1:")
    assert "within 4 s (gloo)" in entry["message"]
    assert 3.5 < entry["data"]["collective"]["elapsed_s"] < 10  # the stated timeout, not the eval's hour
    merged = _merge(str(tmp_path / f"r-{host}-0.json"), "-o", str(tmp_path / "fleet.json"))
    assert merged.returncode == 1
    assert "no report from rank(s) 1 of 2" in merged.stdout and "DIST-001" in merged.stdout


def test_a_rank_that_hangs_fails_the_others_within_the_timeout_naming_it(tmp_path):
    ranks = _start_ranks(tmp_path, 2, "2xA100-80GB", timeout_s=4, DIAG_TEST_HANG_RANK="1")
    started = time.monotonic()
    try:
        assert _wait(ranks[0]) == 1
        assert ranks[1].poll() is None  # still hanging: only the check's timeout ended rank 0's wait
    finally:
        if ranks[1].poll() is None:
            os.kill(ranks[1].pid, signal.SIGKILL)
        ranks[1].wait()
    host = socket.gethostname().split(".")[0]
    entry = next(c for c in _report(tmp_path, host, 0)["checks"] if c["nodeid"].endswith("all_reduce"))
    assert entry["code"] == "DIST-001"
    assert entry["message"].startswith(f"rank 1 on {host} (pid {ranks[1].pid}) did not reach the all-reduce within 4 s")
    assert entry["data"]["collective"]["step"] == "all_reduce"
    assert entry["data"]["collective"]["elapsed_s"] < 10 and time.monotonic() - started < RUN_LIMIT_S
    assert "NCCL_SOCKET_IFNAME" in entry["fix"]["summary"] and "rank 1 on" in entry["fix"]["summary"]
