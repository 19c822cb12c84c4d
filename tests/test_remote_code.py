"""The checkpoint's own code (auto_map): run only with --trust-remote-code, caught when it crosses devices, reported
when it cannot run on the installed transformers (MODEL-001), and a model_type transformers lacks (MODEL-002).

Every checkpoint here is written by the test: its own configuration_*.py and modeling_*.py, whose import creates a
marker file, so a test can tell whether any of that code ran.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import transformers
from packaging.version import Version

from diag.devicemap.cases import map_cases
from diag.fixtures import model_data
from diag.launch.commands import recognise
from diag.launch.wrapper import plan_run
from diag.options import DiagOptions
from diag.samedevice.verify import check_run
from diag.summary import summary_lines
from diag.twins import PRESETS, build_meta, model_for_checkpoint, remote, resolve_model
from diag.twins.remote import code_problem, load_classes, with_consent

NEW_STACK = Version(transformers.__version__) >= Version("5")
CROSS_MAP = {"model": 0, "lm_head": 0, "vision": 1}  # the image features made on GPU 1, the text embeddings on 0

CONFIG_PY = """
from transformers import PretrainedConfig


class MergeBugConfig(PretrainedConfig):
    model_type = "MODEL_TYPE"

    def __init__(self, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 vision_config=None, image_token_id=255, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.vision_config = vision_config or {"hidden_size": 32, "image_size": 28, "patch_size": 14}
        self.image_token_id = image_token_id
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
"""

MODELING_PY = """
from pathlib import Path

Path(MARKER).write_text("the checkpoint's modelling file was imported")

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_mergebug import MergeBugConfig

try:
    from transformers import GenerationMixin
except ImportError:
    GenerationMixin = object


class MergeBugLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden):
        return hidden + self.down(torch.relu(self.up(hidden)))


class MergeBugVision(nn.Module):
    def __init__(self, config):
        super().__init__()
        vision = config.vision_config
        self.patch = nn.Conv2d(3, vision["hidden_size"], vision["patch_size"], stride=vision["patch_size"])
        self.proj = nn.Linear(vision["hidden_size"], config.hidden_size)

    def forward(self, pixel_values):
        return self.proj(self.patch(pixel_values).flatten(2).transpose(1, 2))


class MergeBugTextModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MergeBugLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)


class MergeBugForCausalLM(BASES):
    config_class = MergeBugConfig
    _no_split_modules = ["MergeBugLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.vision = MergeBugVision(config)
        self.model = MergeBugTextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        POST_INIT

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids, pixel_values=None, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, pixel_values=None, return_dict=None, **kwargs):
        embeds = self.model.embed_tokens(input_ids)
        if pixel_values is not None:
            features = self.vision(pixel_values).reshape(-1, embeds.shape[-1])
            mask = input_ids == self.config.image_token_id
            merged = embeds[mask] + features.to(embeds.dtype)  # the bug: features never moved to this GPU
            embeds = embeds.clone()
            embeds[mask] = merged
        hidden = embeds
        for layer in self.model.layers:
            hidden = layer(hidden)
        return CausalLMOutputWithPast(logits=self.lm_head(self.model.norm(hidden)))
