"""`VerifierConfig`: the reveal deadline and the withheld rule's settings, checked before a
verifier starts (also through `stakeswarm verifier run`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from stakeswarm.cli import app
from verifier.config import (
    DEFAULT_RETRY_INTERVAL,
    DEFAULT_REVEAL_DEADLINE,
    DEFAULT_REVEAL_TIMEOUT,
    VerifierConfig,
)
from verifier.errors import VerifierConfigError


def test_the_default_deadline_outlasts_a_restart_and_fits_a_day(tmp_path: Path) -> None:
    config = VerifierConfig(model_path=tmp_path, devnet=True)
    assert config.reveal_deadline == DEFAULT_REVEAL_DEADLINE
    # many retries before a withheld verdict, a deadline far inside the devnet's 1-day window
    assert config.reveal_deadline / config.retry_interval >= 100
    assert 10 * 60 <= config.reveal_deadline <= 86_400 / 10
    assert config.reveal_timeout == DEFAULT_REVEAL_TIMEOUT < config.reveal_deadline
    assert config.retry_interval == DEFAULT_RETRY_INTERVAL
    assert config.withheld_min_attempts == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reveal_deadline": 0}, "reveal_deadline must be positive"),
        ({"reveal_deadline": 5, "reveal_timeout": 10}, "must not exceed reveal_deadline"),
        ({"retry_interval": -1}, "retry_interval must be positive"),
        ({"withheld_min_attempts": 0}, "withheld_min_attempts must be >= 1"),
    ],
)
def test_bad_withheld_settings_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(VerifierConfigError, match=message):
        VerifierConfig(model_path=tmp_path, devnet=True, **options)


def test_the_cli_refuses_a_bad_deadline_before_starting(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["verifier", "run", "--model", str(tmp_path), "--devnet", "--home", str(tmp_path),
         "--reveal-deadline", "-1"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "reveal_deadline must be positive" in result.output
    shown = CliRunner().invoke(app, ["verifier", "run", "--help"], env={"COLUMNS": "200"})
    assert "withheld verdict" in shown.output and str(int(DEFAULT_REVEAL_DEADLINE)) in shown.output
