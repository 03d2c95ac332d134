"""Commitments: the Merkle roots of the leaves each node served, one per batch."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import DecodedEvent, TxResult
from ledger.contracts.base import ContractWrapper
from ledger.types import Address, BatchId, ModelId


@dataclass(frozen=True)
class Batch:
    """One committed batch (`ICommitments.Batch`)."""

    batch_id: BatchId
    node: Address  # who committed it (and is slashable for it)
    model_id: ModelId
    root: bytes  # 32-byte Merkle root of the batch's leaves
    leaf_count: int
    token_count: int  # tokens served across the leaves
    committed_at: int  # unix seconds of the commit's block


@dataclass(frozen=True)
class BatchCommitted:
    """A `BatchCommitted` event: what a verifier follows."""

    batch_id: BatchId
    node: Address
    model_id: ModelId
    root: bytes
    leaf_count: int
    token_count: int
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> BatchCommitted:
        args = event.args
        return cls(
            batch_id=BatchId(int(args["batchId"])),
            node=Address(to_checksum_address(args["node"])),
            model_id=ModelId(bytes(args["modelId"])),
            root=bytes(args["root"]),
            leaf_count=int(args["leafCount"]),
            token_count=int(args["tokenCount"]),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


class Commitments(ContractWrapper):
    """Commit batch roots as a node; read batches and follow commits."""

    abi_name = "Commitments"

    def commit(self, model_id: ModelId, root: bytes, leaf_count: int, token_count: int) -> TxResult:
        """Commit one batch root; the new id is in the result's `BatchCommitted` event
        (see `committed_batch_id`)."""
        return self._transact("commit", model_id, root, leaf_count, token_count)

    @staticmethod
    def committed_batch_id(result: TxResult) -> BatchId:
        """The batch id a `commit` transaction created."""
        return BatchId(int(result.event("BatchCommitted").args["batchId"]))

    def get_batch(self, batch_id: BatchId, *, block: BlockIdentifier = "latest") -> Batch:
        raw = self._call("getBatch", batch_id, block=block)
        return Batch(
            batch_id=batch_id,
            node=Address(to_checksum_address(raw[0])),
            model_id=ModelId(bytes(raw[1])),
            root=bytes(raw[2]),
            leaf_count=int(raw[3]),
            token_count=int(raw[4]),
            committed_at=int(raw[5]),
        )

    def batch_count(self, *, block: BlockIdentifier = "latest") -> int:
        return int(self._call("batchCount", block=block))

    def batches_committed(
        self,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        node: str | None = None,
        model_id: ModelId | None = None,
    ) -> list[BatchCommitted]:
        """`BatchCommitted` events in `[from_block, to_block]`, optionally of one node or model."""
        filters: dict[str, object] = {}
        if node is not None:
            filters["node"] = to_checksum_address(node)
        if model_id is not None:
            filters["modelId"] = model_id
        events = self.events("BatchCommitted", from_block=from_block, to_block=to_block, **filters)
        return [BatchCommitted.from_event(event) for event in events]
