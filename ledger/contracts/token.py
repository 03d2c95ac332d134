"""The stake token: an ERC20 with EIP-2612 permit (StakeToken on the devnet)."""

from __future__ import annotations

import logging

from eth_utils import to_checksum_address
from web3.types import BlockIdentifier

from ledger.chain import TxResult
from ledger.contracts.base import ContractWrapper
from ledger.types import Wei

logger = logging.getLogger(__name__)


class StakeToken(ContractWrapper):
    """Balances, allowances and transfers of the stake token, in base units (`Wei`)."""

    abi_name = "StakeToken"

    def name(self) -> str:
        return str(self._call("name"))

    def symbol(self) -> str:
        return str(self._call("symbol"))

    def decimals(self) -> int:
        return int(self._call("decimals"))

    def total_supply(self, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(int(self._call("totalSupply", block=block)))

    def balance_of(self, owner: str, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(int(self._call("balanceOf", to_checksum_address(owner), block=block)))

    def allowance(self, owner: str, spender: str, *, block: BlockIdentifier = "latest") -> Wei:
        return Wei(
            int(
                self._call(
                    "allowance",
                    to_checksum_address(owner),
                    to_checksum_address(spender),
                    block=block,
                )
            )
        )

    def transfer(self, to: str, amount: Wei) -> TxResult:
        return self._transact("transfer", to_checksum_address(to), amount)

    def approve(self, spender: str, amount: Wei) -> TxResult:
        return self._transact("approve", to_checksum_address(spender), amount)

    def ensure_allowance(self, spender: str, amount: Wei) -> TxResult | None:
        """Approve `spender` for `amount` unless the sender's allowance already covers it;
        returns the approval, or None when none was needed."""
        owner = self._sender_address()
        current = self.allowance(owner, spender)
        if current >= amount:
            return None
        logger.debug("approving %s for %d (allowance was %d)", spender, amount, current)
        return self.approve(spender, amount)
