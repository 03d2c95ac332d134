"""EIP-712 typed data of stakeswarm: the one Python mirror of the contracts' signed structs.

Four structs are signed, each under the domain of the contract that checks it:

- `Voucher(uint256 channelId,uint256 cumulativeAmount)`: a client pays a server
  (domain "stakeswarm PaymentChannels", version "1" and the deployment's salt;
  `IPaymentChannels`);
- `Receipt(bytes32 sessionId,...,bytes32 sketchHash,uint64 issuedAt)`: a node signs the leaf of
  a served step, stamped with the time it signed it
  (domain "stakeswarm Slasher", version "1" and the deployment's salt; `ISlasher`, its body is
  `ledger.types.Leaf`);
- `Verdict(address node,uint256 batchId,bytes32 leaf,uint8 reason)`: a verifier finds a leaf
  guilty (the Slasher's salted domain; `ISlasher`);
- `Withheld(address node,uint256 batchId,uint32 leafIndex)`: a verifier found that a node did
  not reveal a sampled leaf by the deadline (the Slasher's salted domain;
  `ISlasher.slashWithheld`; its body is `ledger.types.WithheldVerdict`).

For each: `*_digest` (the 32-byte hash the contract recovers from), `sign_*` (a 65-byte
r || s || v signature, v in {27, 28}) and `recover_*_signer` (the checksummed address, with the
same acceptance rules as OpenZeppelin `ECDSA.recover`: no malleable high-s signatures).
The encoding is eth-account's `encode_typed_data`; this module only validates values first,
because `encode_typed_data` silently pads short `bytes32` values.
`contracts/test/vectors/eip712.json` pins all four against the Solidity side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_keys.exceptions import ValidationError as KeysValidationError
from eth_utils import is_address, keccak, to_checksum_address

from ledger.errors import SignatureError, TypedDataError
from ledger.types import Address, Leaf, Reason, Verdict, Voucher, WithheldVerdict

PAYMENT_CHANNELS_NAME: Final = "stakeswarm PaymentChannels"
SLASHER_NAME: Final = "stakeswarm Slasher"
DOMAIN_VERSION: Final = "1"

SIGNATURE_LENGTH: Final = 65
# secp256k1 group order; OpenZeppelin ECDSA rejects s > n / 2 (EIP-2 malleability).
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_HALF_N: Final = _SECP256K1_N // 2

VOUCHER_TYPES: Final[dict[str, list[dict[str, str]]]] = {
    "Voucher": [
        {"name": "channelId", "type": "uint256"},
        {"name": "cumulativeAmount", "type": "uint256"},
    ]
}
RECEIPT_TYPES: Final[dict[str, list[dict[str, str]]]] = {
    "Receipt": [
        {"name": "sessionId", "type": "bytes32"},
        {"name": "modelId", "type": "bytes32"},
        {"name": "spanStart", "type": "uint16"},
        {"name": "spanEnd", "type": "uint16"},
        {"name": "step", "type": "uint32"},
        {"name": "tokens", "type": "uint32"},
        {"name": "inputHash", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
        {"name": "sketchHash", "type": "bytes32"},
        {"name": "issuedAt", "type": "uint64"},
    ]
}
VERDICT_TYPES: Final[dict[str, list[dict[str, str]]]] = {
    "Verdict": [
        {"name": "node", "type": "address"},
        {"name": "batchId", "type": "uint256"},
        {"name": "leaf", "type": "bytes32"},
        {"name": "reason", "type": "uint8"},
    ]
}
WITHHELD_TYPES: Final[dict[str, list[dict[str, str]]]] = {
    "Withheld": [
        {"name": "node", "type": "address"},
        {"name": "batchId", "type": "uint256"},
        {"name": "leafIndex", "type": "uint32"},
    ]
}

# A signing key: an unlocked account (see `ledger.wallet`) or a raw 32-byte private key.
Signer = LocalAccount | bytes | str


def checksum_address(value: object, what: str) -> Address:
    """`value` as a checksummed address; `TypedDataError` naming `what` if it is not one."""
    if not isinstance(value, str) or not is_address(value):
        raise TypedDataError(f"{what} must be a 20-byte 0x-address, got {value!r}")
    return Address(to_checksum_address(value))


def _uint(value: object, bits: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypedDataError(f"{what} must be an int (uint{bits}), got {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise TypedDataError(f"{what} must fit uint{bits}, got {value}")
    return value


def _bytes32(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        shown = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise TypedDataError(f"{what} must be exactly 32 bytes, got {shown}")
    return bytes(value)


@dataclass(frozen=True)
class Domain:
    """An EIP-712 domain: which contract on which chain, and which deployment of it (its
    `salt`), a signature is for."""

    name: str
    version: str
    chain_id: int
    verifying_contract: str  # checksummed by the constructor
    salt: bytes | None = None  # 32 bytes: the deployment's salt (`SaltedEIP712`)

    def __post_init__(self) -> None:
        _uint(self.chain_id, 256, "chain id")
        if self.chain_id == 0:
            raise TypedDataError("chain id must be positive")
        address = checksum_address(self.verifying_contract, "verifying contract")
        object.__setattr__(self, "verifying_contract", address)
        if self.salt is not None:
            object.__setattr__(self, "salt", _bytes32(self.salt, "domain salt"))

    @classmethod
    def payment_channels(cls, chain_id: int, contract: str, salt: bytes) -> Domain:
        """The domain of the PaymentChannels contract at `contract` deployed with `salt`
        (vouchers); the salt is the contract's `eip712Domain().salt`."""
        return cls(PAYMENT_CHANNELS_NAME, DOMAIN_VERSION, chain_id, contract, salt)

    @classmethod
    def slasher(cls, chain_id: int, contract: str, salt: bytes) -> Domain:
        """The domain of the Slasher contract at `contract` deployed with `salt` (receipts and
        verdicts); the salt is the Slasher's `eip712Domain().salt`."""
        return cls(SLASHER_NAME, DOMAIN_VERSION, chain_id, contract, salt)

    def as_dict(self) -> dict[str, Any]:
        """The domain as `encode_typed_data` takes it."""
        domain: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": self.verifying_contract,
        }
        if self.salt is not None:
            domain["salt"] = self.salt
        return domain