"""


def write_checkpoint(
    folder: Path,
    marker: Path,
    *,
    generation_mixin: bool = True,
    post_init: bool = True,
    model_type: str = "diag_merge_bug",
    takes_data: bool = False,
) -> dict[str, str]:
    """Write a remote-code checkpoint to `folder`; its files (name -> text). `takes_data`: its forward takes the
    processor's dict, as MiniCPM-V's `forward(self, data, **kwargs)` does."""
    modeling = MODELING_PY.replace("MARKER", repr(str(marker)))
    if takes_data:
        modeling = modeling.replace(
            "def forward(self, input_ids=None, attention_mask=None, pixel_values=None, return_dict=None, **kwargs):",
            "def forward(self, data, return_dict=None, **kwargs):\n"
            "        input_ids, pixel_values = data['input_ids'], data.get('pixel_values')",
        )
    modeling = modeling.replace("BASES", "PreTrainedModel, GenerationMixin" if generation_mixin else "PreTrainedModel")
    modeling = modeling.replace("POST_INIT", "self.post_init()" if post_init else "pass")
    config = {
        "architectures": ["MergeBugForCausalLM"],
        "model_type": model_type,
        "auto_map": {"AutoConfig": "configuration_mergebug.MergeBugConfig",
                     "AutoModelForCausalLM": "modeling_mergebug.MergeBugForCausalLM"},
        "vocab_size": 256, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4,
        "vision_config": {"hidden_size": 256, "image_size": 28, "patch_size": 14},
        "image_token_id": 255, "use_cache": False, "torch_dtype": "bfloat16", "transformers_version": "4.37.2",
    }  # fmt: skip
    files = {
        "config.json": json.dumps(config),
        "configuration_mergebug.py": CONFIG_PY.replace("MODEL_TYPE", model_type),
        "modeling_mergebug.py": modeling,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return files


@pytest.fixture(autouse=True, scope="module")
def modules_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """transformers copies dynamic modules into HF_MODULES_CACHE before importing them: a folder of these tests'
    (one for the module: the `transformers_modules` package, once imported, stays where it was first found)."""
    import transformers.dynamic_module_utils as dynamic

    folder = tmp_path_factory.mktemp("hf-modules")
    saved = dynamic.HF_MODULES_CACHE
    dynamic.HF_MODULES_CACHE = str(folder)
    yield folder
    dynamic.HF_MODULES_CACHE = saved


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "imported.marker"


@pytest.fixture
def checkpoint(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / f"merge-bug-{tmp_path.name}"  # a module name of its own per test
    write_checkpoint(folder, marker)
    return folder


def _options(**given: Any) -> DiagOptions:
    fields: dict[str, Any] = dict.fromkeys(("gpus", "topology", "model", "device_map", "model_args", "processes",
                                             "report_path"))  # fmt: skip
    fields["simulate"] = "2xA100-80GB"
    return DiagOptions(**{**fields, **given})


def _topology(gpus: int = 2) -> Any:
    from diag.topology import build_topology

    return build_topology(env={}, gpus=None, simulate=f"{gpus}xA100-80GB", replay=None)


def test_without_consent_nothing_of_the_checkpoints_code_runs(checkpoint: Path, marker: Path) -> None:
    spec = resolve_model(str(checkpoint))
    assert (spec.family, spec.code, spec.code_dir) == (remote.REMOTE, "none", str(checkpoint))
    [case] = map_cases(_options(model=str(checkpoint)), _topology(), env={})
    assert case.model is not None and case.model.code == "none"
    problem = code_problem(case.model)
    assert problem is not None and problem.code == "MODEL-003"
    assert "--trust-remote-code" in problem.fix and "none of that code runs" in problem.message
    with pytest.raises(PermissionError, match="--trust-remote-code"):
        load_classes(case.model)
    with pytest.raises(ValueError, match="only the checkpoint's own code builds this model"):
        build_meta(case.model)
    assert not marker.exists()

    [case] = map_cases(_options(model=str(checkpoint), trust_remote_code=True), _topology(), env={})
    assert case.model is not None and case.model.code == "remote"
    assert code_problem(case.model) is None  # builds, plans, runs forward + generate on one device
    assert marker.exists()


def test_the_checkpoints_own_cross_device_merge_is_caught_with_consent(checkpoint: Path) -> None:
    spec = with_consent(resolve_model(str(checkpoint)), True)
    meta = build_meta(spec)
    assert {name for name, _ in meta.named_children()} == {"vision", "model", "lm_head"}
    assert meta.model.embed_tokens.weight.shape == (256, 1024) and meta.model.embed_tokens.weight.is_meta
    verdict = check_run(spec, CROSS_MAP, simulated_gpus=2, meta_model=meta)
    assert verdict.result.stage == "forward" and verdict.result.op == "Tensor.add"
    assert verdict.result.devices == ("cuda:0", "cuda:1")
    assert verdict.cause is not None and verdict.cause.code == "FWD-003" and verdict.cause.modules == ("vision",)
    assert verdict.verified and verdict.fixed_map == {"model": 0, "lm_head": 0, "vision": 0}


def test_the_plugin_runs_the_checkpoints_code_only_with_consent(
    run_checks: Any, checkpoint: Path, marker: Path
) -> None:
    device_map = f"--device-map={json.dumps(CROSS_MAP)}"
    run = run_checks("--simulate", "2xA100-80GB", "--model", str(checkpoint), device_map)
    assert not marker.exists(), run.text
    model = run.check(f"test_model_code_runs_here[{checkpoint}]")
    assert model["outcome"] == "passed" and [w["code"] for w in model["warnings"]] == ["MODEL-003"]
    assert model["data"]["model"]["code"] == "none"
    same = run.check(f"test_twin_runs_with_the_map[{checkpoint.name}-device-map]".replace(checkpoint.name,
                                                                                         str(checkpoint)))  # fmt: skip
    assert same["outcome"] == "skipped" and "test_model_code_runs_here" in same["message"]
    assert run.check(f"test_device_map_names_only_visible_gpus[{checkpoint}-device-map]")["outcome"] == "passed"
    assert "[MODEL-003]" in run.text and "--trust-remote-code" in run.text  # the diag summary lines say how

    run = run_checks("--simulate", "2xA100-80GB", "--model", str(checkpoint), device_map, "--trust-remote-code")
    assert marker.exists()
    same = run.check(f"test_twin_runs_with_the_map[{checkpoint}-device-map]")
    assert same["outcome"] == "failed" and same["code"] == "FWD-003", run.text
    assert "(Tensor.add)" in same["message"] and "the checkpoint's own code" in same["message"]
    assert same["data"]["model"]["code"] == "remote" and same["fix"]["verified"] is True
    assert run.check(f"test_model_code_runs_here[{checkpoint}]")["outcome"] == "passed"


def test_internvl2_style_code_without_generation_mixin_or_post_init(tmp_path: Path, marker: Path) -> None:
    """As InternVL2's release code: a model class without GenerationMixin and without post_init(). transformers
    5 cannot plan it (all_tied_weights_keys) or generate with it: MODEL-001 with the error and the transformers
    it was saved with. transformers 4.45 still gives PreTrainedModel a generate, and the code runs there."""
    folder = tmp_path / f"internvl2-style-{tmp_path.name}"
    write_checkpoint(folder, marker, generation_mixin=False, post_init=False, model_type="diag_internvl2_style")
    spec = with_consent(resolve_model(str(folder)), True)
    problem = code_problem(spec)
    assert marker.exists()
    if not NEW_STACK:
        assert problem is None
        return
    assert problem is not None and problem.code == "MODEL-001"
    assert "in planning: AttributeError:" in problem.message and "all_tied_weights_keys" in problem.message
    assert f"transformers {transformers.__version__}" in problem.message and "\n" not in problem.message
    assert "transformers==4.37.2" in problem.fix and "major release newer" in problem.fix


def test_generate_missing_on_transformers_5_is_model_001(tmp_path: Path, marker: Path) -> None:
    folder = tmp_path / f"no-mixin-{tmp_path.name}"
    write_checkpoint(folder, marker, generation_mixin=False, model_type="diag_no_mixin")
    problem = code_problem(with_consent(resolve_model(str(folder)), True))
    if not NEW_STACK:
        assert problem is None
        return
    assert problem is not None and problem.code == "MODEL-001"
    assert "in generate: AttributeError:" in problem.message and "'generate'" in problem.message


def test_a_forward_that_takes_the_processor_s_dict_is_model_003_not_a_failure(tmp_path: Path, marker: Path) -> None:
    """diag's inputs do not fit `forward(self, data, **kwargs)`: that is diag not knowing the call, so a warning
    (the same-device check skips) after the model built and planned, not MODEL-001."""
    folder = tmp_path / f"takes-data-{tmp_path.name}"
    write_checkpoint(folder, marker, model_type="diag_takes_data", takes_data=True)
    problem = code_problem(with_consent(resolve_model(str(folder)), True))
    assert marker.exists()  # its code ran: build and planning
    assert problem is not None and problem.code == "MODEL-003"
    assert "does not know how to call it" in problem.message
    assert ".forward(data, return_dict=None, **kwargs)" in problem.message
    assert "missing a required argument: 'data'" in problem.message and "\n" not in problem.message


def test_internvl_remote_code_failure_names_the_native_port() -> None:
    preset = PRESETS["internvl2-8b"]
    spec = replace(preset, config={**preset.config, "transformers_version": "4.37.2"}, code="remote", code_dir="/c")
    problem = remote.model_code_failure(spec, "generate", "AttributeError: no generate")
    assert problem.code == "MODEL-001" and "transformers==4.37.2" in problem.fix
    assert problem.message.endswith("in generate: AttributeError: no generate")
    assert ("`-hf` checkpoints" in problem.fix) == remote.model_type_known("internvl")
    unsaid = remote.model_code_failure(replace(spec, config=preset.config), "build", "TypeError: x")
    assert "the transformers release the checkpoint's code was written for" in unsaid.fix


def _config_file(tmp_path: Path, config: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_qwen2_5_vl_on_transformers_4_45_is_model_002(tmp_path: Path) -> None:
    if remote.model_type_known("qwen2_5_vl"):
        assert Version(transformers.__version__) >= Version("4.49")
        pytest.skip("the installed transformers has qwen2_5_vl (added in 4.49): the eval can load it")
    config = {"model_type": "qwen2_5_vl", "architectures": ["Qwen2_5_VLForConditionalGeneration"],
              "transformers_version": "4.49.0.dev0", "hidden_size": 3584}  # fmt: skip
    spec = resolve_model(str(_config_file(tmp_path, config)))
    assert (spec.family, spec.code) == ("qwen2.5-vl", "installed")  # its family says the class is missing
    problem = code_problem(spec)
    assert problem is not None and problem.code == "MODEL-002"
    assert "Qwen2_5_VLForConditionalGeneration" in problem.message and "transformers>=4.49.0" in problem.fix


def test_an_invented_model_type_is_model_002_on_every_stack(tmp_path: Path) -> None:
    spec = resolve_model(str(_config_file(tmp_path, {"model_type": "diag_invented_vlm", "hidden_size": 8})))
    problem = code_problem(spec)
    assert problem is not None and problem.code == "MODEL-002"
    assert "no auto_map" in problem.message and "Upgrade transformers" in problem.fix


def lay_out_snapshot(cache: Path, repo_id: str, files: dict[str, str], revision: str = "89abcdef" * 5) -> Path:
    """A cache entry as huggingface_hub writes one: each file a blob, linked from the snapshot; refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for index, (name, text) in enumerate(sorted(files.items())):
        (repo / "blobs" / f"b{index:04d}").write_text(text)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", f"b{index:04d}"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def test_a_hub_cache_snapshot_runs_offline_with_consent(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    files = write_checkpoint(tmp_path / "source", marker)
    snapshot = lay_out_snapshot(tmp_path / "hub", "diag-tests/merge-bug-vlm", files)
    spec = model_for_checkpoint("diag-tests/merge-bug-vlm")
    assert spec is not None and (spec.source, spec.code, spec.code_dir) == ("hub-cache", "none", str(snapshot))
    assert code_problem(spec) is not None and not marker.exists()
    spec = with_consent(spec, True)
    verdict = check_run(spec, CROSS_MAP, simulated_gpus=2, meta_model=build_meta(spec))
    assert marker.exists() and verdict.cause is not None and verdict.cause.code == "FWD-003"


