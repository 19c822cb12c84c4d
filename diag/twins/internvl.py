"""InternVL-Chat twin: the remote-code `InternVLChatModel` of InternVL2 (OpenGVLab/InternVL2-*).

Module names follow upstream `modeling_internvl_chat.py` and `modeling_intern_vit.py`
(OpenGVLab/InternVL internvl_chat/internvl/model/internvl_chat): `vision_model` (InternVisionModel:
`embeddings`, `encoder.layers.N` InternVisionEncoderLayer), `mlp1` (LayerNorm, Linear, GELU, Linear) and
`language_model`. The language model is the installed transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM` or
`Qwen3ForCausalLM` where upstream builds on those (InternVL2-40B, -76B, -1B; InternVL3; InternVL3.5),
transformers' `Phi3ForCausalLM` for upstream's copy of it (InternVL2-4B), and the InternLM2 twin otherwise (-2B,
-8B, -26B; InternVL2.5-8B).

The device-sensitive steps are kept as upstream writes them:
- `forward` merges the image embeddings with `input_embeds[selected] = ...` without moving them (the training
  forward has no move: a split that puts `mlp1` and the embeddings on different GPUs fails there);
- `generate` moves them to the embeddings' device first (upstream commit 07ef6e9, InternVL #133; a config with
  `merge_without_move=True` gives the remote code from before it, which earlier checkpoint snapshots carry),
  then calls `self.language_model.generate(inputs_embeds=...)` on the inner model, so the logits stay on the
  head's GPU: with transformers < 4.46 that is the head-on-the-last-GPU failure of InternVL #587;
- `chat` passes the conversation separator as `eos_token_id`, so that failure comes in the same op users see.

Mirrors OpenGVLab/InternVL at commit 0dc48a2 (2024-07-19, "Release code of InternVL 2.0", the source of the
InternVL2 checkpoints' remote code), `internvl_chat/internvl/model/internvl_chat/`, in these steps only. This is
diag's own stand-in: it is not the checkpoint's code, and what that code does beyond them is not checked (the
checkpoint's own code runs instead with `--trust-remote-code` and the checkpoint on the node).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import transformers
from torch import nn
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

from diag.twins._common import RMSNorm, causal_lm_output, output_cache
from diag.twins.internlm2 import InternLM2Config, InternLM2ForCausalLM
from diag.twins.shrink import IM_END, IMAGE_TOKEN, IMG_END, IMG_START

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
SEPARATOR_TOKEN = "<|im_end|>"  # the template's separator; upstream chat makes it the eos token

# Upstream's own list (InternVLChatModel._no_split_modules), whatever the language model is.
INTERNVL_NO_SPLIT = [
    "InternVisionModel",
    "LlamaDecoderLayer",
    "InternLM2DecoderLayer",
    "Phi3DecoderLayer",
    "Qwen2DecoderLayer",
]


INTERN_VIT_NO_SPLIT = ["InternVisionEncoderLayer"]  # InternVisionModel._no_split_modules


class InternVisionConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """The fields of upstream `InternVisionConfig` that shape the module tree."""

    model_type = "intern_vit_6b"

    def __init__(
        self,
        num_channels: int = 3,
        patch_size: int = 14,
        image_size: int = 224,
        qkv_bias: bool = False,
        hidden_size: int = 3200,
        num_attention_heads: int = 25,
        intermediate_size: int = 12800,
        qk_normalization: bool = True,
        num_hidden_layers: int = 48,
        hidden_act: str = "gelu",
        norm_type: str = "rms_norm",
        layer_norm_eps: float = 1e-6,
        initializer_factor: float = 0.1,
        **kwargs: Any,
    ) -> None:
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.image_size = image_size
        self.qkv_bias = qkv_bias
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.qk_normalization = qk_normalization
        self.num_hidden_layers = num_hidden_layers
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.initializer_factor = initializer_factor
        super().__init__(**kwargs)


class InternVLChatConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """`vision_config` + `llm_config` + the pixel-shuffle settings, as upstream `InternVLChatConfig`."""

    model_type = "internvl_chat"

    def __init__(
        self,
        vision_config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        downsample_ratio: float = 0.5,
        force_image_size: int | None = None,
        select_layer: int = -1,
        ps_version: str = "v2",
        template: str | None = None,
        **kwargs: Any,
    ) -> None:
        llm_config = llm_config or {"architectures": ["InternLM2ForCausalLM"]}
        # The published configs say false at the top level too; the default (true) would tie the LM's head.
        kwargs.setdefault("tie_word_embeddings", bool(llm_config.get("tie_word_embeddings", False)))
        self.vision_config = InternVisionConfig(**(vision_config or {}))
        self.llm_config = llm_config_from_dict(llm_config)
        self.downsample_ratio = downsample_ratio
        self.force_image_size = force_image_size
        self.select_layer = select_layer
        self.ps_version = ps_version
        self.template = template
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> PretrainedConfig:
        return self.llm_config


def llm_config_from_dict(llm: dict[str, Any]) -> PretrainedConfig:
    """The LM's config object: the installed transformers' class for Llama and Qwen2, the twin's for InternLM2."""
    fields = {k: v for k, v in llm.items() if k not in ("model_type", "auto_map")}
    arch = (llm.get("architectures") or ["InternLM2ForCausalLM"])[0]
    if arch == "LlamaForCausalLM":
        return transformers.LlamaConfig(**fields)
    if arch == "Qwen2ForCausalLM":
        return transformers.Qwen2Config(**fields)
    if arch == "Phi3ForCausalLM":
        return transformers.Phi3Config(**fields)
    if arch == "Qwen3ForCausalLM":  # InternVL3.5 (OpenGVLab/InternVL3_5-*): Qwen3, in transformers from 4.51.0
        if not hasattr(transformers, "Qwen3Config"):
            raise NotImplementedError(
                f"transformers {transformers.__version__} has no Qwen3ForCausalLM (added in transformers 4.51.0), "
                "the language model of this InternVL: the eval could not load it on this stack either"
            )
        qwen3_config: PretrainedConfig = transformers.Qwen3Config(**fields)
        return qwen3_config
    if arch == "InternLM2ForCausalLM":
        return InternLM2Config(**fields)
    raise NotImplementedError(f"{arch} is not implemented.")  # upstream's words for the same case


