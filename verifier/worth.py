"""Whether a node is still worth slashing: what one more slash would pay us against its gas.

A slash takes `slashBps` of the node's slashable stake (active plus unbonding, what
`NodeRegistry.slashableStake` reads) and pays `bountyBps` of that, split over the quorum, to
each verifier whose verdict it carries (`Slasher._takeStake`). Each slash halves (on the
devnet) what the next can take, so a verifier at a high sample rate against a node that cheats
on every leaf would go on slashing it down to dust, the last slashes costing more gas than they
pay. We stop when

    bounty per verifier x token price  <=  slash gas x gas price x GAS_SAFETY

Slash gas is the claim plus the slash as measured in docs/gas.md (`SLASH_GAS`), with
`GAS_PER_EXTRA_SIGNER` for each verdict beyond the first; the safety factor covers a deeper
Merkle proof than the measurement's, a gas price that rises before the slash is mined, and the
sender's gas margin. The token price (ETH one stake token is worth to this verifier) is the
operator's: nothing on-chain relates the stake token to ETH.

A node with no slashable stake at all (never registered, or withdrawn) is not worth slashing
whatever the prices. Whether the node is active does not enter the decision: a node slashed
below its span's stake is inactive but still has stake to take, and an unbonding one is still
slashable; activity only orders the audit queue (`verifier.queue`).

Every function here is pure; the reads (stake, gas price) happen in the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from ledger.units import ETH_DECIMALS, TokenUnits, format_eth

BPS = 10_000
# Gas of a whole slash (claim + slash, two transactions) at quorum 1, rounded up from
# docs/gas.md: `slash` 249,819, `slashWithheld` 218,862, `slashEquivocation` 221,980.
SLASH_GAS = 250_000
WITHHELD_SLASH_GAS = 220_000
EQUIVOCATION_SLASH_GAS = 222_000
# Gas each verdict beyond the first adds (docs/gas.md: quorum 3 costs ~73k more than quorum 1).
GAS_PER_EXTRA_SIGNER = 37_000
# A slash must pay more than this many times its estimated gas cost to be worth sending.
GAS_SAFETY = Fraction(2)
APPROX_DIGITS = 2  # significant digits of the ETH estimates shown to a person


@dataclass(frozen=True)
class SlashTerms:
    """The slasher's parameters that decide what one slash pays (`SlasherParams`)."""

    slash_bps: int  # share of the slashable stake one slash takes
    bounty_bps: int  # share of a slash paid to its verifiers (or the reporter)
    quorum: int  # verdicts a slash carries; the bounty is split between them


def slash_amount(stake: int, terms: SlashTerms) -> int:
    """What one slash takes from a node with `stake` slashable (`Slasher._slashAmount`)."""
    return stake * terms.slash_bps // BPS


def bounty_per_verifier(stake: int, terms: SlashTerms) -> int:
    """What one slash of a node with `stake` slashable pays each verifier of the quorum
    (`Slasher._takeStake`, same rounding)."""
    return slash_amount(stake, terms) * terms.bounty_bps // BPS // terms.quorum


def equivocation_bounty(stake: int, terms: SlashTerms) -> int:
    """What an equivocation slash pays its reporter (the whole bounty, no quorum)."""
    return slash_amount(stake, terms) * terms.bounty_bps // BPS


def slash_gas(quorum: int, *, withheld: bool = False) -> int:
    """Estimated gas of a claim plus a (withheld) slash carrying `quorum` verdicts."""
    base = WITHHELD_SLASH_GAS if withheld else SLASH_GAS
    return base + GAS_PER_EXTRA_SIGNER * max(0, quorum - 1)


@dataclass(frozen=True)
class Worth:
    """Whether one more slash of a node pays for itself, and the figures that decided it."""

    worth: bool
    stake: int  # slashable stake, token base units
    bounty: int  # what the slash would pay us, token base units
    bounty_wei: int  # that bounty valued in wei at the operator's token price
    gas_cost_wei: int  # estimated gas x gas price x GAS_SAFETY

    def describe(self, units: TokenUnits) -> str:
        """One line for a person: "stake 0.000000000017 SWARM pays 0.0000000000017 SWARM, a
        slash costs ~0.0005 ETH"."""
        if self.stake == 0:
            return "no slashable stake (not registered, or withdrawn)"
        return (
            f"stake {units.show(self.stake)} pays {units.show(self.bounty)} "
            f"(~{format_eth(rounded(self.bounty_wei))}), "
            f"a slash costs ~{format_eth(rounded(self.gas_cost_wei))}"
        )


def rounded(amount: int, digits: int = APPROX_DIGITS) -> int:
    """`amount` to `digits` significant digits (half up): estimates are shown as such."""
    if amount <= 0:
        return amount
    scale = 10 ** max(0, len(str(amount)) - digits)
    return (amount + scale // 2) // scale * scale


def token_value_wei(amount: int, decimals: int, token_price_eth: Decimal) -> int:
    """`amount` base units of a token with `decimals` decimals, in wei at `token_price_eth`
    ETH per whole token (rounded down)."""
    value = Fraction(amount) * Fraction(token_price_eth) * 10**ETH_DECIMALS / 10**decimals
    return int(value)


def judge_worth(
    *,
    bounty: int,
    stake: int,
    decimals: int,
    token_price_eth: Decimal,
    gas: int,
    gas_price_wei: int,
) -> Worth:
    """Whether a slash paying `bounty` (base units) is worth `gas` at `gas_price_wei`: its value
    at `token_price_eth` must exceed the gas cost times `GAS_SAFETY`. A node with no slashable
    `stake` is never worth it; one whose bounty rounds to nothing neither."""
    bounty_wei = token_value_wei(bounty, decimals, token_price_eth)
    gas_cost_wei = int(Fraction(gas) * gas_price_wei * GAS_SAFETY)
    worth = stake > 0 and bounty > 0 and bounty_wei > gas_cost_wei
    return Worth(
        worth=worth, stake=stake, bounty=bounty, bounty_wei=bounty_wei, gas_cost_wei=gas_cost_wei
    )


def slash_worth(
    stake: int,
    terms: SlashTerms,
    *,
    decimals: int,
    token_price_eth: Decimal,
    gas_price_wei: int,
    withheld: bool = False,
) -> Worth:
    """Whether one more verdict slash (withheld or not) of a node with `stake` slashable pays us
    more than its gas (see the module doc)."""
    return judge_worth(
        bounty=bounty_per_verifier(stake, terms),
        stake=stake,
        decimals=decimals,
        token_price_eth=token_price_eth,
        gas=slash_gas(terms.quorum, withheld=withheld),
        gas_price_wei=gas_price_wei,
    )


def equivocation_worth(
    stake: int,
    terms: SlashTerms,
    *,
    decimals: int,
    token_price_eth: Decimal,
    gas_price_wei: int,
) -> Worth:
    """Whether reporting an equivocation of a node with `stake` slashable pays the reporter
    (the whole bounty, no quorum) more than the slash's gas."""
    return judge_worth(
        bounty=equivocation_bounty(stake, terms),
        stake=stake,
        decimals=decimals,
        token_price_eth=token_price_eth,
        gas=EQUIVOCATION_SLASH_GAS,
        gas_price_wei=gas_price_wei,
    )
