"""The verifier's HTTP status API (FastAPI, served by uvicorn inside the verifier's loop,
through `node.api.HttpApi`).

    GET /health   200 {"status": "ok"} while the verifier runs (503 while starting/stopping)
    GET /status   audits done, passed, failed, withheld, pending; slashes recorded and
                  submitted, stake taken, bounties earned; verdicts signed (JSON)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse


def build_app(*, status: Callable[[], dict[str, Any]], healthy: Callable[[], bool]) -> FastAPI:
    """The API over the verifier's `status()` (run in a worker thread: it reads the ledger)
    and `healthy()`."""
    app = FastAPI(title="stakeswarm verifier", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)

    @app.get("/status")
    def get_status() -> dict[str, Any]:
        return status()

    return app
