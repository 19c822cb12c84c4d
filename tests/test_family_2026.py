"""MiniCPM-V 2.6/4.0/4.5, DeepSeek-VL2 and Ovis2/2.5: config-only presets of the families diag has no twin of
(diag/twins/families/config_only.py, diag/twins/presets_2026.py).

Their hub ids resolve to a preset (never to nothing), the model check warns MODEL-003 with where the model's code
is, the map checks run, the backend checks read the heads from the config, and nothing of a checkpoint's own code
runs without --trust-remote-code. A DeepSeek-VL2 checkpoint on the node (model_type deepseek_vl_v2, no auto_map) is
this family, not a model_type the eval could not load (MODEL-002).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.backends import language_heads
from diag.twins import PRESETS, model_for_checkpoint, preset_for_checkpoint, resolve_model
from diag.twins.families import family_for, family_named
from diag.twins.presets import PUBLISHED_PARAMS
from diag.twins.presets_2026 import PRESET_TABLE
from diag.twins.remote import code_problem, with_consent
from diag.twins.spec import CONFIG_ONLY_FAMILIES

HUB_IDS = {
    "minicpm-v-2.6": "openbmb/MiniCPM-V-2_6",
    "minicpm-v-4": "openbmb/MiniCPM-V-4",
    "minicpm-v-4.5": "openbmb/MiniCPM-V-4_5",
    "deepseek-vl2-tiny": "deepseek-ai/deepseek-vl2-tiny",
    "deepseek-vl2-small": "deepseek-ai/deepseek-vl2-small",
    "deepseek-vl2": "deepseek-ai/deepseek-vl2",
    "ovis2-8b": "AIDC-AI/Ovis2-8B",
    "ovis2-34b": "AIDC-AI/Ovis2-34B",
    "ovis2.5-2b": "AIDC-AI/Ovis2.5-2B",
    "ovis2.5-9b": "AIDC-AI/Ovis2.5-9B",
}
# (language-model layers, attention heads, KV heads) of each published config (DeepSeek-VL2's base config leaves the
# last three to the deepseek_vl2 package's defaults, which the preset writes out; MiniCPM-V 4.0's depth is in no
# source read, so its preset has none).
LM: dict[str, tuple[int | None, int, int]] = {
    "minicpm-v-2.6": (28, 28, 4),
    "minicpm-v-4": (None, 32, 2),
    "minicpm-v-4.5": (36, 32, 8),
    "deepseek-vl2-tiny": (12, 10, 10),
    "deepseek-vl2-small": (27, 16, 16),
    "deepseek-vl2": (30, 32, 32),
    "ovis2-8b": (28, 28, 4),
    "ovis2-34b": (64, 40, 8),
    "ovis2.5-2b": (28, 16, 8),
    "ovis2.5-9b": (36, 32, 8),
}


def test_the_group_is_merged_with_hub_ids_and_published_sizes() -> None:
    assert set(PRESET_TABLE) == set(HUB_IDS) == set(LM) <= set(PRESETS)
    assert set(HUB_IDS) <= set(PUBLISHED_PARAMS)
    assert {row[0] for row in PRESET_TABLE.values()} == set(CONFIG_ONLY_FAMILIES)


@pytest.mark.parametrize("name", sorted(HUB_IDS))
def test_hub_ids_resolve_to_the_config_only_preset(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing of the checkpoint on this machine
    for key in (HUB_IDS[name], HUB_IDS[name].upper(), f"/models/{HUB_IDS[name].split('/')[1]}"):
        assert preset_for_checkpoint(key) is PRESETS[name]
    spec = model_for_checkpoint(HUB_IDS[name])
    assert spec is PRESETS[name] and spec.code == "none" and spec.source == "preset"
    assert resolve_model(name) is PRESETS[name]


@pytest.mark.parametrize("name", sorted(HUB_IDS))
def test_the_model_check_warns_model_003_with_where_the_code_is(name: str) -> None:
    spec = PRESETS[name]
    family = family_named(spec.family)
    problem = code_problem(spec)
    assert problem is not None and problem.code == "MODEL-003"
    assert "the memory and same-device checks are skipped" in problem.message
    reason = family.unavailable(spec.config)  # what the tests and the bench skip on; never a build
    assert reason is not None and "\n" not in reason and "diag has no twin" in reason
    with pytest.raises(ValueError, match="only the checkpoint's own code builds this model"):
        family.build(spec.config)
    if spec.family == "minicpm-v":
        assert "auto_map" in problem.message and "--trust-remote-code" in problem.fix
        assert "openbmb/MiniCPM-V-4.6" in problem.fix  # the native port transformers 5 builds
        assert HUB_IDS[name] in problem.fix  # how to put this checkpoint on the node
    elif spec.family == "ovis":
        module = "modeling_ovis2_5.py" if name.startswith("ovis2.5") else "modeling_ovis.py"
        assert f"config.json auto_map, {module}" in problem.message and "--trust-remote-code" in problem.fix
        assert "huggingface-cli download AIDC-AI/Ovis2" in problem.fix and "vLLM or SGLang" in problem.fix
    else:
        assert "deepseek_vl2 package" in problem.message and "even with --trust-remote-code" in problem.message
        assert "hf_overrides" in problem.fix


@pytest.mark.parametrize("name", sorted(HUB_IDS))
def test_exactly_the_family_claims_the_config(name: str) -> None:
    config = PRESET_TABLE[name][1]
    family = family_for(config)
    assert family is not None and family.name == PRESET_TABLE[name][0] and family.remote_code
    assert family_for({"model_type": config["model_type"]}) is family


@pytest.mark.parametrize("name", sorted(HUB_IDS))
def test_the_backend_checks_read_the_heads_from_the_preset(name: str) -> None:
    config = PRESETS[name].config
    heads = language_heads(config)
    layers, attention, kv = LM[name]
    assert heads is not None and (heads.heads, heads.kv_heads) == (attention, kv)
    language = config.get("language_config", config.get("llm_config", config))
    assert language.get("num_hidden_layers") == layers
    if name.startswith("deepseek"):
        assert heads.where == "language_config.num_attention_heads"
    if name.startswith("ovis"):
        assert heads.where == "llm_config.num_attention_heads"


@pytest.mark.parametrize("name", sorted(n for n in HUB_IDS if n.startswith("ovis")))
def test_ovis_model_003_says_whether_the_native_ovis2_port_is_installed(name: str) -> None:
    """Ovis2-1B/2B have a native transformers port (model_type ovis2, transformers 5): the fix says whether the
    installed release has it; Ovis2.5's fix does not offer it."""
    import transformers

    from diag.twins.remote import model_type_known

    problem = code_problem(PRESETS[name])
    assert problem is not None
    if name.startswith("ovis2.5"):
        assert "ovis2 " not in problem.fix and "thisisiron" not in problem.fix
    elif model_type_known("ovis2"):
        assert f"the installed transformers {transformers.__version__} has it" in problem.fix
        assert "thisisiron/Ovis2-2B-hf" in problem.fix
    else:
        assert f"the installed transformers {transformers.__version__} does not have it" in problem.fix


