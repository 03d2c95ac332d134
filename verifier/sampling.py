"""Which committed leaves a verifier audits: each independently with probability `rate`,
decided by a keyed hash nodes cannot predict.

    key = AuditKey.load_or_create(path)        # 32 random bytes, kept private (0600)
    indices = key.sample(chain_id, commitments, batch_id, root, leaf_count, rate)

Leaf `i` of a batch is sampled when HMAC-SHA256(key, domain || chain id || Commitments
address || batch id || root || i), read as a 256-bit integer, is below `rate * 2^256`.
Without the key the choice looks uniformly random, so a node cannot tell which of its leaves
will be audited until a verifier asks; with it, the choice is reproducible (a restarted
verifier samples the same leaves) and each leaf is an independent Bernoulli(`rate`) trial,
which is what the detection bound 1 - (1 - p)^n assumes. Verifiers with different keys
sample independently.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_utils import to_bytes, to_checksum_address

from verifier.errors import VerifierConfigError

KEY_BYTES = 32
_DOMAIN = b"stakeswarm audit sample v1"
_SCALE = 2**256


@dataclass(frozen=True)
class AuditKey:
    """A verifier's secret sampling key."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise VerifierConfigError(f"an audit key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @classmethod
    def generate(cls) -> AuditKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def load_or_create(cls, path: Path) -> AuditKey:
        """The key in `path`, created (readable by the user only) if there is none."""
        if path.exists():
            return cls(path.read_bytes())
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = cls.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.secret)
        return key

    def draw(
        self, chain_id: int, commitments: str, batch_id: int, root: bytes, index: int
    ) -> float:
        """The leaf's draw in [0, 1): sampled when below the rate."""
        message = b"".join(
            (
                _DOMAIN,
                chain_id.to_bytes(32, "big"),
                to_bytes(hexstr=to_checksum_address(commitments)),
                batch_id.to_bytes(32, "big"),
                root,
                index.to_bytes(32, "big"),
            )
        )
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return int.from_bytes(digest, "big") / _SCALE

    def sample(
        self,
        chain_id: int,
        commitments: str,
        batch_id: int,
        root: bytes,
        leaf_count: int,
        rate: float,
    ) -> list[int]:
        """The indices of the batch's leaves to audit at `rate` (0 < rate <= 1)."""
        check_rate(rate)
        return [
            i
            for i in range(leaf_count)
            if self.draw(chain_id, commitments, batch_id, root, i) < rate
        ]


def check_rate(rate: float) -> float:
    """`rate` if it is a probability in (0, 1]; `VerifierConfigError` otherwise."""
    if not 0 < rate <= 1:
        raise VerifierConfigError(f"the sample rate must be in (0, 1], got {rate}")
    return rate