def _require_domain(domain: Domain, name: str, struct: str) -> None:
    if domain.name != name:
        raise TypedDataError(f"a {struct} is signed under the {name!r} domain, not {domain.name!r}")


def _voucher_message(domain: Domain, voucher: Voucher) -> SignableMessage:
    _require_domain(domain, PAYMENT_CHANNELS_NAME, "Voucher")
    message = {
        "channelId": _uint(voucher.channel_id, 256, "voucher channel id"),
        "cumulativeAmount": _uint(voucher.cumulative_amount, 256, "voucher cumulative amount"),
    }
    return encode_typed_data(domain.as_dict(), VOUCHER_TYPES, message)


def _receipt_message(domain: Domain, leaf: Leaf) -> SignableMessage:
    _require_domain(domain, SLASHER_NAME, "Receipt")
    message = {
        "sessionId": _bytes32(leaf.session_id, "leaf session id"),
        "modelId": _bytes32(leaf.model_id, "leaf model id"),
        "spanStart": _uint(leaf.span_start, 16, "leaf span start"),
        "spanEnd": _uint(leaf.span_end, 16, "leaf span end"),
        "step": _uint(leaf.step, 32, "leaf step"),
        "tokens": _uint(leaf.tokens, 32, "leaf tokens"),
        "inputHash": _bytes32(leaf.input_hash, "leaf input hash"),
        "outputHash": _bytes32(leaf.output_hash, "leaf output hash"),
        "sketchHash": _bytes32(leaf.sketch_hash, "leaf sketch hash"),
        "issuedAt": _uint(leaf.issued_at, 64, "leaf issued at"),
    }
    return encode_typed_data(domain.as_dict(), RECEIPT_TYPES, message)


def _verdict_message(domain: Domain, verdict: Verdict) -> SignableMessage:
    _require_domain(domain, SLASHER_NAME, "Verdict")
    try:
        reason = Reason(verdict.reason)
    except ValueError:
        allowed = [int(r) for r in Reason]
        raise TypedDataError(
            f"verdict reason must be one of {allowed}, got {verdict.reason!r}"
        ) from None
    message = {
        "node": checksum_address(verdict.node, "verdict node"),
        "batchId": _uint(verdict.batch_id, 256, "verdict batch id"),
        "leaf": _bytes32(verdict.leaf, "verdict leaf"),
        "reason": int(reason),
    }
    return encode_typed_data(domain.as_dict(), VERDICT_TYPES, message)


def _withheld_message(domain: Domain, verdict: WithheldVerdict) -> SignableMessage:
    _require_domain(domain, SLASHER_NAME, "Withheld")
    message = {
        "node": checksum_address(verdict.node, "withheld node"),
        "batchId": _uint(verdict.batch_id, 256, "withheld batch id"),
        "leafIndex": _uint(verdict.leaf_index, 32, "withheld leaf index"),
    }
    return encode_typed_data(domain.as_dict(), WITHHELD_TYPES, message)


