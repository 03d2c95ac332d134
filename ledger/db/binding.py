"""Binding a ledger to the chain its state was recorded on.

Channel ids, batch ids, event cursors and cumulative voucher amounts mean something only on the
chain they were recorded on. A devnet restarted in the same home has the same chain id and the
same contract addresses and counts channels and batches from 1 again, so rows keyed by
(chain id, contract, id) would be taken for the new chain's: a client would sign vouchers
continuing from the old chain's amounts, a node would hold a new channel to what an old one
owed, a verifier would resume from a block the new chain has not reached.

`open_chain_ledger` opens a ledger for one chain. The first time, it records an anchor block of
that chain (the deployment's first block) and its hash (`ChainBinding`); every later time, it
asks the chain for that block again. Same hash: the same chain. Another hash, or no such block:
the chain was replaced, and everything in the ledger was recorded on a chain that is gone. An
SQLite ledger is then set aside: renamed next to itself (`ledger.stale-<chain id>-<old hash>-
<time>.sqlite`, kept for inspection), with a warning naming both hashes, and a fresh ledger is
opened in its place. Any other database raises `StaleLedgerError`, which says what to do.

A ledger opened before bindings existed is bound as it is (its state is trusted). A chain
rewound below its tip without changing the anchor (`evm_revert`, a reorg) is not detected.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import URL, select
from sqlalchemy.exc import IntegrityError

from ledger.db.columns import check_bytes, check_int
from ledger.db.engine import Ledger, open_ledger, set_aside, sqlite_path
from ledger.db.models import ChainBinding
from ledger.errors import LedgerDbError

if TYPE_CHECKING:  # ledger.chain imports ledger.db: no runtime import back
    from ledger.chain import Chain
    from ledger.deployment import Deployment

logger = logging.getLogger(__name__)

BlockHash = Callable[[int], bytes | None]  # block number -> its hash, None if there is none


class StaleLedgerError(LedgerDbError):
    """A ledger database holds the state of an earlier chain under the same chain id, and it
    cannot be set aside by renaming a file (it is not an SQLite file)."""


def chain_block_hash(chain: Chain, number: int) -> bytes | None:
    """The hash of block `number` of `chain`, None when the chain has no such block (yet)."""
    block = chain.rpc("eth_getBlockByNumber", [hex(number), False])
    if not block:
        return None
    return bytes.fromhex(str(block["hash"]).removeprefix("0x"))


def open_deployment_ledger(url: str | URL, chain: Chain, deployment: Deployment) -> Ledger:
    """`open_chain_ledger` for a component using `deployment` on `chain`: anchored at the
    deployment's first block."""
    return open_chain_ledger(
        url,
        chain_id=chain.chain_id,
        anchor_block=deployment.deploy_block,
        block_hash=partial(chain_block_hash, chain),
    )


def open_chain_ledger(
    url: str | URL, *, chain_id: int, anchor_block: int, block_hash: BlockHash
) -> Ledger:
    """Open (and migrate) the ledger at `url` for the chain `chain_id`, whose block hashes
    `block_hash` reads; bind it to the chain at `anchor_block` if it is not bound to this chain
    id yet. A ledger bound to a chain that is gone is set aside and a fresh one opened (see the
    module doc; `Ledger.set_aside` says where it went), or `StaleLedgerError` for a database
    that is not an SQLite file."""
    chain_id = check_int(chain_id, "chain id", low=1)
    ledger = open_ledger(url)
    try:
        stale = _stale(ledger, chain_id, block_hash)
        if stale is None:
            _bind(ledger, chain_id, anchor_block, block_hash)
            return ledger
    except BaseException:
        ledger.close()
        raise
    ledger.close()
    binding, now = stale
    found = "no such block" if now is None else f"0x{now.hex()}"
    what = (
        f"the ledger at {ledger.engine.url.render_as_string(hide_password=True)} holds state "
        f"recorded on an earlier chain {chain_id}: its block {binding.block_number} was "
        f"0x{binding.block_hash.hex()}, the chain now has {found}. The chain was restarted, so "
        "the channels, vouchers, commitments and cursors recorded there mean nothing on it"
    )
    path = sqlite_path(url)
    if path is None:
        raise StaleLedgerError(f"{what}; point the ledger at a fresh database, or empty this one")
    aside = set_aside(path, f"stale-{chain_id}-{binding.block_hash[:4].hex()}")
    logger.warning("%s. Moved it to %s and started a fresh ledger.", what, aside)
    fresh = open_ledger(url)
    try:
        _bind(fresh, chain_id, anchor_block, block_hash)
    except BaseException:
        fresh.close()
        raise
    return dataclasses.replace(fresh, set_aside=aside)


def get_binding(ledger: Ledger, chain_id: int) -> ChainBinding | None:
    """The binding recorded for `chain_id`, if any."""
    with ledger.begin() as db:
        return db.scalars(
            select(ChainBinding).where(ChainBinding.chain_id == check_int(chain_id, "chain id"))
        ).one_or_none()


def _stale(
    ledger: Ledger, chain_id: int, block_hash: BlockHash
) -> tuple[ChainBinding, bytes | None] | None:
    """The binding of `chain_id` and the hash its block has now, if they differ."""
    binding = get_binding(ledger, chain_id)
    if binding is None:
        return None
    now = block_hash(binding.block_number)
    return None if now == binding.block_hash else (binding, now)


def _bind(ledger: Ledger, chain_id: int, anchor_block: int, block_hash: BlockHash) -> None:
    if get_binding(ledger, chain_id) is not None:
        return
    anchor_block = check_int(anchor_block, "anchor block")
    found = block_hash(anchor_block)
    if found is None:
        raise LedgerDbError(
            f"chain {chain_id} has no block {anchor_block} (the deployment's first block): "
            "is the deployment file for this chain?"
        )
    try:
        with ledger.begin() as db:
            db.add(
                ChainBinding(
                    chain_id=chain_id,
                    block_number=anchor_block,
                    block_hash=check_bytes(found, "block hash"),
                )
            )
    except IntegrityError:  # another process bound it meanwhile
        if get_binding(ledger, chain_id) is None:
            raise
        return
    logger.info("ledger bound to chain %d at block %d (0x%s)", chain_id, anchor_block, found.hex())
