"""What every typed contract wrapper shares: reads through the `Chain`, writes through a `Sender`."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from web3.types import BlockIdentifier

from ledger.chain import (
    BoundContract,
    Chain,
    ChainError,
    ContractRevert,
    DecodedEvent,
    Sender,
    TxResult,
)
from ledger.types import Wei

if TYPE_CHECKING:
    from ledger.contracts.token import StakeToken

# The revert a pull of tokens gives while the allowance is missing: approving fixes it.
ALLOWANCE_ERRORS = frozenset({"ERC20InsufficientAllowance"})
OnApproval = Callable[[TxResult], None]


class NoSenderError(ChainError):
    """A write was attempted on a wrapper built without a `Sender` (read-only)."""


class ContractWrapper:
    """One deployed contract. Reads need only the chain; writes need the wrapper's sender."""

    abi_name: str = ""  # the contract (ABI) name; set by each subclass

    def __init__(self, chain: Chain, address: str, sender: Sender | None = None) -> None:
        self.chain = chain
        self.contract: BoundContract = chain.contract(address, self.abi_name)
        self.sender = sender

    @property
    def address(self) -> str:
        return self.contract.address

    def with_sender(self, sender: Sender) -> Any:
        """The same contract, writing as `sender`."""
        return type(self)(self.chain, self.address, sender)

    @cached_property
    def eip712_salt(self) -> bytes:
        """The salt of this contract's EIP-712 domain (`SaltedEIP712`), read once from its
        ERC-5267 `eip712Domain()`."""
        return bytes(self._call("eip712Domain")[5])

    def _call(self, function: str, *args: Any, block: BlockIdentifier = "latest") -> Any:
        return self.chain.call(self.contract, function, *args, block=block)

    def _transact(self, function: str, *args: Any, value: int = 0) -> TxResult:
        if self.sender is None:
            raise NoSenderError(
                f"{self.abi_name}.{function} sends a transaction: build the wrapper with a Sender"
            )
        return self.sender.transact(self.contract, function, *args, value=value)

    def _transact_with_approve(
        self,
        token: StakeToken,
        amount: Wei,
        function: str,
        *args: Any,
        on_approval: OnApproval | None = None,
    ) -> TxResult:
        """Send `function(*args)`, which pulls `amount` of `token` from the sender, approving
        this contract first if the allowance falls short. The call is simulated before any
        approval, so one that would revert for another reason (e.g. too little stake) raises
        that error and approves nothing. `on_approval` sees the approval when one was sent."""
        sender = self._sender_address()
        try:
            self.chain.simulate(self.contract, function, *args, sender=sender)
        except ContractRevert as exc:
            if exc.name not in ALLOWANCE_ERRORS:
                raise
        approval = token.ensure_allowance(self.address, amount)
        if approval is not None and on_approval is not None:
            on_approval(approval)
        return self._transact(function, *args)

    def _sender_address(self) -> str:
        if self.sender is None:
            raise NoSenderError(f"{self.abi_name}: this needs a Sender")
        return self.sender.address

    def events(
        self,
        event: str,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        **argument_filters: Any,
    ) -> list[DecodedEvent]:
        """Decoded `event` logs of this contract in `[from_block, to_block]` (indexed arguments
        may be filtered by keyword)."""
        return self.chain.get_events(
            self.contract,
            event,
            from_block=from_block,
            to_block=to_block,
            argument_filters=argument_filters or None,
        )