class InternVisionEmbeddings(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, self.embed_dim))
        self.patch_embedding = nn.Conv2d(3, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.position_embedding = nn.Parameter(torch.randn(1, self.num_patches + 1, self.embed_dim))

    def _position_embedding(self, height: int, width: int) -> torch.Tensor:
        side = self.image_size // self.patch_size
        grid = self.position_embedding[:, 1:, :].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
        grid = grid.reshape(1, -1, height * width).permute(0, 2, 1).to(self.position_embedding.dtype)
        return torch.cat([self.position_embedding[:, :1, :], grid], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        target_dtype = self.patch_embedding.weight.dtype
        patch_embeds = self.patch_embedding(pixel_values.to(target_dtype))
        batch, _, height, width = patch_embeds.shape
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch, 1, -1).to(target_dtype)
        embeddings = torch.cat([class_embeds, patch_embeds], dim=1)
        return embeddings + self._position_embedding(height, width).to(target_dtype)


def _norm(config: InternVisionConfig, dim: int) -> nn.Module:
    # NORM2FN of upstream: InternViT-6B uses RMSNorm, InternViT-300M LayerNorm.
    if config.norm_type == "layer_norm":
        return nn.LayerNorm(dim, eps=config.layer_norm_eps)
    return RMSNorm(dim, eps=config.layer_norm_eps)


class InternAttention(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj_drop = nn.Dropout(0.0)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            self.q_norm = RMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = RMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.qk_normalization:
            q = self.q_norm(q.transpose(1, 2).flatten(-2, -1)).view(batch, length, self.num_heads, -1).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).flatten(-2, -1)).view(batch, length, self.num_heads, -1).transpose(1, 2)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(batch, length, channels)
        result: torch.Tensor = self.proj_drop(self.proj(out))
        return result


