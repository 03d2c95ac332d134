"""The dashboard on three real nodes on Anvil (the middle one cheating): `stakeswarm dashboard`
serves the swarm until Ctrl-C; then, with a real verifier and a paying client, headless
Chromium driven over the DevTools protocol looks at the page the way a person would. Every node
has its row, the block map has no gap; once the verifier has audited and slashed the cheat, the
slash appears with its evidence and the cheat's blocks turn red, without the page being
reloaded. Screenshots are kept in build/test-artifacts/. What the nodes did on-chain is
reverted afterwards.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from dashboard.config import DashboardConfig
from dashboard.service import running_dashboard
from ledger.compile import PROJECT_ROOT
from ledger.deployment import Deployment
from stakeswarm.direct import Hop, Payer, RouteSession
from stakeswarm.home import Home
from stakeswarm.swarm import running_verifier
from tests.integration.interrupt import sigint_reaches_it
from tests.integration.nodes import LoopThread, NodeProcess, NodeSpec, client_p2p

pytestmark = pytest.mark.timeout(420)

ARTIFACTS = PROJECT_ROOT / "build" / "test-artifacts"
NODE_ARGS = ("--commit-interval", "1", "--redeem-interval", "3600", "--announce-interval", "2")
CHROMIUM = next(
    (
        found
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (found := shutil.which(name))
    ),
    None,
)


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [
        NodeSpec("node-0", "0:2", args=NODE_ARGS),
        NodeSpec("node-1", "2:4", args=(*NODE_ARGS, "--faulty", "noise")),
        NodeSpec("node-2", "4:6", args=NODE_ARGS),
    ]


# --- a browser over the DevTools protocol ------------------------------------------------------


class Browser:
    """Headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, process: subprocess.Popen[bytes], socket: Any) -> None:
        self.process = process
        self.socket = socket
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:  # events arrive in between: skip them
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, what: str, expression: str, timeout: float) -> Any:
        """Poll `expression` in the page until it is truthy; fail with the page's text."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body.innerText")
                raise AssertionError(f"the page never showed {what} in {timeout:.0f} s:\n{text}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> None:
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def chromium(workdir: Path) -> Iterator[Browser]:
    """A headless Chromium (its own process group, stopped by its pid) and its page."""
    from websockets.sync.client import connect

    assert CHROMIUM is not None
    profile = workdir / "chromium-profile"
    log = (workdir / "chromium.log").open("wb")
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         "--remote-debugging-port=0", "--remote-allow-origins=*", "--window-size=1400,1000",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None, (workdir / "chromium.log").read_text()
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.2)
        port = int(port_file.read_text().splitlines()[0])
        pages = [
            target
            for target in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            if target["type"] == "page"
        ]
        socket = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        try:
            browser = Browser(process, socket)
            browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=1400, height=1000, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            yield browser
        finally:
            socket.close()
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


# --- the page as a person reads it ------------------------------------------------------------

ROWS = """[...document.querySelectorAll('#nodes tbody tr[data-node]')]
  .map(row => [row.dataset.node, row.innerText])"""
GAPS = "[...document.querySelectorAll('.block.gap')].map(b => Number(b.dataset.block))"
BLOCKS = "document.querySelectorAll('.block').length"


def _short(address: str) -> str:
    return f"{address[:8]}…{address[-6:]}"  # as the page shows it


def _traffic(runner: LoopThread, p2p: Any, payer: Payer, nodes: list[NodeProcess]) -> None:
    """A paid session through the three nodes: a 5-token prompt and two decode steps."""
    hops = [
        Hop(n, payer.open_channel(n.address), int(n.status()["price_per_token_per_block"]))
        for n in nodes
    ]
    route = RouteSession(runner, p2p, payer, hops).open(16)
    generator = torch.Generator().manual_seed(0)
    length = 0
    for tokens in (5, 1, 1):
        length += tokens
        route.step(
            torch.randn(1, tokens, 64, generator=generator), torch.ones(1, length, dtype=torch.long)
        )
    route.close()


def test_the_dashboard_command_serves_the_swarm_until_ctrl_c(
    devnet_home: Home, nodes: list[NodeProcess], tmp_path: Path
) -> None:
    output = tmp_path / "dashboard.log"
    with output.open("wb") as out:
        command = subprocess.Popen(
            [sys.executable, "-m", "stakeswarm", "dashboard", "--initial-peers", nodes[0].maddrs[0],
             "--devnet", "--home", str(devnet_home.root), "--port", "0"],
            cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=sigint_reaches_it,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "ready" not in (text := output.read_text(errors="replace")):
            assert command.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.3)
        (url,) = re.findall(r"dashboard at (http://\S+)", text)
        assert "stakeswarm" in httpx.get(url, timeout=30).text
        swarm = httpx.get(url + "api/swarm", timeout=60).json()
        assert {n["address"] for n in swarm["nodes"]} == {n.address for n in nodes}
        assert [(m["name"], m["total_blocks"], m["gaps"]) for m in swarm["models"]] == [
            (nodes[0].status()["model"], 6, [])
        ]
        command.send_signal(signal.SIGINT)
        assert command.wait(60) == 0
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()
    assert "dashboard stopped" in output.read_text(errors="replace")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_a_person_sees_the_swarm_and_the_cheat_slashed_without_reloading(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path
) -> None:
    cheat = nodes[1]
    peers = [m for n in nodes for m in n.maddrs]
    with (
        running_verifier(
            deployment, tmp_path, model_path, "verifier-0", peers, sample_rate=1.0
        ) as verifier,
        running_dashboard(
            DashboardConfig(
                initial_peers=tuple(peers),
                deployment=deployment,
                port=0,
                verifier_urls=(verifier.http_url,),
                refresh=1.0,
                min_interval=0.5,
            )
        ) as board,
        chromium(tmp_path) as browser,
    ):
        browser.call("Page.enable")
        browser.call("Page.navigate", url=board.url)
        # every node has its row, each online, and the map shows all six blocks served
        browser.wait_for(
            "three online nodes and a whole block map",
            f"(() => {{ const r = {ROWS}; return r.length === 3 && r.every(([, t]) => "
            f"t.includes('online')) && {BLOCKS} === 6; }})()",
            timeout=90,
        )
        browser.evaluate("window.loadedOnce = true")  # gone if the page were ever reloaded
        rows = dict(browser.evaluate(ROWS))
        assert set(rows) == {n.address for n in nodes}
        for node in nodes:
            text = rows[node.address]
            assert _short(node.address) in text
            assert f"{node.span[0]}–{node.span[1] - 1}" in text  # its blocks, as people count
            assert "float32" in text and "SWARM" in text
        assert browser.evaluate(GAPS) == []
        assert "every block is served" in browser.evaluate("document.body.innerText")
        assert "no slash yet" in browser.evaluate("document.getElementById('slashes').innerText")
        verifiers = browser.evaluate("document.getElementById('verifiers').innerText")
        assert _short(verifier.address) in verifiers
        browser.screenshot(ARTIFACTS / "dashboard-healthy.png")

        with client_p2p(peers) as (runner, p2p):
            _traffic(runner, p2p, Payer(deployment, deployment.connect()), nodes)

        # the verifier audits the committed leaves and slashes the cheat: the page shows it
        browser.wait_for(
            "the cheat's slash",
            f"!!document.querySelector('#slashes li[data-slash-node=\"{cheat.address}\"]')",
            timeout=240,
        )
        assert browser.evaluate("window.loadedOnce") is True  # no reload: it updated itself
        slash = browser.evaluate(
            f"document.querySelector('#slashes li[data-slash-node=\"{cheat.address}\"]').innerText"
        )
        assert "slashed: mismatch" in slash
        assert "recomputing its span gave another output" in slash
        assert verifier.address in slash  # submitted by
        assert "transaction" in slash and "leaf" in slash
        # the cheat no longer has the stake for its span: its blocks are a red gap now
        browser.wait_for("the cheat's blocks as a gap", f"{GAPS}.join() === '2,3'", timeout=30)
        rows = dict(browser.evaluate(ROWS))
        assert "inactive" in rows[cheat.address]
        for honest in (nodes[0], nodes[2]):
            assert "online" in rows[honest.address] and "none" in rows[honest.address]
            assert "0 steps" not in rows[honest.address]  # it committed what it served
        browser.wait_for(
            "the verifier's submitted slash",
            "Number(document.querySelector('#verifiers td[data-submitted]')"
            "?.dataset.submitted) >= 1",
            timeout=30,
        )
        browser.screenshot(ARTIFACTS / "dashboard-slashed.png")
