"""Families diag has no twin of and no installed transformers class builds: MiniCPM-V, DeepSeek-VL2, Ovis.

The eval kits load them with code that is not transformers': MiniCPM-V 2.6 / 4.0 / 4.5 (openbmb/MiniCPM-V-2_6,
-4, -4_5; lmms-eval `minicpm_v`, VLMEvalKit) and Ovis2 / Ovis2.5 (AIDC-AI/Ovis2-*, Ovis2.5-*; VLMEvalKit's Ovis
classes) ship their modelling files in the checkpoint (config.json `auto_map`); DeepSeek-VL2
(deepseek-ai/deepseek-vl2*, model_type `deepseek_vl_v2`) has no `auto_map` at all: VLMEvalKit imports the
`deepseek_vl2` package of https://github.com/deepseek-ai/DeepSeek-VL2, whose import registers the classes with
transformers' Auto classes, and vLLM / SGLang use their own implementations (`hf_overrides` architectures
`DeepseekVLV2ForCausalLM`). diag writes no twin of either (a hand-written copy drifts from the code users run).

So their presets are the published config only (`config_only`): the map checks, which need no model, run; the
backend checks read the heads from the config; the memory and same-device checks skip with MODEL-003, which says
how to have diag run the model's own code. A MiniCPM-V or Ovis checkpoint on the node with `--trust-remote-code` is
built from its own files (diag/twins/remote.py) with the generic shrink and inputs of the "remote" family.
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
    # openbmb/MiniCPM-V-2_6, -4 and -4_5 config.json: architectures ["MiniCPMV"], model_type "minicpmv", auto_map
    # to configuration_minicpm.MiniCPMVConfig / modeling_minicpmv.MiniCPMV; the language model's fields sit at the
    # top level, the SigLIP tower's in vision_config (transformers' native ports of 4.6 and later are model_type
    # minicpmv4_6 / minicpmv4_7, other families).
    architectures = ("MiniCPMV",)
    model_types = ("minicpmv",)
    loader = "AutoModel"

    def no_twin(self, config: Mapping[str, Any]) -> tuple[str, str]:
        version = config.get("version")
        name = f"MiniCPM-V {version}" if isinstance(version, int | float | str) and str(version) else "MiniCPM-V"
        fix = _checkpoint_fix("openbmb/MiniCPM-V-2_6, openbmb/MiniCPM-V-4 or openbmb/MiniCPM-V-4_5") + (
            "; or evaluate a native port the installed transformers builds (openbmb/MiniCPM-V-4.6, model_type "
            "minicpmv4_6, transformers 5)."
        )
        return _own_code(name, "modeling_minicpmv.py"), fix


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


@register
class OvisRemote(ConfigOnly):
    name = "ovis"
    label = "Ovis"
    # AIDC-AI/Ovis2-{1B..34B} config.json: architectures ["Ovis"], model_type "ovis", auto_map to
    # configuration_ovis.OvisConfig / modeling_ovis.Ovis, the language model in llm_config and the AIMv2 tower in
    # visual_tokenizer_config.backbone_config. AIDC-AI/Ovis2.5-{2B,9B}: model_type "ovis2_5", class
    # modeling_ovis2_5.Ovis2_5, llm_config (Qwen3) and vit_config (SigLIP2 NaViT). vLLM registers both
    # architectures ("Ovis", "Ovis2_5") with its own implementations. transformers ports Ovis2 natively as
    # model_type "ovis2" (thisisiron/Ovis2-*-hf; in transformers since 4.56, huggingface.co/docs/transformers/
    # model_doc/ovis2), which the installed-transformers families claim, not this one.
    architectures = ("Ovis", "Ovis2_5")
    model_types = ("ovis", "ovis2_5")
    loader = "AutoModelForCausalLM"

    def no_twin(self, config: Mapping[str, Any]) -> tuple[str, str]:
        ovis2_5 = str(config.get("model_type")) == "ovis2_5" or "Ovis2_5" in _architectures(config)
        label, module, example = (("Ovis2.5", "modeling_ovis2_5.py", "AIDC-AI/Ovis2.5-9B") if ovis2_5 else
                                  ("Ovis2", "modeling_ovis.py", "AIDC-AI/Ovis2-8B"))  # fmt: skip
        why = _own_code(label, module)
        fix = _checkpoint_fix(f"{example}, or the size you evaluate") + (
            ", as VLMEvalKit loads it with trust_remote_code=True."
        )
        if not ovis2_5:
            fix += " " + _native_port("ovis2", "Ovis2-1B and -2B", "thisisiron/Ovis2-1B-hf, thisisiron/Ovis2-2B-hf")
        fix += (" With vLLM or SGLang the engine's own Ovis implementation runs, and diag's backend checks read the "
                "heads from llm_config.")  # fmt: skip
        return why, fix


def _own_code(label: str, module: str) -> str:
    return (
        f"{label} runs the checkpoint's own modelling code (config.json auto_map, {module}), which is not on this "
        "machine, and diag has no twin of it"
    )


def _checkpoint_fix(downloads: str) -> str:
    return (
        "Put the checkpoint on the node (its folder as --model, or its snapshot in the Hugging Face cache: "
        f"huggingface-cli download {downloads}) and give {CONSENT}"
    )


def _native_port(model_type: str, models: str, ports: str) -> str:
    """One sentence on transformers' native port of a remote-code model: whether the installed release has it."""
    import transformers

    from diag.twins.remote import model_type_known

    installed = transformers.__version__
    port = f"For {models}, transformers' native port (model_type {model_type}: {ports}) needs no remote code"
    if model_type_known(model_type):
        return f"{port}, and the installed transformers {installed} has it."
    return f"{port}, but the installed transformers {installed} does not have it (transformers 4.56 and later do)."


def _architectures(config: Mapping[str, Any]) -> list[str]:
    architectures = config.get("architectures") or ()
    return [architectures] if isinstance(architectures, str) else [a for a in architectures if isinstance(a, str)]
