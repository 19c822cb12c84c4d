"""CogVLM twin: the remote-code `CogVLMForCausalLM` of THUDM/cogvlm-chat-hf (CogVLM-17B, chat v1.1).

Module names follow upstream `modeling_cogvlm.py` and `visual.py`: `model.embed_tokens`, `model.layers.N`
(CogVLMDecoderLayer: `self_attn` = VisionExpertAttention with language/vision expert `query_key_value` and
`dense` and its own `rotary_emb`; `mlp` = VisionExpertMLP with `language_mlp`/`vision_mlp`; `input_layernorm`,
`post_attention_layernorm`), `model.norm`, `model.vision` (EVA2CLIPModel: `patch_embedding`,
`transformer.layers.N` TransformerLayer, `linear_proj`, `boi`, `eoi`) and `lm_head`.

`_no_split_modules` is what cogvlm-chat-hf's `CogVLMPreTrainedModel` declares, `["CogVLMDecoderLayer",
"TransformerLayer"]` (read through the ports of that file in mindnlp and PaddleMIX; CogVLM2's file and its
demo list only "CogVLMDecoderLayer"). A hand-made `infer_auto_device_map` call that passes only
"CogVLMDecoderLayer" can split a vision `TransformerLayer`, and its residual `output = mlp_input + mlp_output`
then adds tensors from two GPUs (CogVLM #122, #256; CogVLM2 #10, #32): the twin keeps that line as it is.

Mirrors the remote code of THUDM/cogvlm-chat-hf on the Hugging Face hub (https://huggingface.co/THUDM/cogvlm-chat-hf,
`modeling_cogvlm.py` and `visual.py`), read on its `main` branch through the ports named above; no hub commit is
pinned, so which revision of the checkpoint's code it matches is not recorded. This is diag's own stand-in: the
checkpoint's code is not run unless `--trust-remote-code` is given with the checkpoint on the node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from diag.twins._common import (
    RMSNorm,
    TwinCausalLM,
    causal_lm_output,
    causal_mask,
    eager_attention,
    inverse_frequencies,
    new_cache,
    past_length,
    rotate_half,
    tied_weights_keys,
)

LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1
# cogvlm-chat-hf CogVLMPreTrainedModel._no_split_modules and _skip_keys_device_placement.
COGVLM_NO_SPLIT = ["CogVLMDecoderLayer", "TransformerLayer"]
SKIP_DEVICE_PLACEMENT = ["past_key_values"]


class CogVLMConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """The fields of upstream `CogVLMConfig` that shape the module tree; `vision_config` stays a dict, as there."""

    model_type = "cogvlm"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        template_version: str = "chat",
        vision_config: dict[str, Any] | None = None,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.template_version = template_version
        self.vision_config = dict(vision_config or {})
        kwargs["tie_word_embeddings"] = tie_word_embeddings
        super().__init__(**kwargs)


# --- visual.py: EVA2-CLIP ---------------------------------------------------------------------------------


class PatchEmbedding(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        hidden = vision["hidden_size"]
        self.proj = nn.Conv2d(
            vision["in_channels"], hidden, kernel_size=vision["patch_size"], stride=vision["patch_size"]
        )
        self.cls_embedding = nn.Parameter(torch.zeros(1, hidden))
        self.position_embedding = nn.Embedding(vision["num_positions"], hidden)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images).flatten(2).transpose(1, 2)
        cls_token = self.cls_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_token, x), dim=1)
        out: torch.Tensor = x + self.position_embedding.weight.unsqueeze(0)
        return out


class Attention(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        self.num_heads = vision["num_heads"]
        self.head_dim = vision["hidden_size"] // self.num_heads
        self.scale = self.head_dim**-0.5
        self.query_key_value = nn.Linear(vision["hidden_size"], vision["hidden_size"] * 3)
        self.dense = nn.Linear(vision["hidden_size"], vision["hidden_size"])
        self.output_dropout = nn.Dropout(vision.get("dropout_prob", 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.query_key_value(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(batch, length, -1)
        result: torch.Tensor = self.output_dropout(self.dense(out))
        return result


class MLP(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        self.activation_fn = ACT2FN[vision.get("hidden_act", "gelu")]
        self.fc1 = nn.Linear(vision["hidden_size"], vision["intermediate_size"])
        self.fc2 = nn.Linear(vision["intermediate_size"], vision["hidden_size"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.activation_fn(self.fc1(x)))
        return out


class TransformerLayer(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        eps = vision.get("layer_norm_eps", 1e-6)
        self.input_layernorm = nn.LayerNorm(vision["hidden_size"], eps=eps)
        self.attention = Attention(vision)
        self.mlp = MLP(vision)
        self.post_attention_layernorm = nn.LayerNorm(vision["hidden_size"], eps=eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attention_input = hidden_states
        attention_output = self.input_layernorm(self.attention(attention_input))
        hidden_states = attention_input + attention_output
        mlp_input = hidden_states
        mlp_output = self.post_attention_layernorm(self.mlp(mlp_input))
        # CogVLM #122: with this layer split across GPUs, mlp_input and mlp_output are on different devices.
        output: torch.Tensor = mlp_input + mlp_output
        return output


class Transformer(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(vision) for _ in range(vision["num_hidden_layers"]))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class GLU(nn.Module):
    def __init__(self, config: CogVLMConfig, in_features: int) -> None:
        super().__init__()
        self.linear_proj = nn.Linear(in_features, config.hidden_size, bias=False)
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.act1 = nn.GELU()
        self.act2 = nn.functional.silu
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.linear_proj(x)))
        out: torch.Tensor = self.dense_4h_to_h(self.act2(self.gate_proj(x)) * self.dense_h_to_4h(x))
        return out


class EVA2CLIPModel(nn.Module):
    def __init__(self, config: CogVLMConfig) -> None:
        super().__init__()
        vision = config.vision_config
        self.patch_embedding = PatchEmbedding(vision)
        self.transformer = Transformer(vision)
        self.linear_proj = GLU(config, in_features=vision["hidden_size"])
        self.boi = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.patch_embedding(images))
        x = self.linear_proj(x[:, 1:])
        boi = self.boi.expand(x.shape[0], -1, -1)
        eoi = self.eoi.expand(x.shape[0], -1, -1)
        return torch.cat((boi, x, eoi), dim=1)


def vision_token_count(config: CogVLMConfig) -> int:
    """Image tokens per image: the patches plus boi and eoi (upstream build_conversation_input_ids)."""
    vision = config.vision_config
    return int((vision["image_size"] // vision["patch_size"]) ** 2 + 2)


# --- modeling_cogvlm.py: the language model with visual experts -------------------------------------------


def get_expert_mask(token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vision expert for a vision token followed by a vision token (so eoi takes the language expert)."""
    vision_token_mask = torch.zeros_like(token_type_ids, dtype=torch.bool)
    vision_token_mask[:, :-1] = (token_type_ids[:, :-1] == VISION_TOKEN_TYPE) & (
        token_type_ids[:, 1:] == VISION_TOKEN_TYPE
    )
    return vision_token_mask, ~vision_token_mask


