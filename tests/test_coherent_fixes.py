"""One coherent answer per run, fixes a user can paste, and public references (issue 11, items 5 and 10).

The scenario tests run the shipped checks and read every fix of the report: no fix may name a GPU that another
fix's selection leaves out, and the checks that depend on a root finding skip or re-plan as designed.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

# Imported here, outside pytester's runs, so every run shares these modules: a run that re-imports diag.session
# while the `diag` package keeps the previous run's `fixtures` attribute looks up a stale stash key (KeyError).
import diag.plugin  # noqa: F401
from diag.fixes import CATALOG, catalog_markdown
from diag.layout import eval_command_in_one_process, eval_command_without_device_map
from diag.roots import (
    command_with_env,
    eval_command_with_model_args,
    load_snippet,
    map_fix_lines,
    model_args_without,
    recheck_command,
    with_options,
)

REPO = Path(__file__).resolve().parents[1]
ELLIPSIS = "\u2026"
PRIVATE_NOTES = ("FACTS.md", "DESIGN.md", "FIELD.md", "STYLE.md")


# -- reading the GPUs a fix names ------------------------------------------------------------------------------
def _ids(text: str) -> set[int]:
    return {int(t) for t in text.split(",") if t.strip().isdigit()}


def _fix_texts(fix: dict[str, Any]) -> list[str]:
    return [fix.get("summary", ""), fix.get("details", ""), *fix.get("commands", [])]


def selection_of(fix: dict[str, Any]) -> set[int] | None:
    """The physical GPUs a fix tells the user to select (--gpus / CUDA_VISIBLE_DEVICES), None if it selects none."""
    found: set[int] = set()
    visible = fix.get("env", {}).get("CUDA_VISIBLE_DEVICES")
    if visible:
        found |= _ids(visible)
    for text in _fix_texts(fix):
        for match in re.finditer(r"(?:--gpus[ =]|CUDA_VISIBLE_DEVICES=)([0-9][0-9,]*)", text):
            found |= _ids(match[1])
    return found or None


def named_gpus(fix: dict[str, Any], report: dict[str, Any]) -> set[int]:
    """Every physical GPU a fix names: its selection, max_memory keys and device-map file values, the last two
    mapped from cuda ordinals through the fix's own CUDA_VISIBLE_DEVICES, else through the report's topology."""
    named = set(selection_of(fix) or ())
    visible = fix.get("env", {}).get("CUDA_VISIBLE_DEVICES")
    if visible:
        by_ordinal = dict(enumerate(int(t) for t in visible.split(",")))
    else:
        by_ordinal = {
            g["cuda_index"]: g["nvml_index"] for g in report["topology"]["gpus"] if g["cuda_index"] is not None
        }
    ordinals: set[int] = set()
    for text in _fix_texts(fix):
        for match in re.finditer(r"max_memory=\{([^}]*)\}", text):
            ordinals |= {int(k) for k in re.findall(r"(\d+)\s*:", match[1])}
    if fix.get("device_map_file"):
        for value in json.loads(Path(fix["device_map_file"]).read_text()).values():
            text = str(value).removeprefix("cuda:")
            if text.isdigit():
                ordinals.add(int(text))
    assert ordinals <= set(by_ordinal), (ordinals, by_ordinal, fix)
    return named | {by_ordinal[o] for o in ordinals}


def failed_fixes(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["code"], c["fix"]) for c in report["checks"] if c["outcome"] in ("failed", "error") and c.get("fix")]


def assert_fixes_agree(report: dict[str, Any]) -> None:
    """No fix names a GPU that another fix's selection leaves out."""
    fixes = failed_fixes(report)
    universe = {g["nvml_index"] for g in report["topology"]["gpus"]}
    for code, fix in fixes:
        chosen = selection_of(fix)
        if chosen is None:
            continue
        excluded = universe - chosen
        for other_code, other in fixes:
            if other is fix:
                continue
            clash = named_gpus(other, report) & excluded
            assert not clash, f"{other_code} names GPUs {sorted(clash)} that {code}'s fix ({sorted(chosen)}) excludes"


