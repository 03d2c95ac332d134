"""The stakeswarm state directory ("home"): where every command keeps its files.

Default `~/.stakeswarm`; every command takes `--home DIR` to use another one (tests, several
devnets side by side). Nothing here reads the environment at import time: the CLI resolves a
`Home` from its options and hands it down.

Layout:
    <home>/deployment.json          a deployment on a public chain (`stakeswarm chain deploy`)
    <home>/devnet/deployment.json   the devnet's deployment (contract addresses, dev keys)
    <home>/devnet/devnet.json       the running devnet's process ids and RPC URL
    <home>/devnet/chain.log         the local chain's output
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME_NAME = ".stakeswarm"


@dataclass(frozen=True)
class Home:
    """One state directory and the well-known paths inside it."""

    root: Path

    @classmethod
    def resolve(cls, path: Path | str | None = None) -> Home:
        """`path` if given (with `~` expanded), else `~/.stakeswarm`; always absolute."""
        root = Path(path).expanduser() if path is not None else Path.home() / DEFAULT_HOME_NAME
        return cls(root=root.resolve())

    @property
    def deployment(self) -> Path:
        """Where `stakeswarm chain deploy` writes its deployment file unless told otherwise."""
        return self.root / "deployment.json"

    @property
    def devnet_dir(self) -> Path:
        return self.root / "devnet"

    @property
    def devnet_deployment(self) -> Path:
        """The deployment file `stakeswarm dev up` writes and `--devnet` commands read."""
        return self.devnet_dir / "deployment.json"

    @property
    def devnet_state(self) -> Path:
        """Process ids and RPC URL of the running devnet (`dev down` reads it)."""
        return self.devnet_dir / "devnet.json"

    @property
    def devnet_log(self) -> Path:
        """The local chain's stdout and stderr."""
        return self.devnet_dir / "chain.log"

    def ensure(self, directory: Path) -> Path:
        """Create `directory` (inside this home) if missing, private to the user; return it."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory
