"""Spans of transformer blocks loaded from local safetensors, and the client-side ends.

A node serves a contiguous span `[start, end)` of a model's decoder layers; the verifier
re-runs the same span with this same code. `load_span` reads ONLY that span's weights (a
single `model.safetensors` or shards listed in `model.safetensors.index.json`) and builds the
layers on the meta device first, so the rest of the model never takes memory.

    span = load_span(path, 2, 4, dtype=torch.float32)
    out = span.forward(hidden, attention_mask)          # stateless, whole sequence
    out = span.forward(hidden, attention_mask, cache)   # one step of a session, appends

Conventions (shared by nodes, clients and verifiers):
- hidden states: [batch, tokens, hidden_size] in the span's dtype, the residual stream
  between layers (before the final norm);
- attention mask: [batch, past + tokens] of 0/1 (left padding allowed); position ids are the
  mask's cumulative sum minus one, as `generate` does; padded keys are never attended, and a
  padded query attends only to itself so its (meaningless) output stays finite and does not
  depend on later tokens;
- running a sequence in one stateless pass and step by step with a `SessionCache` agree
  within `SPAN_FP32_ATOL` in fp32.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import PretrainedConfig

from node.cache import KVLayout, SessionCache
from node.errors import InvalidInputError, InvalidSpanError, ModelFilesError
from node.families import MASK_FORMAT, Family, family_of, load_config
from node.precisions import precision_name
from node.quantize import check_quantization, quantize_layers, weight_bytes
from node.tensors import check_attention_mask, check_hidden_states, check_prompts

logger = logging.getLogger(__name__)

# fp32 agreement of the same span run in different ways on one machine (one pass vs cached
# steps, a chain of spans vs the whole HF model, other batch compositions): absolute, on
# hidden states of O(1) magnitude. The verifier's cross-machine thresholds are its own.
SPAN_FP32_ATOL = 1e-4

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

Progress = Callable[[int, int], None]  # progress(layers_loaded, layers_total)


def head_dim(config: PretrainedConfig) -> int:
    """The size of one attention head's keys and values."""
    return int(
        getattr(config, "head_dim", None) or (config.hidden_size // config.num_attention_heads)
    )


class SafetensorsWeights:
    """Where each tensor of a local safetensors model lives, and reads of chosen keys only."""

    def __init__(self, model_path: str | Path) -> None:
        self.path = Path(model_path)
        index = self.path / INDEX_FILE
        single = self.path / SINGLE_FILE
        if index.is_file():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise ModelFilesError(f"unreadable {INDEX_FILE} in {self.path}: {exc}") from exc
            self.files = {key: self.path / name for key, name in weight_map.items()}
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                self.files = {key: single for key in f.keys()}  # noqa: SIM118 (not a dict)
        else:
            raise ModelFilesError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.path}")

    def keys_with_prefix(self, prefix: str) -> set[str]:
        return {key for key in self.files if key.startswith(prefix)}

    def shapes(self, keys: Iterable[str]) -> dict[str, list[int]]:
        """The shape of each tensor of `keys`, from the files' headers (no tensor is read;
        each file is opened once)."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            if key not in self.files:
                raise ModelFilesError(f"tensor {key!r} is missing from the weights in {self.path}")
            by_file.setdefault(self.files[key], []).append(key)
        shapes: dict[str, list[int]] = {}
        for file, file_keys in by_file.items():
            if not file.is_file():
                raise ModelFilesError(f"weights shard {file.name} is missing from {self.path}")
            with safe_open(file, framework="pt") as f:
                for key in file_keys:
                    shapes[key] = list(f.get_slice(key).get_shape())
        return shapes

    def read(
        self, keys: Iterable[str], dtype: torch.dtype, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Read exactly `keys`, cast to `dtype` on `device`; other tensors are never touched."""
        by_file: dict[Path, list[str]] = {}
        for key in keys:
            if key not in self.files:
                raise ModelFilesError(f"tensor {key!r} is missing from the weights in {self.path}")
            by_file.setdefault(self.files[key], []).append(key)
        tensors: dict[str, torch.Tensor] = {}
        for file, file_keys in by_file.items():
            if not file.is_file():
                raise ModelFilesError(f"weights shard {file.name} is missing from {self.path}")
            # read and cast on the CPU, one tensor at a time, then moved: the device only ever
            # holds the tensors asked for, in `dtype`
            with safe_open(file, framework="pt") as f:
                for key in file_keys:
                    tensors[key] = f.get_tensor(key).to(dtype).to(device)
        return tensors


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInputError(f"unsupported dtype {dtype}; expected one of {SUPPORTED_DTYPES}")


