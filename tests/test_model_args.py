"""lmms-eval's `--model_args` parsed as lmms-eval parses it (before and after PR #915), and the device map it yields."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diag.devicemap.model_args import (
    MODEL_CLASS_DEFAULT_DEVICE_MAP,
    ModelArgsError,
    device_map_from_model_args,
    parse_model_args,
    parse_model_args_legacy,
    pretrained_from_model_args,
)

KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)


def _plain(text: str) -> bool:
    """A value lmms-eval keeps as a string: not a bool, not numeric, not something float() reads."""
    try:
        float(text)
    except ValueError:
        return text.lower() not in ("true", "false") and not text.isnumeric()
    return False


PLAIN = st.from_regex(r"[A-Za-z][A-Za-z0-9/_.:-]{0,20}", fullmatch=True).filter(_plain)
# (as written, as parsed) pairs lmms-eval converts
SIMPLE_VALUES = st.one_of(
    st.integers(0, 10**9).map(lambda n: (str(n), n)),
    st.booleans().flatmap(lambda b: st.sampled_from([str(b).lower(), str(b), str(b).upper()]).map(lambda t: (t, b))),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (repr(f), f)),
    st.just(("", "")),
    PLAIN.map(lambda s: (s, s)),
)
NESTED_VALUES = st.one_of(
    st.lists(PLAIN, min_size=2, max_size=4).map(lambda xs: '"' + ",".join(xs) + '"'),
    st.lists(PLAIN, min_size=2, max_size=4).map(lambda xs: "'" + ", ".join(xs) + "'"),
    st.lists(st.integers(0, 99), min_size=2, max_size=4).map(lambda xs: "[" + ",".join(map(str, xs)) + "]"),
    st.dictionaries(PLAIN, st.integers(0, 9), min_size=2, max_size=3).map(
        lambda d: "{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}"
    ),
).map(lambda text: (text, text))


def _args(values):
    return st.dictionaries(KEYS, values, min_size=1, max_size=6)


@given(_args(SIMPLE_VALUES))
def test_key_value_lists_round_trip(pairs):
    text = ",".join(f"{key}={written}" for key, (written, _) in pairs.items())
    parsed = parse_model_args(text)
    assert parsed == {key: value for key, (_, value) in pairs.items()}
    assert {k: type(v) for k, v in parsed.items()} == {k: type(v) for k, (_, v) in pairs.items()}


@given(_args(SIMPLE_VALUES))
def test_both_parsers_agree_without_commas_spaces_or_extra_equals(pairs):
    text = ",".join(f"{key}={written}" for key, (written, _) in pairs.items())
    assert parse_model_args_legacy(text) == parse_model_args(text)


@given(_args(st.one_of(SIMPLE_VALUES, NESTED_VALUES)))
def test_commas_inside_quotes_braces_and_brackets_are_kept(pairs):
    text = ",".join(f"{key}={written}" for key, (written, _) in pairs.items())
    assert parse_model_args(text) == {key: value for key, (_, value) in pairs.items()}


@given(_args(NESTED_VALUES))
def test_before_915_those_commas_split_and_lmms_eval_stopped(pairs):
    text = ",".join(f"{key}={written}" for key, (written, _) in pairs.items())
    with pytest.raises(ModelArgsError) as raised:
        parse_model_args_legacy(text)
    assert raised.value.upstream_error.startswith(
        ("ValueError: not enough values to unpack", "ValueError: too many values to unpack")
    )


@given(_args(SIMPLE_VALUES), st.sampled_from([" ", "  ", "\t"]))
def test_blanks_before_keys_are_stripped_after_915_and_kept_before(pairs, blank):
    text = f",{blank}".join(f"{key}={written}" for key, (written, _) in pairs.items())
    assert list(parse_model_args(text)) == list(pairs)
    first, *rest = pairs
    assert list(parse_model_args_legacy(text)) == [first, *(blank + key for key in rest)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("device_map=", {"device_map": ""}),
        ("device_map=0", {"device_map": 0}),
        ("device_map=auto", {"device_map": "auto"}),
        ("device_map=-1", {"device_map": -1.0}),
        ("device_map=1e3", {"device_map": 1000.0}),
        ("use_cache=TRUE,trust_remote_code=False", {"use_cache": True, "trust_remote_code": False}),
        ('chat_template="a,b"', {"chat_template": '"a,b"'}),
        ("x=a=b", {"x": "a=b"}),
        ("", {}),
        ("   ", {}),
        (",,a=1,,", {"a": 1}),
        ("a=1,a=2", {"a": 2}),
        ("a=1 ,b=2", {"a": 1, "b": 2}),
        # upstream strips each item, not each key: a blank before "=" stays in the key
        ("device_map =auto", {"device_map ": "auto"}),
    ],
)
def test_values_convert_as_lmms_eval_converts_them(text, expected):
    parsed = parse_model_args(text)
    assert parsed == expected
    assert [type(v) for v in parsed.values()] == [type(v) for v in expected.values()]


def test_legacy_reads_a_blank_after_a_value_as_a_float():
    assert parse_model_args_legacy("a=1 ,b=2") == {"a": 1.0, "b": 2}
    assert type(parse_model_args_legacy("a=1 ,b=2")["a"]) is float


@pytest.mark.parametrize("parse", [parse_model_args, parse_model_args_legacy])
def test_a_bare_key_raises_what_lmms_eval_raises(parse):
    with pytest.raises(ModelArgsError) as raised:
        parse("pretrained=x,device_map")
    assert raised.value.upstream_error == "ValueError: not enough values to unpack (expected 2, got 1)"
    assert raised.value.item == "device_map"
    assert "lmms-eval stops at 'device_map' with ValueError" in str(raised.value)


def test_before_915_a_second_equals_sign_raised():
    with pytest.raises(ModelArgsError) as raised:
        parse_model_args_legacy("x=a=b")
    assert raised.value.upstream_error.startswith("ValueError: too many values to unpack (expected 2")


def test_a_numeric_character_int_cannot_read_raises_as_upstream():
    with pytest.raises(ModelArgsError) as raised:
        parse_model_args("max_frames_num=½")
    assert raised.value.upstream_error == "ValueError: invalid literal for int() with base 10: '½'"


@pytest.mark.parametrize(
    ("model_class", "default"),
    [
        ("llava_hf", ""),
        ("idefics2", ""),
        ("llama_vision", ""),
        ("aria", ""),
        ("llava", "cuda:0"),
        ("llava_onevision", "cuda:0"),
        ("internvl2", "cuda:0"),
        ("qwen2_vl", "cuda"),
        ("cogvlm2", None),
    ],
)
def test_class_defaults_read_from_lmms_eval(model_class, default):
    assert MODEL_CLASS_DEFAULT_DEVICE_MAP[model_class] == default


@pytest.mark.parametrize(
    ("text", "model_class", "value", "origin", "written"),
    [
        ("pretrained=llava-hf/llava-1.5-7b-hf", "llava_hf", "", "default", "device_map='' (llava_hf default)"),
        ("pretrained=x,device_map=", "llava_hf", "", "--model-args", "device_map="),
        ("pretrained=x, device_map=auto", "idefics2", "auto", "--model-args", "device_map=auto"),
        ("device_map=0", "llama_vision", 0, "--model-args", "device_map=0"),
        ("device_map=auto,device_map=cuda:1", "aria", "cuda:1", "--model-args", "device_map=cuda:1"),
        ("pretrained=x", "llava", "cuda:0", "default", "device_map='cuda:0' (llava default)"),
        ("device_map=auto", "llava", "auto", "--model-args", "device_map=auto"),
        ("device_map=auto", "internvl2", "cuda:0", "--model-args", "device_map=auto"),
        ("device_map=", "qwen2_vl", "cuda", "--model-args", "device_map="),
        ("device_map=,device=cuda:1", "qwen2_vl", "cuda:1", "--model-args", "device_map="),
        ("device_map=0", "qwen2_vl", "cuda", "--model-args", "device_map=0"),
        ("device_map=auto", "qwen2_vl", "auto", "--model-args", "device_map=auto"),
        ("pretrained=x", "cogvlm2", "cuda", "default", "device='cuda' (cogvlm2 default)"),
        ("device=cuda:2", "cogvlm2", "cuda:2", "--model-args", "device=cuda:2"),
        ("device_map=balanced", None, "balanced", "--model-args", "device_map=balanced"),
        ("device_map=sequential", "some_new_class", "sequential", "--model-args", "device_map=sequential"),
    ],
)
def test_the_device_map_the_class_passes(text, model_class, value, origin, written):
    source = device_map_from_model_args(text, model_class)
    assert source is not None
    assert (source.value, source.origin, source.text, source.model_class) == (value, origin, written, model_class)
    assert type(source.value) is type(value)


def test_an_empty_default_is_what_reaches_from_pretrained():
    source = device_map_from_model_args("pretrained=llava-hf/llava-v1.6-34b-hf", "llava_hf")
    assert source is not None
    assert source.kind == "empty"
    assert source.note is None


@pytest.mark.parametrize("model_class", ["llava", "llava_onevision", "internvl2"])
def test_llava_style_classes_ignore_anything_but_auto(model_class):
    source = device_map_from_model_args("device_map=balanced", model_class)
    assert source is not None
    assert source.value == "cuda:0"
    assert source.note == f"{model_class} loads on cuda:0 unless device_map=auto; 'balanced' is ignored"


def test_internvl2_auto_is_replaced_by_its_own_split():
    source = device_map_from_model_args("device_map=auto", "internvl2")
    assert source is not None
    assert source.note == (
        "internvl2 replaces device_map=auto with its own split over every visible GPU, then moves "
        "the whole model with .to('cuda:0')"
    )


@pytest.mark.parametrize(
    ("text", "model_class"), [("pretrained=x", None), ("pretrained=x", "some_new_class"), ("", None)]
)
def test_nothing_said_gives_none(text, model_class):
    assert device_map_from_model_args(text, model_class) is None


def test_a_key_with_a_blank_before_equals_is_not_device_map():
    source = device_map_from_model_args("device_map =auto", "llava_hf")
    assert source is not None
    assert (source.value, source.origin) == ("", "default")


def test_cogvlm2_rejects_a_device_map_key_as_lmms_eval_does():
    with pytest.raises(ModelArgsError) as raised:
        device_map_from_model_args("pretrained=THUDM/cogvlm2-llama3-chat-19B,device_map=auto", "cogvlm2")
    assert raised.value.upstream_error == "AssertionError: Unexpected kwargs: {'device_map': 'auto'}"


def test_a_bare_device_map_is_reported_before_any_default():
    with pytest.raises(ModelArgsError, match=r"not enough values to unpack \(expected 2, got 1\)"):
        device_map_from_model_args("pretrained=x,device_map", "llava_hf")


@pytest.mark.parametrize(
    ("text", "pretrained"),
    [
        (
            "pretrained=lmms-lab/llava-onevision-qwen2-72b-ov,conv_template=qwen_1_5",
            "lmms-lab/llava-onevision-qwen2-72b-ov",
        ),
        ("device_map=auto, pretrained=/models/InternVL2-Llama3-76B", "/models/InternVL2-Llama3-76B"),
        ("device_map=auto", None),
        ("", None),
    ],
)
def test_pretrained_is_read_from_the_args(text, pretrained):
    assert pretrained_from_model_args(text) == pretrained
