"""Building a client whole (`client.client.build_client`): what started is stopped in reverse
order, when the client closes and when a later part fails to start."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account

import client.client as client_module
from client.client import SwarmClient, build_client
from client.config import ClientConfig
from ledger.deployment import Deployment

WALLET = Account.from_key(b"\x03" * 32)


class _Parts:
    """Stand-ins for the parts that run, each noting in `stopped` when it is stopped."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch, *, router_fails: bool) -> None:
        stopped = self.stopped
        chain = SimpleNamespace(chain_id=31337, sender=lambda account, journal: "sender")
        ledger = SimpleNamespace(tx_journal=lambda: None, close=lambda: stopped.append("ledger"))
        network = SimpleNamespace(shutdown=lambda: stopped.append("network"))
        token = SimpleNamespace(decimals=lambda: 18, symbol=lambda: "SWARM")
        contracts = SimpleNamespace(
            node_registry=None, slasher=SimpleNamespace(domain=lambda: 0), token=token
        )

        class Keeper:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def close(self) -> None:
                stopped.append("receipts")

        def router(*args: Any, **kwargs: Any) -> object:
            if router_fails:
                raise RuntimeError("the router cannot start")
            return SimpleNamespace()

        model = SimpleNamespace(num_hidden_layers=4, hidden_size=8)
        monkeypatch.setattr(client_module, "load_config", lambda path: model)
        monkeypatch.setattr(Deployment, "connect", lambda self, rpc_url: chain)
        monkeypatch.setattr(client_module, "open_deployment_ledger", lambda *a: ledger)
        monkeypatch.setattr(client_module.Contracts, "from_deployment", lambda *a: contracts)
        monkeypatch.setattr(client_module, "Payments", lambda **kw: SimpleNamespace())
        monkeypatch.setattr(client_module, "ServerRegistry", lambda *a, **kw: SimpleNamespace())
        monkeypatch.setattr(client_module.Network, "start", lambda *a, **kw: network)
        monkeypatch.setattr(client_module, "ReceiptKeeper", Keeper)
        monkeypatch.setattr(client_module, "Router", router)


def _config(tmp_path: Path) -> ClientConfig:
    return ClientConfig(model_path=tmp_path / "tiny", initial_peers=("/ip4/127.0.0.1/tcp/1",),
                        home=tmp_path)  # fmt: skip


def _deployment() -> Deployment:
    return object.__new__(Deployment)  # never read: every part that would read it is a stand-in


def test_a_client_stops_its_parts_in_reverse_order_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    parts = _Parts()
    parts.install(monkeypatch, router_fails=False)
    client = SwarmClient(_config(tmp_path), account=WALLET, deployment=_deployment())
    assert client.address == WALLET.address and parts.stopped == []
    client.close()
    client.close()
    assert parts.stopped == ["receipts", "network", "ledger"]


def test_a_part_that_fails_to_start_stops_those_started_before_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    parts = _Parts()
    parts.install(monkeypatch, router_fails=True)
    with pytest.raises(RuntimeError, match="router"), contextlib.ExitStack() as stops:
        build_client(_config(tmp_path), account=WALLET, deployment=_deployment(), stops=stops)
    assert parts.stopped == ["receipts", "network", "ledger"]
    parts.stopped.clear()
    with pytest.raises(RuntimeError, match="router"):
        SwarmClient(_config(tmp_path), account=WALLET, deployment=_deployment())
    assert parts.stopped == ["receipts", "network", "ledger"]