class InternMLP(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.act = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class InternVisionEncoderLayer(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = _norm(config, config.hidden_size)
        self.norm2 = _norm(config, config.hidden_size)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(config.hidden_size))
        self.drop_path1 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path1(self.attn(self.norm1(hidden_states)) * self.ls1)
        result: torch.Tensor = hidden_states + self.drop_path2(self.mlp(self.norm2(hidden_states)) * self.ls2)
        return result


class InternVisionEncoder(nn.Module):
    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InternVisionEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, inputs_embeds: torch.Tensor, output_hidden_states: bool = False) -> list[torch.Tensor]:
        states = [inputs_embeds]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return states if output_hidden_states else states[-1:]


class InternVisionModel(PreTrainedModel):  # type: ignore[no-untyped-call]
    config_class = InternVisionConfig
    main_input_name = "pixel_values"
    _no_split_modules = INTERN_VIT_NO_SPLIT

    def __init__(self, config: InternVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        self.post_init()  # type: ignore[no-untyped-call]

    def _init_weights(self, module: nn.Module) -> None:
        """Upstream initialises nothing here: the constructors' own initialisation stands."""

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False, return_dict: bool = True
    ) -> BaseModelOutputWithPooling:
        if pixel_values.dim() != 4:
            raise ValueError(f"wrong pixel_values size: {tuple(pixel_values.shape)}")
        states = self.encoder(self.embeddings(pixel_values), output_hidden_states=output_hidden_states)
        last = states[-1]
        return BaseModelOutputWithPooling(
            last_hidden_state=last,
            pooler_output=last[:, 0, :],
            hidden_states=tuple(states) if output_hidden_states else None,
        )


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that `InternVLChatModel.chat` uses."""

    def __call__(self, text: str, return_tensors: str) -> Any: ...

    def convert_tokens_to_ids(self, token: str) -> int: ...

    def batch_decode(self, sequences: torch.Tensor, skip_special_tokens: bool) -> list[str]: ...


class InternVLChatModel(PreTrainedModel):  # type: ignore[no-untyped-call]
    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _no_split_modules = INTERNVL_NO_SPLIT

    def __init__(self, config: InternVLChatConfig) -> None:
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio**2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.vision_model = InternVisionModel(config.vision_config)
        self.language_model = _language_model(config.llm_config)
        vit_hidden = config.vision_config.hidden_size * int(1 / self.downsample_ratio) ** 2
        llm_hidden = config.llm_config.hidden_size
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(vit_hidden), nn.Linear(vit_hidden, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden)
        )
        # Set from the tokenizer by `chat`/`batch_chat` upstream; the tiny twin sets it to its own id.
        self.img_context_token_id: int | None = None
        self.post_init()  # type: ignore[no-untyped-call]

    def _init_weights(self, module: nn.Module) -> None:
        """Upstream initialises nothing here: the constructors' own initialisation stands."""

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | None:
        out: nn.Module | None = self.language_model.get_output_embeddings()  # type: ignore[no-untyped-call]
        return out

    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version != "v1":
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.select_layer == -1:
            vit_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        else:
            states = self.vision_model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
            vit_embeds = states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]
        side = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], side, side, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        out: torch.Tensor = self.mlp1(vit_embeds)
        return out

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if image_flags is None:
            image_flags = torch.ones(pixel_values.shape[0], 1, dtype=torch.long, device=pixel_values.device)
        image_flags = image_flags.squeeze(-1)
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        vit_embeds = self.extract_feature(pixel_values)
        vit_embeds = vit_embeds[image_flags == 1]
        batch, length, channels = input_embeds.shape
        input_embeds = input_embeds.reshape(batch * length, channels)
        selected = input_ids.reshape(batch * length) == self.img_context_token_id
        # As upstream's forward: no move to the embeddings' device before the masked assignment.
        input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, channels)
        input_embeds = input_embeds.reshape(batch, length, channels)
        outputs = self.language_model(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
        )
        return causal_lm_output(outputs.logits, output_cache(outputs))

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        visual_features: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        if self.img_context_token_id is None:
            raise ValueError("img_context_token_id is not set (upstream sets it from the tokenizer in chat)")
        if input_ids is None:
            raise ValueError("generate needs input_ids")
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            batch, length, channels = input_embeds.shape
            input_embeds = input_embeds.reshape(batch * length, channels)
            selected = input_ids.reshape(batch * length) == self.img_context_token_id
            if int(selected.sum()) == 0:
                raise ValueError("no image-context token in input_ids")
            if getattr(self.config, "merge_without_move", False):  # remote code from before 07ef6e9
                input_embeds[selected] = vit_embeds.reshape(-1, channels)
            else:  # InternVL commit 07ef6e9 (#133): move the image embeddings to the embeddings' device first.
                input_embeds[selected] = vit_embeds.reshape(-1, channels).to(input_embeds.device)
            input_embeds = input_embeds.reshape(batch, length, channels)
        # The inner model's generate, as upstream: its logits stay on the head's device (InternVL #587).
        language_model: Any = self.language_model
        return language_model.generate(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            use_cache=True,
            **generate_kwargs,
        )

    def chat(
        self,
        tokenizer: ChatTokenizer,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict[str, Any],
        num_patches_list: list[int] | None = None,
    ) -> str:
        """One turn of upstream `chat`: image tokens into the prompt, ids to the GPU, `generate`, decode.

        Upstream sends the ids with `.cuda()` (the current CUDA device); the twin does the same when torch
        sees a GPU (or simulated ones), and keeps them where the tokenizer made them otherwise.
        """
        if pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        query = question
        for num_patches in num_patches_list:
            image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            query = query.replace("<image>", image_tokens, 1)
        # Upstream chat ends generation at the conversation template's separator. With an eos token the sampling
        # step multiplies the new tokens by the unfinished-sequence mask first (`next_tokens *
        # unfinished_sequences`), so on transformers < 4.46 a head on another GPU fails there, in `mul` (#587).
        generation_config = {**generation_config, "eos_token_id": tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)}
        model_inputs = tokenizer(query, return_tensors="pt")
        input_ids = model_inputs["input_ids"]
        attention_mask = model_inputs["attention_mask"]
        if torch.cuda.is_available():
            input_ids, attention_mask = input_ids.cuda(), attention_mask.cuda()
        output = self.generate(
            pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, **generation_config
        )
        return tokenizer.batch_decode(output, skip_special_tokens=True)[0]