class CogMLP(nn.Module):
    def __init__(self, config: CogVLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return out


class VisionExpertMLP(nn.Module):
    def __init__(self, config: CogVLMConfig) -> None:
        super().__init__()
        self.language_mlp = CogMLP(config)
        self.vision_mlp = CogMLP(config)

    def forward(self, hidden_states: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        output = torch.empty_like(hidden_states)
        vision_token_mask, language_token_mask = get_expert_mask(token_type_ids)
        output[vision_token_mask] = self.vision_mlp(hidden_states[vision_token_mask])
        output[language_token_mask] = self.language_mlp(hidden_states[language_token_mask])
        return output


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(dim, base), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.get_buffer("inv_freq")[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class VisionExpertAttention(nn.Module):
    def __init__(self, config: CogVLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.rotary_emb = RotaryEmbedding(self.head_dim)
        self.vision_expert_query_key_value = nn.Linear(self.hidden_size, self.hidden_size * 3, bias=False)
        self.vision_expert_dense = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        self.language_expert_query_key_value = nn.Linear(self.hidden_size, self.hidden_size * 3, bias=False)
        self.language_expert_dense = nn.Linear(self.hidden_size, self.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        batch, q_len, _ = hidden_states.shape
        vision_token_mask, language_token_mask = get_expert_mask(token_type_ids)
        mixed = torch.empty(batch, q_len, self.hidden_size * 3, dtype=hidden_states.dtype, device=hidden_states.device)
        mixed[vision_token_mask] = self.vision_expert_query_key_value(hidden_states[vision_token_mask])
        mixed[language_token_mask] = self.language_expert_query_key_value(hidden_states[language_token_mask])
        query, key, value = (
            t.view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
            for t in torch.split(mixed, self.hidden_size, dim=-1)
        )
        cos, sin = self.rotary_emb(value, position_ids)
        cos, sin = cos[:, None], sin[:, None]
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        context = eager_attention(query, key, value, mask).transpose(1, 2).reshape(batch, q_len, self.hidden_size)
        attn_output = torch.empty_like(context)
        attn_output[vision_token_mask] = self.vision_expert_dense(context[vision_token_mask])
        attn_output[language_token_mask] = self.language_expert_dense(context[language_token_mask])
        return attn_output


class CogVLMDecoderLayer(nn.Module):
    def __init__(self, config: CogVLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = VisionExpertAttention(config, layer_idx)
        self.mlp = VisionExpertMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(
            self.input_layernorm(hidden_states), token_type_ids, position_ids, mask, past_key_values
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        result: torch.Tensor = residual + self.mlp(self.post_attention_layernorm(hidden_states), token_type_ids)
        return result


def build_position_ids(token_type_ids: torch.Tensor) -> torch.Tensor:
    """Positions as upstream numbers them: the image patches between boi and eoi share one position."""
    vision = token_type_ids == VISION_TOKEN_TYPE
    previous_vision = torch.zeros_like(vision)
    previous_vision[:, 1:] = vision[:, :-1]
    next_vision = torch.zeros_like(vision)
    next_vision[:, :-1] = vision[:, 1:]
    # A vision token advances the position only where a vision run starts or ends (boi, eoi).
    advances = ~vision | ~previous_vision | ~next_vision
    positions = advances.long().cumsum(-1) - 1
    return positions.clamp(min=0)


class CogVLMModel(nn.Module):
    def __init__(self, config: CogVLMConfig) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(CogVLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.vision = EVA2CLIPModel(config)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vision(images)
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | None,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        position_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        past_len = past_length(past_key_values)
        inputs_embeds = self.embed_tokens(input_ids)
        if past_len == 0 and images is not None:
            # Upstream: encode, flatten, move to the embeddings' dtype and device, then index_put at vision types.
            images_features = self.encode_images(images).reshape(-1, inputs_embeds.shape[-1])
            images_features = images_features.to(dtype=inputs_embeds.dtype, device=inputs_embeds.device)
            inputs_embeds = inputs_embeds.index_put([token_type_ids == VISION_TOKEN_TYPE], images_features)
        batch, q_len, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + q_len, device=inputs_embeds.device).expand(batch, -1)
        mask = causal_mask(attention_mask, q_len, past_len, inputs_embeds.dtype, inputs_embeds.device)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, token_type_ids, position_ids, mask, past_key_values)
        out: torch.Tensor = self.norm(hidden_states)
        return out


class CogVLMForCausalLM(TwinCausalLM):  # type: ignore[no-untyped-call]
    """`model` + `lm_head`; `generate` is the installed transformers' (with `images` and `token_type_ids`)."""

    config_class = CogVLMConfig
    base_model_prefix = "model"
    _no_split_modules = COGVLM_NO_SPLIT
    _skip_keys_device_placement = SKIP_DEVICE_PLACEMENT
    _tied_weights_keys = tied_weights_keys("lm_head.weight", "model.embed_tokens.weight")
    extra_generation_inputs = ("images", "pixel_values", "token_type_ids")

    def __init__(self, config: CogVLMConfig) -> None:
        super().__init__(config)
        self.model = CogVLMModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()  # type: ignore[no-untyped-call]

    def get_input_embeddings(self) -> nn.Module:
        embeddings: nn.Module = self.model.embed_tokens
        return embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        head: nn.Module = self.lm_head
        return head

    def prepare_inputs_for_generation(  # type: ignore[override,unused-ignore]
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        # Upstream: positions from the whole token-type sequence, then the last token's on decoding steps.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values, attention_mask, inputs_embeds, **kwargs
        )
        token_type_ids = kwargs.get("token_type_ids")
        if token_type_ids is None:
            return model_inputs
        position_ids = build_position_ids(token_type_ids)
        if past_length(past_key_values) > 0:
            model_inputs["token_type_ids"] = token_type_ids[:, -1:]
            model_inputs["position_ids"] = position_ids[:, -1:]
            model_inputs.pop("images", None)
            model_inputs.pop("pixel_values", None)
        else:
            model_inputs["position_ids"] = position_ids
        return model_inputs

    def forward(
        self,
        input_ids: torch.Tensor,
        images: list[list[torch.Tensor]] | torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Upstream takes `images` as a list (per sample) of lists of (C, H, W) tensors; `pixel_values`
        (N, C, H, W) is accepted as the same images already stacked, as upstream's encode_images stacks them."""
        if token_type_ids is None:
            token_type_ids = torch.full_like(input_ids, LANGUAGE_TOKEN_TYPE)
        stacked = _stack_images(images) if images is not None else pixel_values
        if use_cache and past_key_values is None:
            past_key_values = new_cache()
        if position_ids is None and past_length(past_key_values) == 0:
            position_ids = build_position_ids(token_type_ids)
        hidden_states = self.model(input_ids, stacked, token_type_ids, attention_mask, past_key_values, position_ids)
        logits = self.lm_head(hidden_states).float()
        return causal_lm_output(logits, past_key_values if use_cache else None)


def _stack_images(images: list[list[torch.Tensor]] | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    return torch.stack([image for per_sample in images for image in per_sample])
