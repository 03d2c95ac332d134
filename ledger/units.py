"""Amounts and times as people read them.

Every service and command that shows a stake-token amount to a person shows it through
`TokenUnits.show` ("75 SWARM", "0.00003 SWARM"), and every chain time through `format_time`
("2026-12-07 08:04:02 UTC"). JSON answers keep the exact base units in fields named for them
(`..._base_units`) and may add the readable text beside them; logs and errors show only the
readable text, with base units where the exact figure matters (`units.exact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

ETH_DECIMALS = 18


def format_tokens(amount: int, decimals: int) -> str:
    """Base units as whole tokens, without trailing zeros ("100", "0.25", "-3")."""
    text = format(Decimal(amount).scaleb(-decimals), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_eth(wei: int) -> str:
    return f"{format_tokens(wei, ETH_DECIMALS)} ETH"


def format_time(unix_seconds: int) -> str:
    """A chain timestamp as a UTC date and time ("2026-12-07 08:04:02 UTC")."""
    try:
        moment = datetime.fromtimestamp(int(unix_seconds), UTC)
    except (OverflowError, OSError, ValueError):
        return f"{unix_seconds} (unix seconds)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


_SPANS = (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1))


def format_time_from(unix_seconds: int, now: int) -> str:
    """`format_time` with how far the time is from `now` (the chain's time, Unix seconds), in
    its largest whole unit: "2026-12-07 08:04:02 UTC (in 2 days)", "... (3 hours ago)"."""
    gap = int(unix_seconds) - int(now)
    if gap == 0:
        return f"{format_time(unix_seconds)} (now)"
    unit, size = next((unit, size) for unit, size in _SPANS if abs(gap) >= size)
    count = abs(gap) // size
    span = f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{format_time(unix_seconds)} ({'in ' + span if gap > 0 else span + ' ago'})"


class _Token(Protocol):
    def decimals(self) -> int: ...

    def symbol(self) -> str: ...


@dataclass(frozen=True)
class TokenUnits:
    """The stake token's decimals and symbol, read once from the chain."""

    decimals: int
    symbol: str

    @classmethod
    def of(cls, token: _Token) -> TokenUnits:
        return cls(decimals=token.decimals(), symbol=token.symbol())

    def tokens(self, amount: int) -> str:
        """Base units as whole tokens, without the symbol ("0.25")."""
        return format_tokens(amount, self.decimals)

    def show(self, amount: int) -> str:
        """Base units as tokens with the symbol ("0.25 SWARM")."""
        return f"{self.tokens(amount)} {self.symbol}"

    def exact(self, amount: int) -> str:
        """Tokens with the exact base units beside them, for logs an operator may reconcile
        against the chain ("0.25 SWARM (250000000000000000 base units)")."""
        return f"{self.show(amount)} ({amount} base units)"
