"""Per-family knowledge of Hugging Face causal LMs, in one table.

A node runs a span of decoder layers; a client runs the embeddings, final norm and LM head.
What differs between families lives here and nowhere else: the transformers classes, the
safetensors key names, the per-layer attention window, and how transformers 5 calls a layer.

How a decoder layer is called (transformers 5, Llama/Mistral/Qwen2):
    hidden = layer(hidden, attention_mask=mask, position_ids=ids,
                   position_embeddings=(cos, sin), cache=kv, use_cache=kv is not None)
- `hidden`: [batch, tokens, hidden_size]; the layer returns a tensor of the same shape
  (not a tuple) — the residual stream before the final norm.
- `position_embeddings`: `(cos, sin)` from the family's rotary embedding, computed once per
  forward from `position_ids` ([batch, tokens]) and shared by every layer.
- `mask`: a ready 4D mask `[batch, 1, tokens, past + tokens]` in the format of the attention
  implementation (`MASK_FORMAT`): boolean "may attend" for sdpa, additive float for eager.
  A layer with a sliding window needs a mask that already applies the window.
- `cache`: any object with `update(key, value, layer_idx, **kwargs) -> (keys, values)`; the
  attention appends this step's keys/values for `layer_idx` (the GLOBAL layer index, fixed
  at construction) and attends over what it returns. Earlier transformers 5 releases name the
  keyword `past_key_values`; `Family.cache_kwarg` holds the name the installed one expects.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import PretrainedConfig
from transformers.models.llama.modeling_llama import (
    LlamaDecoderLayer,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.models.mistral.modeling_mistral import (
    MistralDecoderLayer,
    MistralRMSNorm,
    MistralRotaryEmbedding,
)
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

from node.errors import ModelFilesError, UnsupportedModelError

# The attention implementation every span runs with, and the mask format it expects. sdpa is
# the fast path on CPU and GPU; "eager" is the readable reference (additive float masks).
ATTN_IMPLEMENTATION = "sdpa"
MASK_FORMAT = {"sdpa": "bool", "eager": "additive"}

WindowOf = Callable[[PretrainedConfig, int], int | None]


def _no_window(config: PretrainedConfig, layer: int) -> int | None:
    return None


def _mistral_window(config: PretrainedConfig, layer: int) -> int | None:
    # Mistral windows every layer when `sliding_window` is set.
    return getattr(config, "sliding_window", None)


def _qwen2_window(config: PretrainedConfig, layer: int) -> int | None:
    # Qwen2 windows only the layers typed "sliding_attention", looked up by GLOBAL index.
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return window if layer_types[layer] == "sliding_attention" else None
    # Configs saved before `layer_types` existed: the upper layers from max_window_layers on.
    use_window = getattr(config, "use_sliding_window", False)
    return window if use_window and layer >= config.max_window_layers else None


def _cache_kwarg(layer_class: type[nn.Module]) -> str:
    params = inspect.signature(layer_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass(frozen=True)
class Family:
    """How one model family is laid out in safetensors and run by transformers 5."""

    model_type: str  # config.model_type, e.g. "llama"
    layer_class: type[nn.Module]  # decoder layer: layer_class(config, layer_idx)
    rotary_class: type[nn.Module]  # rotary_class(config=config)(x, position_ids) -> (cos, sin)
    norm_class: type[nn.Module]  # final norm: norm_class(hidden_size, eps=config.rms_norm_eps)
    window_of: WindowOf  # attention window of global layer i, None for full attention
    layer_prefix_format: str = "model.layers.{index}."  # safetensors prefix of layer i
    embed_key: str = "model.embed_tokens.weight"  # client: token embeddings [vocab, hidden]
    norm_key: str = "model.norm.weight"  # client: final norm weight [hidden]
    lm_head_key: str = "lm_head.weight"  # client: absent when tied to the embeddings

    def layer_prefix(self, index: int) -> str:
        """The safetensors key prefix of global layer `index`."""
        return self.layer_prefix_format.format(index=index)

    def window(self, config: PretrainedConfig, index: int) -> int | None:
        """The sliding attention window of global layer `index` (None: full causal attention).
        A query at position q attends keys k with q - window < k <= q."""
        return self.window_of(config, index)

    @property
    def cache_kwarg(self) -> str:
        """The keyword under which the installed transformers passes the KV cache to a layer."""
        return _cache_kwarg(self.layer_class)

    def tied_embeddings(self, config: PretrainedConfig) -> bool:
        """Whether the LM head reuses the token embedding matrix (no `lm_head.weight` saved)."""
        return bool(getattr(config, "tie_word_embeddings", False))


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", LlamaDecoderLayer, LlamaRotaryEmbedding, LlamaRMSNorm, _no_window),
    "mistral": Family(
        "mistral", MistralDecoderLayer, MistralRotaryEmbedding, MistralRMSNorm, _mistral_window
    ),
    "qwen2": Family("qwen2", Qwen2DecoderLayer, Qwen2RotaryEmbedding, Qwen2RMSNorm, _qwen2_window),
}


def family_of(config: PretrainedConfig) -> Family:
    """The family entry for `config`; `UnsupportedModelError` for any other architecture."""
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise UnsupportedModelError(
            f"unsupported model type {model_type!r}: stakeswarm runs {sorted(FAMILIES)}"
        )
    return family


def load_config(model_path: str | Path) -> PretrainedConfig:
    """Read `config.json` from a local model folder, set up for the span attention
    implementation. Raises `ModelFilesError` for a missing/unreadable config and
    `UnsupportedModelError` for an architecture outside `FAMILIES`."""
    from transformers import AutoConfig

    path = Path(model_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFilesError(f"no config.json in model folder {path}")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelFilesError(f"unreadable config.json in {path}: {exc}") from exc
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"unsupported model type {model_type!r} in {config_file}: "
            f"stakeswarm runs {sorted(FAMILIES)}"
        )
    config = AutoConfig.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION)
    family_of(config)
    return config
