"""`--device-map` values: each form read into what from_pretrained would receive; unreadable ones are usage errors."""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diag.devicemap.sources import DeviceMapSource, DeviceMapSyntaxError, parse_device_map_option

DEVICE_NAMES = st.sampled_from(["cpu", "disk", "cuda", "cuda:0", "cuda:1", "cuda:7", "meta", "1"])
MODULE_NAMES = st.one_of(st.just(""), st.from_regex(r"[a-z_]{1,8}(\.[a-z0-9_]{1,8}){0,3}", fullmatch=True))
MAPS = st.dictionaries(MODULE_NAMES, st.one_of(st.integers(-2, 15), DEVICE_NAMES), max_size=8)


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("auto", "auto", "strategy"),
        ("balanced", "balanced", "strategy"),
        ("balanced_low_0", "balanced_low_0", "strategy"),
        ("sequential", "sequential", "strategy"),
        ("cpu", "cpu", "device"),
        ("cuda", "cuda", "device"),
        ("cuda:3", "cuda:3", "device"),
        ("0", 0, "int"),
        ("7", 7, "int"),
        ("-1", -1, "int"),
        ("", "", "empty"),
        # Left for transformers' own check to name, not rejected here:
        ("gpu", "gpu", "device"),
        ("cuda:x", "cuda:x", "device"),
        (" auto", " auto", "device"),
        ("1.5", "1.5", "device"),
    ],
    ids=lambda v: repr(v) if isinstance(v, str) else None,
)
def test_each_form_becomes_what_from_pretrained_receives(text, value, kind):
    source = parse_device_map_option(text)
    assert source.value == value
    assert type(source.value) is type(value)
    assert source.kind == kind
    assert (source.origin, source.text, source.model_class) == ("--device-map", text, None)


def test_a_json_object_keeps_its_types_as_written():
    text = '{"vision_model": 0, "language_model.model.layers.0": "1", "lm_head": "cpu", "x": "disk", "": "cuda:1"}'
    source = parse_device_map_option(text)
    assert source.value == {
        "vision_model": 0,
        "language_model.model.layers.0": "1",
        "lm_head": "cpu",
        "x": "disk",
        "": "cuda:1",
    }
    assert isinstance(source.value, dict)
    assert type(source.value["vision_model"]) is int
    assert type(source.value["language_model.model.layers.0"]) is str
    assert source.kind == "dict"


@given(st.integers(-(10**6), 10**6))
def test_integers_stay_integers(number):
    source = parse_device_map_option(str(number))
    assert source.value == number
    assert type(source.value) is int


@given(MAPS)
def test_json_objects_round_trip_with_their_types(device_map):
    source = parse_device_map_option(json.dumps(device_map))
    assert source.value == device_map
    assert isinstance(source.value, dict)
    assert {k: type(v) for k, v in source.value.items()} == {k: type(v) for k, v in device_map.items()}


@given(MAPS)
def test_map_files_round_trip(tmp_path_factory, device_map):
    path = tmp_path_factory.mktemp("maps") / "map.json"
    path.write_text(json.dumps(device_map, indent=2))
    source = parse_device_map_option(f"@{path}")
    assert source.value == device_map
    assert source.text == f"@{path}"


def _error(value: str) -> str:
    with pytest.raises(DeviceMapSyntaxError) as raised:
        parse_device_map_option(value)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"--device-map {value!r}: ")
    return message


def test_a_missing_map_file_is_named(tmp_path):
    assert f"file {tmp_path / 'nope.json'}: no such file" in _error(f"@{tmp_path / 'nope.json'}")


def test_an_unreadable_map_file_is_named(tmp_path):
    assert f"file {tmp_path}: is a directory, not a regular file" in _error(f"@{tmp_path}")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"vision_model": 0,}', "not valid JSON (Expecting property name enclosed in double quotes at line 1"),
        ("vision_model: 0", "not valid JSON"),
        ("", "not valid JSON (Expecting value at line 1 column 1)"),
        ("[0, 1]", "a JSON list, not an object of module names"),
        ('"auto"', "a JSON str, not an object"),
    ],
)
def test_a_map_file_that_is_not_a_json_object_is_named(tmp_path, content, problem):
    path = tmp_path / "map.json"
    path.write_text(content)
    assert f"file {path}: {problem}" in _error(f"@{path}")


def test_a_map_file_that_is_not_text_is_named(tmp_path):
    path = tmp_path / "map.json"
    path.write_bytes(b'{"a": "\xff"}')
    assert f"file {path}: not UTF-8 text" in _error(f"@{path}")


def test_an_at_sign_without_a_file_is_an_error():
    assert "no file after '@'" in _error("@")


@pytest.mark.parametrize(
    ("text", "offender"),
    [
        ('{"lm_head": 1.5}', "'lm_head': 1.5"),
        ('{"lm_head": null}', "'lm_head': null"),
        ('{"lm_head": true}', "'lm_head': true"),
        ('{"a": 0, "b": {"c": 1}}', "'b': {\"c\": 1}"),
        ('{"a": [0], "b": NaN}', "'a': [0], 'b': NaN"),
    ],
)
def test_map_entries_must_be_gpu_numbers_or_device_names(text, offender):
    assert f'{offender} must be a GPU number or a device name like "cpu" or "cuda:1"' in _error(text)


@pytest.mark.parametrize("text", ["{", '{"a": 0', "[", "{'a': 0}"])
def test_inline_json_that_does_not_parse_is_an_error(text):
    assert "not valid JSON" in _error(text)


def test_the_error_is_a_usage_error_for_argparse(capsys):
    parser = argparse.ArgumentParser(prog="pytest")
    parser.add_argument("--device-map", type=parse_device_map_option)
    with pytest.raises(SystemExit):
        parser.parse_args(["--device-map", "{oops"])
    err = capsys.readouterr().err
    assert "argument --device-map: --device-map '{oops': not valid JSON" in err
    assert issubclass(DeviceMapSyntaxError, ValueError)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "none"), ({"": 0}, "dict"), (1.5, "other"), (True, "other"), (0, "int"), ("", "empty")],
)
def test_kind_of_values_from_other_sources(value, kind):
    assert DeviceMapSource(value, "--model-args", f"device_map={value}").kind == kind


# -- map files without `@`, and the `@file` that pytest split ---------------------------------------------------
def test_a_path_ending_in_json_is_read_as_the_map(tmp_path, monkeypatch):
    (tmp_path / "map.json").write_text(json.dumps({"vision_model": 0, "": "cuda:1"}, indent=2))
    monkeypatch.chdir(tmp_path)
    for text in ("map.json", str(tmp_path / "map.json")):
        source = parse_device_map_option(text)
        assert source.value == {"vision_model": 0, "": "cuda:1"} and source.kind == "dict"
        assert (source.origin, source.text) == ("--device-map", text)


def test_the_at_form_still_reads_the_same_file(tmp_path):
    path = tmp_path / "map.json"
    path.write_text('{"": 1}')
    assert parse_device_map_option(f"@{path}").value == parse_device_map_option(str(path)).value == {"": 1}


def test_any_existing_file_holding_a_json_object_is_a_map(tmp_path):
    path = tmp_path / "split-for-76b"
    path.write_text('{"language_model": 1, "": 0}\n')
    assert parse_device_map_option(str(path)).value == {"language_model": 1, "": 0}


def test_a_file_that_holds_no_json_object_stays_a_value_for_transformers(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("auto")
    source = parse_device_map_option(str(path))
    assert source.value == str(path) and source.kind == "device"


def test_device_names_and_strategies_win_over_files_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("auto", "cpu", "cuda:1"):
        (tmp_path / name).write_text('{"": 0}')
        assert parse_device_map_option(name).value == name


def test_a_missing_json_path_is_named():
    message = _error("no-such-map.json")
    assert "file no-such-map.json: no such file" in message


def test_a_json_path_with_bad_json_is_named(tmp_path):
    path = tmp_path / "map.json"
    path.write_text('{"vision_model": 0,}')
    assert f"file {path}: not valid JSON" in _error(str(path))


@pytest.mark.parametrize("line", ["{", '{"vision_model": 0,', '  "language_model": 1,', '"lm_head": "cpu"', "}", "},"])
def test_a_line_of_a_map_file_names_the_forms_that_work(line):
    """`--device-map @map.json` with a space: pytest expands the file into its lines and the option gets one."""
    message = _error(line)
    assert "pytest expands `--device-map @map.json` (with a space) into the file's lines" in message
    assert message.endswith("write --device-map map.json or --device-map=@map.json")


def test_a_balanced_but_invalid_object_is_only_invalid_json():
    message = _error("{'a': 0}")
    assert "not valid JSON" in message and "pytest expands" not in message
