"""A node's ledger lost or damaged: refuse to start blind, stop serving what it cannot record.

The ledger is the node's memory of what it is owed (the newest voucher of every channel, which
only it holds) and of what it committed (the leaves under each root, which it must reveal when
a verifier samples one). Two failures are silent unless the node looks for them:

- Lost: the file (or its write-ahead log, which after a crash holds every recent transaction)
  was deleted or restored from an old copy. SQLite opens an empty database without a word. At
  start, a ledger with no history of its own is compared with the chain: when the registry
  shows the node registered with stake and the chain shows channels opened to it or batches it
  committed (events since the deployment's first block), `check_new_ledger` refuses to start
  with `LostLedgerError`, listing what can no longer be redeemed or revealed, unless the
  operator said `--new-ledger`; then the same list is logged as a warning and the node starts.
- Stale: a ledger restored from an older backup holds less than the node did. A ledger that
  is not new is compared with the same history: `describe_stale` lists the batches the chain
  shows the node committed whose roots the ledger does not know (their leaves cannot be
  revealed: a sampled or challenged one is slashed as withheld) and the channels the chain
  shows redeemed beyond the newest voucher the ledger holds (vouchers signed after the backup
  are lost; later ones on those channels may be too). The node starts, as an operator who
  restored a backup wants, and logs that list as a WARNING.
- Damaged: pages or the WAL overwritten (`ledger.db.engine.check_sqlite_ledger` refuses such a
  file at start), or a disk failing while the node runs. `is_ledger_failure` tells a storage
  failure of the ledger apart from other errors of a job (a chain that does not answer), and
  `LedgerHealth` remembers the first one: the server then stops taking work (see
  `node.server`) until an operator restarts it on a repaired or restored ledger.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.exc import DatabaseError, IntegrityError

from ledger.contracts import Contracts
from ledger.contracts.commitments import BatchCommitted
from ledger.contracts.payment_channels import Channel
from ledger.db import Ledger
from ledger.db.engine import set_aside
from ledger.db.models import Batch, LeafRecord, ServedSession
from ledger.db.models import Channel as ChannelRow
from ledger.errors import LedgerDamagedError
from ledger.types import ChannelId
from ledger.units import TokenUnits, format_time
from node.errors import NodeError

logger = logging.getLogger(__name__)

LISTED = 20  # channels and batches named one by one in the message; the rest are counted


class LostLedgerError(NodeError):
    """The ledger is new but the chain shows this node's history: starting would silently
    forfeit what it is owed and leave its commitments unrevealable."""


@dataclass(frozen=True)
class ChainHistory:
    """What the chain says this node did since the deployment's first block."""

    address: str  # the node's
    registered: bool
    stake: int  # base units, active stake
    channels: tuple[Channel, ...]  # every channel ever opened to the node, as it is now
    batches: tuple[BatchCommitted, ...]  # every batch it committed

    @property
    def open_channels(self) -> tuple[Channel, ...]:
        """Channels still holding escrow for the node: vouchers it can no longer redeem."""
        return tuple(c for c in self.channels if c.remaining > 0)

    @property
    def shows_service(self) -> bool:
        """Registered with stake and served: a ledger must exist somewhere."""
        return self.registered and self.stake > 0 and bool(self.channels or self.batches)


def read_chain_history(contracts: Contracts, address: str, from_block: int) -> ChainHistory:
    """`address`'s registration, the channels opened to it and the batches it committed, from
    the chain's events since `from_block` (the deployment's first block)."""
    node = contracts.node_registry.get_node(address)
    channels = contracts.payment_channels
    opened = channels.events("ChannelOpened", from_block=from_block, server=address)
    return ChainHistory(
        address=address,
        registered=node.registered,
        stake=int(node.stake),
        channels=tuple(
            channels.get_channel(ChannelId(int(event.args["channelId"]))) for event in opened
        ),
        batches=tuple(contracts.commitments.batches_committed(from_block=from_block, node=address)),
    )


def ledger_is_new(ledger: Ledger) -> bool:
    """Whether the node's ledger holds no history: no channel, session, leaf or batch."""
    with ledger.begin() as db:
        return not any(
            db.scalar(select(exists().select_from(table)))
            for table in (ChannelRow, ServedSession, LeafRecord, Batch)
        )


def describe_loss(history: ChainHistory, *, units: TokenUnits) -> list[str]:
    """The lines that say what a node starting on a new ledger loses."""
    lines = []
    open_channels = history.open_channels
    escrow = sum(c.remaining for c in open_channels)
    lines.append(
        f"{len(open_channels)} channel(s) still hold {units.show(escrow)} for this node; it "
        "cannot redeem the vouchers it was given on them (only its ledger held them):"
    )
    lines += _listed(
        [
            f"channel {c.channel_id} from {c.client}: deposit {units.show(c.deposit)}, redeemed "
            f"{units.show(c.redeemed)}, expires {format_time(c.expiry)} (then the client "
            "reclaims it)"
            for c in open_channels
        ]
    )
    leaves = sum(b.leaf_count for b in history.batches)
    lines.append(
        f"{len(history.batches)} batch(es) of {leaves} leaves were committed by this node; it "
        "cannot reveal their inputs or prove their leaves, so a sampled or challenged leaf of "
        "theirs is slashed as withheld while its challenge window runs:"
    )
    lines += _listed([_batch_line(b) for b in history.batches])
    return lines


