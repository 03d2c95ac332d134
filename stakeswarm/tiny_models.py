"""Tiny random Hugging Face models, built on the fly and saved as local safetensors folders.

Tests and benchmarks that need a model use `make_tiny_model`: it builds a seeded, fp32, randomly
initialised causal LM of one of the supported families (transformers 5 classes), saves it as
`config.json` + `model.safetensors` (or shards + `model.safetensors.index.json`) and, unless
asked not to, a small byte-level BPE tokenizer trained in code, so a client can tokenize text
offline. Nothing is downloaded.

    path = make_tiny_model(tmp_path, family="qwen2", num_layers=6, shards=3)
    span = load_span(path, 2, 4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

Family = Literal["llama", "mistral", "qwen2", "mixtral", "gemma2", "phi3"]
FAMILIES: tuple[Family, ...] = ("llama", "mistral", "qwen2", "mixtral", "gemma2", "phi3")

# Tiny Gemma 2 soft-caps: low enough that capping changes attention and logits of a random
# model (the real ones, 50 and 30, would leave these small logits untouched and untested).
GEMMA2_ATTN_SOFTCAP = 1.0
GEMMA2_FINAL_SOFTCAP = 2.0

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|eos|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]  # ids 0, 1, 2 in the trained tokenizer

# A few sentences to train the tokenizer's merges on; byte-level BPE encodes any text anyway.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A swarm of servers runs a large language model, one span of blocks each.",
    "Every server stakes tokens, commits hashes of its outputs and is paid per token.",
    "Verifiers re-run a random span and slash a server that cheated.",
    "Hello world! Hello swarm! Hello stakeswarm.",
    "Once upon a time there was a tiny model with six layers and a small vocabulary.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ' \" ? !",
]


def _config(
    family: Family,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
    max_position_embeddings: int,
    tie_word_embeddings: bool,
    sliding_window: int | None,
    initializer_range: float,
) -> PretrainedConfig:
    common: dict[str, Any] = dict(
        initializer_range=initializer_range,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        # Mistral applies its window on every layer; None turns it off.
        return MistralConfig(sliding_window=sliding_window, **common)
    if family == "qwen2":
        # Qwen2 windows only the layers from `max_window_layers` on: the upper half here, so a
        # span's layers must look their type up by global index.
        return Qwen2Config(
            use_sliding_window=sliding_window is not None,
            sliding_window=sliding_window,
            max_window_layers=num_layers // 2,
            **common,
        )
    if family == "mixtral":
        # 4 experts, 2 per token: every token mixes two experts its router picked.
        return MixtralConfig(
            sliding_window=sliding_window, num_local_experts=4, num_experts_per_tok=2, **common
        )
    if family == "gemma2":
        # Gemma 2 alternates windowed (even) and global (odd) layers; without a window every
        # layer is global. head_dim and the query scale are spelled out (defaults: 256).
        head_dim = hidden_size // num_heads
        return Gemma2Config(
            sliding_window=sliding_window,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            attn_logit_softcapping=GEMMA2_ATTN_SOFTCAP,
            final_logit_softcapping=GEMMA2_FINAL_SOFTCAP,
            **common,
        )
    if family == "phi3":
        # Half the head dimensions rotate (Phi-4-mini style), so partial rotary is exercised.
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
        return Phi3Config(sliding_window=sliding_window, rope_parameters=rope, **common)
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "mixtral": MixtralForCausalLM,
    "gemma2": Gemma2ForCausalLM,
    "phi3": Phi3ForCausalLM,
}


def make_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with at most `vocab_size` tokens, trained on a fixed corpus;
    `<|pad|>`, `<|bos|>`, `<|eos|>` are ids 0, 1, 2. Left padding, as batched generation needs."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",
    )


def make_tiny_model(
    tmp_path: Path,
    family: Family = "llama",
    num_layers: int = 6,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    sliding_window: int | None = None,
    initializer_range: float = 0.1,
    shards: int = 1,
    with_tokenizer: bool = True,
    seed: int = 0,
    name: str | None = None,
) -> Path:
    """Build a seeded random fp32 causal LM of `family` and save it under `tmp_path`.

    Returns the model folder (`tmp_path / name`, default `tiny-{family}`) holding
    `config.json`, the weights as one `model.safetensors` (`shards=1`) or about `shards` files
    with `model.safetensors.index.json`, and the tokenizer files when `with_tokenizer`.
    `sliding_window` (every family but llama) turns the model's windowed attention on with
    that width: on every layer (mistral, mixtral, phi3), on the upper half (qwen2), on every
    other layer (gemma2).
    The default `initializer_range` of 0.1 (transformers: 0.02) gives hidden states of O(1)
    magnitude and peaked attention, like a trained model's, so wrong masks or positions show.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if sliding_window is not None and family == "llama":
        raise ValueError("llama has no sliding-window attention")
    config = _config(
        family,
        num_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        sliding_window=sliding_window,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = _MODEL_CLASSES[family](config).float().eval()

    path = tmp_path / (name or f"tiny-{family}")
    path.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # One shard unless asked: the shard limit is a little over an even split of the weights.
    max_shard_size = total_bytes * 2 if shards == 1 else total_bytes // shards + 1
    model.save_pretrained(path, max_shard_size=max_shard_size)
    if with_tokenizer:
        make_tokenizer(vocab_size).save_pretrained(path)
    return path


def load_reference_model(path: Path) -> PreTrainedModel:
    """The whole model from `path` as transformers loads it (fp32, eval): the reference that
    spans are checked against."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
