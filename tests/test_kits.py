"""The eval kit's own code decides: fake lmms-eval / VLMEvalKit kits written here (not copies of upstream code)
show that diag runs the installed code, and that a change in the kit changes diag's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diag.devicemap.cases import map_cases
from diag.options import DiagOptions
from diag.topology import build_topology

LMMS_INIT = """
from lmms_eval.models.fake_class import FakeVLM, FakeStrict

REGISTRY = {"qwen2_5_vl": FakeVLM, "minicpm_v": FakeStrict}


def get_model(name):
    if name not in REGISTRY:
        raise ValueError(f"Model {name} not found in available models.")
    return REGISTRY[name]
"""

LMMS_API = """
class lmms:
    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        args = dict(item.split("=", 1) for item in arg_string.split(",") if item)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)
"""

# PER_RANK: with several processes each rank loads on its own GPU, whatever device_map says (as qwen2_5_vl does).
LMMS_CLASS = """
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoProcessor

from lmms_eval.api.model import lmms

PER_RANK = {per_rank}


class FakeVLM(lmms):
    def __init__(self, pretrained="x", device_map="auto", batch_size=1, **kwargs):
        assert kwargs == {{}}, f"Unexpected kwargs: {{kwargs}}"
        accelerator = Accelerator()
        if PER_RANK and accelerator.num_processes > 1:
            device_map = f"cuda:{{accelerator.local_process_index}}"
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.model = AutoModelForCausalLM.from_pretrained(pretrained, device_map=device_map, torch_dtype="auto")
        self.model.eval()


class FakeStrict(lmms):
    def __init__(self, pretrained="x", device="cuda", batch_size=1, **kwargs):
        assert kwargs == {{}}, f"Unexpected kwargs: {{kwargs}}"
        self.model = AutoModelForCausalLM.from_pretrained(pretrained, device_map=device)
