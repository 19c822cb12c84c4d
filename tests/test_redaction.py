"""Redaction: secrets planted in every input form never reach any output (report, fleet report, terminal lines,
pytest-json-report, JUnit XML, the wrapper's stderr and --dry-run)."""

from __future__ import annotations

import contextlib
import html
import io
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diag import redact
from diag.checking import Check, CheckFailed
from diag.devicemap.model_args import ModelArgsError, parse_model_args
from diag.fleet import fleet_text, load_report, merge
from diag.launch import wrapper
from diag.redact import REDACTED, is_secret_name, redact_data, redact_text, redacted_model_args, secrets_of
from diag.report import build_report, write_report
from diag.summary import summary_lines
from diag.topology.files import node_from_dict, node_to_dict
from diag.topology.records import CudaDevice, CudaView, Topology
from diag.topology.selection import resolve_selection
from diag.topology.simulated import simulated_node

# An input: where the secret goes. `model_args`: diag's --model-args (and the eval's --model_args); `eval`: words of
# the eval command; `env`: variables; `process`: a process name in the topology.
Form = tuple[str, Callable[[str], Any]]


def _sq(value: str) -> str:
    """A model_args value quoted the way lmms-eval keeps it whole (commas and spaces inside)."""
    return f'"{value}"' if '"' not in value else f"'{value}'"


def _plain(value: str) -> str:
    """A value as it can stand unquoted inside --model_args (no comma, no quote)."""
    return value.replace(",", "").replace('"', "").replace("'", "")


# The 46 forms of the study, rebuilt from issue 14's defects 1, 2, 4 and 5.
FORMS: dict[str, Form] = {
    # 1. secret-named --model-args keys (recorded under checks[].data.model_args)
    **{
        f"model-args-{key}": ("model_args", lambda s, k=key: f"pretrained=x/y,{k}={_plain(s)},device_map=auto")
        for key in ("token", "hf_token", "api_key", "HF_TOKEN", "password", "use_auth_token")
    },
    # quoted values with commas and spaces; an unquoted value with a space (`password=X tail`)
    "model-args-quoted-single": ("model_args", lambda s: f"password='{_plain(s)} w',x=1"),
    "model-args-quoted-double": ("model_args", lambda s: f'pretrained=x,api_key="a,{_plain(s)}"'),
    "model-args-quoted-any": ("model_args", lambda s: f"token={_sq(s.replace(chr(92), ''))},device_map=auto"),
    "model-args-space-tail": ("model_args", lambda s: f"password=X {_plain(s)}"),
    "model-args-url": ("model_args", lambda s: f"pretrained=https://user:{quote(s, safe='')}@hub.example/x"),
    # 2. MAP-009: a malformed --model-args quoting the whole string, token included
    "map009-trailing-item": ("model_args", lambda s: f"token={_plain(s)},oops"),
    "map009-legacy-equals": ("model_args", lambda s: f"pretrained=x,api_key={_plain(s)},bare"),
    # 4. the wrapped command's secrets
    "eval-hf_token": ("eval", lambda s: ["lmms-eval", "--hf_token", s, "--tasks", "mme"]),
    "eval-api_key": ("eval", lambda s: ["python", "run.py", "--api_key", s]),
    "eval-openai-api-key=": ("eval", lambda s: ["lmms-eval", f"--openai-api-key={s}"]),
    "eval-hf_token=": ("eval", lambda s: ["lmms-eval", f"--hf_token={s}"]),
    "eval-HF_TOKEN-prefix": ("eval", lambda s: [f"HF_TOKEN={s}", "python", "-m", "lmms_eval"]),
    "eval-env-prefix": ("eval", lambda s: ["env", f"OPENAI_API_KEY={s}", "lmms-eval"]),
    "eval-model_args-token": ("eval", lambda s: ["lmms-eval", "--model_args", f"pretrained=x,token={_plain(s)}"]),
    "eval-model_args-quoted": ("eval", lambda s: ["lmms-eval", "--model_args", f"pretrained=x,api_key={_sq(s)}"]),
    "eval-model_args-use_auth": ("eval", lambda s: ["lmms-eval", "--model_args", f"use_auth_token={_plain(s)}"]),
    "eval-password": ("eval", lambda s: ["python", "run.py", "--password", s]),
    "eval-auth-token": ("eval", lambda s: ["python", "run.py", "--auth-token", s]),
    "eval-url": ("eval", lambda s: ["python", "run.py", "--endpoint", f"https://user:{quote(s, safe='')}@api.x/v1"]),
    "eval-url-token-user": ("eval", lambda s: ["python", "run.py", f"--base=https://{quote(s, safe='')}@api.x"]),
    "eval-accelerate": ("eval", lambda s: ["accelerate", "launch", "-m", "lmms_eval", "--hf_token", s]),
    # 5. variables (secret-named, and credentials in URLs of any recorded variable)
    **{
        f"env-{name}": ("env", lambda s, n=name: {n: s})
        for name in (
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "OPENAI_API_KEY",
            "WANDB_API_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "NCCL_PASSWORD",
            "HF_HUB_CREDENTIAL",
            "TORCH_AUTH",
            "HF_PASSWD",
        )
    },
    "env-MASTER_ADDR-bare": ("env", lambda s: {"MASTER_ADDR": f"user:{quote(s, safe='')}@node0"}),
    "env-MASTER_ADDR-url": ("env", lambda s: {"MASTER_ADDR": f"tcp://user:{quote(s, safe='')}@node0:29500"}),
    "env-HF_ENDPOINT-userpass": ("env", lambda s: {"HF_ENDPOINT": f"https://user:{quote(s, safe='')}@hf.example"}),
    "env-HF_ENDPOINT-token": ("env", lambda s: {"HF_ENDPOINT": f"https://{quote(s, safe='')}@hf.example/mirror"}),
    "env-NCCL-url": ("env", lambda s: {"NCCL_SOCKET_IFNAME": f"eth0 http://u:{quote(s, safe='')}@x"}),
    # 5. process names from a --topology file
    "process-hf_token": ("process", lambda s: f"python -m lmms_eval --hf_token {shlex.quote(s)}"),
    "process-api_key=": ("process", lambda s: f"python run.py {shlex.quote('--api_key=' + s)}"),
    "process-env-prefix": ("process", lambda s: f"HF_TOKEN={shlex.quote(s)} python -m lmms_eval"),
    "process-model_args": ("process", lambda s: f"python -m lmms_eval --model_args pretrained=x,token={_sq(s)}"),
    "process-url": ("process", lambda s: f"curl https://user:{quote(s, safe='')}@hf.example/x"),
}