def test_code_in_another_repository_or_a_missing_file_is_not_on_the_machine(tmp_path: Path, marker: Path) -> None:
    folder = tmp_path / "ckpt"
    write_checkpoint(folder, marker)
    config = json.loads((folder / "config.json").read_text())
    assert remote.code_folder(config, folder) == str(folder)
    elsewhere = {
        **config,
        "auto_map": {"AutoModel": "OpenGVLab/InternVL2-8B--modeling_internvl_chat.InternVLChatModel"},
    }
    assert remote.code_folder(elsewhere, folder) is None
    (folder / "modeling_mergebug.py").unlink()
    assert remote.code_folder(config, folder) is None
    assert remote.code_folder({"model_type": "llava"}, folder) is None


def test_a_verdict_from_a_fallback_twin_says_the_checkpoints_code_was_not_run() -> None:
    data = model_data(PRESETS["internvl2-8b"])
    assert data["code"] == "twin"
    assert "the checkpoint's own code was not run" in str(data["note"]) and "--trust-remote-code" in str(data["note"])
    assert model_data(PRESETS["llava-1.5-7b"])["code"] == "installed" and "note" not in model_data(
        PRESETS["llava-1.5-7b"]
    )
    with_code = replace(PRESETS["cogvlm-chat"] if "cogvlm-chat" in PRESETS else PRESETS["internvl2-8b"],
                        code_dir="/models/ckpt")  # fmt: skip
    assert "from /models/ckpt" in remote.twin_note(with_code)


