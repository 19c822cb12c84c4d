"""Families diag has no twin of and no installed transformers class builds: MiniCPM-V 2.x and DeepSeek-VL2.

The eval kits load them with code that is not transformers': MiniCPM-V 2.6 (openbmb/MiniCPM-V-2_6, lmms-eval
`minicpm_v`, VLMEvalKit) ships its modelling files in the checkpoint (config.json `auto_map`); DeepSeek-VL2
(deepseek-ai/deepseek-vl2*, model_type `deepseek_vl_v2`) has no `auto_map` at all: VLMEvalKit imports the
`deepseek_vl2` package of https://github.com/deepseek-ai/DeepSeek-VL2, whose import registers the classes with
transformers' Auto classes, and vLLM / SGLang use their own implementations (`hf_overrides` architectures
`DeepseekVLV2ForCausalLM`). diag writes no twin of either (a hand-written copy drifts from the code users run).

So their presets are the published config only (`config_only`): the map checks, which need no model, run; the
backend checks read the heads from the config; the memory and same-device checks skip with MODEL-003, which says
how to have diag run the model's own code. A MiniCPM-V checkpoint on the node with `--trust-remote-code` is built
from its own files (diag/twins/remote.py) with the generic shrink and inputs of the "remote" family.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from diag.twins.families import register
from diag.twins.families.remote_code import RemoteOnly

CONSENT = "--trust-remote-code"


class ConfigOnly(RemoteOnly):
    """A family whose presets diag may not build: only the model's own code builds it, with consent."""

    config_only: ClassVar[bool] = True
    priority = 100
    label: ClassVar[str]

    def claims(self, config: Mapping[str, Any]) -> bool:
        return str(config.get("model_type")) in self.model_types or any(
            a in self.architectures for a in _architectures(config)
        )

    def unavailable(self, config: Mapping[str, Any]) -> str | None:
        why, _ = self.no_twin(config)
        return why

    def no_twin(self, config: Mapping[str, Any]) -> tuple[str, str]:
        """(why diag builds nothing of this model here, what would let it run the model's own code)."""
        raise NotImplementedError


@register
class MiniCPMVRemote(ConfigOnly):
    name = "minicpm-v"
    label = "MiniCPM-V"
    # openbmb/MiniCPM-V-2_6 config.json: architectures ["MiniCPMV"], model_type "minicpmv", auto_map to
    # configuration_minicpm.MiniCPMVConfig / modeling_minicpmv.MiniCPMV (transformers' native ports of 4.6 and
    # later are model_type minicpmv4_6 / minicpmv4_7, other families).
    architectures = ("MiniCPMV",)
    model_types = ("minicpmv",)
    loader = "AutoModel"

    def no_twin(self, config: Mapping[str, Any]) -> tuple[str, str]:
        why = (
            "MiniCPM-V 2.x runs the checkpoint's own modelling code (config.json auto_map, modeling_minicpmv.py), "
            "which is not on this machine, and diag has no twin of it"
        )
        fix = (
            "Put the checkpoint on the node (its folder as --model, or its snapshot in the Hugging Face cache: "
            f"huggingface-cli download openbmb/MiniCPM-V-2_6) and give {CONSENT}; or evaluate a native port the "
            "installed transformers builds (openbmb/MiniCPM-V-4.6, model_type minicpmv4_6, transformers 5)."
        )
        return why, fix


@register
class DeepSeekVL2(ConfigOnly):
    name = "deepseek-vl2"
    label = "DeepSeek-VL2"
    # deepseek-ai/deepseek-vl2{,-small,-tiny} config.json: model_type "deepseek_vl_v2", no architectures and no
    # auto_map at the top level (the classes are DeepseekVLV2Config / DeepseekVLV2ForCausalLM of the deepseek_vl2
    # package). transformers' own deepseek_vl / deepseek_vl_hybrid are DeepSeek-VL (v1), not this model.
    architectures = ("DeepseekVLV2ForCausalLM",)
    model_types = ("deepseek_vl_v2",)
    loader = "AutoModelForCausalLM"

    def no_twin(self, config: Mapping[str, Any]) -> tuple[str, str]:
        why = (
            "DeepSeek-VL2's modelling code is the deepseek_vl2 package (github.com/deepseek-ai/DeepSeek-VL2), "
            "not the checkpoint (its config.json has no auto_map) nor transformers, and diag has no twin of it, so "
            f"diag builds nothing of it, even with {CONSENT}"
        )
        fix = (
            "diag cannot check a device_map split of this model: try the split with the deepseek_vl2 package on a "
            "few samples before the eval (a hand split has given garbage output, deepseek-ai/DeepSeek-VL2 issue "
            "8). With vLLM or SGLang the engine's own DeepseekVLV2ForCausalLM runs (hf_overrides) and diag's "
            "backend checks read the heads from this config."
        )
        return why, fix


def _architectures(config: Mapping[str, Any]) -> list[str]:
    architectures = config.get("architectures") or ()
    return [architectures] if isinstance(architectures, str) else [a for a in architectures if isinstance(a, str)]