def _topology(processes: tuple[str, ...] = ()) -> Topology:
    """A replayed node whose GPU 0 runs `processes`: names enter only through a topology file (NVML gives
    executable names), so they go through the file reader as `--topology` would read them."""
    data = node_to_dict(simulated_node("2xA100-80GB", hostname="node0"))
    data["gpus"][0]["processes"] = [{"pid": 100 + i, "name": n, "used_mib": 1024} for i, n in enumerate(processes)]
    node = node_from_dict(data, replayed=True)
    cuda = CudaView("2.13.0", "12.4", tuple(CudaDevice(i, g.uuid, g.name, g.memory_total_mib)
                                            for i, g in enumerate(node.gpus)), simulated=True)  # fmt: skip
    return Topology(node, cuda, resolve_selection(node, None, {}))


def _check_entry(model_args: str | None, eval_command: list[str] | None, process: str | None) -> dict[str, Any]:
    """A check's report entry as diag's checks record it: parsed args in data, a failure quoting its inputs."""
    props: list[tuple[str, object]] = []
    check = Check(props)
    words = []
    if model_args is not None:
        try:
            parsed = parse_model_args(model_args)
            check.record("model_args", {k: repr(v) for k, v in parsed.items()})
        except ModelArgsError as exc:
            words.append(f"{exc} (--model_args {model_args!r})")  # as MAP-009 quoted it before
    if eval_command is not None:
        words.append(f"run {shlex.join(eval_command)} again")
    if process is not None:
        words.append(f"GPU 0 is used by pid 100 ({process})")
    entry: dict[str, Any] = {"nodeid": "checks/test_x.py::test_a", "outcome": "passed", "duration_s": 0.1,
                             "code": None, "message": None, "subject": None, "fix": None, "references": [],
                             "warnings": [], "data": {}}  # fmt: skip
    try:
        check.fail("MAP-009", "; ".join(words) or "nothing", f"Fix: {' '.join(words)}",
                   commands=[shlex.join(eval_command or ["pytest"])])  # fmt: skip
    except CheckFailed as exc:
        props.append(("diag", {"failure": exc.payload}))
        junit = str(exc)
    for _, value in props:
        assert isinstance(value, dict)
        entry["data"].update(value.get("data", {}))
        entry.update(value.get("failure", {}))
    entry["outcome"] = "failed"
    entry["junit"] = junit + " " + " ".join(str(v) for _, v in props)  # what JUnit's properties and <failure> hold
    return entry


