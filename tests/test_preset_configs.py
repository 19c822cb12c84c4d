"""`--model path/config.json` works for every preset: the preset's config written as a checkpoint's config.json
resolves to the same family and the same tiny config, and says it is the file's (source "config")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.twins import PRESETS, resolve_model
from diag.twins.build import tiny_config
from diag.twins.families import family_named


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_presets_config_json_resolves_to_the_same_model(name: str, tmp_path: Path) -> None:
    preset = PRESETS[name]
    path = tmp_path / name / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dict(preset.config)))
    spec = resolve_model(str(path))
    assert (spec.family, spec.source, spec.config_path) == (preset.family, "config", str(path))
    assert spec.code == preset.code
    if family_named(spec.family).unavailable(spec.config) is None:
        assert tiny_config(spec) == tiny_config(preset)