def _digest(message: SignableMessage) -> bytes:
    # EIP-191 version 0x01: keccak256("\x19\x01" || domainSeparator || hashStruct(message)).
    return keccak(b"\x19" + message.version + message.header + message.body)


def _account(signer: Signer) -> LocalAccount:
    if isinstance(signer, LocalAccount):
        return signer
    try:
        return Account.from_key(signer)
    except (ValueError, TypeError, KeysValidationError):
        # The key itself never goes into the message.
        raise TypedDataError("signer must be a LocalAccount or a 32-byte private key") from None


def _sign(message: SignableMessage, signer: Signer) -> bytes:
    signed = _account(signer).sign_message(message)
    return bytes(signed.signature)


def _recover(message: SignableMessage, signature: bytes) -> Address:
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_LENGTH:
        shown = len(signature) if isinstance(signature, bytes | bytearray) else "not bytes"
        raise SignatureError(f"a signature is {SIGNATURE_LENGTH} bytes r || s || v, got {shown}")
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError(f"signature v must be 27 or 28, got {v}")
    if not 0 < r < _SECP256K1_N:
        raise SignatureError("signature r is out of range")
    if not 0 < s <= _SECP256K1_HALF_N:
        raise SignatureError("signature s is out of range or malleable (s > n/2)")
    try:
        return Address(Account.recover_message(message, signature=bytes(signature)))
    except (BadSignature, KeysValidationError, ValueError) as exc:
        raise SignatureError(f"signature recovers no public key: {exc}") from None


def voucher_digest(domain: Domain, voucher: Voucher) -> bytes:
    """The EIP-712 digest of `voucher` (equals `IPaymentChannels.voucherDigest`)."""
    return _digest(_voucher_message(domain, voucher))


def sign_voucher(domain: Domain, voucher: Voucher, signer: Signer) -> bytes:
    """The client's 65-byte signature of `voucher` (its own `signature` field is ignored)."""
    return _sign(_voucher_message(domain, voucher), signer)


def recover_voucher_signer(domain: Domain, voucher: Voucher, signature: bytes) -> Address:
    """Who signed `voucher` with `signature`; `SignatureError` if the signature is malformed."""
    return _recover(_voucher_message(domain, voucher), signature)


def receipt_digest(domain: Domain, leaf: Leaf) -> bytes:
    """The EIP-712 digest of the receipt for `leaf` (equals `ISlasher.receiptDigest`)."""
    return _digest(_receipt_message(domain, leaf))


def sign_receipt(domain: Domain, leaf: Leaf, signer: Signer) -> bytes:
    """The node's 65-byte receipt signature over `leaf`."""
    return _sign(_receipt_message(domain, leaf), signer)


def recover_receipt_signer(domain: Domain, leaf: Leaf, signature: bytes) -> Address:
    """Who signed the receipt for `leaf`; `SignatureError` if the signature is malformed."""
    return _recover(_receipt_message(domain, leaf), signature)


def verdict_digest(domain: Domain, verdict: Verdict) -> bytes:
    """The EIP-712 digest of `verdict` (equals `ISlasher.verdictDigest`)."""
    return _digest(_verdict_message(domain, verdict))


def sign_verdict(domain: Domain, verdict: Verdict, signer: Signer) -> bytes:
    """A verifier's 65-byte signature of `verdict` (its `signer`/`signature` fields are ignored)."""
    return _sign(_verdict_message(domain, verdict), signer)


def recover_verdict_signer(domain: Domain, verdict: Verdict, signature: bytes) -> Address:
    """Who signed `verdict`; `SignatureError` if the signature is malformed."""
    return _recover(_verdict_message(domain, verdict), signature)


def withheld_digest(domain: Domain, verdict: WithheldVerdict) -> bytes:
    """The EIP-712 digest of a withheld finding (equals `ISlasher.withheldDigest`)."""
    return _digest(_withheld_message(domain, verdict))


def sign_withheld(domain: Domain, verdict: WithheldVerdict, signer: Signer) -> bytes:
    """A verifier's 65-byte signature of a withheld finding (its `signer`/`signature` fields
    are ignored)."""
    return _sign(_withheld_message(domain, verdict), signer)


def recover_withheld_signer(domain: Domain, verdict: WithheldVerdict, signature: bytes) -> Address:
    """Who signed a withheld finding; `SignatureError` if the signature is malformed."""
    return _recover(_withheld_message(domain, verdict), signature)