def _outputs(form: str, secret: str, tmp_path: Path) -> dict[str, str]:
    """Every output diag makes from an input holding the secret, as text."""
    kind, make = FORMS[form]
    planted = make(secret)
    model_args = planted if kind == "model_args" else None
    eval_command = planted if kind == "eval" else None
    environ = {"CUDA_VISIBLE_DEVICES": "0,1", **(planted if kind == "env" else {})}
    process = planted if kind == "process" else None
    command = ["pytest", "checks/", "--simulate", "2xA100-80GB"]
    if model_args is not None:
        command += ["--model-args", model_args]
    if eval_command is not None:
        command += ["--eval-command", shlex.join(eval_command)]
    redact.remember(secrets_of(command, environ, eval_command))  # as the session does when it starts
    topology = _topology((process,) if process else ())
    # A check quotes a process by the name the node holds: the name as the topology file reader returned it.
    shown = topology.node.gpus[0].processes[0].name if process else None
    entry = _check_entry(model_args, eval_command, shown)
    junit = entry.pop("junit")
    report = build_report(command=command, topology=topology, checks=[entry],
                          duration_s=1.0, environ=environ, host="node0",
                          eval_command=eval_command)  # fmt: skip
    path = write_report(tmp_path / f"{form}.json", report)
    fleet = merge([load_report(path)])
    out, err = io.StringIO(), io.StringIO()
    argv = ["--simulate", "2xA100-80GB", "--dry-run", "--diag-report", str(tmp_path / "w.json")]
    if model_args is not None:
        argv += ["--model-args", model_args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _environ(environ):
        wrapper.main([*argv, "--", *(eval_command or ["lmms-eval", "--model", "llava_hf"])])
    return {
        "report": path.read_text(),
        "terminal": "\n".join(summary_lines(report)),
        "fleet": json.dumps(fleet),
        "fleet text": fleet_text(fleet),
        "json-report section": json.dumps(redact_data({"diag": report})),
        "junit": junit,
        "wrapper stdout": out.getvalue(),
        "wrapper stderr": err.getvalue(),
    }


@contextlib.contextmanager
def _environ(values: dict[str, str]):  # type: ignore[no-untyped-def]
    import os

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _leaks(outputs: dict[str, str], core: str) -> list[str]:
    return [name for name, text in outputs.items() if core in text]


# A secret: random printable pieces (commas, spaces, quotes, equals…) around a core that cannot occur by chance.
_PIECE = st.text(alphabet=" ,='\"-_.:/@abcXYZ019", max_size=5)
_CORE = st.binary(min_size=6, max_size=8).map(lambda b: "Zq" + b.hex() + "k")


@pytest.mark.parametrize("form", sorted(FORMS))
def test_the_studys_forms_leak_nowhere(form, tmp_path):
    core = "Zq5ecret0f" + "".join(ch for ch in form if ch.isalnum())[:6]
    outputs = _outputs(form, f"a {core}", tmp_path)
    assert _leaks(outputs, core) == []
    if FORMS[form][0] != "env" or json.dumps(outputs["report"]).find(form[4:]) >= 0:  # a recorded variable
        assert REDACTED in outputs["report"]


def test_there_are_46_forms():
    assert len(FORMS) == 46


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])  # fmt: skip
@given(form=st.sampled_from(sorted(FORMS)), left=_PIECE, core=_CORE, right=_PIECE)
def test_random_secrets_in_every_form_leak_nowhere(form, left, core, right, tmp_path):
    outputs = _outputs(form, left + core + right, tmp_path)
    assert _leaks(outputs, core) == []


