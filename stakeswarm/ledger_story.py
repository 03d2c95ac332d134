"""The money flows of stakeswarm, played on a real chain with scripted serving.

Every transaction here is real (a devnet, the deployed contracts, EIP-712 signatures, a Merkle
tree whose proofs the Slasher checks); only the serving is scripted: the leaves a node commits
are made up rather than computed by transformer blocks. `stakeswarm demo` runs it;
the real-swarm demo replaces the scripted serving with nodes serving a model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.chain import Chain, TxResult
from ledger.contracts import Batch, Contracts
from ledger.deployment import TOKEN, Deployment
from ledger.eip712 import sign_receipt, sign_verdict, sign_voucher
from ledger.merkle import MerkleTree
from ledger.types import (
    BlockIndex,
    ChannelId,
    Leaf,
    Reason,
    Verdict,
    Voucher,
    Wei,
    model_id,
)

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
PRICE_PER_TOKEN_PER_BLOCK = Wei(10**15)  # 0.001 token per token per block


@dataclass(frozen=True)
class Party:
    """A dev account playing a role in the story."""

    name: str
    account: LocalAccount

    @property
    def address(self) -> str:
        return self.account.address


@dataclass
class StoryLog:
    """What happened, step by step: (what, transaction) pairs for the CLI to print."""

    steps: list[tuple[str, TxResult | None]] = field(default_factory=list)

    def add(self, what: str, tx: TxResult | None = None) -> None:
        logger.info("%s%s", what, f" (tx {tx.tx_hash}, gas {tx.gas_used})" if tx else "")
        self.steps.append((what, tx))


@dataclass(frozen=True)
class Snapshot:
    """Balances and stakes of every party at one moment."""

    balances: dict[str, Wei]  # party name -> stake-token balance
    stakes: dict[str, Wei]  # node or verifier name -> active + unbonding stake
    reward_pool: Wei


def _parties(deployment: Deployment) -> dict[str, Party]:
    wanted = ["deployer", "node-0", "node-1", "node-2", "client-0", "verifier-0"]
    return {
        name: Party(name, Account.from_key(deployment.account(name).private_key)) for name in wanted
    }


def snapshot(contracts: Contracts, parties: dict[str, Party]) -> Snapshot:
    balances = {name: contracts.token.balance_of(p.address) for name, p in parties.items()}
    stakes = {}
    for name, p in parties.items():
        if name.startswith("node-"):
            info = contracts.node_registry.get_node(p.address)
            stakes[name] = Wei(info.stake + info.unbonding)
        elif name.startswith("verifier-"):
            v = contracts.verifier_registry.get_verifier(p.address)
            stakes[name] = Wei(v.stake + v.unbonding)
    return Snapshot(balances, stakes, contracts.slasher.reward_pool())


def _scripted_leaf(session: bytes, start: int, end: int, step: int, tokens: int) -> Leaf:
    """A leaf as a node would build it, with made-up tensor hashes (no model runs here),
    signed now."""
    return Leaf(
        session_id=session,
        model_id=model_id(MODEL_NAME),
        span_start=start,
        span_end=end,
        step=step,
        tokens=tokens,
        input_hash=os.urandom(32),
        output_hash=os.urandom(32),
        sketch_hash=os.urandom(32),
        issued_at=int(time.time()),
    )


def run_ledger_story(
    deployment: Deployment,
    chain: Chain,
    log: StoryLog,
    on_snapshot: Callable[[str, Snapshot], None],
) -> tuple[Snapshot, Snapshot]:
    """Play every money flow once on `deployment`; return the snapshots before and after."""
    parties = _parties(deployment)
    as_party = {
        name: Contracts.from_deployment(chain, deployment, chain.sender(p.account))
        for name, p in parties.items()
    }
    reader = as_party["deployer"]
    before = snapshot(reader, parties)
    on_snapshot("before", before)

    # 1. Operators register spans of a 30-block model and stake for them.
    spans = {"node-0": (0, 10), "node-1": (10, 20), "node-2": (20, 30)}
    min_per_block = reader.node_registry.min_stake_per_block()
    for name, (start, end) in spans.items():
        stake = Wei(min_per_block * (end - start) * 2)
        tx = as_party[name].node_registry.register_with_approve(
            model_id(MODEL_NAME),
            BlockIndex(start),
            BlockIndex(end),
            PRICE_PER_TOKEN_PER_BLOCK,
            os.urandom(38),
            stake,
        )
        log.add(f"{name} registered blocks {start}:{end} with {stake / TOKEN:g} tokens staked", tx)

    # 2. A verifier registers with stake.
    verifier_stake = reader.verifier_registry.min_stake()
    tx = as_party["verifier-0"].verifier_registry.register_with_approve(verifier_stake)
    log.add(f"verifier-0 registered with {verifier_stake / TOKEN:g} tokens staked", tx)

    # 3. The client opens a channel to each server and pays per token with cumulative vouchers.
    client = as_party["client-0"]
    expiry = chain.timestamp() + 24 * 3600
    channels: dict[str, ChannelId] = {}
    for name in spans:
        tx = client.payment_channels.open_with_approve(
            parties[name].address, Wei(5 * TOKEN), expiry
        )
        channels[name] = client.payment_channels.opened_channel_id(tx)
        log.add(f"client-0 opened channel {channels[name]} to {name} with 5 tokens", tx)
    channel_domain = reader.payment_channels.domain()
    session = os.urandom(32)
    tokens_per_step = [7, 1, 1, 1, 1]  # a prompt of 7 tokens, then one token per step
    leaves: dict[str, list[Leaf]] = {name: [] for name in spans}
    receipts: dict[str, list[bytes]] = {name: [] for name in spans}
    vouchers: dict[str, Voucher] = {}
    slasher_domain = reader.slasher.domain()
    for name, (start, end) in spans.items():
        paid = 0
        node_key = parties[name].account
        for step, tokens in enumerate(tokens_per_step):
            paid += tokens * PRICE_PER_TOKEN_PER_BLOCK * (end - start)
            unsigned = Voucher(channels[name], paid)
            vouchers[name] = Voucher(
                channels[name],
                paid,
                sign_voucher(channel_domain, unsigned, parties["client-0"].account),
            )
            leaf = _scripted_leaf(session, start, end, step, tokens)
            leaves[name].append(leaf)
            receipts[name].append(sign_receipt(slasher_domain, leaf, node_key))
        log.add(
            f"client-0 signed {len(tokens_per_step)} vouchers to {name}, up to {paid / TOKEN:g} tokens (no transaction)"
        )

    # 4. Each node commits the Merkle root of the leaves it served.
    batches: dict[str, tuple[Batch, MerkleTree]] = {}
    for name in spans:
        tree = MerkleTree([leaf.hash() for leaf in leaves[name]])
        tx = as_party[name].commitments.commit(model_id(MODEL_NAME), tree.root, len(leaves[name]))
        batches[name] = (reader.commitments.committed_batch(tx), tree)
        log.add(
            f"{name} committed batch {batches[name][0].batch_id}: root of {len(leaves[name])} "
            "leaves",
            tx,
        )

    # 5. Each server redeems the client's highest voucher.
    for name in spans:
        tx = as_party[name].payment_channels.redeem_voucher(vouchers[name])
        log.add(
            f"{name} redeemed channel {channels[name]}: {vouchers[name].cumulative_amount / TOKEN:g} tokens",
            tx,
        )

    # 6. The verifier quorum (1 on the devnet) finds leaf 2 of node-1 wrong and slashes it with
    #    the leaf's Merkle proof under the committed root (a claim first, then the slash).
    batch, tree = batches["node-1"]
    batch_id = batch.batch_id
    guilty = leaves["node-1"][2]
    verdict = Verdict(parties["node-1"].address, batch_id, guilty.hash(), Reason.MISMATCH)
    signature = sign_verdict(slasher_domain, verdict, parties["verifier-0"].account)
    signed = Verdict(
        verdict.node,
        batch_id,
        verdict.leaf,
        verdict.reason,
        parties["verifier-0"].address,
        signature,
    )
    tx = as_party["verifier-0"].slasher.slash(
        guilty, batch, 2, tree.proof(2), Reason.MISMATCH, [signed]
    )
    log.add("verifier-0 slashed node-1 for a mismatched leaf, proven under its committed root", tx)

    # 7. node-2 signed two different receipts for one (session, span, step): anyone holding
    #    both (here the client) gets it slashed, no quorum needed.
    honest = leaves["node-2"][3]
    forged = Leaf(**{**honest.__dict__, "output_hash": os.urandom(32)})
    forged_receipt = sign_receipt(slasher_domain, forged, parties["node-2"].account)
    tx = client.slasher.slash_equivocation(
        parties["node-2"].address, honest, receipts["node-2"][3], forged, forged_receipt
    )
    log.add("client-0 slashed node-2 for equivocation (two receipts for one step)", tx)

    # 8. The reward pool goes to the recipient fixed at deployment.
    tx = reader.slasher.release_reward_pool()
    log.add("the reward pool was released to the treasury", tx)

    after = snapshot(reader, parties)
    on_snapshot("after", after)
    return before, after
