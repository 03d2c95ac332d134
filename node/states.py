"""Block states: every block's output of a step, which a node serving in 16 bits commits to.

Why. Recomputing a whole span cannot catch small cheats in 16 bits: a bfloat16 value keeps 8
significant bits, and ten blocks amplify another machine's rounding until it is as large as
1% noise (docs/benchmarks.md, "16-bit audits"). One block is different: given the node's exact
input to a block, a recomputation in the node's dtype and step structure rounds at the same
points, so on this CPU it agrees bit for bit with an honest node whatever its threads, batch
composition or attention implementation (the verifier tries sdpa, eager and sdpa's math
backend), and another machine's accumulation order moves it by a fraction of a unit in the
last place. A cheat that saves work (noise, other or quantized weights, a skipped block, lower
or other precision, a replayed output) moves some block's output by far more.

What a node commits. A node whose dtype is 16-bit (`commits_states`) keeps, for every step,
the output of each block of its span, `[blocks, batch, tokens, hidden]` in its dtype, the last
one being the tensor it sent. Its leaf's sketch is encoded with `states_hash`, the keccak256 of
the bytes of all but the last (`node.sketch`, version 2; the last is the leaf's outputHash).
The states are stored with the step's inputs and revealed with them (`node.protocol`,
`RevealResponse.states`): a verifier checks them against these hashes and recomputes each block
from the node's own input to it (`verifier.blockwise`).

Cost: the node stores (and a full reveal carries) `blocks` times a step's input; a float32 node
commits no states (its float32 sketch already catches these cheats, `verifier.thresholds`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from node.tensors import tensor_hash

STATE_DTYPES = (torch.float16, torch.bfloat16)  # nodes of these dtypes commit block states


def commits_states(dtype: torch.dtype) -> bool:
    """Whether a node serving in `dtype` commits block states (16-bit dtypes do)."""
    return dtype in STATE_DTYPES


def stack_states(blocks: Sequence[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """The states of one step, `[len(blocks), batch, tokens, hidden]` on the CPU: every block's
    output (`Span.forward(states=...)`) with the last replaced by `output`, the tensor sent."""
    if not blocks:
        raise ValueError("a span has at least one block")
    kept = [b.detach().to("cpu", output.dtype) for b in blocks[:-1]]
    return torch.stack([*kept, output.detach().cpu()]).contiguous()


def states_hash(states: torch.Tensor) -> bytes:
    """keccak256 of all blocks' outputs but the last (`[blocks - 1, batch, tokens, hidden]`),
    the hash a version-2 sketch carries."""
    if states.ndim != 4 or states.shape[0] < 1:
        raise ValueError(f"states are [blocks, batch, tokens, hidden], got {list(states.shape)}")
    return tensor_hash(states[:-1].contiguous())
