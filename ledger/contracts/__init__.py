"""Typed wrappers, one per contract, returning frozen dataclasses for reads and `TxResult` for
writes. `Contracts.from_deployment` builds all of them for one deployment and one sender."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.chain import Chain, Sender
from ledger.contracts.base import ContractWrapper, NoSenderError
from ledger.contracts.commitments import Batch, BatchCommitted, Commitments
from ledger.contracts.node_registry import NodeInfo, NodeRegistered, NodeRegistry
from ledger.contracts.payment_channels import Channel, PaymentChannels
from ledger.contracts.slasher import (
    EquivocationSlashed,
    LeafSlashed,
    LeafWithheldSlashed,
    ReceiptChallengeSlashed,
    Slasher,
    SlasherParams,
)
from ledger.contracts.token import StakeToken
from ledger.contracts.verifier_registry import VerifierInfo, VerifierRegistered, VerifierRegistry
from ledger.deployment import Deployment

__all__ = [
    "Batch",
    "BatchCommitted",
    "Channel",
    "Commitments",
    "ContractWrapper",
    "EquivocationSlashed",
    "Contracts",
    "LeafSlashed",
    "LeafWithheldSlashed",
    "NoSenderError",
    "NodeInfo",
    "NodeRegistered",
    "NodeRegistry",
    "PaymentChannels",
    "ReceiptChallengeSlashed",
    "Slasher",
    "SlasherParams",
    "StakeToken",
    "VerifierInfo",
    "VerifierRegistered",
    "VerifierRegistry",
]


@dataclass(frozen=True)
class Contracts:
    """Every contract of one deployment, reading through `chain` and writing as `sender`."""

    token: StakeToken
    node_registry: NodeRegistry
    commitments: Commitments
    payment_channels: PaymentChannels
    verifier_registry: VerifierRegistry
    slasher: Slasher

    @classmethod
    def from_deployment(
        cls, chain: Chain, deployment: Deployment, sender: Sender | None = None
    ) -> Contracts:
        addresses = deployment.contracts
        return cls(
            token=StakeToken(chain, addresses.stake_token, sender),
            node_registry=NodeRegistry(chain, addresses.node_registry, sender),
            commitments=Commitments(chain, addresses.commitments, sender),
            payment_channels=PaymentChannels(chain, addresses.payment_channels, sender),
            verifier_registry=VerifierRegistry(chain, addresses.verifier_registry, sender),
            slasher=Slasher(chain, addresses.slasher, sender),
        )

    def with_sender(self, sender: Sender) -> Contracts:
        """The same contracts, writing as `sender`."""
        return Contracts(
            token=self.token.with_sender(sender),
            node_registry=self.node_registry.with_sender(sender),
            commitments=self.commitments.with_sender(sender),
            payment_channels=self.payment_channels.with_sender(sender),
            verifier_registry=self.verifier_registry.with_sender(sender),
            slasher=self.slasher.with_sender(sender),
        )
