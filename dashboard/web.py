"""The dashboard's HTTP face: a FastAPI `APIRouter` any app can mount.

    GET /                       the page (HTML); it polls `api/swarm` every few seconds
    GET /api/swarm              the snapshot as JSON (`SwarmSnapshot.to_json`), plus `extra`
    GET /static/dashboard.js    the page's script (vanilla JS, shipped in this package)
    GET /static/dashboard.css   its style

Every URL the page uses is relative, so the router works at any prefix. `extra`, when given,
is called on every `/api/swarm` and its dictionary is sent under `"extra"`: an application
mounting the dashboard (the OpenAI gateway) shows its own figures there, e.g.
`{"title": "Gateway spend", "rows": [["spent today", "1.2 SWARM"], ...]}`; the page draws
`rows` (pairs of label and value) as a table under `title`, and any other key as a line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any, Protocol

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from dashboard.snapshot import SnapshotUnavailable, SwarmSnapshot

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 3.0  # how often the page asks for a new snapshot

_STATIC = {  # file name -> media type
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


class SnapshotSource(Protocol):
    """What the router reads: a `dashboard.collector.Collector`, or anything like it
    (`snapshot` raises `SnapshotUnavailable` when it has nothing to show yet)."""

    def snapshot(self) -> SwarmSnapshot: ...


@cache
def _static(name: str) -> str:
    return resources.files("dashboard").joinpath("static", name).read_text(encoding="utf-8")


def dashboard_router(
    collector: SnapshotSource,
    *,
    extra: Callable[[], dict[str, Any]] | None = None,
    title: str = "stakeswarm",
    refresh_seconds: float = REFRESH_SECONDS,
) -> APIRouter:
    """The dashboard's routes over `collector` (see the module doc); `extra()` adds the
    mounting application's own figures (its failure shows on the page, not as an error)."""
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = (
            _static("index.html")
            .replace("{{title}}", _escape(title))
            .replace("{{refresh_ms}}", str(int(refresh_seconds * 1000)))
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @router.get("/api/swarm")
    async def swarm() -> JSONResponse:
        # the collector blocks on the chain, the DHT and the nodes: not on the app's loop
        try:
            snapshot = await run_in_threadpool(collector.snapshot)
        except SnapshotUnavailable as exc:
            return JSONResponse({"error": str(exc)}, 503, headers={"Cache-Control": "no-store"})
        body = snapshot.to_json()
        if extra is not None:
            try:
                body["extra"] = await run_in_threadpool(extra)
            except Exception as exc:  # the host app's figures must not take the page down
                logger.warning("the dashboard's extra figures failed: %s", exc)
                body["extra"] = {"title": "extra", "error": str(exc)}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(_static(name), media_type=_STATIC[name])

    return router


def _escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )
