"""Pieces shared by the twins that mirror remote code (InternLM2, CogVLM): norms, rotary helpers, masks, caching.

These twins run on whichever transformers is installed (4.45 to 5.x), so they use only what both offer:
`PreTrainedModel`, `GenerationMixin` and the `Cache.update(key, value, layer_idx)` protocol of `DynamicCache`.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def tied_weights_keys(target: str, source: str) -> Any:
    """`_tied_weights_keys` in the form the installed transformers expects: a list up to 4.x, a dict from 5.0."""
    return {target: source} if TRANSFORMERS_MAJOR >= 5 else [target]


class RMSNorm(nn.Module):
    """Root-mean-square norm as the Llama-derived remote code writes it (InternLM2RMSNorm, CogVLM RMSNorm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def inverse_frequencies(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def past_length(past_key_values: Cache | None) -> int:
    return 0 if past_key_values is None else int(past_key_values.get_seq_length())


def new_cache() -> Cache:
    return DynamicCache()


# transformers 5.24 renamed the output field `past_key_values` to `cache`; the old keyword still works there with a
# deprecation warning, and older releases know only the old one. Build and read the output by the installed name.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def causal_lm_output(logits: torch.Tensor, cache: Cache | None) -> CausalLMOutputWithPast:
    """A language model's output with its logits and cache, under the installed transformers' field name."""
    fields: dict[str, Any] = {"logits": logits, _CACHE_FIELD: cache}
    return CausalLMOutputWithPast(**fields)


def output_cache(output: Any) -> Cache | None:
    """The cache of a language model's output, whichever name the installed transformers gives it."""
    cache: Cache | None = getattr(output, _CACHE_FIELD)
    return cache


def causal_mask(
    attention_mask: torch.Tensor | None, q_len: int, past_len: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Additive (batch or 1, 1, q_len, past_len + q_len) mask: causal, and padding from a 2D attention mask."""
    kv_len = past_len + q_len
    min_value = torch.finfo(dtype).min
    query_pos = torch.arange(q_len, device=device).view(-1, 1) + past_len
    key_pos = torch.arange(kv_len, device=device).view(1, -1)
    mask = torch.zeros(q_len, kv_len, dtype=dtype, device=device).masked_fill(key_pos > query_pos, min_value)
    mask = mask[None, None, :, :]
    if attention_mask is not None:
        padding = attention_mask[:, None, None, -kv_len:].to(device=device) == 0
        mask = mask.masked_fill(padding, min_value)
    return mask


def eager_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v on (batch, heads, len, head_dim) tensors."""
    scores = torch.matmul(query, key.transpose(2, 3)) / (query.shape[-1] ** 0.5)
    scores = scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, value)


class TwinCausalLM(PreTrainedModel, GenerationMixin):  # type: ignore[no-untyped-call]
    """Base of the remote-code causal LMs: `generate` through the installed `GenerationMixin`.

    Their own `prepare_inputs_for_generation` (as the remote code has one) feeds the prompt, or `inputs_embeds`,
    on the first step and then one new token at a time, so the same code runs on 4.45 (which tracks
    `cache_position`) and on 5.x (which dropped it).
    """

    _supports_cache_class = True
    supports_gradient_checkpointing = False

    def prepare_inputs_for_generation(  # type: ignore[override,unused-ignore]
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        past_len = past_length(past_key_values)
        model_inputs: dict[str, Any] = {}
        if past_len == 0 and inputs_embeds is not None:
            model_inputs["inputs_embeds"] = inputs_embeds
        else:
            model_inputs["input_ids"] = input_ids[:, -1:] if past_len > 0 else input_ids
        model_inputs["past_key_values"] = past_key_values
        model_inputs["attention_mask"] = attention_mask
        model_inputs["use_cache"] = kwargs.get("use_cache", True)
        for key in self.extra_generation_inputs:
            if key in kwargs:
                model_inputs[key] = kwargs[key]
        return model_inputs

    # Keyword arguments a subclass's forward takes from `generate` on every step (e.g. CogVLM's token types).
    extra_generation_inputs: tuple[str, ...] = ()

    def _init_weights(self, module: nn.Module) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02))
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
