"""Chain access: one JSON-RPC connection (`Chain`) and one transaction sender per key (`Sender`).

Every transaction goes the same way: encode, static-call (`eth_call` from the sender, so a
revert is caught before paying gas), estimate gas, take the key's next nonce, price with
EIP-1559 fees, sign locally, send raw, await the receipt. Reverts are decoded against the ABIs
of every compiled contract (ours and the OpenZeppelin ones they use) and raised as
`ContractRevert` with the error's name and arguments, never as a hex blob.

With a `TxJournal` (`ledger.txjournal`), a `Sender` reports every transaction it sends and what
became of it; the ledger's journal is `Ledger.tx_journal()`. After a restart,
`Sender.reconcile` tells what became of a transaction the journal recorded as sent but never
saw mined (looked up by hash, then by nonce): mined, reverted, still pending, or
dropped (its nonce taken by another transaction, or unknown to the node).

Nonces: one `NonceManager` per (RPC endpoint, address) in the process, shared by every
`Sender` of that key, so threads sending concurrently get distinct, gapless nonces. It
resyncs from `eth_getTransactionCount(pending)` after any failure, and on `Chain.reset_nonces`
(call it after `evm_revert`).
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ContractLogicError,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.types import BlockIdentifier, Nonce, TxData, TxParams, TxReceipt, Wei

from ledger.abi_codec import (  # re-exported: callers import these from ledger.chain
    AbiCodec,
    ChainError,
    ContractRevert,
    DecodedEvent,
    format_value,
)
from ledger.errors import LedgerError
from ledger.txjournal import SettledStatus, TxJournal

__all__ = [
    "AbiCodec",
    "BoundContract",
    "Chain",
    "ChainError",
    "ContractRevert",
    "DecodedEvent",
    "NonceManager",
    "Sender",
    "TransactionTimeout",
    "TxFate",
    "TxOutcome",
    "TxResult",
    "format_value",
]

logger = logging.getLogger(__name__)

DEFAULT_RECEIPT_TIMEOUT = 120.0  # seconds to wait for a sent transaction to be mined
# gas limit = estimate * margin: the state may move between estimating and mining
DEFAULT_GAS_MARGIN = 1.25


class TransactionTimeout(ChainError):
    """A sent transaction was not mined within the receipt timeout."""


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: str  # 0x-hex
    gas_used: int
    block_number: int
    events: tuple[DecodedEvent, ...] = field(default=())
    contract_address: str | None = None  # set for deployments

    def events_named(self, name: str) -> list[DecodedEvent]:
        """The events called `name`, in log order."""
        return [event for event in self.events if event.name == name]

    def event(self, name: str) -> DecodedEvent:
        """The single event called `name`; `LookupError` if there is not exactly one."""
        found = self.events_named(name)
        if len(found) != 1:
            raise LookupError(f"expected one {name} event in {self.tx_hash}, found {len(found)}")
        return found[0]


class TxFate(enum.StrEnum):
    """What became of a transaction sent earlier (`Sender.reconcile`)."""

    MINED = "mined"  # in a block, succeeded
    REVERTED = "reverted"  # in a block, reverted
    PENDING = "pending"  # known to the node, not mined yet: it may still land
    DROPPED = "dropped"  # unknown to the node: it can never land unless sent again


@dataclass(frozen=True)
class TxOutcome:
    """A recorded transaction as the chain now tells it (`Sender.reconcile`)."""

    tx_hash: str  # 0x-hex
    nonce: int
    fate: TxFate
    result: TxResult | None = None  # MINED: the receipt, its events decoded
    revert: ContractRevert | None = None  # REVERTED: why
    detail: str = ""  # DROPPED: why it is taken for dropped


@dataclass(frozen=True)
class BoundContract:
    """A contract at an address with the ABI it is read and written through."""

    name: str  # ABI name, e.g. "NodeRegistry"
    address: str  # checksummed
    web3: Contract


class NonceManager:
    """The next nonce of one key on one endpoint; shared by all senders of the key in the process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held from taking a nonce until the tx is accepted
        self._next: int | None = None  # None: ask the node

    def take(self, fetch: Callable[[], int]) -> int:
        """The nonce to use now (the lock must be held)."""
        if self._next is None:
            self._next = fetch()
        return self._next

    def commit(self) -> None:
        """The nonce returned by `take` was accepted by the node (the lock must be held)."""
        assert self._next is not None
        self._next += 1

    def invalidate(self) -> None:
        """Forget the cached nonce; the next `take` asks the node again."""
        self._next = None