def _materialize(module: nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    """Assign `weights` (keys relative to `module`) to a meta-device module, strictly."""
    expected = set(module.state_dict().keys())
    missing, unexpected = expected - weights.keys(), weights.keys() - expected
    if missing or unexpected:
        raise ModelFilesError(
            f"weights of {what} do not fit the config: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    module.load_state_dict(weights, strict=True, assign=True)
    leftover = [name for name, t in module.state_dict(keep_vars=True).items() if t.is_meta]
    if leftover:
        raise ModelFilesError(f"{what} kept unloaded tensors {leftover}")
    module.requires_grad_(False)
    module.eval()


def add_prompt(hidden: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """`hidden` [batch, tokens, hidden_size] with `prompt` [P, hidden_size] added to its first
    P positions (a new tensor: the input is what the node received and commits to)."""
    length = prompt.shape[0]
    return torch.cat([hidden[:, :length] + prompt, hidden[:, length:]], dim=1)


@dataclass(frozen=True)
class _StepPlan:
    """Masks and positions of one forward, shared by all layers of the span."""

    position_ids: torch.Tensor  # [batch, tokens]
    masks: dict[int | None, torch.Tensor]  # window -> [batch, 1, tokens, past + tokens]


class Span(nn.Module):
    """Decoder layers `[start, end)` of one model, runnable statelessly or with a KV cache.

    `layers[i]` is global layer `start + i` (its `layer_idx`, window and cache slot use the
    global index). Built by `load_span`; weights are frozen, forward runs in inference mode.
    """

    def __init__(
        self,
        config: PretrainedConfig,
        family: Family,
        start: int,
        end: int,
        layers: nn.ModuleList,
        rotary: nn.Module,
        dtype: torch.dtype,
        device: torch.device,
        quantization: str | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.family = family
        self.start = start
        self.end = end
        self.layers = layers
        self.rotary = rotary
        self.dtype = dtype  # what it computes in, and hidden states travel in
        self.device = device
        self.quantization = quantization  # its linear weights' (node.quantize), None: full
        self.hidden_size: int = config.hidden_size
        self.windows: tuple[int | None, ...] = tuple(
            family.window(config, index) for index in range(start, end)
        )
        self.kv_layout = KVLayout(
            start=start,
            end=end,
            num_kv_heads=config.num_key_value_heads,
            head_dim=head_dim(config),
            dtype=dtype,
            device=device,
        )
        self._cache_kwarg = family.cache_kwarg

    @property
    def num_blocks(self) -> int:
        return self.end - self.start

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: SessionCache | None = None,
        states: list[torch.Tensor] | None = None,
        prompts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the span over `hidden` [batch, tokens, hidden_size] and return the output
        hidden states of the same shape. With `states`, every block's output (the last one is
        the span's) is appended to it, on `hidden`'s device: what a 16-bit node commits to and
        reveals, so that verifiers recompute one block at a time (`node.states`).
        With deep `prompts` [blocks, P, hidden_size] (prompt tuning), `prompts[i]` is added to
        the first P positions before block i (Petals' deep prompts); only in a step that starts
        at position 0 and covers them.

        `attention_mask` [batch, past + tokens] (0/1; None: no padding) covers the cached past
        and the new tokens. With `cache`, `past` is `cache.length`, the mask's past part must
        equal what the session saw, and the step's keys/values are appended (all or nothing);
        without, past is 0 and the whole sequence runs statelessly.
        The inputs may be on any device: they run on the span's, and the output comes back on
        `hidden`'s (hidden states from the wire go to the GPU and return to the CPU).
        Raises `InvalidInputError` for bad shapes/dtypes/values and `SessionLengthError` when
        the step does not fit the session's max length.
        """
        check_hidden_states(
            hidden,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            batch=None if cache is None else cache.batch,
            finite=True,
        )
        batch, tokens, _ = hidden.shape
        past = 0
        if cache is not None:
            self._check_cache(cache)
            cache.room_for(tokens)
            past = cache.length
        mask = self._full_mask(attention_mask, cache, batch, past, tokens)
        if prompts is not None:
            self._check_prompts(prompts, past, tokens)
            prompts = prompts.to(self.device)
        arrived_on = hidden.device
        hidden = hidden.to(self.device)
        with torch.inference_mode():
            plan = self._plan(mask, past, tokens)
            cos_sin = self.rotary(hidden, plan.position_ids)
            if cache is not None:
                cache.begin_step(tokens)
            try:
                for i, (layer, window) in enumerate(zip(self.layers, self.windows, strict=True)):
                    if prompts is not None:
                        hidden = add_prompt(hidden, prompts[i])
                    hidden = layer(
                        hidden,
                        attention_mask=plan.masks[window],
                        position_ids=plan.position_ids,
                        position_embeddings=cos_sin,
                        use_cache=cache is not None,
                        **{self._cache_kwarg: cache},
                    )
                    if states is not None:
                        states.append(hidden.to(arrived_on))
            except BaseException:
                if cache is not None:
                    cache.abort_step()
                raise
            if cache is not None:
                cache.commit(mask[:, past:])
        return hidden.to(arrived_on)  # the same tensor when it never left its device

    def backward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        grad_output: torch.Tensor,
        prompts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The gradients of a loss with respect to `hidden` [batch, tokens, hidden_size] and to
        the deep `prompts` [blocks, P, hidden_size] if given (else None), given its gradient
        `grad_output` with respect to the span's stateless output on them (the hidden states'
        shape and dtype): the forward is recomputed with autograd, then propagated back. The
        weights stay frozen (no parameter gets a gradient). Inputs as in `forward` (no cache);
        `InvalidInputError` for bad shapes, dtypes or values."""
        check_hidden_states(hidden, hidden_size=self.hidden_size, dtype=self.dtype, finite=True)
        check_hidden_states(
            grad_output,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            batch=hidden.shape[0],
            finite=True,
        )
        if grad_output.shape != hidden.shape:
            raise InvalidInputError(
                f"the output gradient is {list(grad_output.shape)}, the hidden states "
                f"{list(hidden.shape)}"
            )
        batch, tokens, _ = hidden.shape
        mask = self._full_mask(attention_mask, None, batch, 0, tokens)
        if prompts is not None:
            self._check_prompts(prompts, 0, tokens)
        arrived_on = hidden.device
        with torch.inference_mode(False), torch.enable_grad():
            # x: [batch, tokens, hidden_size], a leaf of its own graph (a copy: the input may
            # be an inference-mode tensor, which autograd cannot record); p likewise
            x = hidden.detach().to(self.device).clone().requires_grad_(True)
            p = None
            if prompts is not None:
                p = prompts.detach().to(self.device).clone().requires_grad_(True)
            grad_output = grad_output.detach().to(self.device).clone()
            plan = self._plan(mask, 0, tokens)
            cos_sin = self.rotary(x, plan.position_ids)
            out = x
            for i, (layer, window) in enumerate(zip(self.layers, self.windows, strict=True)):
                if p is not None:
                    out = add_prompt(out, p[i])
                out = layer(
                    out,
                    attention_mask=plan.masks[window],
                    position_ids=plan.position_ids,
                    position_embeddings=cos_sin,
                    use_cache=False,
                )
            if p is None:
                (grad,) = torch.autograd.grad(out, x, grad_output)
                return grad.detach().to(arrived_on), None
            grad, grad_prompts = torch.autograd.grad(out, (x, p), grad_output)
        return grad.detach().to(arrived_on), grad_prompts.detach().to(arrived_on)

    def _check_prompts(self, prompts: torch.Tensor, past: int, tokens: int) -> None:
        if past:
            raise InvalidInputError(
                f"deep prompts go with a step that starts at position 0, this one at {past}"
            )
        check_prompts(
            prompts,
            blocks=self.num_blocks,
            hidden_size=self.hidden_size,
            dtype=self.dtype,
            tokens=tokens,
        )

    def _check_cache(self, cache: SessionCache) -> None:
        if cache.layout != self.kv_layout:
            raise InvalidInputError(
                f"the cache was opened for {cache.layout}, not for this span {self.kv_layout}"
            )

    def _full_mask(
        self,
        attention_mask: torch.Tensor | None,
        cache: SessionCache | None,
        batch: int,
        past: int,
        tokens: int,
    ) -> torch.Tensor:
        """The boolean mask [batch, past + tokens], checked against the session's history."""
        history = cache.mask if cache is not None else None
        if attention_mask is None:
            new = torch.ones((batch, tokens), dtype=torch.bool, device=self.device)
            return new if history is None else torch.cat([history, new], dim=1)
        check_attention_mask(attention_mask, batch=batch, length=past + tokens, any_integer=True)
        mask = attention_mask.to(device=self.device, dtype=torch.bool)
        if history is not None and not torch.equal(mask[:, :past], history):
            raise InvalidInputError("attention mask disagrees with the session's cached positions")
        return mask

    def _plan(self, mask: torch.Tensor, past: int, tokens: int) -> _StepPlan:
        # mask: [batch, past + tokens] bool
        total = past + tokens
        positions = mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(~mask, 0)[:, past:]  # [batch, tokens]
        q_idx = torch.arange(past, total, device=self.device)[:, None]  # [tokens, 1]
        kv_idx = torch.arange(total, device=self.device)[None, :]  # [1, past + tokens]
        causal = kv_idx <= q_idx
        itself = kv_idx == q_idx
        masks: dict[int | None, torch.Tensor] = {}
        for window in set(self.windows):
            visible = causal if window is None else causal & (kv_idx > q_idx - window)
            # allowed: [batch, 1, tokens, past + tokens]
            allowed = (visible[None] & mask[:, None, :]) | itself[None]
            masks[window] = self._mask_format(allowed[:, None])
        return _StepPlan(position_ids=positions, masks=masks)

    def _mask_format(self, allowed: torch.Tensor) -> torch.Tensor:
        if MASK_FORMAT[self.config._attn_implementation] == "bool":
            return allowed
        additive = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        return additive.masked_fill(~allowed, torch.finfo(self.dtype).min)

    def extra_repr(self) -> str:
        weights = "" if self.quantization is None else f", weights={self.quantization}"
        return (
            f"{self.family.model_type} blocks [{self.start}, {self.end}), dtype={self.dtype}"
            f"{weights}"
        )


def load_span(
    model_path: str | Path,
    start: int,
    end: int,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    *,
    device: str | torch.device = "cpu",
    quantization: str | None = None,
) -> Span:
    """Load decoder layers `[start, end)` of the model in `model_path` (a local folder with
    `config.json` and safetensors weights), reading only those layers' tensors; with a
    `quantization` (`node.quantize`: int8, nf4; a 16-bit `dtype`), their linear weights are
    quantized as each layer loads.

    `progress(done, total)` is called after each layer. Raises `InvalidSpanError` for a range
    outside the model, `UnsupportedModelError` for other architectures, `ModelFilesError` for
    missing or mismatched weights, `InvalidInputError` for a quantization it cannot serve.
    """
    _check_dtype(dtype)
    check_quantization(quantization, dtype)
    device = torch.device(device)
    config = load_config(model_path)
    family = family_of(config)
    total = config.num_hidden_layers
    if not (0 <= start < end <= total):
        raise InvalidSpanError(
            f"span [{start}, {end}) is not a non-empty range inside the model's {total} blocks"
        )
    weights = SafetensorsWeights(model_path)
    layers = nn.ModuleList()
    for index in range(start, end):
        with torch.device("meta"):
            layer = family.layer_class(config, layer_idx=index)
        prefix = family.layer_prefix(index)
        keys = weights.keys_with_prefix(prefix)
        tensors = weights.read(keys, dtype, device)
        state = family.layer_state(config, {key[len(prefix) :]: t for key, t in tensors.items()})
        _materialize(layer, state, f"block {index}")
        if quantization is not None:
            # one layer at a time: the full weights of one block are the most ever held
            quantize_layers(nn.ModuleList([layer]), quantization, dtype)
        layers.append(layer)
        if progress is not None:
            progress(index - start + 1, end - start)
    rotary = family.rotary_class(config=config).to(device)
    logger.info(
        "loaded %s blocks [%d, %d) in %s",
        family.model_type,
        start,
        end,
        precision_name(str(dtype).removeprefix("torch."), quantization),
    )
    return Span(config, family, start, end, layers, rotary, dtype, device, quantization)


def block_weight_bytes(
    model_path: str | Path, dtype: torch.dtype, quantization: str | None = None
) -> tuple[int, ...]:
    """The bytes each block of the model in `model_path` takes in `dtype` (index: the global
    block), with its linear weights (its 2-D tensors) `quantization`'s size when given,
    counted from the safetensors headers: no weight is read."""
    _check_dtype(dtype)
    check_quantization(quantization, dtype)
    config = load_config(model_path)
    family = family_of(config)
    weights = SafetensorsWeights(model_path)
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = []
    for index in range(config.num_hidden_layers):
        keys = weights.keys_with_prefix(family.layer_prefix(index))
        if not keys:
            raise ModelFilesError(f"no weights of block {index} in {weights.path}")
        shapes = weights.shapes(keys)
        numel = sum(math.prod(shape) for shape in shapes.values())
        linear = sum(math.prod(shape) for shape in shapes.values() if len(shape) == 2)
        sizes.append(weight_bytes(numel, linear, quantization, itemsize))
    return tuple(sizes)


class ClientHead(nn.Module):
    """The ends of a model a client runs itself: token embeddings, final norm, LM head, and
    what a family adds around them (Gemma 2: embeddings scaled by sqrt(hidden_size), final
    logits soft-capped)."""

    def __init__(
        self,
        embed_tokens: nn.Embedding,
        norm: nn.Module,
        lm_head: nn.Linear,
        *,
        embed_scale: float | None = None,
        logit_softcap: float | None = None,
    ) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens
        self.norm = norm
        self.lm_head = lm_head
        self.embed_scale = embed_scale  # factor on the embeddings, None: none
        self.logit_softcap = logit_softcap  # logits -> cap * tanh(logits / cap), None: none

    @property
    def device(self) -> torch.device:
        """Where the weights are and the ends compute."""
        return self.embed_tokens.weight.device

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, tokens] -> hidden states [batch, tokens, hidden_size], computed on
        the head's device and returned on `input_ids`' device."""
        hidden = self.embed_tokens(input_ids.to(self.device))
        if self.embed_scale is not None:
            # as transformers does: the factor as a float32 tensor, cast to the weights' dtype
            hidden = hidden * torch.tensor(self.embed_scale).to(hidden.dtype)
        return hidden.to(input_ids.device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last span's output [batch, tokens, hidden_size] -> logits [batch, tokens, vocab],
        computed on the head's device and returned on `hidden`'s device. The weights are
        frozen: gradients flow through to `hidden` (training) and to nothing here."""
        logits = self.lm_head(self.norm(hidden.to(self.device)))
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits.to(hidden.device)


def load_client_head(
    model_path: str | Path,
    dtype: torch.dtype = torch.float32,
    *,
    device: str | torch.device = "cpu",
) -> ClientHead:
    """Load only the embeddings, final norm and LM head (tied to the embeddings when the
    config says so) of the model in `model_path`, with the family's embedding scale and
    logit soft-cap."""
    _check_dtype(dtype)
    device = torch.device(device)
    config = load_config(model_path)
    family = family_of(config)
    weights = SafetensorsWeights(model_path)
    tied = family.tied_embeddings(config)
    keys = [family.embed_key, family.norm_key] + ([] if tied else [family.lm_head_key])
    tensors = weights.read(keys, dtype, device)
    with torch.device("meta"):
        embed = nn.Embedding(config.vocab_size, config.hidden_size)
        norm = family.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    _materialize(embed, {"weight": tensors[family.embed_key]}, "the embeddings")
    _materialize(norm, {"weight": tensors[family.norm_key]}, "the final norm")
    head_weight = tensors[family.embed_key] if tied else tensors[family.lm_head_key]
    _materialize(lm_head, {"weight": head_weight}, "the LM head")
    return ClientHead(
        embed,
        norm,
        lm_head,
        embed_scale=family.embed_scale(config),
        logit_softcap=family.logit_softcap(config),
    )


def move_span(
    model_path: Path, old: Span, start: int, end: int, progress: Progress | None = None
) -> Span:
    """The span `[start, end)` of the same model, reusing the layers `old` already holds and
    loading only the others from disk."""
    keep = {i: old.layers[i - old.start] for i in range(max(start, old.start), min(end, old.end))}
    layers: list[torch.nn.Module] = []
    i = start
    while i < end:
        if i in keep:
            layers.append(keep[i])
            i += 1
            continue
        j = i
        while j < end and j not in keep:
            j += 1
        part = load_span(
            model_path, i, j, old.dtype, progress, device=old.device, quantization=old.quantization
        )
        layers.extend(part.layers)
        i = j
    return Span(
        old.config,
        old.family,
        start,
        end,
        torch.nn.ModuleList(layers),
        old.rotary,
        old.dtype,
        old.device,
        old.quantization,
    )
