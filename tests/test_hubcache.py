"""A hub id resolves to the checkpoint's own config.json in the local Hugging Face cache, with no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from diag.devicemap.cases import _models
from diag.options import DiagOptions
from diag.twins import PRESETS, build_meta, language_model_layout, model_for_checkpoint, resolve_model
from diag.twins.hubcache import cached_config, hub_cache_dir

LLAVA = "llava-hf/llava-1.5-7b-hf"


def lay_out(cache: Path, repo_id: str, config: dict[str, Any], revision: str = "0123abcd" * 5) -> Path:
    """A cache entry as huggingface_hub writes one: blob by hash, snapshot symlink, refs/main naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / "5f0e1a"
    blob.parent.mkdir(parents=True)
    blob.write_text(json.dumps(config))
    snapshot = repo / "snapshots" / revision / "config.json"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..", "..", "blobs", "5f0e1a"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "hub"
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


def _shallower_llava() -> dict[str, Any]:
    config = json.loads(json.dumps(dict(PRESETS["llava-1.5-7b"].config)))
    config["text_config"]["num_hidden_layers"] = 30  # not the preset's 32: proves which config was read
    return config


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}, "/a"),
        ({"HUGGINGFACE_HUB_CACHE": "/c", "HF_HOME": "/b"}, "/c"),
        ({"TRANSFORMERS_CACHE": "/t"}, "/t"),
        ({"HF_HOME": "/b"}, "/b/hub"),
        ({"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"),
    ],
)
def test_the_cache_folder_is_found_as_huggingface_hub_finds_it(env: dict[str, str], expected: str) -> None:
    assert hub_cache_dir(env) == Path(expected)


def test_a_hub_id_resolves_to_the_cached_config_and_wins_over_the_preset(cache: Path, no_network: None) -> None:
    snapshot = lay_out(cache, LLAVA, _shallower_llava())
    spec = resolve_model(LLAVA)
    assert (spec.source, spec.family, spec.config_path) == ("hub-cache", "llava", str(snapshot))
    assert spec.describes_the_checkpoint
    assert language_model_layout(build_meta(spec)).num_layers == 30


def test_pretrained_in_model_args_reads_the_cache_too(cache: Path, no_network: None) -> None:
    lay_out(cache, LLAVA, _shallower_llava())
    options = DiagOptions(None, "2xA100-80GB", None, None, None, f"pretrained={LLAVA},device_map=auto", None, None)
    models, reason = _models(options)
    assert reason is None and [(m.source, m.config["text_config"]["num_hidden_layers"]) for m in models] == [
        ("hub-cache", 30)
    ]


def test_a_checkpoint_not_in_the_cache_falls_back_to_the_preset_and_says_so(cache: Path, no_network: None) -> None:
    spec = model_for_checkpoint(LLAVA)
    assert spec is not None and spec.name == "llava-1.5-7b" and spec.source == "preset"
    assert not spec.describes_the_checkpoint


def test_a_cached_config_of_a_family_diag_cannot_build_names_it(cache: Path, no_network: None) -> None:
    """A model_type the installed transformers does not know, no auto_map: MODEL-002, as the eval would fail.
    (Qwen2.5-VL has a family now: tests/test_presets_qwen.py resolves it from the cache.)"""
    from diag.twins import remote

    lay_out(
        cache, "org/NoSuch-VL-7B", {"model_type": "nosuch_vl", "architectures": ["NoSuchVLForConditionalGeneration"]}
    )
    spec = resolve_model("org/NoSuch-VL-7B")
    assert (spec.family, spec.code, spec.source) == (remote.UNKNOWN, "none", "hub-cache")
    problem = remote.code_problem(spec)
    assert problem is not None and problem.code == "MODEL-002" and "'nosuch_vl'" in problem.message


@pytest.mark.parametrize("value", ["../etc", "a b/c", "", "/abs/path"])
def test_what_is_not_a_hub_id_is_not_looked_up(value: str, cache: Path) -> None:
    assert cached_config(value) is None


def test_the_report_says_which_config_each_verdict_rests_on(run_checks, cache: Path, no_network: None) -> None:
    snapshot = lay_out(cache, LLAVA, _shallower_llava())
    run = run_checks("--simulate", "2xA100-80GB", "--model-args", f"pretrained={LLAVA},device_map=auto",
                     target="checks/test_devicemap.py")  # fmt: skip
    models = [c["data"]["model"] for c in run.report["checks"] if "model" in c.get("data", {})]
    assert models and all(m == {"name": LLAVA, "family": "llava", "source": "hub-cache",
                                "config_path": str(snapshot), "code": "installed"} for m in models)  # fmt: skip