def _listed(items: list[str]) -> list[str]:
    """`items` indented, the first `LISTED` of them, and a count of the rest."""
    shown = [f"  {item}" for item in items[:LISTED]]
    if len(items) > LISTED:
        shown.append(f"  ... and {len(items) - LISTED} more")
    return shown


def _batch_line(batch: BatchCommitted) -> str:
    return f"batch {batch.batch_id} ({batch.leaf_count} leaves) committed in block {batch.block_number}"


def check_new_ledger(
    history: ChainHistory,
    *,
    ledger_path: Path | str,
    address: str,
    units: TokenUnits,
    allow: bool,
) -> None:
    """Refuse (`LostLedgerError`) a new ledger for a node whose history the chain shows, unless
    `allow` (`--new-ledger`): then log the loss as a warning."""
    if not history.shows_service:
        return
    loss = "\n".join(describe_loss(history, units=units))
    if allow:
        logger.warning(
            "STARTING ON A NEW LEDGER (--new-ledger) at %s although the chain shows node %s "
            "registered and served:\n%s",
            ledger_path,
            address,
            loss,
        )
        return
    raise LostLedgerError(
        f"the ledger {ledger_path} is new, but the chain shows node {address} registered with "
        "stake and serving: its ledger was deleted, lost (with its -wal file) or replaced. "
        f"Starting on it would lose:\n{loss}\n"
        "Stop and restore the ledger from a backup (the file together with its -wal; see "
        "docs/operator.md, 'Crashes and backups'). To accept the loss and start anyway, run "
        "again with --new-ledger."
    )


def describe_stale(history: ChainHistory, ledger: Ledger, *, units: TokenUnits) -> list[str]:
    """What the chain shows this node did that `ledger` (not new) does not know: empty when
    the ledger is as recent as the chain can tell."""
    with ledger.begin() as db:
        roots = set(db.scalars(select(Batch.root)))
        vouchers = {
            row.channel_id: row.voucher_amount
            for row in db.scalars(select(ChannelRow).where(ChannelRow.server == history.address))
        }
    unknown = [b for b in history.batches if b.root not in roots]
    behind = [c for c in history.channels if c.redeemed > vouchers.get(c.channel_id, 0)]
    if not unknown and not behind:
        return []
    lines = []
    if unknown:
        leaves = sum(b.leaf_count for b in unknown)
        lines.append(
            f"{len(unknown)} batch(es) of {leaves} leaves committed by this node are not in the "
            "ledger; it cannot reveal their inputs or prove their leaves, so a sampled or "
            "challenged leaf of theirs is slashed as withheld while its challenge window runs:"
        )
        lines += _listed([_batch_line(b) for b in unknown])
    if behind:
        lines.append(
            f"{len(behind)} channel(s) were redeemed on-chain beyond the newest voucher the "
            "ledger holds: the vouchers signed after the backup are lost (what they paid beyond "
            "the redeemed amount cannot be claimed):"
        )
        lines += _listed(
            [
                f"channel {c.channel_id} from {c.client}: redeemed {units.show(c.redeemed)}, "
                f"the ledger's newest voucher {units.show(vouchers.get(c.channel_id, 0))}"
                for c in behind
            ]
        )
    return lines


def warn_if_stale(
    history: ChainHistory, ledger: Ledger, *, ledger_path: Path | str, units: TokenUnits
) -> None:
    """Log, as a WARNING, what the chain shows that the ledger lost (`describe_stale`)."""
    lines = describe_stale(history, ledger, units=units)
    if lines:
        logger.warning(
            "STALE LEDGER at %s (restored from an older backup?): the chain shows node %s did "
            "more than the ledger records:\n%s\nThe node serves on; consider unbonding and "
            "waiting out the challenge window (docs/operator.md, 'Crashes and backups').",
            ledger_path,
            history.address,
            "\n".join(lines),
        )


def set_aside_damaged(path: Path) -> Path:
    """Rename the damaged SQLite ledger at `path` (and its -wal, -shm) next to itself."""
    return set_aside(path, "damaged")


def is_ledger_failure(exc: BaseException) -> bool:
    """Whether `exc` (or an error it was raised from) is the ledger's storage failing: a
    malformed or unreadable database, a disk or permission error writing it. Not a constraint
    refused (a bug, not the disk) and not a lock held a while (another process)."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, LedgerDamagedError):
            return True
        if isinstance(error, (DatabaseError, sqlite3.DatabaseError)) and not isinstance(
            error, (IntegrityError, sqlite3.IntegrityError)
        ):
            text = str(error).lower()
            return "locked" not in text and "busy" not in text
        error = error.__cause__ or error.__context__
    return False


class LedgerHealth:
    """Whether the node's ledger still works: the first storage failure a job met, kept until
    the node is restarted (a ledger that failed once is not trusted again unchecked)."""

    def __init__(self) -> None:
        self.failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def record(self, job: str, exc: BaseException) -> bool:
        """Note `exc`, raised by `job`, if it is a ledger failure (the first one is kept); True
        if it is."""
        if not is_ledger_failure(exc):
            return False
        if self.failure is None:
            self.failure = f"the ledger failed in the {job} job: {exc}"
        return True
