"""What a client trains through the swarm: soft prompts (prompt tuning), and saving and loading
the trainable parameters as safetensors.

`tuning_mode="ptune"` (with `pre_seq_len=N`) gives a distributed model `N` trainable input
embeddings, prepended to every sequence it runs (training, forward and generation): the
servers see them as `N` more positions, and the loss of the task flows back to them through
the remote blocks (`client.training`). They start as the embeddings of `N` random tokens of the
vocabulary (seeded), on the scale of the model's own inputs.

`tuning_mode="deep_ptune"` adds, to those, a trainable row per block and prompt position,
`[num_blocks, N, hidden_size]` (Petals' deep prompts): each server adds its blocks' rows to the
first `N` positions before each block (protocol 9), and returns their gradient with the
backward. They start at zero, so a deep model starts where a `ptune` one does. Generation
sends each server its rows when its session opens; they are added in the session's first
step (which holds the prompts' positions) and live on in its KV cache.

    model.save_trainable("prompt.safetensors")   # the prompts (and a classification head)
    model.load_trainable("prompt.safetensors")   # names and shapes must match
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from client.errors import ClientConfigError

TUNING_MODES = ("ptune", "deep_ptune")
PROMPT_SEED = 0  # which vocabulary rows the prompts start from


def check_tuning(tuning_mode: str | None, pre_seq_len: int) -> int:
    """The number of prompt positions a model is built with (0 without tuning);
    `ClientConfigError` for an unknown mode or a length that does not go with it."""
    if tuning_mode is None:
        if pre_seq_len:
            raise ClientConfigError("pre_seq_len goes with tuning_mode='ptune' or 'deep_ptune'")
        return 0
    if tuning_mode not in TUNING_MODES:
        raise ClientConfigError(
            f"unknown tuning_mode {tuning_mode!r}: one of {', '.join(TUNING_MODES)}"
        )
    if not isinstance(pre_seq_len, int) or pre_seq_len < 1:
        raise ClientConfigError(f"tuning_mode={tuning_mode!r} needs pre_seq_len >= 1")
    return pre_seq_len


class SoftPrompt(nn.Module):
    """`pre_seq_len` trainable embeddings prepended to every sequence."""

    def __init__(self, embeddings: nn.Embedding, pre_seq_len: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(PROMPT_SEED)
        rows = torch.randint(0, embeddings.num_embeddings, (pre_seq_len,), generator=generator)
        start = embeddings.weight.detach()[rows.to(embeddings.weight.device)].float().cpu()
        self.embeddings = nn.Parameter(start.clone())  # [pre_seq_len, hidden_size]

    @property
    def length(self) -> int:
        return self.embeddings.shape[0]

    def prepend(
        self, hidden: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [batch, tokens, hidden_size], mask [batch, tokens] -> both with the prompt's
        positions first (always attended to)."""
        prompts = self.embeddings.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
        return torch.cat([prompts, hidden], dim=1), self.prepend_mask(mask)

    def prepend_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [batch, tokens] -> [batch, pre_seq_len + tokens], the prompt's positions first."""
        ones = torch.ones(mask.shape[0], self.length, dtype=mask.dtype, device=mask.device)
        return torch.cat([ones, mask], dim=1)


class DeepPrompt(SoftPrompt):
    """Soft prompts plus a trainable row per block: `deep[i]` [pre_seq_len, hidden_size] is
    added to the prompts' positions before block i, on the servers."""

    def __init__(self, embeddings: nn.Embedding, pre_seq_len: int, num_blocks: int) -> None:
        super().__init__(embeddings, pre_seq_len)
        # deep: [num_blocks, pre_seq_len, hidden_size], zero: the model starts as with ptune
        self.deep = nn.Parameter(torch.zeros(num_blocks, pre_seq_len, self.embeddings.shape[1]))


def build_prompts(
    tuning_mode: str | None, embeddings: nn.Embedding, pre_seq_len: int, num_blocks: int
) -> SoftPrompt | None:
    """The trainable prompts of `tuning_mode` (`check_tuning` first), None without tuning."""
    if not pre_seq_len:
        return None
    if tuning_mode == "deep_ptune":
        return DeepPrompt(embeddings, pre_seq_len, num_blocks)
    return SoftPrompt(embeddings, pre_seq_len)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters a client trains (those that require a gradient), by name."""
    return {
        name: param.detach().cpu().contiguous()
        for name, param in module.named_parameters()
        if param.requires_grad
    }


def save_trainable(module: nn.Module, path: str | Path) -> Path:
    """Write the trainable parameters of `module` to a safetensors file."""
    state = trainable_state(module)
    if not state:
        raise ClientConfigError("this model has nothing trainable to save (no tuning_mode?)")
    path = Path(path)
    save_file(state, str(path), metadata={"format": "pt", "stakeswarm": "trainable"})
    return path


def load_trainable(module: nn.Module, path: str | Path) -> None:
    """Load trainable parameters saved by `save_trainable` into `module`; every name and shape
    must match (`ClientConfigError` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise ClientConfigError(f"no trained parameters at {path}")
    try:
        saved = load_file(str(path))
    except Exception as exc:  # safetensors raises its own errors for a damaged file
        raise ClientConfigError(f"{path} is not a safetensors file: {exc}") from None
    own = dict(module.named_parameters())
    wanted = {name for name, param in own.items() if param.requires_grad}
    if set(saved) != wanted:
        raise ClientConfigError(
            f"{path} holds {sorted(saved)}, this model trains {sorted(wanted)}: built with "
            "another tuning_mode, pre_seq_len or head?"
        )
    for name, tensor in saved.items():
        if tensor.shape != own[name].shape:
            raise ClientConfigError(
                f"{path}: {name} is {list(tensor.shape)}, this model's is {list(own[name].shape)}"
            )
    with torch.no_grad():
        for name, tensor in saved.items():
            own[name].copy_(tensor.to(own[name].device, own[name].dtype))
