"""End to end: checks/test_same_device.py through pytester, with the report's fix and its verification."""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from packaging.version import Version

from diag.twins import PRESETS, build_meta
from tests.test_same_device_fidelity import _readme_split_without_rotary

OLD_STACK = Version(transformers.__version__) < Version("4.46")
ROTARY_BREAKS = Version(transformers.__version__) < Version("4.52")


def test_the_default_run_forces_the_tiny_twins_across_all_gpus_and_passes(run_checks):
    run = run_checks("--simulate", "4xA100-80GB", target="checks/test_same_device.py")
    assert run.outcomes() == {
        "test_twin_runs_with_the_map[llava-1.5-7b-forced]": "passed",
        "test_twin_runs_with_the_map[internvl2-8b-forced]": "passed",
    }, run.text
    ran = run.check("test_twin_runs_with_the_map[internvl2-8b-forced]")["data"]["run"]
    assert sorted(set(ran["map"].values())) == ["0", "1", "2", "3"]


def test_internvl2_76b_under_auto_on_four_gpus(run_checks):
    run = run_checks("--simulate", "4xA100-80GB", "--model", "internvl2-76b", target="checks/test_same_device.py")
    entry = run.check("test_twin_runs_with_the_map[internvl2-76b-auto]")
    if not OLD_STACK:
        assert entry["outcome"] == "passed", run.text
        return
    assert entry["outcome"] == "failed" and entry["code"] == "FWD-002"
    assert "https://github.com/OpenGVLab/InternVL/issues/587" in entry["references"]
    assert entry["fix"]["verified"] is True
    fixed = json.loads(Path(entry["fix"]["device_map_file"]).read_text())
    assert fixed["language_model.lm_head"] == fixed["language_model.model.embed_tokens"]
    assert any("from_pretrained" in line for line in entry["fix"]["commands"])


def test_the_internvl_readme_map_without_rotary_emb(run_checks, pytester):
    path = pytester.path / "readme.json"
    path.write_text(json.dumps(_readme_split_without_rotary(build_meta(PRESETS["internvl2-76b"])), indent=2))
    run = run_checks("--simulate", "4xA100-80GB", "--model", "internvl2-76b", f"--device-map=@{path}")
    same = run.check("test_twin_runs_with_the_map[internvl2-76b-device-map]")
    covers = run.check("test_device_map_covers_the_model[internvl2-76b-device-map]")
    assert [w["code"] for w in covers["warnings"]] == ["MAP-007"]  # on every stack: the risk is named
    if ROTARY_BREAKS:
        assert same["outcome"] == "failed" and same["code"] == "FWD-001" and same["fix"]["verified"] is True
        assert "cpu and cuda:0" in same["message"]
    else:
        assert same["outcome"] == "passed", run.text


def test_a_config_that_does_not_build_fails_with_its_cause_and_the_rest_still_runs(run_checks, pytester):
    """--model with a config.json whose activation no transformers knows: the model's checks fail with FWD-008
    and the error, the environment checks still pass, and the report is written."""
    config = json.loads(json.dumps(dict(PRESETS["llava-1.5-7b"].config)))
    config["text_config"]["hidden_act"] = "no-such-activation"
    folder = pytester.path / "broken-llava"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    run = run_checks("--simulate", "2xA100-80GB", "--model", str(folder))
    same = [c for c in run.report["checks"] if "test_twin_runs_with_the_map" in c["nodeid"]]
    assert same and all(c["code"] == "FWD-008" and "no-such-activation" in c["message"] for c in same), run.text
    assert run.check("test_nvidia_driver_and_nvml_answer")["outcome"] == "passed"


def test_out_of_memory_and_a_lost_gpu_during_the_run_are_failed_checks(run_checks, monkeypatch):
    """What a real GPU can throw mid-run, injected where the twin runs: each is a failed check with its own code,
    and the other twin's check still runs."""
    import torch

    from diag.samedevice import run as run_module

    original = run_module.run_stages
    errors = {
        "llava": torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity "
            "of 79.15 GiB of which 3.12 MiB is free."
        ),
        "internvl-chat": RuntimeError(
            "CUDA error: unspecified launch failure\nCUDA kernel errors might be "
            "asynchronously reported at some other API call"
        ),
    }

    def failing(spec, model, inputs_device="cuda:0"):
        for stage in original(spec, model, inputs_device):
            yield stage
            raise errors[spec.family]

    monkeypatch.setattr(run_module, "run_stages", failing)
    run = run_checks("--simulate", "4xA100-80GB", target="checks/test_same_device.py")
    llava = run.check("test_twin_runs_with_the_map[llava-1.5-7b-forced]")
    internvl = run.check("test_twin_runs_with_the_map[internvl2-8b-forced]")
    assert (llava["outcome"], llava["code"]) == ("failed", "MEM-003"), run.text
    assert "CUDA out of memory" in llava["message"] and llava["fix"]["verified"] is False
    assert (internvl["outcome"], internvl["code"]) == ("failed", "FWD-009")
    assert "unspecified launch failure" in internvl["message"]
