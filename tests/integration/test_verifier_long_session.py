"""The longest session a node's default KV cache admits is revealed in full and audited, in
memory that grows with the session's length, not with its square.

A node's default `--cache-tokens 16384` admits one session of 16,384 positions: a 256-token
prompt, then 16,128 one-token decode steps. When every step's revealed (and stored) attention
mask was `[batch, past + tokens]`, the reveal of such a session's last leaf was ~1.08 GB, over
the 1 GiB a verifier reads, so the honest node could not reveal it and was slashed for
withholding. Here node-0 serves such a session with its real parts, in this process
(SessionManager over the default cache budget, the span, Receipts, LeafWriter, InputStore, and
a Committer to the devnet): 16k steps through a node process over hivemind take about three
minutes on 2 cores, the in-process serving about one. The verifier then asks for the last
leaf through the node's real reveal RPC over hivemind (`request_reveal`, within the verifier's
reveal timeout) and audits it (`prove_leaf`, `check_opening`, `recompute`, `judge`): it
passes, the reveal is about positions x hidden x 4 bytes, and neither building and reading the
reveal nor recomputing the session takes more than a bounded amount of memory.

Slow (one to two minutes on 2 cores): 16,129 steps are served, signed and stored first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gc
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account.signers.local import LocalAccount
from hivemind.p2p import P2P

from ledger.chain import Chain
from ledger.contracts import Contracts
from ledger.db import Ledger, open_ledger, session_leaves, sqlite_url
from ledger.deployment import Deployment
from ledger.eip712 import Domain
from ledger.types import BatchId, BlockIndex, Wei, model_id
from ledger.units import TokenUnits
from node.api import NodeMetrics
from node.balance import ChainClock, IncomingPayments
from node.blocks import Span, load_span
from node.cache import CacheManager
from node.commits import Committer, InputStore, LeafWriter, Receipts
from node.config import NodeConfig
from node.handler import Limits, StakeswarmNode
from node.protocol import InfoResponse, OpenSession, ServerInfo, ServerState
from node.sessions import SessionManager, SpanViews, check_step
from node.sketch import SKETCH_TOP_K
from tests.integration.nodes import LoopThread
from verifier.audit import Opening, check_opening, judge, prove_leaf, recompute
from verifier.config import DEFAULT_REVEAL_TIMEOUT
from verifier.reveal import MAX_REVEAL_BYTES, request_reveal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL_NAME = "tiny-llama"
MODEL = model_id(MODEL_NAME)
SPAN = (0, 3)
HIDDEN = 64  # the tiny model's hidden size
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
CACHE_TOKENS: int = DEFAULTS["cache_tokens"]  # 16384, what `node serve` reserves by default
PROMPT = 256
AUDIT_PEAK_MIB = 384  # linear in the session's length; the quadratic pass needs GiBs
POSITIONS = CACHE_TOKENS  # one sequence, as long as the default cache admits
PEER = b"\x00\x24\x08\x01\x12\x20" + b"\x07" * 32  # libp2p peer id bytes (unused: dialled directly)


@dataclasses.dataclass
class ServedNode:
    """node-0's parts that outlive serving: its ledger, stored inputs, account and session."""

    ledger: Ledger
    store: InputStore
    account: LocalAccount
    session_id: bytes


