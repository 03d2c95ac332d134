"""Sampling: independent per leaf at the configured rate, reproducible with the verifier's
key, unpredictable without it."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest
from eth_utils import keccak

from verifier.errors import VerifierConfigError
from verifier.sampling import AuditKey, check_rate

COMMITMENTS = "0x1000000000000000000000000000000000000001"


def test_the_key_is_created_once_privately_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "verifier" / "audit.key"
    key = AuditKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AuditKey.load_or_create(path) == key
    with pytest.raises(VerifierConfigError, match="32 bytes"):
        AuditKey(b"short")


def test_a_leaf_is_sampled_at_the_rate_independently_of_the_others() -> None:
    key = AuditKey.generate()
    batches = [(batch, keccak(b"root%d" % batch)) for batch in range(1, 41)]
    rate, leaves = 0.1, 500
    sampled = sum(len(key.sample(31337, COMMITMENTS, b, root, leaves, rate)) for b, root in batches)
    trials = len(batches) * leaves
    # binomial: within 5 standard deviations of the rate (flaky with odds below 1e-6)
    assert abs(sampled - rate * trials) < 5 * math.sqrt(trials * rate * (1 - rate))
    assert key.sample(31337, COMMITMENTS, 1, keccak(b"root1"), leaves, 1.0) == list(range(leaves))


def test_the_choice_depends_on_the_key_and_the_batch() -> None:
    root = os.urandom(32)
    mine, theirs = AuditKey.generate(), AuditKey.generate()
    chosen = mine.sample(31337, COMMITMENTS, 7, root, 2000, 0.05)
    assert chosen == mine.sample(31337, COMMITMENTS, 7, root, 2000, 0.05)  # reproducible
    assert chosen != theirs.sample(31337, COMMITMENTS, 7, root, 2000, 0.05)
    assert chosen != mine.sample(31337, COMMITMENTS, 8, root, 2000, 0.05)
    assert chosen != mine.sample(31337, COMMITMENTS, 7, os.urandom(32), 2000, 0.05)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.5, float("nan")])
def test_a_rate_outside_zero_one_is_refused(rate: float) -> None:
    with pytest.raises(VerifierConfigError, match="sample rate"):
        check_rate(rate)
