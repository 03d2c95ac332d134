"""Which receipts a client challenges: a keyed draw per receipt that a server cannot predict."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from client.audit import sampled

HASHES = [keccak(i.to_bytes(4, "big")) for i in range(4000)]


def test_rate_zero_samples_nothing_and_rate_one_everything() -> None:
    assert not any(sampled(b"key", h, 0.0) for h in HASHES)
    assert all(sampled(b"key", h, 1.0) for h in HASHES)


def test_a_rate_samples_about_that_share_and_the_same_receipts_every_time() -> None:
    chosen = [h for h in HASHES if sampled(b"key", h, 0.1)]

    assert 300 < len(chosen) < 500  # 10% of 4,000, well inside the binomial spread
    assert chosen == [h for h in HASHES if sampled(b"key", h, 0.1)]


def test_another_key_samples_other_receipts() -> None:
    mine = {h for h in HASHES if sampled(b"my key", h, 0.1)}
    theirs = {h for h in HASHES if sampled(b"their key", h, 0.1)}

    assert len(mine & theirs) < len(mine) / 2  # independent draws overlap by about 10%


def test_a_rate_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        sampled(b"key", HASHES[0], 1.5)
