"""A ledger that fails under a running node's job makes the node unhealthy (issue 12, finding 4).

The server's prune job runs against a real SQLite ledger whose pages were overwritten after it
was opened. The job must not just log and carry on (what it did: the node kept serving work it
could not record): `/health` fails with the reason, the node is announced OFFLINE, and payments
(so new sessions and steps) are refused. A job failing for another reason (the chain) changes
nothing. The rest of the server is not built: only the parts the jobs use.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace

from sqlalchemy import text

from ledger import db
from ledger.chain import ChainError
from node.commits import InputStore
from node.config import NodeConfig
from node.protocol import ServerInfo, ServerState
from node.server import Server

PAGE = 4096


class _Payments:
    """What the server tells its payments: suspended with a reason (refused as node_inactive)."""

    def __init__(self) -> None:
        self.suspended: str | None = None

    def suspend(self, reason: str) -> None:
        self.suspended = reason


class _Announcer:
    def __init__(self) -> None:
        self.states: list[ServerState] = []

    async def announce(self, info: ServerInfo) -> bool:
        self.states.append(info.state)
        return True


def _server(ledger: db.Ledger, tmp_path: Path) -> tuple[Server, _Payments, _Announcer]:
    server = Server(NodeConfig(model_path=tmp_path, devnet=True))
    payments, announcer = _Payments(), _Announcer()
    address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    # only the parts the jobs use
    server.base = SimpleNamespace(  # type: ignore[assignment]
        ledger=ledger, challenge_window=3600.0, address=address
    )
    server.parts = SimpleNamespace(  # type: ignore[assignment]
        store=InputStore(tmp_path / "inputs"), payments=payments, announcer=announcer
    )
    server.state = ServerState.ONLINE
    server.server_info = lambda: ServerInfo(  # type: ignore[method-assign]
        state=server.state,
        span_start=0,
        span_end=2,
        throughput=1.0,
        price_per_token_per_block=1,
        eth_address=address,
        dtype="float32",
        cache_tokens_left=0,
        credit_window=0,
        http_port=0,
    )
    return server, payments, announcer


def test_a_ledger_failing_in_a_job_makes_the_node_unhealthy_and_offline(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = db.open_ledger(db.sqlite_url(path))
    with ledger.begin() as session:  # some pages beyond the schema's
        session.execute(text("CREATE TABLE filler (data BLOB)"))
        for _ in range(100):
            session.execute(text("INSERT INTO filler VALUES (:d)"), {"d": os.urandom(900)})
    ledger.engine.dispose()  # checkpointed; the next connection reads the file
    server, payments, announcer = _server(ledger, tmp_path)
    try:
        asyncio.run(server._prune_job())  # a sound ledger: nothing happens
        assert (
            server.healthy() and server.state == ServerState.ONLINE and payments.suspended is None
        )

        size = path.stat().st_size
        with path.open("r+b") as file:  # every page past the schema's first two, damaged
            file.seek(2 * PAGE)
            file.write(os.urandom(size - 2 * PAGE))
        ledger.engine.dispose()
        asyncio.run(server._prune_job())
    finally:
        ledger.close()

    assert not server.healthy()
    problem = server.health_problem() or ""
    assert "the ledger failed in the prune job" in problem and "malformed" in problem
    assert server.state == ServerState.OFFLINE
    assert announcer.states == [ServerState.OFFLINE]
    assert payments.suspended is not None and "try another node" in payments.suspended


def test_a_chain_error_in_a_job_leaves_the_node_healthy(tmp_path: Path) -> None:
    ledger = db.open_ledger(db.sqlite_url(tmp_path / "ledger.sqlite"))
    server, payments, announcer = _server(ledger, tmp_path)
    try:
        asyncio.run(server._job_failed("redeem", ChainError("the RPC did not answer")))
    finally:
        ledger.close()
    assert server.healthy() and server.state == ServerState.ONLINE
    assert announcer.states == [] and payments.suspended is None