"""

QWEN = "pretrained=Qwen/Qwen2-VL-7B-Instruct,device_map=auto"


def write_lmms_eval(root: Path, *, per_rank: bool) -> Path:
    package = root / "lmms_eval"
    (package / "models").mkdir(parents=True)
    (package / "api").mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "api" / "__init__.py").write_text("", encoding="utf-8")
    (package / "api" / "model.py").write_text(LMMS_API, encoding="utf-8")
    (package / "models" / "__init__.py").write_text(LMMS_INIT, encoding="utf-8")
    (package / "models" / "fake_class.py").write_text(LMMS_CLASS.format(per_rank=per_rank), encoding="utf-8")
    return root


def _options(**kwargs: object) -> DiagOptions:
    base: dict[str, object] = dict(gpus=None, simulate="4xA100-80GB", topology=None, model=None, device_map=None,
                                   model_args=None, processes=None, report_path=None)  # fmt: skip
    base.update(kwargs)
    return DiagOptions(**base)  # type: ignore[arg-type]


def _cases(options: DiagOptions, env: dict[str, str] | None = None) -> list:
    topology = build_topology(env={}, gpus=options.gpus, simulate=options.simulate, replay=None)
    return map_cases(options, topology, env or {})


@pytest.fixture
def no_kits(monkeypatch):
    """Neither kit importable (whatever the test environment has)."""
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in ("lmms_eval", "vlmeval"):
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


# -- lmms-eval ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("per_rank", "rank", "expected"), [(True, "1", "cuda:1"), (False, "1", "auto")])
def test_the_installed_lmms_eval_class_decides_the_per_rank_map(tmp_path, monkeypatch, per_rank, rank, expected):
    """Two processes, device_map=auto: diag runs the installed class, whose own rule gives each rank its GPU
    (or, in the variant that keeps auto, the split): a change in the kit changes the verdict."""
    monkeypatch.syspath_prepend(str(write_lmms_eval(tmp_path, per_rank=per_rank)))
    options = _options(model_args=QWEN, eval_model="qwen2_5_vl", processes=2)
    (case,) = _cases(options, {"LOCAL_RANK": rank})
    assert case.problem is None, case.problem
    assert case.source.value == expected
    assert case.kit is not None and case.kit.source == "installed" and case.kit.kit == "lmms-eval"
    assert "its installed code" in case.source.text
    assert "AutoModelForCausalLM.from_pretrained" in case.source.note or "from_pretrained" in case.source.note


def test_the_capture_reads_no_weight_and_restores_what_it_patched(tmp_path, monkeypatch):
    import accelerate
    import torch
    import transformers

    monkeypatch.syspath_prepend(str(write_lmms_eval(tmp_path, per_rank=True)))
    before = (torch.cuda.device_count, transformers.AutoModelForCausalLM.from_pretrained.__func__,
              accelerate.Accelerator.__init__)  # fmt: skip
    _cases(_options(model_args=QWEN, eval_model="qwen2_5_vl", processes=2))
    after = (torch.cuda.device_count, transformers.AutoModelForCausalLM.from_pretrained.__func__,
             accelerate.Accelerator.__init__)  # fmt: skip
    assert before == after
    import sys

    assert not any(name == "lmms_eval" or name.startswith("lmms_eval.") for name in sys.modules)


def test_qwen2_5_vl_under_two_processes_is_one_gpu_per_rank_in_the_emulation(no_kits):
    options = _options(model_args=QWEN, eval_model="qwen2_5_vl", processes=2)
    (rank1,) = _cases(options, {"LOCAL_RANK": "1"})
    assert rank1.source.value == "cuda:1"
    assert "even with device_map=auto" in rank1.source.note
    assert rank1.kit is not None and rank1.kit.source == "emulation"
    assert "diag's emulation" in rank1.source.text


def test_an_unknown_key_fails_naming_the_class_installed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_lmms_eval(tmp_path, per_rank=True)))
    command = ("python -m lmms_eval --model minicpm_v --model_args pretrained=openbmb/MiniCPM-V,device_map=auto "
               "--tasks mme")  # fmt: skip
    options = _options(model_args="pretrained=openbmb/MiniCPM-V,device_map=auto", eval_model="minicpm_v",
                       eval_command=tuple(command.split()), model="llava-1.5-7b")  # fmt: skip
    (case,) = _cases(options)
    assert case.problem_code == "MAP-011"
    assert "'minicpm_v' class" in case.problem and "Unexpected kwargs" in case.problem
    assert case.commands == ("python -m lmms_eval --model minicpm_v --model_args pretrained=openbmb/MiniCPM-V "
                             "--tasks mme",)  # fmt: skip


def test_an_unknown_key_fails_in_the_emulation_only_where_the_signature_is_known(no_kits):
    (case,) = _cases(_options(model_args="pretrained=openbmb/MiniCPM-V,device_map=auto", eval_model="minicpm_v",
                              model="llava-1.5-7b"))  # fmt: skip
    assert case.problem_code == "MAP-011" and "'minicpm_v' class does not take device_map" in case.problem
    (other,) = _cases(_options(model_args=f"{QWEN},foo=1", eval_model="qwen2_5_vl"))  # signature not known
    assert other.problem is None


def test_batch_size_in_model_args_fails_with_the_installed_class(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_lmms_eval(tmp_path, per_rank=True)))
    command = f"python -m lmms_eval --model qwen2_5_vl --model_args {QWEN},batch_size=8"
    (case,) = _cases(_options(model_args=f"{QWEN},batch_size=8", eval_model="qwen2_5_vl",
                              eval_command=tuple(command.split())))  # fmt: skip
    assert case.problem_code == "MAP-010"
    assert "'qwen2_5_vl' class" in case.problem and "multiple values for keyword argument 'batch_size'" in case.problem
    assert case.commands == (f"python -m lmms_eval --model qwen2_5_vl --model_args {QWEN} --batch_size 8",)


def test_a_class_the_installed_registry_lacks_is_kit_002(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_lmms_eval(tmp_path, per_rank=True)))
    (case,) = _cases(_options(model_args=QWEN, eval_model="qwen3_5"))
    assert case.problem_code == "KIT-002" and "Model qwen3_5 not found" in case.problem


def test_the_emulation_is_keyed_by_the_kit_version(no_kits):
    (old,) = _cases(_options(model_args=QWEN, eval_model="qwen2_5_vl", eval_kit_version="0.3.0"))
    assert old.problem_code == "KIT-002" and "lmms-eval as of 2024-11-27 has no 'qwen2_5_vl'" in old.problem
    (gemma,) = _cases(_options(model_args="pretrained=google/gemma-3-4b-it", eval_model="gemma3",
                               model="llava-1.5-7b"))  # fmt: skip
    assert gemma.source.value == "cuda:0" and ".to('cuda')" in gemma.source.note


def test_internvl2_auto_ends_on_cuda_0_and_an_unknown_name_raises_keyerror(no_kits):
    (case,) = _cases(_options(model_args="pretrained=OpenGVLab/InternVL2-8B,device_map=auto", eval_model="internvl2"))
    assert case.source.value == "cuda:0" and ".to('cuda:0')" in case.source.note
    (local,) = _cases(_options(model_args="pretrained=/data/my-internvl,device_map=auto", eval_model="internvl2",
                               model="internvl2-8b"))  # fmt: skip
    assert local.problem_code == "MAP-012" and "KeyError: 'my-internvl'" in local.problem
    (given,) = _cases(_options(model_args="pretrained=/data/my-internvl,device_map=auto,num_layers=32",
                               eval_model="internvl2", model="internvl2-8b"))  # fmt: skip
    assert given.problem is None


# -- VLMEvalKit ---------------------------------------------------------------------------------------------------
RUN_PY = """
import os