def test_an_unknown_pretrained_keeps_the_map_checks_and_says_how_to_give_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    options = _options(model_args="pretrained=someone/unknown-vlm,device_map=auto", eval_model="llava_hf")
    [case] = map_cases(options, _topology(), env={})
    assert case.model is None and case.source is not None and case.source.value == "auto"
    assert case.problem is not None and "someone/unknown-vlm" in case.problem
    found = remote.not_buildable(None, case.problem)
    assert found.code == "MODEL-003" and "--model path/to/checkpoint" in found.fix
    assert "--trust-remote-code" in found.fix and "Hugging Face cache" in found.fix
    report = {"checks": [{"nodeid": "checks/test_model.py::test_model_code_runs_here[model]", "outcome": "passed",
                          "warnings": [{"code": found.code, "message": found.message, "fix": found.fix}]}]}  # fmt: skip
    [line] = summary_lines(report)
    assert line.startswith("next step: [MODEL-003]") and "--model path/to/checkpoint" in line


def _plan(command: list[str], diag_args: list[str] | None = None) -> Any:
    checks = Path(__file__).resolve().parents[1] / "checks"
    return plan_run(command, diag_args or [], {}, checks)


def test_the_wrapper_gives_consent_when_the_eval_runs_the_code(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    lmms = ["python", "-m", "lmms_eval", "--model", "llava_hf", "--tasks", "mme", "--model_args"]
    plan = _plan([*lmms, "pretrained=llava-hf/llava-1.5-7b-hf,trust_remote_code=True"])
    assert "--trust-remote-code" in plan.options
    assert any(d.startswith("--trust-remote-code (") and "trust_remote_code=True" in d for d in plan.derived)
    plan = _plan([*lmms, "pretrained=llava-hf/llava-1.5-7b-hf"])
    assert "--trust-remote-code" not in plan.options
    internvl2 = ["python", "-m", "lmms_eval", "--model", "internvl2", "--tasks", "mme", "--model_args",
                 "pretrained=OpenGVLab/InternVL2-8B"]  # fmt: skip
    assert "--trust-remote-code" in _plan(internvl2).options
    folder = tmp_path / f"ckpt-{tmp_path.name}"
    write_checkpoint(folder, marker)
    plan = _plan(["python", "run.py", "--data", "MME", "--model", str(folder)])  # VLMEvalKit, a local checkpoint
    assert "--trust-remote-code" in plan.options and plan.error is None
    assert any("VLMEvalKit loads it with trust_remote_code=True" in d for d in plan.derived)
    assert not marker.exists()  # deciding never imports the code
    assert recognise(["python", "run.py", "--data", "MME", "--model", str(folder)], {}) is not None