def assert_pasteable(report: dict[str, Any]) -> None:
    for code, fix in failed_fixes(report):
        for text in _fix_texts(fix):
            assert ELLIPSIS not in text, f"{code}: {text!r}"


def _entry(run: Any, prefix: str) -> dict[str, Any]:
    hits = [c for c in run.report["checks"] if c["nodeid"].split("::", 1)[1].startswith(prefix)]
    assert len(hits) == 1, [c["nodeid"] for c in run.report["checks"]]
    return hits[0]


BUSY = {"processes": [{"pid": 4242, "name": "python", "used_mib": 30512}], "memory_used_mib": 31000}


# -- the scenarios -----------------------------------------------------------------------------------------------
def test_busy_gpu_dependent_checks_replan_on_the_free_gpus_env006_names(run_checks, node_file):
    run = run_checks("--topology", str(node_file("8xA100-80GB", {0: BUSY})), "--gpus", "0,1,2,3",
                     "--model", "cogvlm-17b")  # fmt: skip
    env006 = run.check("test_selected_gpu_is_free[gpu0]")
    assert env006["code"] == "ENV-006"
    assert env006["fix"]["env"] == {"CUDA_VISIBLE_DEVICES": "1,2,3,4", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    memory = _entry(run, "test_model_fits_in_gpu_memory")
    assert memory["outcome"] == "passed"
    assert [row["nvml_index"] for row in memory["data"]["plan"]] == [1, 2, 3, 4]  # planned on ENV-006's GPUs
    assert memory["data"]["planned_on"]["assumes"] == "ENV-006"
    twin = _entry(run, "test_twin_runs_with_the_map")
    assert twin["outcome"] == "failed" and twin["code"] == "FWD-004"
    assert twin["fix"]["env"] == env006["fix"]["env"]
    assert "assumes ENV-006's fix" in twin["fix"]["summary"]
    assert named_gpus(twin["fix"], run.report) <= {1, 2, 3, 4}
    assert_fixes_agree(run.report)
    assert_pasteable(run.report)


def test_busy_gpu_with_too_few_free_gpus_skips_the_plan(run_checks, node_file):
    run = run_checks("--topology", str(node_file("4xA100-80GB", {2: BUSY})), "--model", "llava-1.5-7b")
    assert run.check("test_selected_gpu_is_free[gpu2]")["code"] == "ENV-006"
    for name in ("test_model_fits_in_gpu_memory", "test_twin_runs_with_the_map"):
        entry = _entry(run, name)
        assert entry["outcome"] == "skipped" and "see ENV-006" in entry["message"], entry
    assert_fixes_agree(run.report)


def test_busy_gpu_fix_gives_the_eval_command_corrected(run_checks, node_file):
    command = "CUDA_VISIBLE_DEVICES=0,1,2,3 python -m lmms_eval --model llava_hf --tasks mme"
    run = run_checks("--topology", str(node_file("8xA100-80GB", {0: BUSY})), "--gpus", "0,1,2,3",
                     "--eval-command", command)  # fmt: skip
    fix = run.check("test_selected_gpu_is_free[gpu0]")["fix"]
    assert fix["commands"][0] == (
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1,2,3,4 python -m lmms_eval --model llava_hf --tasks mme"
    )
    assert_fixes_agree(run.report)


def test_busy_gpu_fix_without_eval_command_gives_the_full_recheck(run_checks, node_file):
    path = node_file("8xA100-80GB", {0: BUSY})
    run = run_checks("--topology", str(path), "--gpus", "0,1,2,3")
    recheck = [c for c in run.check("test_selected_gpu_is_free[gpu0]")["fix"]["commands"] if "pytest" in c]
    assert len(recheck) == 1
    args = shlex.split(recheck[0])
    assert args[0] == "pytest" and args[args.index("--gpus") + 1] == "1,2,3,4"
    assert args[args.index("--topology") + 1] == str(path)


def test_no_driver_skips_the_plan_with_see_env001(run_checks):
    run = run_checks("--model", "llava-1.5-7b")  # this machine has no NVIDIA driver
    assert run.check("test_nvidia_driver_and_nvml_answer")["code"] == "ENV-001"
    entry = _entry(run, "test_model_fits_in_gpu_memory")
    assert entry["outcome"] == "skipped" and "see ENV-001" in entry["message"]
    assert not [c for c in run.report["checks"] if (c.get("code") or "").startswith("MEM-")]
    assert_fixes_agree(run.report)
    assert_pasteable(run.report)


def test_missing_gpu_skips_the_plan_with_see_env002(run_checks):
    run = run_checks("--simulate", "8xA100-80GB", "--gpus", "0,9", "--model", "llava-1.5-7b")
    assert run.check("test_selected_gpus_exist")["code"] == "ENV-002"
    for name in ("test_model_fits_in_gpu_memory", "test_twin_runs_with_the_map"):
        entry = _entry(run, name)
        assert entry["outcome"] == "skipped" and "see ENV-002" in entry["message"], entry
    assert not [c for c in run.report["checks"] if (c.get("code") or "").startswith("MEM-")]
    assert "8-bit" not in run.text
    assert_fixes_agree(run.report)


def test_layout002_skips_the_plan_and_its_commands_are_the_eval_command_corrected(run_checks):
    command = ("accelerate launch --num_processes 2 -m lmms_eval --model llava_hf "
               "--model_args pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto --tasks mme")  # fmt: skip
    run = run_checks("--simulate", "2xA100-80GB", "--eval-model", "llava_hf", "--processes", "2",
                     "--model-args", "pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto",
                     "--eval-command", command)  # fmt: skip
    layout = run.check("test_lmms_eval_does_not_combine_processes_with_device_map_auto")
    assert layout["code"] == "LAYOUT-002"
    assert layout["fix"]["commands"] == [
        "accelerate launch --num_processes 2 -m lmms_eval --model llava_hf "
        "--model_args pretrained=llava-hf/llava-1.5-7b-hf --tasks mme",  # fits one GPU: this layout first
        "python -m lmms_eval --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,device_map=auto "
        "--tasks mme",
    ]
    for name in ("test_model_fits_in_gpu_memory", "test_twin_runs_with_the_map"):
        entry = _entry(run, name)
        assert entry["outcome"] == "skipped" and "see LAYOUT-002" in entry["message"], entry
    assert "max_memory=" not in json.dumps(run.report["checks"])
    assert_fixes_agree(run.report)
    assert_pasteable(run.report)


def test_mem001_under_lmms_eval_offers_no_max_memory(run_checks):
    # One process, the 76B model on one 80 GB GPU (device_map=cuda:0): short by its reserve, not offloaded.
    run = run_checks("--simulate", "4xA100-80GB", "--eval-model", "llava_hf", "--model", "internvl2-76b",
                     "--model-args", "pretrained=OpenGVLab/InternVL2-Llama3-76B,device_map=cuda:0")  # fmt: skip
    entry = _entry(run, "test_model_fits_in_gpu_memory")
    assert entry["outcome"] == "failed" and entry["code"] == "MEM-001", entry
    fix = entry["fix"]
    assert "max_memory=" not in json.dumps(fix)  # nothing lmms-eval could take
    assert "lmms-eval's --model_args cannot pass max_memory" in fix["summary"]
    assert "device_map=auto and select 2 GPUs" in fix["summary"]
    assert fix["env"] == {"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    recheck = shlex.split(fix["commands"][0])
    assert recheck[0] == "pytest" and recheck[recheck.index("--gpus") + 1] == "0,1"
    assert_fixes_agree(run.report)
    assert_pasteable(run.report)


def test_mem001_for_a_script_gives_a_max_memory_snippet(run_checks, node_file):
    run = run_checks("--simulate", "4xA100-80GB", "--model", "internvl2-76b", "--device-map", "cuda:0")
    entry = _entry(run, "test_model_fits_in_gpu_memory")
    assert entry["outcome"] == "failed" and entry["code"] == "MEM-001", entry
    assert_fixes_agree(run.report)
    assert_pasteable(run.report)


# -- pasteable pieces --------------------------------------------------------------------------------------------
def test_command_with_env_replaces_leading_assignments():
    env = {"CUDA_VISIBLE_DEVICES": "1,2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert command_with_env(["CUDA_VISIBLE_DEVICES=0,1", "HF_HOME=/x", "python", "run.py"], env) == (
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1,2 HF_HOME=/x python run.py"
    )
    assert command_with_env(["env", "CUDA_VISIBLE_DEVICES=0", "torchrun", "run.py"], env) == (
        "CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES=1,2 torchrun run.py"
    )


def test_with_options_replaces_appends_and_removes():
    args = ["checks", "--gpus", "0,1", "--model=x", "-q"]
    assert with_options(args, {"--gpus": "2,3"}) == ["checks", "--gpus", "2,3", "--model=x", "-q"]
    assert with_options(args, {"--model": None, "--processes": "1"}) == ["checks", "--gpus", "0,1", "-q",
                                                                         "--processes", "1"]  # fmt: skip
    assert recheck_command(["checks"], {"--gpus": "1"}) == "pytest checks --gpus 1"


def test_lmms_eval_commands_are_rewritten_not_templated():
    cmd = ["accelerate", "launch", "--num_processes", "4", "-m", "lmms_eval", "--model_args",
           "pretrained=a/b,device_map=auto,dtype=bfloat16", "--tasks", "mme"]  # fmt: skip
    assert eval_command_in_one_process(cmd) == (
        "python -m lmms_eval --model_args pretrained=a/b,device_map=auto,dtype=bfloat16 --tasks mme"
    )
    assert eval_command_without_device_map(cmd) == (
        "accelerate launch --num_processes 4 -m lmms_eval --model_args pretrained=a/b,dtype=bfloat16 --tasks mme"
    )
    assert eval_command_in_one_process(["python", "run.py"]) is None
    assert eval_command_with_model_args(["lmms-eval", "--model_args=x=1"], "y=2") == "lmms-eval --model_args=y=2"
    assert model_args_without('pretrained=a,device_map={"":0},x=1', "device_map") == "pretrained=a,x=1"


@pytest.mark.parametrize(("family", "remote"), [("internvl-chat", True), ("cogvlm", True), ("llava", False)])
def test_loading_snippet_has_the_flags_the_family_needs(family, remote):
    snippet = load_snippet(family, "org/model", "json.load(open('m.json'))")
    assert ("trust_remote_code=True" in snippet) is remote
    assert "import json" in snippet
    compile(snippet, "<snippet>", "exec")  # it is Python a user can paste


def test_cogvlm_fix_does_not_point_at_internvl_split_model():
    from diag.twins import PRESETS

    cog = "\n".join(map_fix_lines(PRESETS["cogvlm-17b"], "m.json", None))
    assert "split_model" not in cog and "internvl" not in cog.lower()
    assert "TransformerLayer" in cog and "trust_remote_code=True" in cog and "AutoModelForCausalLM" in cog
    intern = "\n".join(map_fix_lines(PRESETS["internvl2-8b"], "m.json", "vlmevalkit"))
    assert "split_model" in intern and "lmms-eval" not in intern
    llava = "\n".join(map_fix_lines(PRESETS["llava-1.5-7b"], "m.json", "lmms-eval"))
    assert "trust_remote_code" not in llava and "LlavaForConditionalGeneration" in llava


# -- the catalog and the docs -------------------------------------------------------------------------------------
def test_catalog_fixes_have_no_ellipsis():
    assert [code for code, fix in CATALOG.items() if ELLIPSIS in fix.fix] == []


def test_catalog_references_are_public_urls():
    for code, fix in CATALOG.items():
        for reference in fix.references:
            assert re.fullmatch(r"https://[^\s]+", reference), (code, reference)
            assert not any(note in reference for note in PRIVATE_NOTES), (code, reference)


def test_no_reference_to_private_notes_in_catalog_docs_or_readme():
    texts = {"catalog": catalog_markdown(), "diag/fixes.py": (REPO / "diag" / "fixes.py").read_text()}
    texts |= {str(p.relative_to(REPO)): p.read_text() for p in sorted((REPO / "docs").glob("*.md"))}
    texts["README.md"] = (REPO / "README.md").read_text()
    for name, text in texts.items():
        for note in PRIVATE_NOTES:
            assert note not in text, f"{name} cites {note}"
