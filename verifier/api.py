"""The verifier's HTTP status API (FastAPI, served by uvicorn inside the verifier's loop,
through `node.api.HttpApi`).

    GET /health   200 {"status": "ok"} while the verifier runs (503 while starting/stopping)
    GET /status   audits done, passed, failed, withheld, pending; slashes recorded and
                  submitted, stake taken, bounties earned; verdicts signed; the audit queue
                  (pending per node, skipped nodes and why, recent rate, time to drain) (JSON)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from node.api import status_app

if TYPE_CHECKING:
    from ledger.db import VerifierTotals
    from ledger.units import TokenUnits


def build_app(*, status: Callable[[], dict[str, Any]], healthy: Callable[[], bool]) -> FastAPI:
    """The API over the verifier's `status()` (run in a worker thread: it reads the ledger)
    and `healthy()`."""
    return status_app("stakeswarm verifier", status=status, healthy=healthy)


def totals_document(totals: VerifierTotals, units: TokenUnits) -> dict[str, Any]:
    """The audit and slash counts of `/status` (and of `stakeswarm verifier status`); amounts
    are shown in tokens, their exact base units (decimal strings) in `..._base_units`."""
    return {
        "token": {"symbol": units.symbol, "decimals": units.decimals},
        "audits": {
            "done": totals.audits,
            "passed": totals.passed,
            "failed": totals.failed,
            "withheld": totals.withheld,
            "errors": totals.errors,
            "pending": totals.pending,
        },
        "slashes": {
            "recorded": totals.slashes,
            "withheld": totals.withheld_slashes,
            "submitted": totals.submitted,
            "stake_taken": units.show(totals.slashed),
            "stake_taken_base_units": str(totals.slashed),
            "bounties_earned": units.show(totals.bounties),
            "bounties_earned_base_units": str(totals.bounties),
        },
        "verdicts_signed": totals.verdicts_signed,
    }
