"""InternLM2 twin: the module tree of the remote-code `InternLM2ForCausalLM` that InternVL2-8B/26B ship.

Names follow upstream `modeling_internlm2.py` (internlm/internlm2_5-7b-chat, OpenGVLab/InternVL
internvl_chat/internvl/model/internlm2): `model.tok_embeddings`, `model.layers.N` (InternLM2DecoderLayer with
`attention.wqkv`, `attention.wo`, `attention.rotary_emb`, `feed_forward.w1/w3/w2`, `attention_norm`, `ffn_norm`),
`model.norm`, `output`. The rotary embedding lives inside each attention module, as upstream has it, so there is
no module-level `rotary_emb` for a device map to forget.

Mirrors OpenGVLab/InternVL at commit 0dc48a2 (2024-07-19, "Release code of InternVL 2.0", the source of the
InternVL2 checkpoints' remote code), `internvl_chat/internvl/model/internlm2/modeling_internlm2.py`, in its
device-sensitive steps only: `InternLM2ForCausalLM.forward` returns the logits on the input's device (PR #132).
What that code does on transformers 5.x beyond device placement (it has no GenerationMixin there) is not mirrored.
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

INTERNLM2_NO_SPLIT = ["InternLM2DecoderLayer"]  # upstream InternLM2PreTrainedModel._no_split_modules


class InternLM2Config(PretrainedConfig):  # type: ignore[no-untyped-call]
    """The fields of upstream `InternLM2Config` that shape the module tree."""

    model_type = "internlm2"

    def __init__(
        self,
        vocab_size: int = 103168,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 2048,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        bias: bool = True,
        rope_theta: float = 10000.0,
        rope_scaling: dict[str, Any] | None = None,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.bias = bias
        self.rope_theta = rope_theta
        # rope_scaling (InternLM2.5's dynamic NTK) changes values, not devices: read and not modelled.
        kwargs["tie_word_embeddings"] = tie_word_embeddings
        super().__init__(**kwargs)


class InternLM2RotaryEmbedding(nn.Module):
    """Per-attention rotary embedding; its `inv_freq` buffer sits on whatever device holds its layer."""

    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(dim, base), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[:, :, None].float() * self.get_buffer("inv_freq")[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class InternLM2Attention(nn.Module):
    """Packed `wqkv` (per key/value head: its query group, then key, then value) and `wo`, as upstream."""

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        packed = (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim
        self.wqkv = nn.Linear(config.hidden_size, packed, bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)
        self.rotary_emb = InternLM2RotaryEmbedding(self.head_dim, config.rope_theta)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        batch, q_len, _ = hidden_states.shape
        groups = self.num_key_value_groups + 2
        qkv = self.wqkv(hidden_states).view(batch, q_len, self.num_key_value_heads, groups, self.head_dim)
        query = qkv[..., : self.num_key_value_groups, :].reshape(batch, q_len, self.num_heads, self.head_dim)
        key = qkv[..., -2, :]
        value = qkv[..., -1, :]
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))
        cos, sin = self.rotary_emb(value, position_ids)
        cos, sin = cos[:, None], sin[:, None]
        query = query * cos + rotate_half(query) * sin
        key = key * cos + rotate_half(key) * sin
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        key = key.repeat_interleave(self.num_key_value_groups, dim=1)
        value = value.repeat_interleave(self.num_key_value_groups, dim=1)
        out = eager_attention(query, key, value, mask)
        result: torch.Tensor = self.wo(out.transpose(1, 2).reshape(batch, q_len, -1))
        return result


class InternLM2MLP(nn.Module):
    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.w2(self.act_fn(self.w1(x)) * self.w3(x))
        return out


class InternLM2DecoderLayer(nn.Module):
    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_ids: torch.Tensor,
        mask: torch.Tensor,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = residual + self.attention(
            self.attention_norm(hidden_states), position_ids, mask, past_key_values
        )
        result: torch.Tensor = hidden_states + self.feed_forward(self.ffn_norm(hidden_states))
        return result


class InternLM2Model(nn.Module):
    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_key_values: Cache | None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("InternLM2Model needs input_ids or inputs_embeds")
            inputs_embeds = self.tok_embeddings(input_ids)
        past_len = past_length(past_key_values)
        batch, q_len, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, batch, q_len, past_len, inputs_embeds.device)
        mask = causal_mask(attention_mask, q_len, past_len, inputs_embeds.dtype, inputs_embeds.device)
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_ids, mask, past_key_values)
        out: torch.Tensor = self.norm(hidden_states)
        return out


def positions_from_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, past_len: int, device: torch.device
) -> torch.Tensor:
    """Position ids as upstream's prepare_inputs_for_generation derives them: cumsum of the mask, minus one."""
    if attention_mask is None:
        return torch.arange(past_len, past_len + q_len, device=device).unsqueeze(0).expand(batch, -1)
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    return positions[:, -q_len:].to(device)


class InternLM2ForCausalLM(TwinCausalLM):  # type: ignore[no-untyped-call]
    """`model` + `output`, with `generate` from the installed transformers (InternVL calls it with embeddings)."""

    config_class = InternLM2Config
    base_model_prefix = "model"
    _no_split_modules = INTERNLM2_NO_SPLIT
    _tied_weights_keys = tied_weights_keys("output.weight", "model.tok_embeddings.weight")

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.vocab_size = config.vocab_size
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()  # type: ignore[no-untyped-call]

    def get_input_embeddings(self) -> nn.Module:
        embeddings: nn.Module = self.model.tok_embeddings
        return embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.tok_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.output

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if use_cache and past_key_values is None:
            past_key_values = new_cache()
        hidden_states = self.model(input_ids, inputs_embeds, attention_mask, position_ids, past_key_values)
        logits = self.output(hidden_states).float()
        # Upstream moves the logits back to the input's device (InternVL PR #132, "fix device map"), so a head on
        # another GPU than the embeddings does not reach generate's sampling step (InternVL #587) on any release.
        inputs = input_ids if input_ids is not None else inputs_embeds
        if inputs is not None:
            logits = logits.to(inputs.device)
        return causal_lm_output(logits, past_key_values if use_cache else None)
