"""Training through the swarm: two real node processes serve a tiny Llama (blocks 0:3 and
3:6) on Anvil; a client tunes soft prompts, deep prompts and a classification head with
gradients that flow back through the servers' paid, receipted and committed backwards.

The references are the same model loaded whole with transformers and trained locally. Tests
share the nodes in file order; everything done on-chain is reverted afterwards.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from safetensors.torch import load_file

from client.classification import DistributedModelForSequenceClassification
from client.errors import ClientConfigError, SessionStateError
from client.model import DistributedModelForCausalLM
from client.remote import RemoteError, remote_backward, remote_forward
from ledger.db import AuditOutcome, audits_of, open_ledger, receipts_of, sqlite_url
from ledger.deployment import Deployment
from node.protocol import BACKWARD_STEP, BackwardRequest, ErrorCode, ForwardRequest
from node.sketch import Sketch, backward_sketch, mask_hash, sketch
from node.tensors import tensor_hash
from stakeswarm.swarm import running_verifier
from stakeswarm.tiny_models import load_reference_model, make_tiny_model
from tests.integration.nodes import (
    NodeProcess,
    NodeSpec,
    PaidSwarm,
    chain_snapshot,
    paid_swarm,
    running_nodes,
    start_node,
    wait_committed,
)
from tests.integration.verifiers import wait_for_status

pytestmark = pytest.mark.timeout(900)

BACKWARD_TTL = 8  # seconds a node keeps a forward for its backward: short, so expiry is tested
NODE_ARGS = (
    "--commit-interval", "2",
    "--redeem-interval", "3600",
    "--backward-ttl", str(BACKWARD_TTL),
)  # fmt: skip
PRE_SEQ_LEN = 3
IDS = torch.tensor([[5, 17, 42, 99, 7, 256, 3, 11], [9, 8, 300, 4, 77, 12, 1, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]])
LABELS = IDS.masked_fill(MASK == 0, -100)


@dataclass
class Swarm:
    deployment: Deployment
    nodes: list[NodeProcess]
    model_path: Path
    workdir: Path

    def model(self, name: str, cls: Any = DistributedModelForCausalLM, **options: Any) -> Any:
        wallet = Account.from_key(self.deployment.account("client-1").private_key)
        return cls.from_pretrained(
            self.model_path,
            initial_peers=[m for n in self.nodes for m in n.maddrs],
            wallet=wallet,
            deployment=self.deployment,
            home=self.workdir / "clients" / name,
            **options,
        )

    def ledger_path(self, name: str) -> Path:
        address = self.deployment.account("client-1").address
        return self.workdir / "clients" / name / "client" / address / "ledger.sqlite"


@pytest.fixture(scope="module")
def swarm(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    model_path = make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 6)
    workdir = tmp_path_factory.mktemp("training-swarm")
    specs = [NodeSpec("node-0", "0:3", args=NODE_ARGS), NodeSpec("node-1", "3:6", args=NODE_ARGS)]
    chain = deployment.connect()
    with chain_snapshot(chain), running_nodes(deployment, workdir, model_path, specs) as nodes:
        yield Swarm(deployment, nodes, model_path, workdir)


def local_loss(
    reference: Any, prompts: torch.Tensor, embeds: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """The causal LM loss the swarm model computes, on the whole model in this process."""
    batch = embeds.shape[0]
    hidden = torch.cat([prompts.unsqueeze(0).expand(batch, -1, -1), embeds], dim=1)
    mask = torch.cat([torch.ones(batch, prompts.shape[0], dtype=torch.long), MASK], dim=1)
    logits = reference(inputs_embeds=hidden, attention_mask=mask).logits[:, prompts.shape[0] :]
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )


def test_gradients_through_two_servers_equal_local_autograd(swarm: Swarm) -> None:
    model = swarm.model("gradients", tuning_mode="ptune", pre_seq_len=PRE_SEQ_LEN)
    try:
        model.train()
        embeds = model.head.embed(IDS).detach().requires_grad_(True)
        out = model(inputs_embeds=embeds, attention_mask=MASK, labels=LABELS)
        out.loss.backward()
        reference = load_reference_model(swarm.model_path)
        prompts = model.prompts.embeddings.detach().clone().requires_grad_(True)
        local_embeds = embeds.detach().clone().requires_grad_(True)
        loss = local_loss(reference, prompts, local_embeds, LABELS)
        loss.backward()
        assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(
            model.prompts.embeddings.grad, prompts.grad, rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(embeds.grad, local_embeds.grad, rtol=1e-4, atol=1e-6)
        assert prompts.grad.abs().sum() > 0  # the loss does depend on the prompts
        # every forward and backward was paid for, at the announced prices
        spent = model.client.training_route().spent
        tokens = IDS.shape[0] * (IDS.shape[1] + PRE_SEQ_LEN)
        prices = [int(n.status()["price_per_token_per_block"]) for n in swarm.nodes]
        assert spent.forward_wei == tokens * 3 * sum(prices)
        assert spent.backward_wei == 2 * spent.forward_wei  # twice the price by default
        assert spent.failovers == 0
    finally:
        model.close()
    # one forward receipt (step 0) and one backward receipt (step 1) per server, kept
    ledger = open_ledger(sqlite_url(swarm.ledger_path("gradients")))
    try:
        with ledger.begin() as db:
            receipts = receipts_of(db)
            steps = sorted((r.server, r.step) for r in receipts)
            assert steps == sorted(
                (n.address, step) for n in swarm.nodes for step in (0, BACKWARD_STEP)
            )
            assert sum(r.cost for r in receipts) == spent.wei
    finally:
        ledger.close()


def with_deep_prompts(reference: Any, deep: torch.Tensor) -> list[Any]:
    """Hooks that make `reference` add `deep[i]` [P, hidden] to the first P positions before
    its decoder layer i, as the servers do (Petals' deep prompts); remove them when done."""

    def before(i: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            length = deep.shape[1]
            hidden = torch.cat([hidden[:, :length] + deep[i], hidden[:, length:]], dim=1)
            return (hidden, *rest), kwargs

        return hook

    return [
        layer.register_forward_pre_hook(before(i), with_kwargs=True)
        for i, layer in enumerate(reference.model.layers)
    ]


def test_deep_prompts_train_through_two_servers_as_they_do_locally(swarm: Swarm) -> None:
    model = swarm.model("deep", tuning_mode="deep_ptune", pre_seq_len=PRE_SEQ_LEN)
    reference = load_reference_model(swarm.model_path)
    try:
        assert model.prompts.deep.shape == (6, PRE_SEQ_LEN, 64)  # a row per block, zero
        with torch.no_grad():  # as after some training: every block's rows matter
            model.prompts.deep.copy_(
                torch.randn(6, PRE_SEQ_LEN, 64, generator=torch.Generator().manual_seed(5))
            )
        prompts = torch.nn.Parameter(model.prompts.embeddings.detach().clone())
        deep = torch.nn.Parameter(model.prompts.deep.detach().clone())
        remote_opt = torch.optim.Adam(model.prompts.parameters(), lr=0.05)
        local_opt = torch.optim.Adam([prompts, deep], lr=0.05)
        embeds = model.head.embed(IDS).detach()
        hooks = with_deep_prompts(reference, deep)
        model.train()
        remote_losses, local_losses = [], []
        try:
            for step in range(5):
                remote_opt.zero_grad()
                loss = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss
                loss.backward()
                local_opt.zero_grad()
                local = local_loss(reference, prompts, embeds, LABELS)
                local.backward()
                if step == 0:  # the gradients themselves, before any update
                    torch.testing.assert_close(
                        model.prompts.deep.grad, deep.grad, rtol=1e-4, atol=1e-6
                    )
                    torch.testing.assert_close(
                        model.prompts.embeddings.grad, prompts.grad, rtol=1e-4, atol=1e-6
                    )
                    assert deep.grad is not None
                    assert bool((deep.grad.abs().sum(dim=(1, 2)) > 0).all())  # every block's
                remote_opt.step()
                local_opt.step()
                remote_losses.append(loss.item())
                local_losses.append(local.item())
        finally:
            for hook in hooks:
                hook.remove()
        assert remote_losses == pytest.approx(local_losses, rel=1e-4)
        assert remote_losses[-1] < remote_losses[0]  # it learns
        # each forward and backward paid at the announced prices: the prompts cost nothing more
        spent = model.client.training_route().spent
        tokens = IDS.shape[0] * (IDS.shape[1] + PRE_SEQ_LEN)
        prices = [int(n.status()["price_per_token_per_block"]) for n in swarm.nodes]
        assert spent.forward_wei == 5 * tokens * 3 * sum(prices)
        assert spent.backward_wei == 2 * spent.forward_wei
        path = model.save_trainable(swarm.workdir / "deep.safetensors")
        assert set(load_file(str(path))) == {"prompts.embeddings", "prompts.deep"}
    finally:
        model.close()
    # the trained deep prompts generate through the swarm (each server opens its session with
    # its blocks' rows) as they do locally
    again = swarm.model("deep-again", tuning_mode="deep_ptune", pre_seq_len=PRE_SEQ_LEN)
    try:
        again.load_trainable(path)
        ids = again.generate(IDS[:1], max_new_tokens=4, do_sample=False)
        hooks = with_deep_prompts(reference, deep.detach())
        try:
            with torch.no_grad():
                expected = IDS[:1]
                for _ in range(4):  # greedy, locally, with the same prompts
                    embeds = reference.get_input_embeddings()(expected)
                    hidden = torch.cat([prompts.detach().unsqueeze(0), embeds], dim=1)
                    logits = reference(inputs_embeds=hidden).logits[:, -1]
                    expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
        finally:
            for hook in hooks:
                hook.remove()
        assert ids.tolist() == expected.tolist()
        # embeddings in place of ids: generate returns the new tokens, as transformers does,
        # and a forward gives the logits of every position
        embeds = again.head.embed(IDS[:1])
        new = again.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False)
        assert new.tolist() == expected[:, IDS.shape[1] :].tolist()
        with torch.no_grad():
            logits = again(inputs_embeds=embeds).logits
        assert logits.shape == (1, IDS.shape[1], reference.config.vocab_size)
        assert logits[:, -1].argmax(-1).item() == expected[0, IDS.shape[1]].item()
        # a first step that does not cover the prompts' positions is refused before any payment
        with (
            again.client.inference_session(
                max_length=8, prompts=again.prompts.deep.detach()
            ) as session,
            pytest.raises(SessionStateError, match="cover the 3 deep prompt positions"),
        ):
            session.step(torch.randn(1, 2, 64))
    finally:
        again.close()


def test_twenty_steps_of_prompt_tuning_match_the_same_run_locally(swarm: Swarm) -> None:
    model = swarm.model("twenty", tuning_mode="ptune", pre_seq_len=PRE_SEQ_LEN)
    try:
        reference = load_reference_model(swarm.model_path)
        prompts = torch.nn.Parameter(model.prompts.embeddings.detach().clone())
        remote_opt = torch.optim.Adam(model.prompts.parameters(), lr=0.05)
        local_opt = torch.optim.Adam([prompts], lr=0.05)
        embeds = model.head.embed(IDS).detach()
        model.train()
        remote_losses, local_losses = [], []
        for _ in range(20):
            remote_opt.zero_grad()
            loss = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss
            loss.backward()
            remote_opt.step()
            remote_losses.append(loss.item())
            local_opt.zero_grad()
            loss = local_loss(reference, prompts, embeds, LABELS)
            loss.backward()
            local_opt.step()
            local_losses.append(loss.item())
        assert remote_losses == pytest.approx(local_losses, rel=1e-4)
        assert remote_losses[-1] < remote_losses[0] - 0.1  # it learns
        # the trained prompts generate through the swarm as they do locally
        model.eval()
        trained = tuple(model.prompts.parameters())[0].detach()
        path = model.save_trainable(swarm.workdir / "prompt.safetensors")
    finally:
        model.close()
    again = swarm.model("twenty-again", tuning_mode="ptune", pre_seq_len=PRE_SEQ_LEN)
    try:
        again.load_trainable(path)
        torch.testing.assert_close(again.prompts.embeddings.detach(), trained)
        ids = again.generate(IDS[:1], max_new_tokens=4, do_sample=False)
        with torch.no_grad():
            expected = IDS[:1]
            for _ in range(4):  # greedy, locally, with the same prompts first
                embeds = reference.get_input_embeddings()(expected)
                hidden = torch.cat([trained.unsqueeze(0), embeds], dim=1)
                logits = reference(inputs_embeds=hidden).logits[:, -1]
                expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
        assert ids.tolist() == expected.tolist()
    finally:
        again.close()
    other = swarm.model("other", tuning_mode="ptune", pre_seq_len=2)
    try:
        with pytest.raises(ClientConfigError, match=r"prompts.embeddings is \[3, 64\]"):
            other.load_trainable(path)
    finally:
        other.close()


def test_a_classification_head_and_prompts_train_through_the_swarm(swarm: Swarm) -> None:
    model = swarm.model(
        "classifier",
        DistributedModelForSequenceClassification,
        num_labels=3,
        tuning_mode="ptune",
        pre_seq_len=PRE_SEQ_LEN,
    )
    try:
        labels = torch.tensor([2, 0])
        model.train()
        out = model(input_ids=IDS, attention_mask=MASK, labels=labels)
        out.loss.backward()
        reference = load_reference_model(swarm.model_path)
        prompts = model.prompts.embeddings.detach().clone().requires_grad_(True)
        score = model.score.weight.detach().clone().requires_grad_(True)
        embeds = reference.get_input_embeddings()(IDS)
        hidden = torch.cat([prompts.unsqueeze(0).expand(2, -1, -1), embeds], dim=1)
        mask = torch.cat([torch.ones(2, PRE_SEQ_LEN, dtype=torch.long), MASK], dim=1)
        last = reference.model(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        pooled = last[torch.arange(2), torch.tensor([PRE_SEQ_LEN + 7, PRE_SEQ_LEN + 6])]
        logits = pooled @ score.T
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.score.weight.grad, score.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(
            model.prompts.embeddings.grad, prompts.grad, rtol=1e-4, atol=1e-6
        )
        saved = load_file(str(model.save_trainable(swarm.workdir / "classifier.safetensors")))
        assert set(saved) == {"prompts.embeddings", "score.weight"}  # what is trained
    finally:
        model.close()


# --- what a node refuses -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct(swarm: Swarm) -> Iterator[PaidSwarm]:
    chain = swarm.deployment.connect()
    with paid_swarm(swarm.deployment, chain, swarm.nodes, swarm.model_path, swarm.workdir) as paid:
        yield paid


def _forward(
    direct: PaidSwarm,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    prompts: torch.Tensor | None = None,
) -> tuple[bytes, Any, torch.Tensor]:
    hop = direct.hops[1]
    tokens = hidden.shape[0] * hidden.shape[1]
    voucher = direct.payer.pay(hop.channel, tokens * hop.price_per_token)
    session = os.urandom(32)
    try:
        output, receipt = direct.runner.run(
            remote_forward(
                direct.p2p,
                hop.node.peer_id,
                ForwardRequest(session, 3, 6, voucher),
                hidden,
                mask,
                prompts=prompts,
            )
        )
    except RemoteError:
        direct.payer.paid[hop.channel] -= tokens * hop.price_per_token  # not accepted
        raise
    assert output.shape == hidden.shape
    return session, receipt, output


def _backward(
    direct: PaidSwarm,
    session: bytes,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    grad: torch.Tensor,
    prompts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
    hop = direct.hops[1]
    tokens = hidden.shape[0] * hidden.shape[1]
    voucher = direct.payer.pay(hop.channel, tokens * 2 * hop.price_per_token)
    try:
        return direct.runner.run(
            remote_backward(
                direct.p2p,
                hop.node.peer_id,
                BackwardRequest(session, 3, 6, voucher),
                hidden,
                mask,
                grad,
                prompts=prompts,
            )
        )
    except RemoteError:
        direct.payer.paid[hop.channel] -= tokens * 2 * hop.price_per_token  # not accepted
        raise


def _refused(direct: PaidSwarm, *args: Any, call: Any = None) -> RemoteError:
    hop = direct.hops[1]
    owed = hop.node.status()["earnings"]["unredeemed_base_units"]
    leaves = _leaves(hop.node)
    with pytest.raises(RemoteError) as refused:
        (call or _backward)(direct, *args)
    assert not refused.value.spent
    status = hop.node.status()
    assert status["earnings"]["unredeemed_base_units"] == owed  # nothing paid
    assert _leaves(hop.node) == leaves  # nothing committed
    return refused.value


def test_a_backward_is_served_once_for_its_own_forward_and_committed(direct: PaidSwarm) -> None:
    hidden, mask = torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long)
    grad = torch.randn(1, 4, 64)
    session, forward, _ = _forward(direct, hidden, mask)
    # never served: an unknown session; another input than the forward's
    assert _refused(direct, os.urandom(32), hidden, mask, grad).code is ErrorCode.NO_FORWARD
    assert _refused(direct, session, hidden + 1, mask, grad).code is ErrorCode.NO_FORWARD
    # malformed gradients: another shape, NaN
    wrong = _refused(direct, session, hidden, mask, torch.randn(1, 3, 64))
    assert wrong.code is ErrorCode.BAD_TENSOR and "gradient" in wrong.message
    nan = grad.clone()
    nan[0, 1, 5] = float("nan")
    assert _refused(direct, session, hidden, mask, nan).code is ErrorCode.BAD_TENSOR
    # the right one is served, and its leaf says it is a backward of that forward
    grad_in, receipt, _ = _backward(direct, session, hidden, mask, grad)
    assert grad_in.shape == hidden.shape and grad_in.abs().sum() > 0
    leaf = receipt.leaf
    assert (leaf.session_id, leaf.step, leaf.tokens) == (session, BACKWARD_STEP, 4)
    expected = backward_sketch(grad_in, mask_hash=mask_hash(mask, 4))
    assert leaf.sketch_hash == expected.hash() and Sketch.decode(expected.encode()).exponent
    # a forward has one backward
    assert _refused(direct, session, hidden, mask, grad).code is ErrorCode.NO_FORWARD
    wait_committed(direct.hops[1].node, _leaves(direct.hops[1].node))


def test_deep_prompts_are_checked_committed_and_bound_to_their_backward(
    direct: PaidSwarm,
) -> None:
    hidden, mask = torch.randn(1, 4, 64), torch.ones(1, 4, dtype=torch.long)
    prompts, grad = torch.randn(3, 2, 64), torch.randn(1, 4, 64)
    # prompts that do not fit the span (3 blocks), cover more positions than sent, or are NaN
    for bad, words in (
        (torch.randn(2, 2, 64), "[3, P, 64]"),
        (torch.randn(3, 5, 64), "P = 5"),
        (prompts.masked_fill(prompts > 1, float("nan")), "NaN"),
    ):
        refused = _refused(direct, hidden, mask, bad, call=_forward)
        assert refused.code is ErrorCode.BAD_TENSOR and words in refused.message
    session, forward, output = _forward(direct, hidden, mask, prompts)
    committed = sketch(output, mask_hash=mask_hash(mask, 4), prompts_hash=tensor_hash(prompts))
    assert forward.leaf.sketch_hash == committed.hash()  # the forward commits its prompts
    # the backward must carry the forward's prompts, not others, nor none
    other = _refused(direct, session, hidden, mask, grad, prompts + 1)
    assert other.code is ErrorCode.NO_FORWARD and "prompts" in other.message
    none = _refused(direct, session, hidden, mask, grad)
    assert none.code is ErrorCode.NO_FORWARD and "prompts" in none.message
    grad_in, receipt, grad_prompts = _backward(direct, session, hidden, mask, grad, prompts)
    assert grad_prompts is not None and grad_prompts.shape == prompts.shape
    assert grad_prompts.abs().sum() > 0
    committed = backward_sketch(
        grad_in,
        mask_hash=mask_hash(mask, 4),
        prompts_hash=tensor_hash(prompts),
        prompts_grad_hash=tensor_hash(grad_prompts),
    )
    assert receipt.leaf.sketch_hash == committed.hash()  # both gradients are committed
    wait_committed(direct.hops[1].node, _leaves(direct.hops[1].node))


def _leaves(node: NodeProcess) -> int:
    """Leaves the node signed: pending and committed."""
    commitments = node.status()["commitments"]
    return int(commitments["pending_leaves"]) + int(commitments["committed_leaves"])


def test_a_backward_after_its_forward_expired_is_refused(direct: PaidSwarm) -> None:
    hidden, mask = torch.randn(1, 2, 64), torch.ones(1, 2, dtype=torch.long)
    session, _, _ = _forward(direct, hidden, mask)
    time.sleep(BACKWARD_TTL + 1)
    error = _refused(direct, session, hidden, mask, torch.randn(1, 2, 64))
    assert error.code is ErrorCode.NO_FORWARD and "older than" in error.message


# --- audits ------------------------------------------------------------------------------------


def test_a_verifier_audits_every_training_leaf_and_honest_backwards_pass(
    swarm: Swarm, tmp_path: Path
) -> None:
    peers = [m for n in swarm.nodes for m in n.maddrs]
    for mode in ("ptune", "deep_ptune"):
        model = swarm.model(f"audited-{mode}", tuning_mode=mode, pre_seq_len=PRE_SEQ_LEN)
        try:
            model.train()
            model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss.backward()
            if mode == "deep_ptune":  # and a generation: a session's leaves commit the prompts
                with torch.no_grad():
                    model.prompts.deep.normal_(generator=torch.Generator().manual_seed(2))
                model.eval()
                model.generate(IDS[:1], max_new_tokens=3, do_sample=False)
        finally:
            model.close()
    for node in swarm.nodes:  # every leaf so far (this module's), committed
        wait_committed(node, _leaves(node))
    with running_verifier(swarm.deployment, tmp_path, swarm.model_path, "verifier-0", peers) as v:
        status = wait_for_status(
            v,
            "every leaf audited",
            lambda s: (
                s["audits"]["done"] >= sum(_leaves(n) for n in swarm.nodes)
                and s["audits"]["pending"] == 0
            ),
            timeout=300,
        )
        ledger = open_ledger(sqlite_url(v.home / "verifier" / v.address / "ledger.sqlite"))
        try:
            with ledger.begin() as db:
                audits = [a for n in swarm.nodes for a in audits_of(db, n.address)]
        finally:
            ledger.close()
    assert status["audits"]["failed"] == status["audits"]["withheld"] == 0, status
    assert status["audits"]["errors"] == 0 and status["slashes"]["recorded"] == 0
    assert {a.outcome for a in audits} == {AuditOutcome.PASSED}
    kinds = {(a.distances or {}).get("dtype") for a in audits}
    assert {"float32", "float32 backward"} <= kinds  # forwards and backwards were audited


# --- failover ----------------------------------------------------------------------------------


def test_a_server_lost_between_forward_and_backward_is_replaced_and_the_gradient_is_exact(
    swarm: Swarm,
) -> None:
    """Runs last: it starts a second server for blocks 3:6 and stops the one the forward used."""
    peers = [m for n in swarm.nodes for m in n.maddrs]
    spare = start_node(
        NodeSpec("node-2", "3:6", args=NODE_ARGS),
        swarm.deployment,
        swarm.workdir,
        swarm.model_path,
        initial_peers=peers,
    )
    spare.wait_ready()
    model = swarm.model("failover")
    try:
        route = model.client.training_route()
        hidden = model.head.embed(IDS)
        out, hops = route.forward(hidden, MASK)
        lost = next(n for n in [*swarm.nodes, spare] if n.peer_id == hops[1].peer_id)
        other = spare if lost is not spare else swarm.nodes[1]
        lost.stop()
        before = route.spent.wei
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)) * 1e-3
        grad_out = grad_out * MASK.unsqueeze(-1)  # as a loss has it: none from padding
        grad, none = route.backward(hops, MASK, grad_out)
        assert none is None  # no deep prompts
        assert route.spent.failovers == 1
        # the new server ran the hop's forward again, then its backward; the first server
        # ran the rest: what was paid is exactly that
        price = int(other.status()["price_per_token_per_block"]) * 3
        tokens = IDS.numel()
        first = int(swarm.nodes[0].status()["price_per_token_per_block"]) * 3
        assert route.spent.wei - before == tokens * (3 * price + 2 * first)
    finally:
        model.close()
        spare.stop()
    reference = load_reference_model(swarm.model_path)
    x = hidden.detach().clone().requires_grad_(True)
    blocks_out = _before_the_final_norm(reference, x, MASK)  # what the servers computed
    attended = MASK.bool()  # (padded positions' outputs are nobody's: they differ)
    torch.testing.assert_close(out[attended], blocks_out.detach()[attended], rtol=1e-4, atol=1e-5)
    (blocks_out * grad_out).sum().backward()
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-7)


def _before_the_final_norm(reference: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last decoder layer's output of `reference` on `x` (the final norm's input)."""
    seen: list[torch.Tensor] = []
    hook = reference.model.norm.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    try:
        reference.model(inputs_embeds=x, attention_mask=mask)
    finally:
        hook.remove()
    return seen[0]