_NONCE_MANAGERS: dict[tuple[str, str], NonceManager] = {}
_NONCE_MANAGERS_LOCK = threading.Lock()


def _nonce_manager(endpoint: str, address: str) -> NonceManager:
    with _NONCE_MANAGERS_LOCK:
        return _NONCE_MANAGERS.setdefault((endpoint, address), NonceManager())


class Chain:
    """A JSON-RPC connection with the ABIs needed to decode what comes back."""

    def __init__(
        self,
        rpc_url: str,
        abis: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        request_timeout: float = 30.0,
    ) -> None:
        """Connect to `rpc_url` and read its chain id; `ChainError` if it does not answer."""
        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": request_timeout}))
        self.codec = AbiCodec(abis)
        self._names: dict[str, str] = {}  # address -> ABI name of contracts bound through here
        try:
            self.chain_id = int(self.w3.eth.chain_id)
        except (requests.RequestException, Web3Exception, OSError) as exc:
            raise ChainError(f"cannot reach the chain at {rpc_url}: {exc}") from exc

    def contract(self, address: str, abi_name: str) -> BoundContract:
        """The contract at `address` with the ABI called `abi_name` (e.g. "NodeRegistry")."""
        if abi_name not in self.codec.abis:
            raise KeyError(
                f"no ABI named {abi_name!r}; known: {', '.join(sorted(self.codec.abis))}"
            )
        checksummed = to_checksum_address(address)
        self._names[checksummed] = abi_name
        web3_contract = self.w3.eth.contract(address=checksummed, abi=self.codec.abis[abi_name])
        return BoundContract(name=abi_name, address=checksummed, web3=web3_contract)

    def sender(
        self,
        account: LocalAccount,
        *,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
        journal: TxJournal | None = None,
    ) -> Sender:
        """A `Sender` for `account` on this chain (sharing the key's process-wide nonces);
        with a `journal` (e.g. `open_ledger(url).tx_journal()`) every transaction is recorded."""
        return Sender(self, account, receipt_timeout=receipt_timeout, journal=journal)

    def call(
        self, contract: BoundContract, function: str, *args: Any, block: BlockIdentifier = "latest"
    ) -> Any:
        """Call a view; a revert raises `ContractRevert`."""
        try:
            return contract.web3.functions[function](*args).call(block_identifier=block)
        except ContractLogicError as exc:
            raise self.revert_from(exc, f"{contract.name}.{function}") from None

    def simulate(
        self, contract: BoundContract, function: str, *args: Any, sender: str, value: int = 0
    ) -> Any:
        """Static-call a write as `sender` on the pending state (nothing is sent); a revert
        raises `ContractRevert`."""
        try:
            return contract.web3.functions[function](*args).call(
                {"from": to_checksum_address(sender), "value": Wei(value)},
                block_identifier="pending",
            )
        except ContractLogicError as exc:
            raise self.revert_from(exc, f"{contract.name}.{function}") from None

    def get_events(
        self,
        contract: BoundContract,
        event: str,
        *,
        from_block: int = 0,
        to_block: BlockIdentifier = "latest",
        argument_filters: Mapping[str, Any] | None = None,
    ) -> list[DecodedEvent]:
        """Logs of `event` emitted by `contract` in `[from_block, to_block]`, decoded, in order.
        A range that starts after `to_block` (e.g. "the blocks since the last one seen" when no
        block was mined since) is empty, not an error."""
        if not isinstance(to_block, int):
            to_block = int(self.w3.eth.get_block(to_block)["number"])
        if from_block > to_block:
            return []
        logs = contract.web3.events[event]().get_logs(
            from_block=from_block,
            to_block=to_block,
            argument_filters=dict(argument_filters) if argument_filters else None,
        )
        return [
            DecodedEvent(
                name=log["event"],
                contract=contract.name,
                address=to_checksum_address(log["address"]),
                args=dict(log["args"]),
                block_number=int(log["blockNumber"]),
                log_index=int(log["logIndex"]),
                tx_hash="0x" + bytes(log["transactionHash"]).hex(),
            )
            for log in logs
        ]

    def decode_logs(self, logs: Iterable[Mapping[str, Any]]) -> tuple[DecodedEvent, ...]:
        """Decode the logs of a receipt, skipping logs no known ABI describes."""
        decoded = (
            self.codec.decode_log(
                log, self.w3, self._names.get(to_checksum_address(log["address"]))
            )
            for log in logs
        )
        return tuple(event for event in decoded if event is not None)

    def receipt(self, tx_hash: str) -> TxReceipt:
        """The receipt of a mined transaction (0x-hex hash)."""
        return self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))

    def transaction(self, tx_hash: str) -> TxData:
        """A transaction as the node returns it (0x-hex hash)."""
        return self.w3.eth.get_transaction(HexBytes(tx_hash))

    def sender_of(self, tx_hash: str) -> str:
        """Who sent the transaction `tx_hash` (0x-hex): its checksummed `from` address (e.g.
        the verifier that submitted a slash)."""
        return to_checksum_address(self.transaction(tx_hash)["from"])

    def nonce(self, address: str, block: BlockIdentifier = "latest") -> int:
        """How many transactions `address` has sent as of `block` ("pending" includes queued)."""
        return int(self.w3.eth.get_transaction_count(to_checksum_address(address), block))

    def block_number(self) -> int:
        return int(self.w3.eth.block_number)

    def timestamp(self, block: BlockIdentifier = "latest") -> int:
        """The timestamp of `block` (seconds)."""
        return int(self.w3.eth.get_block(block)["timestamp"])

    def eth_balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(to_checksum_address(address)))

    def rpc(self, method: str, params: Sequence[Any] = ()) -> Any:
        """A raw JSON-RPC request (e.g. `evm_snapshot`); `ChainError` on an error response."""
        response = self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
        if response.get("error"):
            raise ChainError(f"{method} failed: {response['error']}")
        return response.get("result")

    def reset_nonces(self) -> None:
        """Make every sender on this endpoint re-read its nonce (after `evm_revert` and the like)."""
        with _NONCE_MANAGERS_LOCK:
            managers = [m for (url, _), m in _NONCE_MANAGERS.items() if url == self.rpc_url]
        for manager in managers:
            with manager.lock:
                manager.invalidate()

    def revert_from(self, exc: ContractLogicError, action: str | None) -> ContractRevert:
        data = exc.data
        if isinstance(data, str) and data.startswith("0x"):
            return self.codec.decode_revert(HexBytes(data), action=action)
        if isinstance(data, Mapping) and isinstance(data.get("data"), str):
            return self.codec.decode_revert(HexBytes(data["data"]), action=action)
        return ContractRevert("Reverted", {"message": exc.message or str(exc)}, action=action)