LOCAL_WORLD_SIZE = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
LOCAL_RANK = int(os.environ.get("LOCAL_RANK", 1))
visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
gpus = visible.split(",") if visible else [str(i) for i in range(len(os.popen("nvidia-smi -L").read().splitlines()))]
if LOCAL_WORLD_SIZE > 1 and gpus:
    each = len(gpus) // LOCAL_WORLD_SIZE
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[LOCAL_RANK * each:(LOCAL_RANK + 1) * each])

from vlmeval.config import supported_VLM  # noqa: E402
"""

VLM_CONFIG = """
from functools import partial
from vlmeval.vlm import InternVLChat

supported_VLM = {"InternVL2-76B": partial(InternVLChat, model_path="OpenGVLab/InternVL2-Llama3-76B")}
"""

# SPLITS: the class builds its own split over the GPUs it sees, capped by the local world size (Dec-2024 style);
# otherwise it ignores AUTO_SPLIT and loads with auto (the behaviour since PR #952).
VLM_CLASS = """
import os
import torch
from transformers import AutoModel

SPLITS = {splits}


def own_split(layers=80):
    gpus = min(8, torch.cuda.device_count() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    ordinals = list(range(gpus))
    first = ordinals[0]
    layer_map = {{f"language_model.model.layers.{{i}}": ordinals[i % gpus] for i in range(layers)}}
    return {{"vision_model": first, **layer_map}}


class InternVLChat:
    def __init__(self, model_path):
        if SPLITS and os.environ.get("AUTO_SPLIT") == "1":
            device_map = own_split()
        else:
            device_map = "auto"
        self.model = AutoModel.from_pretrained(model_path, device_map=device_map, trust_remote_code=True).eval()
"""


def write_vlmevalkit(root: Path, *, splits: bool) -> Path:
    (root / "vlmeval" / "vlm").mkdir(parents=True)
    (root / "run.py").write_text(RUN_PY, encoding="utf-8")
    (root / "vlmeval" / "__init__.py").write_text("", encoding="utf-8")
    (root / "vlmeval" / "config.py").write_text(VLM_CONFIG, encoding="utf-8")
    (root / "vlmeval" / "vlm" / "__init__.py").write_text(VLM_CLASS.format(splits=splits), encoding="utf-8")
    return root / "run.py"


def _vlmevalkit_cases(run_py: Path | None, **kwargs: object) -> list:
    command = ("torchrun", "--nproc-per-node", "4", str(run_py or "run.py"), "--data", "MME", "--model",
               "InternVL2-76B")  # fmt: skip
    options = _options(simulate="8xA100-80GB", model="internvl2-76b", processes=4, eval_kit="vlmevalkit",
                       eval_command=command, **kwargs)  # fmt: skip
    return _cases(options, {"AUTO_SPLIT": "1"})


def test_current_vlmevalkit_installed_gives_no_split_001_on_4_processes_over_8_gpus(tmp_path, no_kits):
    cases = _vlmevalkit_cases(write_vlmevalkit(tmp_path, splits=False))
    assert [c.id.split("-internvl2")[0] for c in cases] == ["rank0-gpus0,1", "rank1-gpus2,3", "rank2-gpus4,5",
                                                            "rank3-gpus6,7"]  # fmt: skip
    assert all(c.problem is None and c.source.value == "auto" for c in cases), [c.problem for c in cases]
    assert all(c.kit.source == "installed" and c.kit.kit == "vlmevalkit" for c in cases)
    assert "AUTO_SPLIT=1 is not what decides it" in cases[0].source.note


def test_a_dec_2024_style_vlmevalkit_installed_still_fails_split_001(tmp_path, no_kits):
    cases = _vlmevalkit_cases(write_vlmevalkit(tmp_path, splits=True))
    assert all(c.problem_code == "SPLIT-001" for c in cases), [c.problem for c in cases]
    assert "ZeroDivisionError" in cases[0].problem or "IndexError" in cases[0].problem


def test_the_emulation_of_current_vlmevalkit_gives_no_split_001(no_kits):
    cases = _vlmevalkit_cases(None)
    assert len(cases) == 4 and all(c.problem is None and c.source.value == "auto" for c in cases)
    assert all(c.kit.source == "emulation" for c in cases)
    assert "ignores AUTO_SPLIT" in cases[0].source.note


def test_the_emulation_before_pr_952_splits_without_run_py_slicing(no_kits):
    cases = _vlmevalkit_cases(None, eval_kit_version="2024-12-30")
    assert [c.id.split("-internvl2")[0] for c in cases] == ["rank0-gpus0,1,2,3,4,5,6,7"] + [
        f"rank{r}-gpus0,1,2,3,4,5,6,7" for r in (1, 2, 3)]  # fmt: skip
    rank3 = cases[3]
    assert rank3.problem is None and isinstance(rank3.source.value, dict)
    assert sorted(set(rank3.source.value.values())) == [6, 7]  # 8 // 4 GPUs each, from LOCAL_RANK * 2


def test_srun_does_not_slice_since_may_2025(no_kits):
    options = _options(simulate="8xA100-80GB", model="internvl2-8b", eval_kit="vlmevalkit")
    cases = _cases(options, {"SLURM_NTASKS_PER_NODE": "2"})
    assert [c.id.split("-internvl2")[0] for c in cases] == ["rank0-gpus0,1,2,3,4,5,6,7", "rank1-gpus0,1,2,3,4,5,6,7"]
    torchrun = _cases(options, {"LOCAL_WORLD_SIZE": "2"})
    assert [c.id.split("-internvl2")[0] for c in torchrun] == ["rank0-gpus0,1,2,3", "rank1-gpus4,5,6,7"]


def test_the_checkout_commit_is_read_from_git_without_git(tmp_path):
    import time
    import zlib

    from diag.kits import checkout_commit

    sha = "3b6bca0f" + "0" * 32
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (git / "refs" / "heads" / "main").write_text(sha + "\n", encoding="utf-8")
    stamp = int(time.mktime((2025, 4, 29, 12, 0, 0, 0, 0, 0)))
    body = f"tree {'1' * 40}\nauthor A <a@b> {stamp} +0000\ncommitter A <a@b> {stamp} +0000\n\nmsg\n".encode()
    (git / "objects" / sha[:2]).mkdir(parents=True)
    (git / "objects" / sha[:2] / sha[2:]).write_bytes(zlib.compress(b"commit %d\x00" % len(body) + body))
    assert checkout_commit(tmp_path / "vlmeval") == (sha, "2025-04-29")


@pytest.mark.parametrize("value", ["2025-13-01", "yesterday", ""])
def test_a_kit_version_that_cannot_be_read_is_a_usage_error(value):
    from diag.kits import KitVersionError, parse_kit_version

    with pytest.raises(KitVersionError):
        parse_kit_version(value)


def test_lmms_eval_option_abbreviations_are_read_as_argparse_does():
    from diag.launch.commands import recognise

    found = recognise(["python", "-m", "lmms_eval", "--model", "qwen2_5_vl", "--model_arg", QWEN], {})
    assert found is not None and found.model_args == QWEN


def test_the_report_records_the_kit(pytester, no_kits):
    pytester.makeconftest("")
    result = pytester.runpytest_inprocess(
        "-p", "diag.plugin", "--simulate", "2xA100-80GB", "--eval-model", "qwen2_5_vl", "--model-args", QWEN,
        "--eval-kit-version", "2026-03-01", "--diag-report", str(pytester.path / "r.json"), "-p", "no:cacheprovider",
        str(Path(__file__).parent.parent / "checks" / "test_devicemap.py"), "-k", "accepted")  # fmt: skip
    report = json.loads((pytester.path / "r.json").read_text())
    entry = next(c for c in report["checks"] if "accepted" in c["nodeid"])
    assert entry["data"]["eval_kit"]["assumes"] == "lmms-eval as of 2026-03-01 (diag's emulation)", result.stdout.str()
