"""Wallets: Ethereum keys kept in encrypted keystore files (the geth / eth-account v3 format).

Every component that signs (a node's receipts and transactions, a client's vouchers, a
verifier's verdicts) unlocks one keystore into an eth-account `LocalAccount`:

- `create_wallet` makes a new random key, `import_wallet` encrypts an existing one; both write
  the keystore with mode 0600 and never overwrite a file;
- `load_wallet` decrypts one with a password from a `PasswordSource`: given explicitly, read
  from an environment variable whose *name* the caller passes, or prompted for (getpass).

New keystores use scrypt with production-strength parameters (`PRODUCTION_KDF`); weaker ones
need an explicit `KeystoreKdf(..., insecure=True)`, for tests and throwaway devnet keys only.
Passwords and keys never reach a log record, a repr or an exception message; every failure is
a `WalletError` whose message says what to fix.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from eth_utils import is_address, to_checksum_address

from ledger.errors import WalletError
from ledger.types import Address

if TYPE_CHECKING:  # eth-account loads where a key is made or unlocked, not to read an address
    from eth_account.signers.local import LocalAccount

logger = logging.getLogger(__name__)

KdfName = Literal["scrypt", "pbkdf2"]

# Below these, a keystore falls to offline guessing too cheaply (scrypt N with r=8, p=1 as
# eth-keyfile fixes them; PBKDF2-HMAC-SHA256 iterations per OWASP 2023).
MIN_SCRYPT_N: Final = 2**18
MIN_PBKDF2_ITERATIONS: Final = 600_000
DEFAULT_PBKDF2_ITERATIONS: Final = 1_000_000


@dataclass(frozen=True)
class KeystoreKdf:
    """How a new keystore derives its encryption key from the password."""

    name: KdfName = "scrypt"  # "scrypt" (default, memory-hard) or "pbkdf2"
    work_factor: int = MIN_SCRYPT_N  # scrypt N (a power of two) or pbkdf2 iterations
    insecure: bool = False  # allow a work factor below the minimum: tests and devnet keys only

    def __post_init__(self) -> None:
        if self.name not in ("scrypt", "pbkdf2"):
            raise WalletError(f"unknown keystore KDF {self.name!r}: use 'scrypt' or 'pbkdf2'")
        n = self.work_factor
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise WalletError(f"KDF work factor must be an int >= 2, got {n!r}")
        if self.name == "scrypt" and n & (n - 1):
            raise WalletError(f"scrypt N must be a power of two, got {n}")
        minimum = MIN_SCRYPT_N if self.name == "scrypt" else MIN_PBKDF2_ITERATIONS
        if n < minimum and not self.insecure:
            raise WalletError(
                f"{self.name} work factor {n} is below the minimum {minimum}; "
                "pass insecure=True only for tests or throwaway devnet keys"
            )

    @classmethod
    def pbkdf2(cls, iterations: int = DEFAULT_PBKDF2_ITERATIONS) -> KeystoreKdf:
        """PBKDF2-HMAC-SHA256 with `iterations` (at least `MIN_PBKDF2_ITERATIONS`)."""
        return cls("pbkdf2", iterations)

    @classmethod
    def fast_insecure(cls) -> KeystoreKdf:
        """A KDF that unlocks in milliseconds: for tests and throwaway devnet keys, never for
        a key that holds value."""
        return cls("scrypt", 2**4, insecure=True)


PRODUCTION_KDF: Final = KeystoreKdf()


@dataclass(frozen=True)
class PasswordSource:
    """Where a keystore password comes from. Its repr never shows the password."""

    password: str | None = field(default=None, repr=False)  # given explicitly
    env_var: str | None = None  # the NAME of an environment variable that holds it
    prompt: str | None = None  # ask on the terminal (getpass) with this prompt
    confirm: bool = False  # with `prompt`: ask twice and require the same answer

    def __post_init__(self) -> None:
        given = [self.password is not None, self.env_var is not None, self.prompt is not None]
        if sum(given) != 1:
            raise WalletError("a password source is exactly one of: password, env_var, prompt")
        if self.password is not None and not isinstance(self.password, str):
            raise WalletError("a password must be a str")
        if self.env_var is not None and (not isinstance(self.env_var, str) or not self.env_var):
            raise WalletError("env_var must be the non-empty name of an environment variable")

    @classmethod
    def given(cls, password: str) -> PasswordSource:
        """The password itself (from a config the caller already trusts)."""
        return cls(password=password)

    @classmethod
    def from_env(cls, name: str) -> PasswordSource:
        """The value of environment variable `name`, read when needed (not at import)."""
        return cls(env_var=name)

    @classmethod
    def prompted(cls, prompt: str = "Keystore password: ", confirm: bool = False) -> PasswordSource:
        """Ask on the terminal without echo; `confirm` asks twice (for new keystores)."""
        return cls(prompt=prompt, confirm=confirm)

    def read(self) -> str:
        """The password; `WalletError` if the variable is unset or the prompt gets no answer."""
        if self.password is not None:
            return self.password
        if self.env_var is not None:
            value = os.environ.get(self.env_var)
            if value is None:
                raise WalletError(f"environment variable {self.env_var} is not set")
            return value
        assert self.prompt is not None  # __post_init__ allows exactly one source
        try:
            value = getpass.getpass(self.prompt)
            if self.confirm and getpass.getpass("Repeat: ") != value:
                raise WalletError("the two passwords do not match")
        except (EOFError, KeyboardInterrupt):
            raise WalletError("no password entered") from None
        return value


PasswordLike = str | PasswordSource


def _password(source: PasswordLike) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, PasswordSource):
        return source.read()
    raise WalletError("a password is a str or a PasswordSource")


def _account_from_key(private_key: bytes | str) -> LocalAccount:
    from eth_account import Account
    from eth_keys.exceptions import ValidationError as KeysValidationError

    try:
        return Account.from_key(private_key)
    except (ValueError, TypeError, KeysValidationError):
        raise WalletError("not a valid 32-byte secp256k1 private key") from None


def _write_keystore(path: Path, account: LocalAccount, password: str, kdf: KeystoreKdf) -> None:
    from eth_account import Account

    if not password:
        raise WalletError("refusing to encrypt a keystore with an empty password")
    if path.exists():
        raise WalletError(f"refusing to overwrite existing file {path}")
    # Derive before creating the file: a slow KDF must not leave a half-written keystore.
    keystore = Account.encrypt(account.key, password, kdf=kdf.name, iterations=kdf.work_factor)
    data = json.dumps(keystore).encode()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        # O_EXCL: atomic "create, never overwrite"; 0600 from the first byte on.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise WalletError(f"refusing to overwrite existing file {path}") from None
    except OSError as exc:
        raise WalletError(f"cannot create keystore {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # a umask cannot loosen it, but be explicit
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        raise WalletError(f"cannot write keystore {path}: {exc.strerror}") from None


def create_wallet(
    path: str | os.PathLike[str], password: PasswordLike, *, kdf: KeystoreKdf = PRODUCTION_KDF
) -> LocalAccount:
    """Make a new random key, write it encrypted to `path` (mode 0600; never overwrites) and
    return the unlocked account."""
    from eth_account import Account

    account: LocalAccount = Account.create()
    _write_keystore(Path(path), account, _password(password), kdf)
    logger.info("created keystore %s for %s", path, account.address)
    return account


def import_wallet(
    path: str | os.PathLike[str],
    private_key: bytes | str,
    password: PasswordLike,
    *,
    kdf: KeystoreKdf = PRODUCTION_KDF,
) -> LocalAccount:
    """Encrypt an existing `private_key` (32 bytes or 0x-hex) into a new keystore at `path`."""
    account = _account_from_key(private_key)
    _write_keystore(Path(path), account, _password(password), kdf)
    logger.info("imported key of %s into keystore %s", account.address, path)
    return account


def _read_keystore(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise WalletError(f"no keystore at {path}") from None
    except OSError as exc:
        raise WalletError(f"cannot read keystore {path}: {exc.strerror}") from None
    try:
        keystore = json.loads(raw)
    except json.JSONDecodeError:
        raise WalletError(f"{path} is not a keystore (not JSON)") from None
    if not isinstance(keystore, dict) or "crypto" not in {str(k).lower() for k in keystore}:
        raise WalletError(f"{path} is not a keystore (no 'crypto' section)")
    return keystore


def keystore_address(path: str | os.PathLike[str]) -> Address:
    """The address a keystore declares, without unlocking it (for listings and prompts)."""
    keystore = _read_keystore(Path(path))
    declared = keystore.get("address")
    if not isinstance(declared, str) or not is_address(declared):
        raise WalletError(f"keystore {path} declares no address")
    return Address(to_checksum_address(declared))


def load_wallet(path: str | os.PathLike[str], password: PasswordLike) -> LocalAccount:
    """Unlock the keystore at `path`. `WalletError` if it is missing, not a keystore, or the
    password is wrong."""
    from eth_account import Account
    from eth_keyfile.exceptions import EthKeyfileException

    path = Path(path)
    keystore = _read_keystore(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("keystore %s is accessible by other users (mode %o)", path, mode & 0o777)
    secret = _password(password)
    try:
        key = Account.decrypt(keystore, secret)
    except EthKeyfileException as exc:
        if "MAC mismatch" in str(exc):
            raise WalletError(f"wrong password for keystore {path}") from None
        raise WalletError(f"cannot decrypt keystore {path}: unsupported or damaged") from None
    except (KeyError, ValueError, TypeError):
        raise WalletError(f"cannot decrypt keystore {path}: unsupported or damaged") from None
    account = _account_from_key(bytes(key))
    declared = keystore.get("address")
    if (
        isinstance(declared, str)
        and is_address(declared)
        and to_checksum_address(declared) != account.address
    ):
        raise WalletError(f"keystore {path} declares {declared} but holds another key")
    logger.info("unlocked %s from keystore %s", account.address, path)
    return account
