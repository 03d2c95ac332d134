"""What the node and verifier registries share: one stake lifecycle (`IStakeRegistry`)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import TxResult
from ledger.contracts.base import ContractWrapper, OnApproval
from ledger.contracts.token import StakeToken
from ledger.types import Address, Wei
from ledger.units import TokenUnits


@dataclass(frozen=True)
class StakeInfo:
    """An account's stake (`IStakeRegistry.Stake`) and when it may withdraw."""

    address: Address
    stake: Wei  # active stake
    unbonding: Wei  # waiting for withdraw
    unbonding_release_at: int  # unix seconds of the unbonding release (0: none)
    withdrawable_after: int  # unix seconds after which `withdraw` works (see `withdrawableAt`)
    registered: bool


class StakeRegistry(ContractWrapper):
    """Add stake, unbond, rebond and withdraw as the sender; read any account's stake. Registration is
    each registry's own (`NodeRegistry.register`, `VerifierRegistry.register`)."""

    def get_stake(self, account: str, *, block: BlockIdentifier = "latest") -> StakeInfo:
        address = to_checksum_address(account)
        raw = self._call("getStake", address, block=block)
        return StakeInfo(
            address=Address(address),
            stake=Wei(int(raw[0])),
            unbonding=Wei(int(raw[1])),
            unbonding_release_at=int(raw[2]),
            withdrawable_after=int(self._call("withdrawableAt", address, block=block)),
            registered=bool(raw[3]),
        )

    def withdrawable_at(self, account: str, *, block: BlockIdentifier = "latest") -> int:
        """Unix seconds after which (strictly) `account` may withdraw what it unbonded."""
        return int(self._call("withdrawableAt", to_checksum_address(account), block=block))

    def total_staked(self, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(int(self._call("totalStaked", block=block)))

    def unbonding_delay(self) -> int:
        return int(self._call("unbondingDelay"))

    def stake_token(self) -> StakeToken:
        """The stake token, writing as this wrapper's sender."""
        return StakeToken(self.chain, self._call("stakeToken"), self.sender)

    @cached_property
    def units(self) -> TokenUnits:
        """The stake token's decimals and symbol (read once): what people read stakes in."""
        return TokenUnits.of(self.stake_token())

    def add_stake(self, amount: Wei) -> TxResult:
        """Pull `amount` more into the sender's stake (approve first, or `add_stake_with_approve`)."""
        return self._transact("addStake", amount)

    def add_stake_with_approve(
        self, amount: Wei, *, on_approval: OnApproval | None = None
    ) -> TxResult:
        """`add_stake`, approving `amount` first if the allowance falls short."""
        return self._transact_with_approve(
            self.stake_token(), amount, "addStake", amount, on_approval=on_approval
        )

    def unbond(self, amount: Wei) -> TxResult:
        return self._transact("unbond", amount)

    def rebond(self, amount: Wei) -> TxResult:
        """Move `amount` of the sender's unbonding stake back into its active stake (no token
        moves); what stays unbonding keeps its release time."""
        return self._transact("rebond", amount)

    def withdraw(self) -> TxResult:
        return self._transact("withdraw")
