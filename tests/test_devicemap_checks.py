"""End to end: checks/test_devicemap.py on simulated nodes, for the device-map cases of FACTS.md.

These run on both stacks (.ci/run); where transformers 4.45 and 5.x differ, the difference comes out of the
installed code (module names in maps, what `cuda` resolves to), and the tests read the names from the twin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.twins import PRESETS, build_meta, language_model_layout


def _fails(run, name):
    entry = run.check(name)
    assert entry["outcome"] == "failed", (entry, run.text)
    return entry


def test_the_default_run_plans_the_default_models_and_passes(run_checks):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5,6,7")
    assert run.report["summary"]["failed"] == 0, run.text
    plan = run.check("test_model_fits_in_gpu_memory[internvl2-8b-auto]")["data"]["plan"]
    assert [row["device"] for row in plan] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [row["nvml_index"] for row in plan] == [4, 5, 6, 7]
    assert all(row["shortfall_gib"] == 0 for row in plan)
    run.result.stdout.fnmatch_lines(["plan for internvl2-8b-auto:", "*cuda:0*4*vision_model*"])


@pytest.mark.parametrize(("spec", "fix"), [("4xA100-80GB", "device_map=auto"), ("1xA100-80GB", "device_map=cuda:0")])
def test_an_empty_device_map_from_lmms_eval_gets_transformers_error_and_the_fix(run_checks, spec, fix):
    run = run_checks("--simulate", spec, "--model-args", "pretrained=llava-hf/llava-1.5-7b-hf,device_map=")
    entry = _fails(run, "test_device_map_is_accepted_by_transformers[llava-1.5-7b-model-args]")
    assert entry["code"] == "MAP-001"
    assert entry["message"].endswith(
        "from_pretrained would raise ValueError: When passing device_map as a string, the value needs to be a device "
        "name (e.g. cpu, cuda:0) or 'auto', 'balanced', 'balanced_low_0', 'sequential' but found ."
    )
    assert fix in entry["fix"]["summary"]
    assert "https://github.com/EvolvingLMMs-Lab/lmms-eval/issues/33" in entry["references"]


def test_a_bare_key_in_model_args_is_lmms_evals_own_error(run_checks):
    run = run_checks("--simulate", "2xA100-80GB", "--model-args", "pretrained=llava-hf/llava-1.5-7b-hf,device_map")
    entry = _fails(run, "test_model_args_parse_like_lmms_eval")
    assert entry["code"] == "MAP-009" and "not enough values to unpack (expected 2, got 1)" in entry["message"]
    assert run.report["summary"]["failed"] >= 1  # and the report was written


def test_a_map_in_physical_numbers_is_remapped_and_written(run_checks, pytester):
    layout = language_model_layout(build_meta(PRESETS["llava-1.5-7b"]))
    model = build_meta(PRESETS["llava-1.5-7b"])
    top = [name for name, _ in model.named_children()]
    physical = {name: 4 + i % 4 for i, name in enumerate(top)}
    path = pytester.path / "map.json"
    path.write_text(json.dumps(physical, indent=2))  # several lines: pytest must not expand it as an @argsfile
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5,6,7", "--model", "llava-1.5-7b",
                     f"--device-map=@{path}")  # fmt: skip
    entry = _fails(run, "test_device_map_names_only_visible_gpus[llava-1.5-7b-device-map]")
    assert entry["code"] == "MAP-004"
    fixed = json.loads(Path(entry["fix"]["device_map_file"]).read_text())
    assert fixed == {name: value - 4 for name, value in physical.items()}
    assert layout.num_layers == 32


def test_a_hand_written_internvl_map_without_rotary_emb_is_flagged_with_its_fix(run_checks, pytester):
    model = build_meta(PRESETS["internvl2-76b"])
    layout = language_model_layout(model)
    assert layout.rotary is not None
    hand = {name: 0 for name in (*layout.vision, layout.embed)}
    hand.update({f"{layout.layers}.{i}": i * 4 // layout.num_layers for i in range(layout.num_layers)})
    hand.update({layout.norm: 3, layout.head: 3})
    path = pytester.path / "internvl.json"
    path.write_text(json.dumps(hand, indent=2))
    run = run_checks("--simulate", "4xA100-80GB", "--model", "internvl2-76b", f"--device-map=@{path}")
    entry = run.check("test_device_map_covers_the_model[internvl2-76b-device-map]")
    assert entry["outcome"] == "passed", run.text
    warning = next(w for w in entry["warnings"] if w["code"] == "MAP-007")
    assert layout.rotary in warning["message"]
    assert "device-map-internvl2-76b-device-map.json" in warning["fix"]
    written = json.loads((pytester.path / "reports" / "device-map-internvl2-76b-device-map.json").read_text())
    assert written == {**hand, layout.rotary: 0}


def test_a_76b_model_on_two_40gb_gpus_is_offloaded_and_the_fix_names_how_many_gpus(run_checks):
    run = run_checks("--simulate", "2xA100-40GB", "--model", "internvl2-76b")
    entry = _fails(run, "test_model_fits_in_gpu_memory[internvl2-76b-auto]")
    assert entry["code"] == "MEM-002"
    assert "planned onto cpu" in entry["message"]
    plan = entry["data"]["plan"]
    assert {row["device"] for row in plan} >= {"cuda:0", "cuda:1", "cpu"}
    assert "GPUs with 40 GiB free (now 2" in entry["fix"]["summary"]


def test_the_same_model_fits_on_four_80gb_gpus(run_checks):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "0,1,2,3", "--model", "internvl2-76b")
    assert run.check("test_model_fits_in_gpu_memory[internvl2-76b-auto]")["outcome"] == "passed", run.text


def test_auto_split_over_four_of_eight_gpus_uses_visible_ordinals(run_checks, monkeypatch):
    monkeypatch.setenv("AUTO_SPLIT", "1")
    # VLMEvalKit of Dec 30 2024 (before PR #952, whose InternVL ignores AUTO_SPLIT)
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5,6,7", "--model", "internvl2-76b",
                     "--eval-kit-version", "2024-12-30")  # fmt: skip
    entry = run.check("test_auto_split_uses_only_visible_gpus[internvl2-76b-auto-split]")
    assert entry["outcome"] == "passed", run.text
    assert entry["data"]["auto_split"]["gpus_used"] == [0, 1, 2, 3]
    # The Dec 2024 VLMEvalKit assumed 8 GPUs from 0 and would address cuda:4..7 here.
    assert [w["code"] for w in entry["warnings"]] == ["SPLIT-001"]
    assert run.check("test_model_fits_in_gpu_memory[internvl2-76b-auto-split]")["outcome"] == "passed"


def test_auto_split_with_uuid_entries_breaks_vlmevalkit(run_checks, monkeypatch):
    from diag.topology.simulated import simulated_node

    uuids = [g.uuid for g in simulated_node("8xA100-80GB").gpus[4:]]
    monkeypatch.setenv("AUTO_SPLIT", "1")
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", ",".join(uuids), "--model", "internvl2-76b",
                     "--eval-kit-version", "2024-12-30")  # fmt: skip
    entry = _fails(run, "test_auto_split_uses_only_visible_gpus[internvl2-76b-auto-split]")
    assert entry["code"] == "SPLIT-002" and "invalid literal for int()" in entry["message"]


def test_an_ordinal_beyond_the_visible_gpus_fails(run_checks):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "4,5", "--model", "llava-1.5-7b", "--device-map", "cuda:3")
    entry = _fails(run, "test_device_map_names_only_visible_gpus[llava-1.5-7b-cuda:3]")
    assert entry["code"] == "MAP-003" and "invalid device ordinal" in entry["message"]


def test_cuda_follows_the_installed_transformers(run_checks, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    run = run_checks("--simulate", "2xA100-80GB", "--model", "llava-1.5-7b", "--device-map", "cuda")
    entry = run.check("test_device_map_names_only_visible_gpus[llava-1.5-7b-cuda]")
    try:
        from transformers.integrations.accelerate import check_and_set_device_map  # noqa: F401
    except ImportError:  # 4.x: torch.device("cuda") is the current device, cuda:0
        assert entry["outcome"] == "passed"
    else:  # 5.x: cuda -> cuda:{LOCAL_RANK} = cuda:3 of 2 GPUs
        assert entry["outcome"] == "failed" and entry["code"] == "MAP-003" and "LOCAL_RANK" in entry["message"]


def test_a_map_naming_modules_the_model_lacks_fails_on_coverage_with_a_corrected_map(run_checks):
    run = run_checks("--simulate", "2xA100-80GB", "--model", "llava-1.5-7b", "--device-map",
                     '{"vision_towr": 0, "language_model": 1}')  # fmt: skip
    entry = run.check("test_device_map_covers_the_model[llava-1.5-7b-device-map]")
    assert entry["outcome"] == "failed" and entry["code"] == "MAP-006", run.text
    assert entry["fix"]["device_map_file"]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--model", "gpt-17"], "*argument --model*gpt-17*"),
        (["--device-map=@missing.json"], "*argument --device-map*missing.json*"),
        (["--device-map", "{not json"], "*argument --device-map*"),
    ],
)
def test_bad_model_and_map_options_are_one_line_usage_errors(pytester, args, line):
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "2xA100-80GB", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    assert "Traceback" not in result.stderr.str()


def test_device_map_at_file_with_a_space_is_a_usage_error_naming_the_forms_that_work(pytester):
    pytester.path.joinpath("map.json").write_text(json.dumps({"vision_model": 0, "language_model": 1}, indent=2))
    result = pytester.runpytest("-p", "diag.plugin", "-p", "no:hypothesispytest", "--simulate", "2xA100-80GB",
                                "--device-map", "@map.json")  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --device-map: --device-map '{': not valid JSON*pytest expands "
                                 "`--device-map @map.json` (with a space)*write --device-map map.json or "
                                 "--device-map=@map.json"])  # fmt: skip
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_a_map_file_given_by_its_path_is_the_map_the_checks_judge(run_checks, pytester):
    meta = build_meta(PRESETS["llava-1.5-7b"])
    vision = next(name for name, _ in meta.named_modules() if name.endswith("vision_tower"))
    pytester.path.joinpath("map.json").write_text(json.dumps({vision: 0, "": 1}, indent=2))
    run = run_checks("--simulate", "2xA100-80GB", "--model", "llava-1.5-7b", "--device-map", "map.json",
                     target="checks/test_devicemap.py")  # fmt: skip
    entry = run.check("test_device_map_covers_the_model[llava-1.5-7b-device-map]")
    assert entry["outcome"] == "passed", run.text
    plan = run.check("test_model_fits_in_gpu_memory[llava-1.5-7b-device-map]")["data"]["plan"]
    assert {row["device"]: row["modules"] for row in plan} == {"cuda:0": vision, "cuda:1": "(whole model)"}


def test_auto_split_with_two_processes_gives_each_its_own_slice(run_checks, monkeypatch):
    monkeypatch.setenv("AUTO_SPLIT", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    run = run_checks("--simulate", "8xA100-80GB", "--model", "internvl2-76b", "--processes", "2",
                     "--eval-kit-version", "2024-12-30")  # fmt: skip
    entry = run.check("test_auto_split_uses_only_visible_gpus[internvl2-76b-auto-split]")
    assert entry["outcome"] == "passed", run.text
    assert entry["data"]["auto_split"]["gpus_used"] == [4, 5, 6, 7]  # rank 1 of 2 on 8 GPUs


def test_batch_size_in_model_args_fails_before_launch_naming_the_class(run_checks):
    """lmms-eval passes --batch_size itself: batch_size= in --model_args is a TypeError in every class (MAP-010)."""
    pretrained = "pretrained=llava-hf/llava-1.5-7b-hf"
    command = f"python -m lmms_eval --model llava_hf --model_args {pretrained},batch_size=8 --tasks mme"
    run = run_checks("--simulate", "2xA100-80GB", "--model-args", f"{pretrained},batch_size=8", "--eval-model",
                     "llava_hf", "--eval-command", command, target="checks/test_devicemap.py")  # fmt: skip
    entry = run.check("test_model_args_parse_like_lmms_eval")
    assert (entry["outcome"], entry["code"]) == ("failed", "MAP-010")
    assert "'llava_hf' class raises TypeError: got multiple values for keyword argument" in entry["message"]
    fixed = f"python -m lmms_eval --model llava_hf --model_args {pretrained} --tasks mme --batch_size 8"
    assert entry["fix"]["commands"] == [fixed]