@pytest.mark.parametrize("form", ["map009-legacy-equals", "model-args-api_key", "eval-api_key"])
def test_a_secret_that_starts_like_a_url_user_part_is_hidden_whole(form, tmp_path):
    """Hypothesis found `api_key=0:0@Zq…`: the URL rule hid `0:0` and the rest stayed in every output."""
    core = "Zq000000000000k"
    assert _leaks(_outputs(form, f"0:0@{core}", tmp_path), core) == []
    redact.remember(())
    assert redact_text(f"pretrained=x,api_key=0:0@{core},x=1") == f"pretrained=x,api_key={REDACTED},x=1"


@pytest.mark.parametrize(
    ("args", "shown"),
    [(["--hf_token", "X y"], "--hf_token '<redacted>'"), (["--api_key=a,b"], "'--api_key=<redacted>'"),
     (["HF_TOKEN=a,b", "python"], "'HF_TOKEN=<redacted>' python"),
     (["--model_args", "password=X tail,x=1"], "--model_args 'password=<redacted>,x=1'"),
     (["--model_args", "password='p w',api_key=\"a,b\",device_map=auto"],
      "--model_args 'password=<redacted>,api_key=<redacted>,device_map=auto'"),
     (["--tokenizer", "llava", "--max_new_tokens", "16"], "--tokenizer llava --max_new_tokens 16")],
)  # fmt: skip
def test_command_lines_hide_whole_values_and_keep_the_rest(args, shown):
    assert redact.redacted_shell_command(args) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [("MASTER_ADDR=https://u:p@node0:29500", f"MASTER_ADDR=https://{REDACTED}@node0:29500"),
     ("u:pw@10.0.0.1", f"{REDACTED}@10.0.0.1"), ("{'token': 'abc', 'x': 1}", f"{{'token': {REDACTED}, 'x': 1}}"),
     ("write every item as key=value", "write every item as key=value"),
     ("python x --hf_token 'a b' --gpus 4", f"python x --hf_token {REDACTED} --gpus 4")],
)  # fmt: skip
def test_free_text_forms(text, shown):
    redact.remember(())
    assert redact_text(text) == shown


@pytest.mark.parametrize("name", ["hf_token", "api_key", "use_auth_token", "HF_TOKEN", "password", "openai-api-key",
                                  "PASSWD", "X_AUTH", "credentials"])  # fmt: skip
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["tokenizer", "max_new_tokens", "key", "author", "device_map", "pretrained"])
def test_names_that_are_not_secrets(name):
    assert not is_secret_name(name)


def test_map009_quotes_the_model_args_redacted():
    assert redacted_model_args("pretrained=x,token='a,b',oops") == f"pretrained=x,token={REDACTED},oops"


def test_a_whole_run_leaks_nothing_to_its_report_junit_json_report_or_terminal(run_checks, monkeypatch):
    """One pytester run: secrets in --model-args (a malformed one: MAP-009), the eval command and the environment."""
    pytest.importorskip("pytest_jsonreport")
    monkeypatch.setenv("HF_TOKEN", "hfEnvZqSecret77")
    monkeypatch.setenv("HF_ENDPOINT", "https://me:UrlZqSecret88@hf.example")
    out_dir = Path.cwd()
    run = run_checks("--simulate", "2xA100-80GB", "--model-args", "pretrained=x,token='ArgZq Secret,99',oops",
                     "--eval-command", "lmms-eval --hf_token EvalZqSecret55 --model_args api_key=EvalZqSecret66",
                     "--junitxml", str(out_dir / "junit.xml"), "--json-report",
                     "--json-report-file", str(out_dir / "jr.json"))  # fmt: skip
    texts = {
        "report": json.dumps(run.report),
        "junit": (out_dir / "junit.xml").read_text(),
        "json-report": (out_dir / "jr.json").read_text(),
        "terminal": "\n".join(run.result.outlines + run.result.errlines),
    }
    assert any(c["code"] == "MAP-009" for c in run.report["checks"])
    for secret in ("hfEnvZqSecret77", "UrlZqSecret88", "ArgZq", "Secret,99", "EvalZqSecret55", "EvalZqSecret66"):
        assert [name for name, text in texts.items() if secret in text] == [], secret
    assert "MAP-009" in texts["terminal"], texts["terminal"][-3000:]
    assert REDACTED in html.unescape(texts["junit"])  # the MAP-009 message, with the token hidden
