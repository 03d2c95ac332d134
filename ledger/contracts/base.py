"""What every typed contract wrapper shares: reads through the `Chain`, writes through a `Sender`."""

from __future__ import annotations

from typing import Any

from web3.types import BlockIdentifier

from ledger.chain import BoundContract, Chain, ChainError, DecodedEvent, Sender, TxResult


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

    def _call(self, function: str, *args: Any, block: BlockIdentifier = "latest") -> Any:
        return self.chain.call(self.contract, function, *args, block=block)

    def _transact(self, function: str, *args: Any, value: int = 0) -> TxResult:
        if self.sender is None:
            raise NoSenderError(
                f"{self.abi_name}.{function} sends a transaction: build the wrapper with a Sender"
            )
        return self.sender.transact(self.contract, function, *args, value=value)

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
