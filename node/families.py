"""Per-family knowledge of Hugging Face causal LMs, in one table.

A node runs a span of decoder layers; a client runs the embeddings, final norm and LM head.
What differs between families lives here and nowhere else: the transformers classes, the
safetensors key names (and how a checkpoint's tensors become a layer's), the per-layer
attention window, the attention implementation, what the client head does beyond
norm + LM head, and how transformers 5 calls a layer.

Supported: Llama, Mistral, Qwen2, Mixtral (sparse mixture of experts), Gemma 2 and Phi-3.
What each needs beyond Llama's shape:
- Mistral, Mixtral, Phi-3: a sliding window on every layer when `sliding_window` is set.
- Qwen2: a window only on the layers typed "sliding_attention" (older configs: the layers
  from `max_window_layers` on, with `use_sliding_window`).
- Mixtral: checkpoints hold one `w1`/`w2`/`w3` per expert under `block_sparse_moe.`; the
  transformers 5 layer keeps the experts fused (`mlp.experts.gate_up_proj`, `down_proj`), so
  the family converts a layer's tensors on load (`_mixtral_layer`). The layer returns only
  the hidden states (router logits are recorded by hooks the span does not install).
- Gemma 2: alternating sliding-window and global layers (`layer_types`); attention logit
  soft-capping, which sdpa cannot do, so its spans run "eager" attention; pre/post
  feed-forward norms inside the layer; a `(1 + weight)` RMSNorm; the client scales the
  embeddings by sqrt(hidden_size) and soft-caps the final logits.
- Phi-3: fused `qkv_proj` and `gate_up_proj` (the layer's own tensors, nothing to convert),
  partial rotary embeddings (inside its rotary and attention classes).

How a decoder layer is called (transformers 5, every family above):
    hidden = layer(hidden, attention_mask=mask, position_ids=ids,
                   position_embeddings=(cos, sin), cache=kv, use_cache=kv is not None)
- `hidden`: [batch, tokens, hidden_size]; the layer returns a tensor of the same shape
  (not a tuple) — the residual stream before the final norm.
- `position_embeddings`: `(cos, sin)` from the family's rotary embedding, computed once per
  forward from `position_ids` ([batch, tokens]) and shared by every layer.
- `mask`: a ready 4D mask `[batch, 1, tokens, past + tokens]` in the format of the family's
  attention implementation (`MASK_FORMAT`): boolean "may attend" for sdpa, additive float
  for eager.
  A layer with a sliding window needs a mask that already applies the window.
- `cache`: any object with `update(key, value, layer_idx, **kwargs) -> (keys, values)`; the
  attention appends this step's keys/values for `layer_idx` (the GLOBAL layer index, fixed
  at construction) and attends over what it returns. Earlier transformers 5 releases name the
  keyword `past_key_values`; `Family.cache_kwarg` holds the name the installed one expects.

Adding a family: import its decoder layer, rotary embedding and RMSNorm classes, write its
window rule (or reuse one), a converter if its checkpoints name a layer's tensors otherwise
than the layer's `state_dict`, and the head's extras if any (`embed_scale_of`,
`logit_softcap_of`); add the `Family` to `FAMILIES`; add the family to
`stakeswarm.tiny_models` so the unit tests (spans vs the whole model, cached decode) and the
integration test (two node processes) run it. docs/models.md has the steps in full.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.gemma2.modeling_gemma2 import (
    Gemma2DecoderLayer,
    Gemma2RMSNorm,
    Gemma2RotaryEmbedding,
)
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
from transformers.models.mixtral.modeling_mixtral import (
    MixtralDecoderLayer,
    MixtralRMSNorm,
    MixtralRotaryEmbedding,
)
from transformers.models.phi3.modeling_phi3 import (
    Phi3DecoderLayer,
    Phi3RMSNorm,
    Phi3RotaryEmbedding,
)
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

from node.errors import ModelFilesError, UnsupportedModelError

# The attention implementation spans run with unless a family needs another, and the mask
# format each expects. sdpa is the fast path on CPU and GPU; "eager" is the readable reference
# (additive float masks) and the one that can soft-cap attention logits (Gemma 2).
ATTN_IMPLEMENTATION = "sdpa"
MASK_FORMAT = {"sdpa": "bool", "eager": "additive"}

WindowOf = Callable[[PretrainedConfig, int], int | None]
ScalarOf = Callable[[PretrainedConfig], float | None]
# (config, one layer's checkpoint tensors with keys relative to its prefix) -> the layer's
# state dict; raises ModelFilesError for tensors that do not fit
ConvertLayer = Callable[[PretrainedConfig, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def _no_window(config: PretrainedConfig, layer: int) -> int | None:
    return None


def _every_layer_window(config: PretrainedConfig, layer: int) -> int | None:
    # Mistral, Mixtral, Phi-3: every layer is windowed when `sliding_window` is set.
    return getattr(config, "sliding_window", None)


def _typed_window(config: PretrainedConfig, layer: int) -> int | None:
    # Only the layers typed "sliding_attention", looked up by GLOBAL index (Gemma 2 alternates).
    if config.layer_types[layer] != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None)


def _qwen2_window(config: PretrainedConfig, layer: int) -> int | None:
    if getattr(config, "layer_types", None) is not None:
        return _typed_window(config, layer)
    # Configs saved before `layer_types` existed: the upper layers from max_window_layers on.
    window = getattr(config, "sliding_window", None)
    use_window = getattr(config, "use_sliding_window", False)
    return window if use_window and layer >= config.max_window_layers else None


def _none(config: PretrainedConfig) -> float | None:
    return None


def _same_tensors(
    config: PretrainedConfig, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return tensors


def _mixtral_layer(
    config: PretrainedConfig, tensors: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mixtral checkpoints (the hub's, and what transformers 5 saves) hold per expert e
    `block_sparse_moe.experts.{e}.w1/w2/w3.weight` (gate [inter, hidden], down [hidden, inter],
    up [inter, hidden]) and the router `block_sparse_moe.gate.weight`; the layer wants
    `mlp.experts.gate_up_proj` [experts, 2 * inter, hidden] (gate rows, then up rows),
    `mlp.experts.down_proj` [experts, hidden, inter] and `mlp.gate.weight`. Tensors already in
    the layer's layout pass unchanged."""
    old = "block_sparse_moe."
    experts = config.num_local_experts
    converted = {key: t for key, t in tensors.items() if not key.startswith(old)}
    moe = {key[len(old) :]: t for key, t in tensors.items() if key.startswith(old)}
    if not moe:
        return converted

    def expert(index: int, name: str) -> torch.Tensor:
        key = f"experts.{index}.{name}.weight"
        if key not in moe:
            raise ModelFilesError(f"Mixtral layer weights lack {old}{key}")
        return moe.pop(key)

    gate_up = [torch.cat([expert(e, "w1"), expert(e, "w3")], dim=0) for e in range(experts)]
    down = [expert(e, "w2") for e in range(experts)]
    converted["mlp.experts.gate_up_proj"] = torch.stack(gate_up)
    converted["mlp.experts.down_proj"] = torch.stack(down)
    if "gate.weight" in moe:
        converted["mlp.gate.weight"] = moe.pop("gate.weight")
    # anything left (more experts than the config has, unknown names) is reported as
    # unexpected when the layer is materialized
    converted.update({old + key: t for key, t in moe.items()})
    return converted