class Sender:
    """Sends transactions signed by one local key, with that key's shared nonce manager.

    With a `journal`, every transaction is recorded there before it is sent (pending, under its
    hash) and updated with what became of it: mined (gas, block), reverted (the decoded error)
    or failed (refused by the node, or not mined in time).
    """

    def __init__(
        self,
        chain: Chain,
        account: LocalAccount,
        *,
        receipt_timeout: float = DEFAULT_RECEIPT_TIMEOUT,
        gas_margin: float = DEFAULT_GAS_MARGIN,
        journal: TxJournal | None = None,
    ) -> None:
        self.chain = chain
        self.account = account
        self.address = to_checksum_address(account.address)
        self.receipt_timeout = receipt_timeout
        self.gas_margin = gas_margin
        self.journal = journal
        self._nonces = _nonce_manager(chain.rpc_url, self.address)

    def transact(
        self,
        contract: BoundContract,
        function: str,
        *args: Any,
        value: int = 0,
        gas: int | None = None,
    ) -> TxResult:
        """Call `function(*args)` on `contract` in a transaction and wait until it is mined."""
        data = contract.web3.encode_abi(function, args=list(args))
        return self.send(
            {"to": contract.address, "data": HexBytes(data), "value": Wei(value)},
            action=f"{contract.name}.{function}",
            gas=gas,
        )

    def deploy(
        self, abi: Sequence[Mapping[str, Any]], bytecode: str, *args: Any, name: str
    ) -> TxResult:
        """Deploy a contract; the result's `contract_address` is where it lives."""
        factory = self.chain.w3.eth.contract(abi=list(abi), bytecode=bytecode)
        data = factory.constructor(*args).data_in_transaction
        result = self.send({"data": HexBytes(data), "value": Wei(0)}, action=f"deploy {name}")
        if result.contract_address is None:
            raise ChainError(f"deploying {name} produced no contract address ({result.tx_hash})")
        return result

    def transfer_eth(self, to: str, value: int) -> TxResult:
        """Send `value` wei of the chain's native currency to `to`."""
        return self.send(
            {"to": to_checksum_address(to), "value": Wei(value), "data": b""},
            action="transfer ETH",
        )

    def send(self, tx: TxParams, *, action: str, gas: int | None = None) -> TxResult:
        """Static-call, price, sign, send and await `tx` (`to`, `data`, `value`)."""
        w3 = self.chain.w3
        call: TxParams = {"from": self.address, **tx}
        try:
            w3.eth.call(call, block_identifier="pending")
            if gas is None:
                gas = int(w3.eth.estimate_gas(call, block_identifier="pending") * self.gas_margin)
        except ContractLogicError as exc:
            raise self.chain.revert_from(exc, action) from None

        latest = w3.eth.get_block("latest")
        tip = int(w3.eth.max_priority_fee)
        max_fee = 2 * int(latest.get("baseFeePerGas", 0)) + tip
        fields: TxParams = {
            **call,
            "gas": gas,
            "chainId": self.chain.chain_id,
            "maxFeePerGas": Wei(max_fee),
            "maxPriorityFeePerGas": Wei(tip),
            "type": 2,
        }
        with self._nonces.lock:
            nonce = self._nonces.take(
                lambda: int(w3.eth.get_transaction_count(self.address, "pending"))
            )
            fields["nonce"] = Nonce(nonce)
            signed = self.account.sign_transaction(fields)  # type: ignore[arg-type]
            hex_hash = "0x" + bytes(signed.hash).hex()
            to = tx.get("to")
            self._record_sent(hex_hash, None if to is None else str(to), action, nonce)
            try:
                w3.eth.send_raw_transaction(signed.raw_transaction)
            except (Web3RPCError, requests.RequestException, OSError) as exc:
                self._nonces.invalidate()
                self._record_outcome(hex_hash, "failed", error=f"refused by the node: {exc}")
                raise ChainError(f"{action}: the node refused the transaction: {exc}") from exc
            self._nonces.commit()
        logger.debug("%s sent %s (nonce %d) %s", self.address, action, nonce, hex_hash)
        return self._await(hex_hash, fields, action)

    def _await(self, tx_hash: str, fields: TxParams, action: str) -> TxResult:
        w3 = self.chain.w3
        try:
            receipt = w3.eth.wait_for_transaction_receipt(
                HexBytes(tx_hash), timeout=self.receipt_timeout, poll_latency=0.05
            )
        except TimeExhausted as exc:
            with self._nonces.lock:
                self._nonces.invalidate()
            self._record_outcome(
                tx_hash, "failed", error=f"not mined after {self.receipt_timeout:.0f} s"
            )
            raise TransactionTimeout(
                f"{action}: {tx_hash} not mined after {self.receipt_timeout:.0f} s"
            ) from exc
        block_number = int(receipt["blockNumber"])
        gas_used = int(receipt["gasUsed"])
        if receipt["status"] != 1:
            raise self._reverted(tx_hash, fields, receipt, action)
        self._record_outcome(tx_hash, "mined", gas_used=gas_used, block_number=block_number)
        contract_address = receipt.get("contractAddress")
        return TxResult(
            tx_hash=tx_hash,
            gas_used=gas_used,
            block_number=block_number,
            events=self.chain.decode_logs(receipt["logs"]),
            contract_address=to_checksum_address(contract_address) if contract_address else None,
        )

    def _reverted(
        self, tx_hash: str, fields: TxParams, receipt: Any, action: str
    ) -> ContractRevert:
        """The decoded revert of a mined, failed `tx_hash` (replayed at its block), recorded."""
        block_number = int(receipt["blockNumber"])
        revert = self._replay_revert(fields, block_number, action)
        self._record_outcome(
            tx_hash,
            "reverted",
            gas_used=int(receipt["gasUsed"]),
            block_number=block_number,
            error=revert.signature,
        )
        return revert

    def reconcile(self, tx_hash: str, nonce: int, *, action: str) -> TxOutcome:
        """What became of `tx_hash` (0x-hex), which this key sent with `nonce` (e.g. before a
        crash), recorded in the journal as well when this sender has one. Looked up by hash: a
        receipt says mined or reverted (the revert decoded by replaying it); a transaction the
        node holds without a receipt is pending. One the node does not know is dropped: its
        nonce is either taken by another mined transaction, or free and the transaction gone
        from the node's pool; either way it can never be mined unless sent again. `ChainError`
        when the chain cannot be asked."""
        w3 = self.chain.w3
        try:
            try:
                receipt = w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                receipt = None
            if receipt is None or receipt.get("blockNumber") is None:
                try:
                    w3.eth.get_transaction(HexBytes(tx_hash))
                except TransactionNotFound:
                    return self._dropped(tx_hash, nonce, action)
                return TxOutcome(tx_hash, nonce, TxFate.PENDING)
            block_number = int(receipt["blockNumber"])
            gas_used = int(receipt["gasUsed"])
            if receipt["status"] != 1:
                sent = w3.eth.get_transaction(HexBytes(tx_hash))
                fields: TxParams = {
                    "from": self.address,
                    "to": sent["to"],
                    "data": HexBytes(sent["input"]),
                    "value": sent["value"],
                    "gas": sent["gas"],
                }
                revert = self._reverted(tx_hash, fields, receipt, action)
                return TxOutcome(tx_hash, nonce, TxFate.REVERTED, revert=revert)
        except (Web3Exception, requests.RequestException, OSError) as exc:
            raise ChainError(f"{action}: cannot look up {tx_hash}: {exc}") from exc
        self._record_outcome(tx_hash, "mined", gas_used=gas_used, block_number=block_number)
        contract_address = receipt.get("contractAddress")
        result = TxResult(
            tx_hash=tx_hash,
            gas_used=gas_used,
            block_number=block_number,
            events=self.chain.decode_logs(receipt["logs"]),
            contract_address=to_checksum_address(contract_address) if contract_address else None,
        )
        return TxOutcome(tx_hash, nonce, TxFate.MINED, result=result)

    def _dropped(self, tx_hash: str, nonce: int, action: str) -> TxOutcome:
        used = self.chain.nonce(self.address, "latest")
        if nonce < used:
            detail = f"dropped: nonce {nonce} was used by another transaction"
        else:
            detail = f"dropped: unknown to the node, nonce {nonce} unused"
        logger.info("%s: %s (%s)", action, detail, tx_hash)
        self._record_outcome(tx_hash, "failed", error=detail)
        with self._nonces.lock:
            self._nonces.invalidate()
        return TxOutcome(tx_hash, nonce, TxFate.DROPPED, detail=detail)

    def _replay_revert(self, fields: TxParams, block_number: int, action: str) -> ContractRevert:
        """Why a mined transaction reverted: replay it as a call on the state before its block."""
        call: TxParams = {
            k: v for k, v in fields.items() if k in ("from", "to", "data", "value", "gas")
        }  # type: ignore[assignment]
        try:
            self.chain.w3.eth.call(call, block_identifier=max(block_number - 1, 0))
        except ContractLogicError as exc:
            return self.chain.revert_from(exc, action)
        return ContractRevert(
            "Reverted",
            {"message": "reverted when mined (out of gas or state changed)"},
            action=action,
        )

    def _record_sent(self, tx_hash: str, to: str | None, action: str, nonce: int) -> None:
        if self.journal is None:
            return
        self.journal.sent(tx_hash, sender=self.address, to=to, function=action[:64], nonce=nonce)

    def _record_outcome(self, tx_hash: str, status: SettledStatus, **fields: Any) -> None:
        if self.journal is None:
            return
        try:
            self.journal.settled(tx_hash, status, **fields)
        except LedgerError:
            # the chain's answer matters more than its bookkeeping: log, do not mask it
            logger.exception("cannot record %s of %s in the journal", status, tx_hash)
