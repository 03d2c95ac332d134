"""Logging for every long-running stakeswarm command (node, verifier, client, demo): one format,
one level, the chattiest libraries kept to warnings."""

from __future__ import annotations

import logging
import sys

# Libraries that log every request or scheduled run at INFO; they only speak from WARNING up.
NOISY_LOGGERS = ("hivemind", "httpx", "web3", "urllib3", "alembic", "apscheduler")


def setup_logging(log_level: str) -> None:
    """Log records at `log_level` (DEBUG, INFO, WARNING or ERROR) and above to stderr, with
    time, level and logger; `NOISY_LOGGERS` at WARNING or above (at `log_level` if higher)."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    floor = max(logging.WARNING, logging.getLogger().level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(floor)