class TwinTokenizer:
    """Just enough of a tokenizer for the twin's `chat`: one id per character, plus InternVL's image tokens
    (the ids the twin's config reserves for them). It stands in for the checkpoint's tokenizer, which diag never
    downloads; only where the ids land matters to the same-device check, not what they say."""

    def __init__(self) -> None:
        self.special = {IMG_START_TOKEN: IMG_START, IMG_END_TOKEN: IMG_END, IMG_CONTEXT_TOKEN: IMAGE_TOKEN,
                        SEPARATOR_TOKEN: IM_END}  # fmt: skip
        self.seen: list[int] = []

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.special[token]

    def __call__(self, text: str, return_tensors: str) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        while text:
            token = next((t for t in self.special if text.startswith(t)), text[0])
            ids.append(self.special[token] if token in self.special else 20 + ord(token) % 200)
            text = text[len(token) :]
        self.seen = ids
        return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def batch_decode(self, sequences: torch.Tensor, skip_special_tokens: bool) -> list[str]:
        return ["".join(chr(65 + int(i) % 26) for i in row) for row in sequences]


def _language_model(config: PretrainedConfig) -> PreTrainedModel:
    if isinstance(config, transformers.LlamaConfig):
        return transformers.LlamaForCausalLM(config)
    if isinstance(config, transformers.Qwen2Config):
        return transformers.Qwen2ForCausalLM(config)
    if isinstance(config, transformers.Phi3Config):
        # Upstream ships its own copy of transformers' Phi-3 (internvl/model/phi3), with the same module names.
        return transformers.Phi3ForCausalLM(config)
    if isinstance(config, InternLM2Config):
        return InternLM2ForCausalLM(config)
    if hasattr(transformers, "Qwen3Config") and isinstance(config, transformers.Qwen3Config):
        qwen3: PreTrainedModel = transformers.Qwen3ForCausalLM(config)
        return qwen3
    raise NotImplementedError(f"{type(config).__name__} is not implemented.")
