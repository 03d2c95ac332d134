"""`DistributedModelForSequenceClassification`: a classifier whose blocks run on the swarm.

    model = DistributedModelForSequenceClassification.from_pretrained(
        path, initial_peers=[...], wallet=account, deployment=deployment, num_labels=2,
        tuning_mode="ptune", pre_seq_len=8)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)   # out.loss, out.logits
    out.loss.backward(); optimizer.step()        # trains the prompts and the head

The sequence (after the trainable prompts, with `tuning_mode="ptune"`) runs through every
block as paid forwards (`client.training`); the final norm of the model is applied to the
output at each sequence's last attended position, and a local linear head (`score`,
[num_labels, hidden_size], trainable) gives the logits. The loss is the cross-entropy over
`labels` [batch] (class indices). Prompts and head are saved and loaded together
(`save_trainable` / `load_trainable`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from client.errors import ClientConfigError, SessionStateError
from client.model import DistributedModelForCausalLM

HEAD_SEED = 0  # the head's initial weights
HEAD_INIT_STD = 0.02  # as transformers initializes a fresh classification head


class DistributedModelForSequenceClassification(DistributedModelForCausalLM):
    """Remote blocks, local ends and a trainable classification head (module doc)."""

    score: nn.Linear

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, model_path: str | Path, *, num_labels: int = 2, **options: Any
    ) -> DistributedModelForSequenceClassification:
        """As `DistributedModelForCausalLM.from_pretrained`, with a head for `num_labels`
        classes."""
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ClientConfigError(f"num_labels must be at least 2, got {num_labels!r}")
        model: DistributedModelForSequenceClassification = super().from_pretrained(
            model_path, **options
        )
        hidden_size = int(model.config.hidden_size)
        head = nn.Linear(hidden_size, num_labels, bias=False)
        generator = torch.Generator().manual_seed(HEAD_SEED)
        with torch.no_grad():
            head.weight.copy_(
                torch.randn(num_labels, hidden_size, generator=generator) * HEAD_INIT_STD
            )
        model.score = head
        model.config.num_labels = num_labels
        return model

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits [batch, num_labels] of each sequence, and the cross-entropy over `labels`
        [batch] when given."""
        hidden, mask = self.remote_hidden(input_ids, inputs_embeds, attention_mask)
        if not bool((mask.sum(dim=1) > 0).all()):
            raise SessionStateError("every sequence needs at least one attended position")
        positions = torch.arange(mask.shape[1])
        last = (mask * positions).argmax(dim=1)  # [batch]: the last attended position
        pooled = hidden[torch.arange(hidden.shape[0]), last]  # [batch, hidden_size]
        logits = self.score(self.head.norm(pooled).float())
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.to(torch.long).view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
