"""`python -m diag run -- COMMAND` for commands that start an inference engine: lmms-eval `--model vllm/sglang`,
VLMEvalKit `--use-vllm`, `vllm serve`, `python -m sglang.launch_server`, `lmdeploy serve api_server`."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from diag.launch import wrapper
from diag.launch.wrapper import checks_dir, plan_run

QWEN7 = "Qwen/Qwen2-VL-7B-Instruct"
VLLM_CLASS = ["--model", "vllm", "--model_args", f"model={QWEN7},tensor_parallel_size=4"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "LOCAL_RANK",
                 "VLLM_WORKER_MULTIPROC_METHOD", "SLURM_NTASKS_PER_NODE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A fake `lmms_eval` package on sys.path and PYTHONPATH, `python` and `vllm` on PATH; `engine` adds the
    `vllm` package too (the engine the command starts)."""
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    (site / "lmms_eval").mkdir(parents=True)
    (site / "lmms_eval" / "__init__.py").write_text("")
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "vllm").write_text(f"#!{sys.executable}\n")
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _engine(machine):
    (machine / "site" / "vllm").mkdir()
    (machine / "site" / "vllm" / "__init__.py").write_text("")


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append((file, list(args), env)))
    return calls


def _plan(command):
    checks = checks_dir()
    assert checks is not None
    return plan_run(command, [], {}, checks)


def _files(plan):
    return [os.path.basename(t) for t in plan.targets]


@pytest.mark.parametrize(
    ("command", "recognised", "backend"),
    [
        (["vllm", "serve", QWEN7, "--tensor-parallel-size", "8"], "recognised: vllm serve (an inference server)",
         "vllm"),
        (["python", "-m", "sglang.launch_server", "--model-path", QWEN7, "--tp", "2"],
         "recognised: python -m sglang.launch_server (an inference server)", "sglang"),
        (["lmdeploy", "serve", "api_server", QWEN7, "--tp", "2"],
         "recognised: lmdeploy serve api_server (an inference server)", "lmdeploy"),
        (["accelerate", "launch", "--num_processes", "2", "-m", "lmms_eval", *VLLM_CLASS],
         "recognised: accelerate launch -m lmms_eval (lmms-eval)", "vllm"),
        (["python", "run.py", "--data", "MME", "--model", "Qwen2-VL-7B-Instruct", "--use-vllm"],
         "recognised: python run.py (VLMEvalKit)", "vllm"),
    ],
)  # fmt: skip
def test_backend_commands_run_the_backend_checks(command, recognised, backend):
    plan = _plan(command)
    assert plan.error is None and recognised in plan.derived
    assert _files(plan) == ["test_env.py", "test_layout.py", "test_backends.py"]
    index = plan.options.index("--backend")
    assert plan.options[index + 1] == backend and plan.backend == backend
    assert any(line.startswith("backend: ") for line in plan.derived)
    assert any("the engine loads the model itself" in line for line in plan.not_derived)
    assert not any(line.startswith("the model") for line in plan.not_derived)


def test_a_command_without_an_engine_keeps_the_device_map_checks():
    plan = _plan(
        ["python", "-m", "lmms_eval", "--model", "llava_hf", "--model_args", "pretrained=llava-hf/llava-1.5-7b-hf"]
    )
    assert "--backend" not in plan.options and plan.backend is None and _files(plan) == ["checks"]


def test_a_size_the_engine_refuses_is_a_usage_error():
    plan = _plan(["vllm", "serve", QWEN7, "--tensor-parallel-size", "two"])
    assert plan.error == "vllm serve: tensor parallel size='two': expected a whole number of GPUs, 1 or more"


def test_dry_run_shows_what_was_recognised(capsys, machine, started):
    command = ["vllm", "serve", QWEN7, "--tensor-parallel-size", "8", "--gpu-memory-utilization", "0.85"]
    assert wrapper.main(["--simulate", "8xA100-80GB", "--dry-run", "--", *command]) == 0 and not started
    out, err = capsys.readouterr()
    assert "checks/test_backends.py" in out and "--backend vllm" in out
    assert (f"diag: backend: vLLM via vllm serve, model {QWEN7} (the command), tp 8 (the command's 8), dp 1 (default "
            "1), gpu_memory_utilization 0.85 (--gpu-memory-utilization 0.85)") in err  # fmt: skip
    if importlib.util.find_spec("vllm") is None:  # the engine's module, looked up by the command's interpreter
        assert "vllm is not importable" in err


def test_vllm_serve_with_tp8_on_a_28_head_model_is_not_started(tmp_path, capsys, machine, started):
    _engine(machine)
    report = tmp_path / "r.json"
    command = ["vllm", "serve", QWEN7, "--tensor-parallel-size", "8"]
    code = wrapper.main(["--simulate", "8xA100-80GB", "--diag-report", str(report), "-q", "--", *command])
    err = capsys.readouterr().err
    assert code == 1 and not started
    assert "next step: [BACKEND-004] tensor_parallel_size: Use tensor_parallel_size=4" in err
    assert f"found vllm: {machine / 'site' / 'vllm' / '__init__.py'}" in err


def test_lmms_eval_vllm_without_the_engine_installed_is_not_started(tmp_path, capsys, machine, started):
    report = tmp_path / "r.json"
    command = ["python", "-m", "lmms_eval", *VLLM_CLASS, "--tasks", "mme"]
    code = wrapper.main(["--simulate", "4xA100-80GB", "--diag-report", str(report), "-q", "--start-anyway", "--",
                         *command])  # fmt: skip
    err = capsys.readouterr().err
    assert code == wrapper.EVAL_NOT_FOUND and not started
    assert "every check passed" in err and "vllm is not importable by" in err and "pip install vllm" in err