def _gemma2_embed_scale(config: PretrainedConfig) -> float | None:
    return float(config.hidden_size**0.5)


def _gemma2_logit_softcap(config: PretrainedConfig) -> float | None:
    cap = getattr(config, "final_logit_softcapping", None)
    return None if cap is None else float(cap)


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
    attn_implementation: str = ATTN_IMPLEMENTATION  # a key of MASK_FORMAT
    # mixture-of-experts layers: how transformers runs the experts (None: no experts)
    experts_implementation: str | None = None
    convert_layer: ConvertLayer = _same_tensors  # checkpoint tensors -> one layer's state dict
    embed_scale_of: ScalarOf = _none  # client: factor on the token embeddings (None: 1)
    logit_softcap_of: ScalarOf = _none  # client: logits -> cap * tanh(logits / cap) (None: off)
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

    def layer_state(
        self, config: PretrainedConfig, tensors: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One layer's checkpoint tensors (keys relative to its prefix) as its state dict."""
        return self.convert_layer(config, tensors)

    def embed_scale(self, config: PretrainedConfig) -> float | None:
        """The factor the model multiplies its token embeddings by (None: none)."""
        return self.embed_scale_of(config)

    def logit_softcap(self, config: PretrainedConfig) -> float | None:
        """The cap of the final logits' soft-capping (None: the logits are not capped)."""
        return self.logit_softcap_of(config)

    def tied_embeddings(self, config: PretrainedConfig) -> bool:
        """Whether the LM head reuses the token embedding matrix (no `lm_head.weight` saved)."""
        return bool(getattr(config, "tie_word_embeddings", False))


FAMILIES: dict[str, Family] = {
    "llama": Family("llama", LlamaDecoderLayer, LlamaRotaryEmbedding, LlamaRMSNorm, _no_window),
    "mistral": Family(
        "mistral", MistralDecoderLayer, MistralRotaryEmbedding, MistralRMSNorm, _every_layer_window
    ),
    "qwen2": Family("qwen2", Qwen2DecoderLayer, Qwen2RotaryEmbedding, Qwen2RMSNorm, _qwen2_window),
    "mixtral": Family(
        "mixtral",
        MixtralDecoderLayer,
        MixtralRotaryEmbedding,
        MixtralRMSNorm,
        _every_layer_window,
        # a plain loop over the experts a step routes to: the same code on every device and
        # torch version (the verifier recomputes with it), and the one a client's
        # PreTrainedModel accepts too (it refuses "grouped_mm", which needs the decorated
        # experts class in its own module)
        experts_implementation="eager",
        convert_layer=_mixtral_layer,
    ),
    "gemma2": Family(
        "gemma2",
        Gemma2DecoderLayer,
        Gemma2RotaryEmbedding,
        Gemma2RMSNorm,
        _typed_window,
        attn_implementation="eager",  # sdpa cannot soft-cap attention logits
        embed_scale_of=_gemma2_embed_scale,
        logit_softcap_of=_gemma2_logit_softcap,
    ),
    "phi3": Family("phi3", Phi3DecoderLayer, Phi3RotaryEmbedding, Phi3RMSNorm, _every_layer_window),
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
    family = FAMILIES[model_type]
    return AutoConfig.from_pretrained(
        path,
        attn_implementation=family.attn_implementation,
        experts_implementation=family.experts_implementation,
    )
