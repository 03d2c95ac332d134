"""Whether a node is still worth slashing: one more slash's bounty, valued at the operator's token
price, against its gas at the current gas price (with `GAS_SAFETY`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ledger.units import TokenUnits
from verifier.worth import (
    GAS_SAFETY,
    SLASH_GAS,
    WITHHELD_SLASH_GAS,
    SlashTerms,
    bounty_per_verifier,
    equivocation_worth,
    rounded,
    slash_amount,
    slash_gas,
    slash_worth,
    token_value_wei,
)

TOKEN = 10**18
DEVNET = SlashTerms(slash_bps=5_000, bounty_bps=2_000, quorum=1)  # the devnet's parameters
GWEI = 10**9
UNITS = TokenUnits(18, "SWARM")


def test_a_slash_takes_and_pays_what_the_contract_would() -> None:
    # 40 tokens: half taken, a fifth of that to the verifier
    assert slash_amount(40 * TOKEN, DEVNET) == 20 * TOKEN
    assert bounty_per_verifier(40 * TOKEN, DEVNET) == 4 * TOKEN
    # a quorum of three splits the bounty, the rounding going to the pool
    assert bounty_per_verifier(10, SlashTerms(5_000, 2_000, 3)) == 0
    assert bounty_per_verifier(100, SlashTerms(5_000, 2_000, 3)) == 3


def test_a_node_is_worth_slashing_exactly_while_the_bounty_beats_the_gas() -> None:
    gas_price = 1 * GWEI  # a withheld slash costs ~0.00022 ETH, ~0.00044 ETH with the safety
    cost = WITHHELD_SLASH_GAS * gas_price * GAS_SAFETY
    price = Decimal(1)  # one token is worth one ETH
    # the stake whose bounty is worth exactly the cost, and one base unit of bounty more
    threshold_bounty = int(cost)
    stake_at = threshold_bounty * 10  # bounty = stake / 10 on the devnet
    at = slash_worth(stake_at, DEVNET, decimals=18, token_price_eth=price, gas_price_wei=gas_price,
                     withheld=True)  # fmt: skip
    above = slash_worth(stake_at + 10, DEVNET, decimals=18, token_price_eth=price,
                        gas_price_wei=gas_price, withheld=True)  # fmt: skip
    assert (at.worth, above.worth) == (False, True)
    assert at.gas_cost_wei == cost
    # 40 tokens of stake is worth many slashes; the dust of the issue is not
    assert slash_worth(40 * TOKEN, DEVNET, decimals=18, token_price_eth=price,
                       gas_price_wei=gas_price).worth  # fmt: skip
    dust = slash_worth(17_000_000, DEVNET, decimals=18, token_price_eth=price,
                       gas_price_wei=gas_price)  # fmt: skip
    assert not dust.worth
    assert dust.describe(UNITS) == (
        "stake 0.000000000017 SWARM pays 0.0000000000017 SWARM (~0.0000000000017 ETH), "
        "a slash costs ~0.0005 ETH"
    )


def test_the_cheaper_gas_or_a_dearer_token_keeps_a_node_worth_slashing() -> None:
    stake = 2_400_000 * GWEI  # bounty 0.00024 tokens
    kwargs: dict[str, Any] = {"decimals": 18, "gas_price_wei": GWEI}
    assert not slash_worth(stake, DEVNET, token_price_eth=Decimal(1), **kwargs).worth
    assert slash_worth(stake, DEVNET, token_price_eth=Decimal(10), **kwargs).worth
    assert slash_gas(1, withheld=True) < slash_gas(1) == SLASH_GAS < slash_gas(3)


def test_no_stake_or_no_bounty_is_never_worth_a_slash() -> None:
    kwargs: dict[str, Any] = {"decimals": 18, "token_price_eth": Decimal(10**9), "gas_price_wei": 0}
    gone = slash_worth(0, DEVNET, **kwargs)
    assert not gone.worth
    assert gone.describe(UNITS) == "no slashable stake (not registered, or withdrawn)"
    assert not slash_worth(9, DEVNET, **kwargs).worth  # the bounty rounds to nothing
    assert slash_worth(10, DEVNET, **kwargs).worth  # free gas: any bounty pays


def test_a_token_with_other_decimals_is_valued_in_its_own_units() -> None:
    assert token_value_wei(1_000_000, 6, Decimal("0.0005")) == 5 * 10**14  # 1 USDC-like token
    assert token_value_wei(1, 18, Decimal("0.5")) == 0  # rounded down


def test_an_equivocation_report_pays_the_whole_bounty_to_its_reporter() -> None:
    quorum3 = SlashTerms(slash_bps=5_000, bounty_bps=2_000, quorum=3)
    kwargs: dict[str, Any] = {"decimals": 18, "token_price_eth": Decimal(1), "gas_price_wei": GWEI}
    # 0.006 tokens of stake: a verdict slash pays each of three verifiers 0.0002 (less than
    # ~0.00044 ETH of gas with the safety), the reporter of an equivocation all 0.0006
    stake = 6 * 10**15
    assert not slash_worth(stake, quorum3, **kwargs).worth
    report = equivocation_worth(stake, quorum3, **kwargs)
    assert report.worth and report.bounty == 6 * 10**14


def test_estimates_in_eth_are_shown_to_two_significant_digits() -> None:
    assert rounded(348_477_220_806_201) == 350_000_000_000_000
    assert rounded(457_106_756_920_000) == 460_000_000_000_000
    assert (rounded(17), rounded(0), rounded(5)) == (17, 0, 5)
    shown = slash_worth(30 * TOKEN, DEVNET, decimals=18, token_price_eth=Decimal("0.000116159"),
                        gas_price_wei=914_213_514)  # fmt: skip
    assert shown.describe(UNITS) == (
        "stake 30 SWARM pays 3 SWARM (~0.00035 ETH), a slash costs ~0.00046 ETH"
    )
