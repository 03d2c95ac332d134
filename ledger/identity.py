"""A long-running server's chain identity (a node's, a verifier's): which deployment it acts on
and with which key, from the same few settings every such server takes.

    devnet + account   the devnet's deployment in `<home>/devnet/deployment.json` and one of its
                       dev keys (the account name, role or index; default the server's role)
    deployment_file + keystore (+ password_env)   a deployment JSON and an encrypted key
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the configs import this module: web3 and eth-account only when connecting
    from eth_account.signers.local import LocalAccount

    from ledger.deployment import Deployment
    from ledger.wallet import PasswordSource

DEVNET_DEPLOYMENT = Path("devnet") / "deployment.json"  # inside the home (see stakeswarm.home)


class IdentitySettings(Protocol):
    """The settings of a server's config that name its identity (`NodeConfig` and
    `VerifierConfig` have them)."""

    @property
    def home(self) -> Path: ...  # state directory; the devnet's deployment is in it
    @property
    def devnet(self) -> bool: ...  # the devnet's deployment and a dev key
    @property
    def account(self) -> str | None: ...  # with devnet: dev account name, role or index
    @property
    def deployment_file(self) -> Path | None: ...  # without devnet: the deployment JSON
    @property
    def keystore(self) -> Path | None: ...  # without devnet: the server's key
    @property
    def password_env(self) -> str | None: ...  # variable holding the keystore password


def identity_problems(settings: IdentitySettings, *, signs: str) -> list[str]:
    """What is wrong with `settings` (nothing: they name one identity); `signs` completes
    "a ...: give a keystore" (e.g. "node signs receipts and transactions")."""
    problems: list[str] = []
    if settings.devnet and (settings.deployment_file is not None or settings.keystore is not None):
        problems.append("devnet uses the devnet's deployment and keys: no deployment/keystore")
    if not settings.devnet:
        if settings.deployment_file is None:
            problems.append("give devnet, or a deployment file and a keystore")
        if settings.keystore is None:
            problems.append(f"a {signs}: give a keystore")
        if settings.account is not None:
            problems.append("account selects a devnet dev key; without devnet use a keystore")
    return problems


def keystore_password(keystore: Path, password_env: str | None) -> PasswordSource:
    """The keystore's password: from the variable `password_env` if given, else prompted."""
    from ledger.wallet import PasswordSource

    return (
        PasswordSource.from_env(password_env)
        if password_env
        else PasswordSource.prompted(f"Password for {keystore}: ")
    )


def load_identity(settings: IdentitySettings, *, role: str) -> tuple[Deployment, LocalAccount]:
    """The deployment and the unlocked key of `settings` (which `identity_problems` found
    nothing wrong with); `role` is the dev account used when `settings.account` is None."""
    from eth_account import Account

    from ledger.deployment import Deployment
    from ledger.wallet import load_wallet

    if settings.devnet:
        home = Path(settings.home).expanduser().resolve()
        deployment = Deployment.load(home / DEVNET_DEPLOYMENT)
        dev = deployment.account(settings.account or role)
        return deployment, Account.from_key(dev.private_key)
    keystore = settings.keystore
    assert settings.deployment_file is not None and keystore is not None  # the config checks
    deployment = Deployment.load(settings.deployment_file)
    return deployment, load_wallet(keystore, keystore_password(keystore, settings.password_env))
