"""The gateway's app without a swarm: `/` is left to other routers (the dashboard's), and what
is refused before any generation is OpenAI-shaped, in the documented order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fastapi import APIRouter
from fastapi.testclient import TestClient

from client.config import ClientConfig
from gateway.accounts import Accounts
from gateway.api import ApiParts, create_app
from gateway.config import GatewayConfig
from gateway.keys import new_key
from ledger.db import create_gateway_key, open_ledger, sqlite_url
from ledger.units import TokenUnits


def test_the_root_is_free_and_early_refusals_are_openai_shaped(tmp_path: Path) -> None:
    ledger = open_ledger(sqlite_url(tmp_path / "gateway.sqlite"))
    try:
        key, digest = new_key()
        with ledger.begin() as db:
            create_gateway_key(db, name="alice", key_hash=digest, budget=0)
        config = GatewayConfig(
            client=ClientConfig(model_path=tmp_path / "tiny", initial_peers=("/ip4/1.2.3.4",)),
        )
        # no swarm here: nothing below reaches the engine's generation
        engine = SimpleNamespace(tokenizer=None, context=512)
        parts = ApiParts(config, Accounts(ledger), engine, TokenUnits(18, "SWARM"))  # type: ignore[arg-type]
        dashboard = APIRouter()

        @dashboard.get("/")
        def home() -> dict[str, str]:
            return {"page": "dashboard"}

        http = TestClient(create_app(parts, routers=[dashboard]))
        assert http.get("/").json() == {"page": "dashboard"}
        auth = {"authorization": f"Bearer {key}"}
        assert http.get("/v1/models", headers=auth).json()["data"][0]["id"] == "tiny"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        cases = [
            ({}, body, 401),  # no key: refused before the body is read
            (auth, "{not json", 400),
            (auth, {**body, "model": "gpt-4"}, 404),
            (auth, {**body, "n": 9}, 400),
        ]
        for headers, sent, status in cases:
            response = (
                http.post("/v1/chat/completions", headers=headers, content=sent)
                if isinstance(sent, str)
                else http.post("/v1/chat/completions", headers=headers, json=sent)
            )
            assert response.status_code == status, response.text
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        missing = http.get("/v1/nothing", headers=auth)
        assert missing.status_code == 404 and "error" in missing.json()
    finally:
        ledger.close()