def test_a_native_ovis2_config_is_not_the_remote_code_family() -> None:
    """transformers' own Ovis2 port (model_type ovis2) is not the checkpoint-code family (model_type ovis)."""
    family = family_for({"model_type": "ovis2", "architectures": ["Ovis2ForConditionalGeneration"]})
    assert family is None or family.name != "ovis"
    assert family_named("ovis").claims({"model_type": "ovis2_5"})
    assert family_named("ovis").claims({"architectures": ["Ovis"], "model_type": "x"})


def test_the_minicpm_v_4_presets_hold_their_published_fields() -> None:
    """The fields that set MiniCPM-V 4.x apart from 2.6 (a Qwen3-8B or MiniCPM4 language model, GQA)."""
    v45 = PRESETS["minicpm-v-4.5"].config
    fields = ("hidden_size", "intermediate_size", "vocab_size", "head_dim")
    assert [v45[key] for key in fields] == [4096, 12288, 151748, 128]
    v4 = PRESETS["minicpm-v-4"].config
    assert (v4["hidden_size"], v4["intermediate_size"], v4["vocab_size"]) == (2560, 10240, 73448)
    assert "num_hidden_layers" not in v4  # not in any source read: left out, not guessed
    for config in (v4, v45):
        assert config["vision_config"]["hidden_size"] == 1152 and config["tie_word_embeddings"] is False


def _checkpoint(folder: Path, config: dict[str, object], marker: Path | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if marker is not None:  # the checkpoint's own files: importing either writes the marker
        code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        (folder / "configuration_minicpm.py").write_text(code)
        (folder / "modeling_minicpmv.py").write_text(code)
    return folder


def test_a_minicpm_v_checkpoint_runs_none_of_its_code_without_consent(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = _checkpoint(tmp_path / "MiniCPM-V-2_6", dict(PRESETS["minicpm-v-2.6"].config), marker)
    spec = resolve_model(str(folder))
    assert (spec.family, spec.source, spec.code, spec.code_dir) == ("minicpm-v", "config", "none", str(folder))
    problem = code_problem(spec)
    assert problem is not None and problem.code == "MODEL-003"
    assert str(folder) in problem.message and "--trust-remote-code" in problem.fix
    assert not marker.exists()
    assert with_consent(spec, False) is spec
    assert with_consent(spec, True).code == "remote"  # with consent the checkpoint's own files build it
    assert not marker.exists()


@pytest.mark.parametrize("name", ["ovis2-8b", "ovis2.5-9b"])
def test_an_ovis_checkpoint_runs_none_of_its_code_without_consent(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = tmp_path / HUB_IDS[name].split("/")[1]
    folder.mkdir()
    config = dict(PRESETS[name].config)
    (folder / "config.json").write_text(json.dumps(config))
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
    for entry in config["auto_map"].values():  # the files the auto_map names: importing any writes the marker
        (folder / f"{entry.split('.')[0]}.py").write_text(code)
    spec = resolve_model(str(folder))
    assert (spec.family, spec.source, spec.code, spec.code_dir) == ("ovis", "config", "none", str(folder))
    problem = code_problem(spec)
    assert problem is not None and problem.code == "MODEL-003" and str(folder) in problem.message
    assert with_consent(spec, False) is spec
    assert with_consent(spec, True).code == "remote"
    assert not marker.exists()


def test_a_deepseek_vl2_checkpoint_is_not_an_unknown_model_type(tmp_path: Path) -> None:
    """Before this family the checkpoint's config.json (no auto_map, a model_type transformers does not register)
    was MODEL-002, "the eval cannot load it": VLMEvalKit loads it with the deepseek_vl2 package."""
    folder = _checkpoint(tmp_path / "deepseek-vl2-small", dict(PRESETS["deepseek-vl2-small"].config))
    spec = resolve_model(str(folder))
    assert (spec.family, spec.code, spec.code_dir) == ("deepseek-vl2", "none", None)
    assert with_consent(spec, True) is spec  # no code in the checkpoint: consent changes nothing
    problem = code_problem(spec)
    assert problem is not None and problem.code == "MODEL-003" and "deepseek_vl2 package" in problem.message


def test_the_config_only_families_are_the_spec_s_list() -> None:
    from diag.twins.families import families

    assert {f.name for f in families() if getattr(f, "config_only", False)} == set(CONFIG_ONLY_FAMILIES)
