"""Every family but Llama (test_node_serving) through two real node processes: Mistral,
Qwen2, Mixtral (mixture of experts), Gemma 2 (soft-capped, alternating windows, scaled
embeddings) and Phi-3 (fused projections, partial rotary).

All with sliding-window attention narrower than the sequence, so a span that looked its
windows up by local instead of global layer index, or lost them across a node boundary, shows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hivemind.p2p import P2P

from ledger.deployment import Deployment
from node.blocks import SPAN_FP32_ATOL, load_client_head
from stakeswarm.tiny_models import FAMILIES, Family, load_reference_model, make_tiny_model
from tests.integration.nodes import (
    Hop,
    LoopThread,
    NodeSpec,
    Payer,
    RouteSession,
    chain_snapshot,
    greedy_generate,
    running_nodes,
)

pytestmark = pytest.mark.timeout(600)

PROMPT = torch.tensor([[1, 5, 77, 300, 12, 9, 41, 8]])
NEW_TOKENS = 6
WINDOW = 4  # narrower than prompt + generated tokens


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_two_servers_give_the_local_models_hidden_states_and_greedy_tokens(
    family: Family, deployment: Deployment, tmp_path: Path
) -> None:
    model_path = make_tiny_model(tmp_path, family, 4, sliding_window=WINDOW)
    reference = load_reference_model(model_path)
    head = load_client_head(model_path)
    chain = deployment.connect()
    specs = [NodeSpec("node-0", "0:1"), NodeSpec("node-1", "1:4")]
    with (
        chain_snapshot(chain),
        running_nodes(deployment, tmp_path / "nodes", model_path, specs) as nodes,
    ):
        runner = LoopThread()
        p2p = runner.run(P2P.create(initial_peers=[m for n in nodes for m in n.maddrs]))
        try:
            payer = Payer(deployment, chain)
            hops = [
                Hop(n, payer.open_channel(n.address), int(n.status()["price_per_token_per_block"]))
                for n in nodes
            ]
            route = RouteSession(runner, p2p, payer, hops).open(max_length=32)
            hidden = route.step(head.embed(PROMPT), torch.ones_like(PROMPT))
            route.close()
            with torch.no_grad():
                expected = reference(PROMPT, output_hidden_states=True)
            torch.testing.assert_close(
                head.logits(hidden), expected.logits, atol=SPAN_FP32_ATOL * 10, rtol=0
            )

            route = RouteSession(runner, p2p, payer, hops).open(max_length=32)
            remote = greedy_generate(route, head, PROMPT, NEW_TOKENS)
            route.close()
        finally:
            runner.run(p2p.shutdown())
            runner.close()
    local = reference.generate(
        PROMPT,
        attention_mask=torch.ones_like(PROMPT),
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
    )
    assert remote.tolist() == local.tolist()
