"""Commitments: the Merkle roots of the leaves each node served, one per batch."""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import ChainError, DecodedEvent, TxOutcome, TxResult
from ledger.contracts.base import ContractWrapper, NoSenderError
from ledger.types import Address, BatchId, ModelId

# The revert of a commit whose root the node already committed (ICommitments).
ROOT_ALREADY_COMMITTED = "CommitmentsRootAlreadyCommitted"


class UnknownBatchError(ChainError):
    """No batch with this id was committed (or its header cannot be found in the events)."""


@dataclass(frozen=True)
class Batch:
    """One committed batch: its id and its header (`ICommitments.BatchHeader`), as the
    `BatchCommitted` event tells it. The contract stores only the header's hash; slashing gives
    the header back (`as_header`)."""

    batch_id: BatchId
    node: Address  # who committed it (and is slashable for it)
    model_id: ModelId
    root: bytes  # 32-byte Merkle root of the batch's leaves
    leaf_count: int
    committed_at: int  # unix seconds of the commit's block

    def as_header(self) -> tuple[str, bytes, bytes, int, int]:
        """The `BatchHeader` tuple the Slasher takes."""
        return (self.node, self.model_id, self.root, self.leaf_count, self.committed_at)

    def header_hash(self) -> bytes:
        """`keccak256(abi.encode(header))`: what `Commitments.batchHash` stores."""
        return keccak(abi_encode(["(address,bytes32,bytes32,uint32,uint64)"], [self.as_header()]))


@dataclass(frozen=True)
class BatchCommitted:
    """A `BatchCommitted` event: what a verifier follows."""

    batch: Batch
    block_number: int
    tx_hash: str

    @property
    def batch_id(self) -> BatchId:
        return self.batch.batch_id

    @property
    def node(self) -> Address:
        return self.batch.node

    @property
    def model_id(self) -> ModelId:
        return self.batch.model_id

    @property
    def root(self) -> bytes:
        return self.batch.root

    @property
    def leaf_count(self) -> int:
        return self.batch.leaf_count

    @classmethod
    def from_event(cls, event: DecodedEvent) -> BatchCommitted:
        args = event.args
        batch = Batch(
            batch_id=BatchId(int(args["batchId"])),
            node=Address(to_checksum_address(args["node"])),
            model_id=ModelId(bytes(args["modelId"])),
            root=bytes(args["root"]),
            leaf_count=int(args["leafCount"]),
            committed_at=int(args["committedAt"]),
        )
        return cls(batch=batch, block_number=event.block_number, tx_hash=event.tx_hash)


class Commitments(ContractWrapper):
    """Commit batch roots as a node; read batches and follow commits."""

    abi_name = "Commitments"

    def commit(self, model_id: ModelId, root: bytes, leaf_count: int) -> TxResult:
        """Commit one batch root; the new id is in the result's `BatchCommitted` event
        (see `committed_batch_id`)."""
        return self._transact("commit", model_id, root, leaf_count)

    @property
    def commit_action(self) -> str:
        """How the sender names a `commit` transaction in the ledger's sent transactions."""
        return f"{self.abi_name}.commit"

    def reconcile(self, tx_hash: str, nonce: int) -> TxOutcome:
        """What became of a `commit` transaction this wrapper's sender sent earlier (e.g. before a
        crash): `Sender.reconcile`."""
        if self.sender is None:
            raise NoSenderError("Commitments.reconcile: build the wrapper with a Sender")
        return self.sender.reconcile(tx_hash, nonce, action=self.commit_action)

    def batch_of_root(
        self, node: str, root: bytes, *, block: BlockIdentifier = "latest"
    ) -> BatchId | None:
        """The batch in which `node` committed `root`, None if it never did (a node commits a
        root once)."""
        batch_id = int(self._call("batchOfRoot", to_checksum_address(node), root, block=block))
        return BatchId(batch_id) if batch_id else None

    def batch_committed(self, batch_id: BatchId, *, from_block: int = 0) -> BatchCommitted:
        """The `BatchCommitted` event of batch `batch_id` (searched from `from_block`);
        `UnknownBatchError` if there is none."""
        for event in self.events("BatchCommitted", from_block=from_block, batchId=batch_id):
            found = BatchCommitted.from_event(event)
            if found.batch_id == batch_id:
                return found
        raise UnknownBatchError(
            f"batch {batch_id}: no BatchCommitted event from block {from_block}"
        )

    @staticmethod
    def committed_batch_id(result: TxResult) -> BatchId:
        """The batch id a `commit` transaction created."""
        return BatchId(int(result.event("BatchCommitted").args["batchId"]))

    @staticmethod
    def committed_batch(result: TxResult) -> Batch:
        """The batch a `commit` transaction created."""
        event = result.event("BatchCommitted")
        return BatchCommitted.from_event(event).batch

    def get_batch(
        self, batch_id: BatchId, *, from_block: int = 0, block: BlockIdentifier = "latest"
    ) -> Batch:
        """Batch `batch_id`'s header, from its `BatchCommitted` event (searched from
        `from_block`), checked against the hash the contract stored; `UnknownBatchError` if no
        such batch was committed."""
        stored = self.batch_hash(batch_id, block=block)
        if stored == bytes(32):
            raise UnknownBatchError(f"no batch {batch_id} was committed")
        for event in self.events(
            "BatchCommitted", from_block=from_block, to_block=block, batchId=batch_id
        ):
            batch = BatchCommitted.from_event(event).batch
            if batch.batch_id == batch_id and batch.header_hash() == stored:
                return batch
        raise UnknownBatchError(
            f"batch {batch_id}: no BatchCommitted event from block {from_block}"
        )

    def batch_hash(self, batch_id: BatchId, *, block: BlockIdentifier = "latest") -> bytes:
        """The stored header hash of batch `batch_id` (32 zero bytes: no such batch)."""
        return bytes(self._call("batchHash", batch_id, block=block))

    def batch_count(self, *, block: BlockIdentifier = "latest") -> int:
        return int(self._call("batchCount", block=block))

    def max_leaves(self) -> int:
        """The most leaves one batch may hold."""
        return int(self._call("maxLeaves"))

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
