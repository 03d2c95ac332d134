"""The verifier registry: who may sign verdicts, with what stake."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import DecodedEvent, TxResult
from ledger.contracts.base import OnApproval
from ledger.contracts.stake import StakeInfo, StakeRegistry
from ledger.types import Address, Wei

VerifierInfo = StakeInfo  # a verifier is its stake: the shared lifecycle's record


@dataclass(frozen=True)
class VerifierRegistered:
    """A `VerifierRegistered` event: an account became a verifier with `stake`."""

    verifier: Address
    stake: Wei  # staked at registration
    block_number: int
    tx_hash: str

    @classmethod
    def from_event(cls, event: DecodedEvent) -> VerifierRegistered:
        return cls(
            verifier=Address(to_checksum_address(event.args["verifier"])),
            stake=Wei(int(event.args["stake"])),
            block_number=event.block_number,
            tx_hash=event.tx_hash,
        )


class VerifierRegistry(StakeRegistry):
    """Register, stake, unbond and withdraw as a verifier; read any verifier."""

    abi_name = "VerifierRegistry"

    def get_verifier(self, verifier: str, *, block: BlockIdentifier = "latest") -> VerifierInfo:
        """The stake of `verifier` (all zero if it never registered)."""
        return self.get_stake(verifier, block=block)

    def is_active(self, verifier: str, *, block: BlockIdentifier = "latest") -> bool:
        return bool(self._call("isActive", to_checksum_address(verifier), block=block))

    def verifiers_registered(
        self, *, from_block: int = 0, to_block: BlockIdentifier = "latest"
    ) -> list[VerifierRegistered]:
        """`VerifierRegistered` events in `[from_block, to_block]`."""
        events = self.events("VerifierRegistered", from_block=from_block, to_block=to_block)
        return [VerifierRegistered.from_event(event) for event in events]

    def min_stake(self) -> Wei:
        return Wei(int(self._call("minStake")))

    def register(self, stake: Wei) -> TxResult:
        return self._transact("register", stake)

    def register_with_approve(
        self, stake: Wei, *, on_approval: OnApproval | None = None
    ) -> TxResult:
        """Register, approving `stake` first if the allowance falls short (only when the
        registration would otherwise succeed)."""
        return self._transact_with_approve(
            self.stake_token(), stake, "register", stake, on_approval=on_approval
        )
