"""The node registry: who serves which blocks of which model, at what price, with what stake."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import DecodedEvent, TxResult
from ledger.contracts.base import OnApproval
from ledger.contracts.stake import StakeRegistry
from ledger.types import Address, BlockIndex, ModelId, Wei


@dataclass(frozen=True)
class NodeInfo:
    """A node's registration and stake (`INodeRegistry.Node`)."""

    address: Address
    model_id: ModelId
    span_start: BlockIndex  # first block served
    span_end: BlockIndex  # one past the last block served
    price_per_token_per_block: Wei
    peer_id: bytes  # libp2p peer id bytes
    stake: Wei  # active stake
    unbonding: Wei  # waiting for withdraw, still slashable
    unbonding_release_at: int  # unix seconds when `unbonding` may be withdrawn (0: none)
    last_commit_at: int  # unix seconds of the node's last commit (0: none); holds withdrawals
    registered: bool

    @property
    def span_length(self) -> int:
        return self.span_end - self.span_start

    @property
    def price_per_token(self) -> Wei:
        """What a client pays this node per token: price per block times the span length."""
        return Wei(self.price_per_token_per_block * self.span_length)


@dataclass(frozen=True)
class NodeRegistered:
    """A `NodeRegistered` event: a node joined the registry (its registration now may differ:
    `NodeRegistry.get_node` reads the current one)."""

    node: Address
    model_id: ModelId
    span_start: BlockIndex
    span_end: BlockIndex
    price_per_token_per_block: Wei
    peer_id: bytes  # libp2p peer id bytes
    stake: Wei  # staked at registration
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> NodeRegistered:
        args = event.args
        return cls(
            node=Address(to_checksum_address(args["node"])),
            model_id=ModelId(bytes(args["modelId"])),
            span_start=BlockIndex(int(args["spanStart"])),
            span_end=BlockIndex(int(args["spanEnd"])),
            price_per_token_per_block=Wei(int(args["pricePerTokenPerBlock"])),
            peer_id=bytes(args["peerId"]),
            stake=Wei(int(args["stake"])),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


class NodeRegistry(StakeRegistry):
    """Register, stake, unbond and withdraw as a node; read any node's registration."""

    abi_name = "NodeRegistry"

    def get_node(self, node: str, *, block: BlockIdentifier = "latest") -> NodeInfo:
        raw = self._call("getNode", to_checksum_address(node), block=block)
        return NodeInfo(
            address=Address(to_checksum_address(node)),
            model_id=ModelId(bytes(raw[0])),
            span_start=BlockIndex(int(raw[1])),
            span_end=BlockIndex(int(raw[2])),
            price_per_token_per_block=Wei(int(raw[3])),
            peer_id=bytes(raw[4]),
            stake=Wei(int(raw[5])),
            unbonding=Wei(int(raw[6])),
            unbonding_release_at=int(raw[7]),
            last_commit_at=int(raw[8]),
            registered=bool(raw[9]),
        )

    def is_active(self, node: str, *, block: BlockIdentifier = "latest") -> bool:
        return bool(self._call("isActive", to_checksum_address(node), block=block))

    def nodes_registered(
        self,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        model_id: ModelId | None = None,
    ) -> list[NodeRegistered]:
        """`NodeRegistered` events in `[from_block, to_block]`, optionally of one model."""
        filters = {"modelId": model_id} if model_id is not None else {}
        events = self.events("NodeRegistered", from_block=from_block, to_block=to_block, **filters)
        return [NodeRegistered.from_event(event) for event in events]

    def required_stake(self, span_start: int, span_end: int) -> Wei:
        return Wei(int(self._call("requiredStake", span_start, span_end)))

    def slashable_stake(self, node: str, *, block: BlockIdentifier = "latest") -> Wei:
        """What a slash of `node` can reach: active plus unbonding stake."""
        return Wei(int(self._call("slashableStake", to_checksum_address(node), block=block)))

    def min_stake_per_block(self) -> Wei:
        return Wei(int(self._call("minStakePerBlock")))

    def slasher(self) -> Address:
        return Address(to_checksum_address(self._call("slasher")))

    def commitments(self) -> Address:
        return Address(to_checksum_address(self._call("commitments")))

    def register(
        self,
        model_id: ModelId,
        span_start: BlockIndex,
        span_end: BlockIndex,
        price_per_token_per_block: Wei,
        peer_id: bytes,
        stake: Wei,
    ) -> TxResult:
        """Register the sender (the registry pulls `stake`: approve first, or use
        `register_with_approve`)."""
        return self._transact(
            "register", model_id, span_start, span_end, price_per_token_per_block, peer_id, stake
        )

    def register_with_approve(
        self,
        model_id: ModelId,
        span_start: BlockIndex,
        span_end: BlockIndex,
        price_per_token_per_block: Wei,
        peer_id: bytes,
        stake: Wei,
        *,
        on_approval: OnApproval | None = None,
    ) -> TxResult:
        """Register, approving the registry for `stake` first if the allowance falls short
        (only when the registration would otherwise succeed)."""
        return self._transact_with_approve(
            self.stake_token(),
            stake,
            "register",
            model_id,
            span_start,
            span_end,
            price_per_token_per_block,
            peer_id,
            stake,
            on_approval=on_approval,
        )

    def update_service(
        self,
        model_id: ModelId,
        span_start: BlockIndex,
        span_end: BlockIndex,
        price_per_token_per_block: Wei,
        peer_id: bytes,
    ) -> TxResult:
        return self._transact(
            "updateService", model_id, span_start, span_end, price_per_token_per_block, peer_id
        )