def test_the_longest_session_the_default_cache_admits_is_revealed_and_audited(
    deployment: Deployment,
    chain: Chain,
    contracts_as: Callable[[str], Contracts],
    dev_account: Callable[[str], LocalAccount],
    model_path: Path,
    tmp_path: Path,
) -> None:
    node, verifier = contracts_as("node-0"), contracts_as("verifier-0")
    node.node_registry.register_with_approve(
        MODEL, BlockIndex(SPAN[0]), BlockIndex(SPAN[1]), Wei(1), PEER,
        node.node_registry.required_stake(*SPAN),
    )  # fmt: skip
    verifier.verifier_registry.register_with_approve(verifier.verifier_registry.min_stake())
    span = load_span(model_path, *SPAN, dtype=torch.float32)
    domain = node.slasher.domain()
    ledger = open_ledger(sqlite_url(tmp_path / "ledger.sqlite"))
    runner = LoopThread()
    try:
        served = runner.run(
            _serve(span, domain, dev_account("node-0"), ledger, tmp_path), timeout=400
        )
        committed = Committer(
            served.ledger,
            node.commitments,
            node=served.account.address,
            model_id=MODEL,
            max_leaves=deployment.params.max_leaves,
        ).commit_pending()
        leaves = POSITIONS - PROMPT + 1  # the prompt's, then one per decoded token
        assert len(committed) == -(-leaves // deployment.params.max_leaves)
        with served.ledger.begin() as db:
            last = session_leaves(db, served.session_id, *SPAN)[-1]
            assert last.batch is not None and last.batch.chain_batch_id is not None
            assert last.index_in_batch is not None
            batch_id, index = last.batch.chain_batch_id, last.index_in_batch
        assert last.step == leaves - 1

        # the verifier asks for the session's last leaf, and must have it within its reveal
        # timeout; building, streaming and reading the reveal are measured together (the node
        # and the verifier share this process)
        before = _reset_peak()
        opening = runner.run(
            _reveal(
                chain, span, domain, served, verifier, dev_account("verifier-0"), batch_id, index
            ),
            timeout=DEFAULT_REVEAL_TIMEOUT + 60,
        )
        reveal_peak = _peak() - before
    finally:
        runner.close()
        ledger.close()

    revealed = [*opening.hidden, opening.mask, opening.sketch_indices, opening.sketch_values]
    revealed_bytes = sum(t.numel() * t.element_size() for t in revealed if t is not None)
    # linear: each position's hidden states, mask column and committed sketch once
    assert sum(hidden.shape[1] for hidden in opening.hidden) == POSITIONS
    assert revealed_bytes <= POSITIONS * (HIDDEN * 4 + 8 + SKETCH_TOP_K * (8 + 2))
    assert revealed_bytes < MAX_REVEAL_BYTES // 100  # it was ~1.08 GB, over the 1 GiB read
    # the node streamed one stored step at a time and the verifier assembled tensor by tensor:
    # the peak is the reveal and its metadata (16k leaves and proofs) once, not ~3 GB
    assert reveal_peak < 256, f"building and reading the reveal took {reveal_peak:.0f} MiB"
    # and the node's disk holds each step's own mask columns, not [batch, past + tokens]
    stored = sum(f.stat().st_size for f in served.store.root.rglob("*.safetensors"))
    assert stored < 2 * revealed_bytes + leaves * 1024, f"{stored} bytes of stored inputs"

    batches = functools.cache(
        lambda i: node.commitments.get_batch(BatchId(i), from_block=deployment.deploy_block)
    )
    proven = prove_leaf(opening, batch=batches(batch_id), leaf_index=index)
    assert proven.leaf.step == leaves - 1 and proven.node == served.account.address
    before = _reset_peak()
    checked = check_opening(opening, proven, batches=batches, hidden_size=HIDDEN)
    recomputed = recompute(span, checked.hidden, checked.mask, checked.last_tokens)
    judgement = judge(checked.sketch, recomputed, checked.dtype)
    audit_peak = _peak() - before
    assert judgement.passed, judgement.failures
    # chunks through a KV cache: never the [positions, positions] attention of one pass (one
    # head's float32 scores alone would be 1 GiB). The peak is this whole process's resident
    # memory, allocator slack included: full suite runs measured up to 279 MiB, hence 384.
    assert audit_peak < AUDIT_PEAK_MIB, f"the audit took {audit_peak:.0f} MiB"


async def _serve(
    span: Span, domain: Domain, account: LocalAccount, ledger: Ledger, tmp_path: Path
) -> ServedNode:
    """node-0 serves one session as its handler does (`StakeswarmNode._step`, less payment):
    the prompt, then one token per step until the default cache is full; every step checked,
    computed with the session's KV cache, signed, and stored with its inputs."""
    store = InputStore(tmp_path / "inputs")
    sessions = SessionManager(CacheManager(CACHE_TOKENS), ledger)
    receipts = Receipts(domain=domain, account=account, model_id=MODEL)
    session_id = os.urandom(32)
    request = OpenSession(session_id, *SPAN, max_length=POSITIONS, batch_size=1, channel_id=1)
    generator = torch.Generator().manual_seed(11)
    with ThreadPoolExecutor(1) as executor:
        writer = LeafWriter(ledger, store, executor)
        session = await sessions.open(request, span, account.address, 1)
        step, past = 0, 0
        while past < POSITIONS:
            tokens = PROMPT if step == 0 else 1
            # hidden: [1, tokens, HIDDEN]; mask: [1, past + tokens], as a client sends them
            hidden = torch.randn(1, tokens, HIDDEN, generator=generator)
            mask = torch.ones(1, past + tokens, dtype=torch.long)
            check_step(session, hidden, mask)
            output = span.forward(hidden, mask, session.cache)
            receipt, encoded = receipts.make_with_sketch(
                session_id=session_id, span=SPAN, step=step, tokens=tokens, hidden_in=hidden,
                hidden_out=output, mask=mask,
            )  # fmt: skip
            writer.submit(receipt, hidden, mask, encoded)
            if step % 64 == 0:
                await asyncio.sleep(0)  # let the ledger thread's groups complete
            step, past = step + 1, past + tokens
        sessions.close(session)
        await writer.flush()
        assert writer.written == step
    return ServedNode(ledger, store, account, session_id)


async def _reveal(
    chain: Chain,
    span: Span,
    domain: Domain,
    served: ServedNode,
    verifier: Contracts,
    account: LocalAccount,
    batch_id: int,
    index: int,
) -> Opening:
    """node-0's reveal RPC on a hivemind peer of its own, asked by the verifier's peer."""
    clock = ChainClock(chain.timestamp)
    clock.refresh()
    address = served.account.address
    node_p2p = await P2P.create()
    verifier_p2p: P2P | None = None
    try:
        with ThreadPoolExecutor(1) as executor:
            handler = StakeswarmNode(
                address=address,
                spans=SpanViews(span),
                price_per_block=1,
                sessions=SessionManager(CacheManager(CACHE_TOKENS), served.ledger),
                payments=IncomingPayments(
                    verifier.payment_channels,
                    served.ledger,
                    node=address,
                    chain_id=chain.chain_id,
                    credit=0,
                    units=TokenUnits.of(verifier.token),
                    min_life=DEFAULTS["channel_min_life"],
                    cache_ttl=DEFAULTS["channel_cache_ttl"],
                    clock=clock,
                    db_executor=executor,
                ),
                receipts=Receipts(domain=domain, account=served.account, model_id=MODEL),
                writer=LeafWriter(served.ledger, served.store, executor),
                store=served.store,
                ledger=served.ledger,
                verifiers=verifier.verifier_registry,
                compute=executor,
                metrics=NodeMetrics(),
                info=lambda: InfoResponse(
                    MODEL_NAME,
                    node_p2p.peer_id.to_base58(),
                    6,
                    ServerInfo(ServerState.ONLINE, *SPAN, 1.0, 1, address, "float32", 0),
                ),
                limits=Limits.of(NodeConfig(model_path=Path("."), devnet=True)),
            )
            await handler.add_p2p_handlers(node_p2p)
            maddrs = [str(m) for m in await node_p2p.get_visible_maddrs()]
            verifier_p2p = await P2P.create(initial_peers=maddrs)
            return await request_reveal(
                verifier_p2p,
                node_p2p.peer_id,
                account,
                node=address,
                batch_id=batch_id,
                leaf_index=index,
                timeout=DEFAULT_REVEAL_TIMEOUT,
            )
    finally:
        if verifier_p2p is not None:
            await verifier_p2p.shutdown()
        await node_p2p.shutdown()


def _status(field: str) -> float:
    """A `VmRSS`/`VmHWM` line of this process's status, in MiB."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None, f"no {field} in /proc/self/status"
    return int(match.group(1)) / 1024


def _reset_peak() -> float:
    """Reset this process's peak resident memory to what it holds now (Linux: clear_refs 5);
    returns that, in MiB."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _peak() -> float:
    """This process's peak resident memory since `_reset_peak`, in MiB."""
    return _status("VmHWM")
