"""The dashboard's router as an app mounting it serves it: the page and its own script and
style (no CDN), the snapshot as JSON, and the mounting app's extra figures beside it."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dashboard.snapshot import SnapshotUnavailable, SwarmSnapshot
from dashboard.web import dashboard_router

SNAPSHOT = SwarmSnapshot(
    taken_at=1_700_000_000.0,
    chain_id=31337,
    rpc_url="http://127.0.0.1:8545",
    block_number=12,
    chain_time=1_700_000_000,
    token="SWARM",
    models=(),
    nodes=(),
    verifiers=(),
    slashes=(),
)


class _Fixed:
    def snapshot(self) -> SwarmSnapshot:
        return SNAPSHOT


def _client(**options: object) -> TestClient:
    app = FastAPI()
    app.include_router(dashboard_router(_Fixed(), **options))  # type: ignore[arg-type]
    return TestClient(app)


def test_the_page_loads_only_its_own_script_and_style() -> None:
    client = _client(title="my gateway")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "my gateway" in page.text
    assert 'src="static/dashboard.js"' in page.text and 'href="static/dashboard.css"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the internet
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200 and "api/swarm" in script.text
    assert "javascript" in script.headers["content-type"]
    assert client.get("/static/dashboard.css").headers["content-type"].startswith("text/css")
    assert client.get("/static/../web.py").status_code == 404
    assert client.get("/static/other.js").status_code == 404


def test_the_snapshot_is_json_with_the_extra_figures_of_the_mounting_app() -> None:
    plain = _client().get("/api/swarm").json()
    assert (plain["chain_id"], plain["token"], plain["nodes"]) == (31337, "SWARM", [])
    assert "extra" not in plain

    spend = {"title": "Gateway spend", "rows": [["spent today", "1.5 SWARM"]]}
    assert _client(extra=lambda: spend).get("/api/swarm").json()["extra"] == spend

    def broken() -> dict[str, object]:
        raise RuntimeError("ledger down")

    shown = _client(extra=broken).get("/api/swarm")
    assert shown.status_code == 200  # the swarm's figures still come
    assert shown.json()["extra"]["error"] == "ledger down"


def test_a_swarm_not_read_yet_is_a_503_the_page_can_say() -> None:
    class _Down:
        def snapshot(self) -> SwarmSnapshot:
            raise SnapshotUnavailable("cannot read the chain: connection refused")

    app = FastAPI()
    app.include_router(dashboard_router(_Down()))
    answer = TestClient(app).get("/api/swarm")
    assert answer.status_code == 503
    assert answer.json() == {"error": "cannot read the chain: connection refused"}
