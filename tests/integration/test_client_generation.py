"""The client end to end: three real node processes serving a tiny Llama on Anvil, a client
that routes, pays, checks receipts and fails over, from Python and from the CLI.

Nodes: node-0 serves blocks 0:3; node-1, node-2 and node-3 serve 3:6 (spares). The module's
tests share them, in file order; the last three kill a node in the middle of a step, kill one
between steps, then stop every node and check what each was paid on-chain. Everything the
nodes and clients did on-chain is reverted afterwards.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from transformers import AutoTokenizer, TextStreamer

from client.errors import (
    BudgetExceededError,
    NoRouteError,
    PaymentRefusedError,
    SessionStateError,
)
from client.model import DistributedModelForCausalLM
from ledger.contracts import Contracts
from ledger.db import (
    ReceiptStatus,
    client_channels,
    open_ledger,
    receipts_of,
    served_totals,
    sqlite_url,
)
from ledger.deployment import TOKEN, Deployment
from ledger.types import ChannelId
from ledger.units import TokenUnits, format_tokens
from node.balance import ChainClock, Redeemer
from stakeswarm.tiny_models import load_reference_model, make_tiny_model
from tests.integration.interrupt import sigint_reaches_it
from tests.integration.nodes import (
    REPO_ROOT,
    NodeProcess,
    NodeSpec,
    chain_snapshot,
    node_home,
    running_nodes,
)

pytestmark = pytest.mark.timeout(900)

IDLE_TIMEOUT = 10  # seconds a node keeps an idle session: short, so a pause is testable
NODE_ARGS = (
    "--idle-timeout", str(IDLE_TIMEOUT),
    "--commit-interval", "2",
    "--redeem-interval", "3600",
    "--announce-interval", "5",
    "--cache-tokens", "4096",
)  # fmt: skip
PROMPT = torch.tensor([[1, 17, 42, 99, 7, 256, 3]])
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass
class Swarm:
    deployment: Deployment
    nodes: list[NodeProcess]
    model_path: Path
    workdir: Path
    ledgers: list[Path] = field(default_factory=list)  # every client ledger used

    @property
    def peers(self) -> list[str]:
        return [m for node in self.nodes if node.alive() for m in node.maddrs]

    def node(self, peer_id: str) -> NodeProcess:
        return next(n for n in self.nodes if n.peer_id == peer_id)

    def client(self, name: str, account: str = "client-0", **options: Any):  # noqa: ANN201
        home = self.workdir / "clients" / name
        wallet = Account.from_key(self.deployment.account(account).private_key)
        model = DistributedModelForCausalLM.from_pretrained(
            self.model_path, initial_peers=self.peers, wallet=wallet,
            deployment=self.deployment, home=home, **options,
        )  # fmt: skip
        self.ledgers.append(home / "client" / wallet.address / "ledger.sqlite")
        return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 6)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def swarm(
    deployment: Deployment, model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Swarm]:
    chain = deployment.connect()
    workdir = tmp_path_factory.mktemp("client-swarm")
    specs = [
        NodeSpec("node-0", "0:3", args=NODE_ARGS),
        NodeSpec("node-1", "3:6", args=NODE_ARGS),
        NodeSpec("node-2", "3:6", args=NODE_ARGS),
        NodeSpec("node-3", "3:6", args=NODE_ARGS),
    ]
    with chain_snapshot(chain), running_nodes(deployment, workdir, model_path, specs) as nodes:
        yield Swarm(deployment, nodes, model_path, workdir)


@pytest.fixture(scope="module")
def model(swarm: Swarm) -> Iterator[DistributedModelForCausalLM]:
    loaded = swarm.client("main")
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def reference(model_path: Path):  # noqa: ANN201
    return load_reference_model(model_path)


def _receipts(ledger_path: Path, **filters: Any) -> list:
    ledger = open_ledger(sqlite_url(ledger_path))
    try:
        with ledger.begin() as db:
            return receipts_of(db, **filters)
    finally:
        ledger.close()


def test_only_the_ends_of_the_model_are_loaded_locally(
    model: DistributedModelForCausalLM, reference
) -> None:
    state = model.state_dict()
    assert set(state) == {"head.embed_tokens.weight", "head.norm.weight", "head.lm_head.weight"}
    expected = reference.state_dict()
    torch.testing.assert_close(
        state["head.embed_tokens.weight"], expected["model.embed_tokens.weight"]
    )
    torch.testing.assert_close(state["head.lm_head.weight"], expected["lm_head.weight"])
    block_params = sum(p.numel() for n, p in reference.named_parameters() if ".layers." in n)
    assert block_params > 0
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in reference.named_parameters() if ".layers." not in n
    )


def test_greedy_generation_equals_local_generation(
    swarm: Swarm, model: DistributedModelForCausalLM, reference
) -> None:
    remote = model.generate(PROMPT, max_new_tokens=8, do_sample=False)
    local = reference.generate(PROMPT, max_new_tokens=8, do_sample=False)
    assert remote.tolist() == local.tolist()
    greedy = local

    # every step's receipt was checked and kept: one per step per server, all valid
    receipts = _receipts(swarm.ledgers[0])
    assert len(receipts) == 8 * 2
    assert all(r.status is ReceiptStatus.VALID for r in receipts)
    assert {(r.span_start, r.span_end) for r in receipts} == {(0, 3), (3, 6)}
    assert receipts[0].tokens == PROMPT.numel() and receipts[-1].tokens == 1

    # a batch of prompts of different lengths, left-padded, with their attention mask
    tokenizer = model.tokenizer
    batch = tokenizer(["Hello swarm!", "Every server stakes tokens and"], padding=True,
                      return_tensors="pt")  # fmt: skip
    assert (batch["attention_mask"] == 0).any()
    remote = model.generate(**batch, max_new_tokens=6, do_sample=False)
    local = reference.generate(**batch, max_new_tokens=6, do_sample=False)
    assert remote.tolist() == local.tolist()

    # stopping at EOS: make the third greedy token the end of sequence
    eos = int(greedy[0, PROMPT.shape[1] + 2])
    remote = model.generate(PROMPT, max_new_tokens=8, do_sample=False, eos_token_id=eos)
    local = reference.generate(PROMPT, max_new_tokens=8, do_sample=False, eos_token_id=eos)
    assert remote.tolist() == local.tolist()
    assert remote.shape[1] < PROMPT.shape[1] + 8 and int(remote[0, -1]) == eos


def test_sampling_with_a_seed_equals_local_sampling(
    model: DistributedModelForCausalLM, reference
) -> None:
    options = dict(max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, top_k=40)
    torch.manual_seed(1234)
    remote = model.generate(PROMPT, **options)
    torch.manual_seed(1234)
    local = reference.generate(PROMPT, **options)
    assert remote.tolist() == local.tolist()
    torch.manual_seed(4321)
    other = model.generate(PROMPT, **options)
    assert other.tolist() != remote.tolist()  # the seed matters: this is sampling


def test_a_session_steps_token_by_token_and_generate_continues_it(
    model: DistributedModelForCausalLM, reference
) -> None:
    local = reference.generate(PROMPT, max_new_tokens=6, do_sample=False)
    with model.inference_session(max_length=PROMPT.shape[1] + 6) as session:
        ids = model.generate(PROMPT, max_new_tokens=2, session=session)
        assert session.position == PROMPT.shape[1] + 1  # the last token is not sent yet
        for _ in range(4):
            ids = model.generate(None, max_new_tokens=1, session=session)
    assert ids.tolist() == local.tolist()

    # the same by hand: hidden states in, hidden states out, one token per step
    ids, hidden = PROMPT, model.head.embed(PROMPT)
    with model.inference_session(max_length=PROMPT.shape[1] + 6) as session:
        for _ in range(6):
            out = session.step(hidden)  # [1, new, hidden]
            next_id = model.head.logits(out)[:, -1].argmax(-1, keepdim=True)
            ids, hidden = torch.cat([ids, next_id], dim=1), model.head.embed(next_id)
        with pytest.raises(SessionStateError, match="max_length"):
            session.step(torch.cat([hidden, hidden], dim=1))
    assert ids.tolist() == local.tolist()


def test_a_session_idle_past_the_servers_timeout_is_reopened_and_replayed(
    model: DistributedModelForCausalLM, reference
) -> None:
    local = reference.generate(PROMPT, max_new_tokens=4, do_sample=False)
    with model.inference_session(max_length=PROMPT.shape[1] + 4) as session:
        model.generate(PROMPT, max_new_tokens=2, session=session)
        time.sleep(IDLE_TIMEOUT + 2)  # the servers drop the session meanwhile
        ids = model.generate(None, max_new_tokens=2, session=session)
    assert ids.tolist() == local.tolist()
    assert session.failovers == 2  # both servers' sessions were opened again and replayed
    backoff = model.client.router.backoff
    assert all(backoff.failures(hop.peer_id) == 0 for hop in session.route)  # no one's fault


def test_a_step_interrupted_half_way_is_redone_on_the_next_call(
    model: DistributedModelForCausalLM, reference, monkeypatch
) -> None:  # noqa: ANN001
    local = reference.generate(PROMPT, max_new_tokens=4, do_sample=False)
    with model.inference_session(max_length=PROMPT.shape[1] + 4) as session:
        model.generate(PROMPT, max_new_tokens=2, session=session)
        network = model.client.network
        receive, last = network.receive_step, session.route[-1].address

        def interrupted(remote, **limits):  # noqa: ANN001, ANN003, ANN202
            if remote.node == last:  # Ctrl-C after the first server ran the step
                raise KeyboardInterrupt
            return receive(remote, **limits)

        monkeypatch.setattr(network, "receive_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            model.generate(None, max_new_tokens=2, session=session)
        monkeypatch.undo()
        ids = model.generate(None, max_new_tokens=2, session=session)
    assert ids.tolist() == local.tolist()
    # both servers ran the step (or may have): each was reopened and replayed
    assert session.failovers == 2


def test_a_route_above_the_maximum_price_is_refused_clearly(swarm: Swarm) -> None:
    with swarm.client("frugal", max_price=10) as model:
        with pytest.raises(NoRouteError, match="maximum price") as refused:
            model.generate(PROMPT, max_new_tokens=2)
        assert model.client.payments.known_channels() == []  # nothing was opened
    assert "no route through blocks [0, 6)" in str(refused.value)
    # the prices told in tokens (the maximum is 10 base units)
    assert "exceeds the maximum price 0.00000000000000001 SWARM per token" in str(refused.value)
    assert re.search(r"its price per block alone, [0-9.]+ SWARM, exceeds", str(refused.value))


def test_the_budget_stops_generation_before_overspending(swarm: Swarm) -> None:
    price = sum(
        int(node.status()["price_per_token"]) for node in swarm.nodes[:2]
    )  # node-1 and node-2 charge the same for blocks 3:6
    budget = price * (PROMPT.shape[1] + 3)  # the prompt and 3 more steps
    with swarm.client("budget", budget=budget) as model:
        with pytest.raises(BudgetExceededError, match="stopped before overspending") as stopped:
            model.generate(PROMPT, max_new_tokens=8, do_sample=False)
        spent = model.client.payments.budget.spent
    assert spent <= budget
    assert spent == price * (PROMPT.shape[1] + 3)
    assert stopped.value.partial is not None
    assert stopped.value.partial.shape[1] == PROMPT.shape[1] + 4  # 4 tokens, 4 forwards paid
    assert stopped.value.left < stopped.value.needed
    # told in tokens; the error keeps the exact base units in its fields
    assert f"of the budget of {format_tokens(budget, 18)} SWARM is left" in str(stopped.value)
    assert str(budget) not in str(stopped.value)


def test_a_client_that_stops_paying_is_refused(swarm: Swarm, monkeypatch) -> None:  # noqa: ANN001
    with swarm.client("stingy", account="client-1") as model:
        payments = model.client.payments
        pay = payments.pay
        monkeypatch.setattr(payments, "pay", lambda channel, cost: pay(channel, min(cost, 1)))
        with pytest.raises(PaymentRefusedError, match="payment_behind") as refused:
            model.generate(PROMPT, max_new_tokens=2, do_sample=False)
    assert refused.value.code == "payment_behind"
    assert refused.value.server == swarm.nodes[0].address
    assert all(node.alive() for node in swarm.nodes)


def test_a_restarted_client_continues_its_channels(swarm: Swarm, reference) -> None:
    local = reference.generate(PROMPT, max_new_tokens=3, do_sample=False)
    with swarm.client("restart") as first:
        assert first.generate(PROMPT, max_new_tokens=3).tolist() == local.tolist()
        before = {
            c.server: (c.channel_id, c.signed) for c in first.client.payments.known_channels()
        }
    with swarm.client("restart") as second:
        assert second.generate(PROMPT, max_new_tokens=3).tolist() == local.tolist()
        after = {c.server: c for c in second.client.payments.known_channels()}
    shared = before.keys() & after.keys()
    assert shared, "the restarted client routed through none of the same servers"
    for server in shared:
        channel_id, signed = before[server]
        assert after[server].channel_id == channel_id  # the same channel, no new deposit
        assert not after[server].opened_now
        assert after[server].signed == signed + after[server].signed_now > signed


def _cli(
    home: Path, *args: str, devnet: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **(env or {})}
    where = ["--devnet", "--home", str(home)] if devnet else ["--home", str(home)]
    return subprocess.run(
        [sys.executable, "-m", "stakeswarm", "client", *args, *where],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


class _Capture(TextStreamer):
    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.text = ""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text += text


def test_the_cli_streams_the_text_and_sums_up_route_speed_and_payments(
    swarm: Swarm, reference
) -> None:
    home = node_home(swarm.deployment, swarm.workdir / "cli-home")
    tokenizer = AutoTokenizer.from_pretrained(swarm.model_path)
    peers = [arg for m in swarm.peers for arg in ("--initial-peers", m)]
    prompt = "I ate dosa today"
    for chat in (False, True):
        if chat:
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True,
                return_tensors="pt", return_dict=True,
            )["input_ids"]  # fmt: skip
        else:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        capture = _Capture(tokenizer)
        reference.generate(ids, max_new_tokens=12, do_sample=False, streamer=capture)
        result = _cli(
            home, "generate", prompt, "--model", str(swarm.model_path),
            "--max-new-tokens", "12", *peers, *(["--chat"] if chat else []),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(capture.text), (result.stdout, capture.text)
        summary = result.stdout[len(capture.text) :]
        assert "12 tokens in" in summary and "tokens/s" in summary
        for node in swarm.nodes[:1]:
            assert node.address in summary  # on the route, paid, and a channel
        assert "Paid this run" in summary and "Channels" in summary and "SWARM" in summary

    listed = _cli(home, "channels")
    assert listed.returncode == 0, listed.stderr
    assert swarm.nodes[0].address in listed.stdout and "open" in listed.stdout
    shown = _cli(home, "wallet", "show")
    assert shown.returncode == 0, shown.stderr
    assert swarm.deployment.account("client-0").address in shown.stdout
    swarm.ledgers.append(
        home / "client" / swarm.deployment.account("client-0").address / "ledger.sqlite"
    )


def test_the_cli_pays_from_a_keystore_and_stops_at_the_budget(swarm: Swarm) -> None:
    home = node_home(swarm.deployment, swarm.workdir / "keystore-home")
    env = {"CLIENT_PASSWORD": "correct horse battery staple"}
    created = _cli(home, "wallet", "create", "--password-env", "CLIENT_PASSWORD", devnet=False,
                   env=env)  # fmt: skip
    assert created.returncode == 0, created.stderr
    address = re.search(r"address\s+(0x[0-9a-fA-F]{40})", created.stdout)
    assert address, created.stdout
    wallet = address.group(1)
    assert (home / "client" / "keystore.json").is_file()
    shown = _cli(home, "wallet", "show", devnet=False)
    assert shown.returncode == 0 and wallet in shown.stdout, shown.stderr

    chain = swarm.deployment.connect()  # fund the new wallet: stake tokens and gas
    deployer = Account.from_key(swarm.deployment.account("deployer").private_key)
    sender = chain.sender(deployer)
    Contracts.from_deployment(chain, swarm.deployment, sender).token.transfer(wallet, 10 * TOKEN)
    sender.transfer_eth(wallet, 10**18)

    tokenizer = AutoTokenizer.from_pretrained(swarm.model_path)
    prompt = "I ate dosa today"
    prompt_tokens = tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
    price = sum(int(node.status()["price_per_token"]) for node in swarm.nodes[:2])
    common = [
        "--deployment", str(home / "devnet" / "deployment.json"),
        "--password-env", "CLIENT_PASSWORD",
        "--model", str(swarm.model_path),
        *[arg for m in swarm.peers for arg in ("--initial-peers", m)],
    ]  # fmt: skip
    # a budget below the prompt's price: stopped before any channel is opened or paid
    stopped = _cli(home, "generate", prompt, "--budget", "0.000001", *common, devnet=False,
                   env=env)  # fmt: skip
    assert stopped.returncode == 1
    assert "stopped before overspending" in stopped.stderr, stopped.stderr
    # what the prompt would cost, in tokens with the symbol, never in base units
    cost = format_tokens(price * prompt_tokens, 18)
    assert f"would cost {cost} SWARM" in stopped.stderr, stopped.stderr
    assert "of the budget of 0.000001 SWARM is left" in stopped.stderr, stopped.stderr
    assert str(price * prompt_tokens) not in stopped.stderr
    # nothing was paid: said in a line, no empty Paid and Channels tables
    assert "nothing paid this run" in stopped.stdout, stopped.stdout
    assert "Paid this run" not in stopped.stdout and "Channels" not in stopped.stdout
    listed = _cli(home, "channels", *common[:4], devnet=False, env=env)
    assert listed.returncode == 0 and "no channels yet" in listed.stdout, listed.stderr

    # enough for the prompt and 3 tokens: 4 tokens come out, and not one Wei more is spent
    budget = Decimal(price * (prompt_tokens + 3)).scaleb(-18)
    paid = _cli(home, "generate", prompt, "--budget", str(budget), "--max-new-tokens", "8",
                *common, devnet=False, env=env)  # fmt: skip
    assert paid.returncode == 1 and "stopped:" in paid.stderr, paid.stderr
    assert "4 tokens in" in paid.stdout
    total = re.search(r"total\W+([0-9.]+) SWARM", paid.stdout)
    assert total and Decimal(total.group(1)) == budget, paid.stdout
    swarm.ledgers.append(home / "client" / wallet / "ledger.sqlite")


def test_ctrl_c_in_the_cli_says_interrupted_and_what_was_paid(swarm: Swarm) -> None:
    home = node_home(swarm.deployment, swarm.workdir / "interrupted-home")
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "stakeswarm", "client", "generate", "I ate dosa today",
        "--model", str(swarm.model_path), "--max-new-tokens", "400",
        *[arg for m in swarm.peers for arg in ("--initial-peers", m)],
        "--devnet", "--account", "client-2", "--home", str(home),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=sigint_reaches_it,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        begun = process.stdout.read(1)  # the text has begun: steps were paid for
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert begun, err
    assert process.returncode == 130, err
    paid = re.search(r"interrupted after (\d+) tokens; paid ([0-9.]+) SWARM this run", err)
    assert paid and Decimal(paid.group(2)) > 0, err
    assert "Traceback" not in err, err
    assert "Paid this run" in out, out


def test_a_swarm_that_cannot_be_joined_is_one_error_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    home = node_home(deployment, tmp_path / "home")
    nobody = "/ip4/127.0.0.1/tcp/1/p2p/QmWtA8FbXdUdnHcxV1N1TTtsxyTbFzZHm8G63Z4sqGGmEd"
    model = make_tiny_model(tmp_path / "model", "llama", 2)
    result = _cli(home, "generate", "hi", "--model", str(model), "--initial-peers", nobody)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot join the swarm: no answer from " + nobody)


def test_a_bad_receipt_is_kept_as_evidence_and_its_server_replaced(
    swarm: Swarm, reference, monkeypatch
) -> None:  # noqa: ANN001
    local = reference.generate(PROMPT, max_new_tokens=6, do_sample=False)
    with swarm.client("tampered") as model:
        network = model.client.network
        real_step, real_receive = network.step, network.receive_step
        altered: list[str] = []

        def tamper(session, out):  # noqa: ANN001, ANN202
            if session.request.span_start == 3 and session.next_step == 3 and not altered:
                altered.append(session.node)
                out = out + 1e-3  # not what the receipt says was sent
            return out

        def step(session, hidden, mask, voucher, **limits):  # noqa: ANN001, ANN003, ANN202
            out, receipt = real_step(session, hidden, mask, voucher, **limits)
            return tamper(session, out), receipt

        def receive_step(session, **limits):  # noqa: ANN001, ANN003, ANN202  (pipelined)
            out, receipt, pushed = real_receive(session, **limits)
            return tamper(session, out), receipt, pushed

        monkeypatch.setattr(network, "step", step)
        monkeypatch.setattr(network, "receive_step", receive_step)
        with model.inference_session(max_length=PROMPT.shape[1] + 6) as session:
            remote = model.generate(PROMPT, max_new_tokens=6, session=session)
        ledger_path = swarm.ledgers[-1]
    assert remote.tolist() == local.tolist()  # the altered output was never used
    assert session.failovers == 1 and session.route[-1].address != altered[0]
    evidence = _receipts(ledger_path, status=ReceiptStatus.INVALID)
    assert [(r.server, r.step, r.problem) for r in evidence] == [(altered[0], 2, "output_hash")]
    assert evidence[0].received_hash != evidence[0].output_hash
    assert evidence[0].sent_hash == evidence[0].input_hash


class _Killer:
    """A streamer that kills the node serving the session's last blocks after `tokens`, and
    records when each token arrived. Between steps: SIGKILL its process group at once. In the
    middle of a step (`mid_step`): freeze it (SIGSTOP: the next step reaches its P2P daemon but
    never its process) and SIGKILL that process half a second later, as `kill -9 PID` would,
    its P2P daemon left running."""

    def __init__(self, swarm: Swarm, session: Any, tokens: int, *, mid_step: bool) -> None:
        self.swarm, self.session, self.left = swarm, session, tokens + 1  # +1: the prompt
        self.mid_step = mid_step
        self.killed: NodeProcess | None = None
        self.arrivals: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.arrivals.append(time.monotonic())
        self.left -= 1
        if self.left != 0:
            return
        self.killed = self.swarm.node(self.session.route[-1].peer_id)
        if self.mid_step:
            os.kill(self.killed.pid, signal.SIGSTOP)
            threading.Timer(0.5, os.kill, (self.killed.pid, signal.SIGKILL)).start()
            return
        with suppress(ProcessLookupError):
            os.killpg(self.killed.pid, signal.SIGKILL)
        self.killed.process.wait(30)

    def end(self) -> None:
        pass


def test_a_server_killed_in_the_middle_of_a_step_is_replaced_within_seconds(
    swarm: Swarm, reference
) -> None:
    """Before keepalives the client waited for its 120 s step timeout."""
    local = reference.generate(PROMPT, max_new_tokens=8, do_sample=False)
    with (
        swarm.client("mid-step") as model,
        model.inference_session(max_length=PROMPT.shape[1] + 8) as session,
    ):
        killer = _Killer(swarm, session, tokens=3, mid_step=True)
        remote = model.generate(PROMPT, max_new_tokens=8, session=session, streamer=killer)
        route = session.route
    assert remote.tolist() == local.tolist()
    assert killer.killed is not None
    killer.killed.process.wait(30)
    assert session.failovers == 1
    assert route[-1].peer_id != killer.killed.peer_id
    gaps = [b - a for a, b in itertools.pairwise(killer.arrivals)]
    # the step after the kill: the silence timeout (1.5 s), a new session and the replay
    assert max(gaps) < 10, f"a token took {max(gaps):.1f} s"


def test_a_server_killed_mid_generation_is_replaced_and_the_text_is_identical(
    swarm: Swarm, reference
) -> None:
    local = reference.generate(PROMPT, max_new_tokens=10, do_sample=False)
    with (
        swarm.client("failover") as model,
        model.inference_session(max_length=PROMPT.shape[1] + 10) as session,
    ):
        killer = _Killer(swarm, session, tokens=4, mid_step=False)
        remote = model.generate(PROMPT, max_new_tokens=10, session=session, streamer=killer)
        route = session.route
        served = dict(session.served)
    assert remote.tolist() == local.tolist()
    assert killer.killed is not None and not killer.killed.alive()
    assert session.failovers == 1
    spare = next(n for n in swarm.nodes[1:] if n is not killer.killed and n.alive())
    assert [(h.peer_id, h.start, h.end) for h in route] == [
        (swarm.nodes[0].peer_id, 0, 3),
        (spare.peer_id, 3, 6),
    ]
    # the dead server served the prompt and 3 tokens, then died before the 5th forward
    assert served[killer.killed.address].tokens == PROMPT.numel() + 3
    # the spare was paid once for the replayed positions and then for every later step
    assert served[spare.address].tokens == (PROMPT.shape[1] + 3) + 6


def test_each_server_is_paid_exactly_its_tokens_times_its_price(swarm: Swarm) -> None:
    chain = swarm.deployment.connect()
    contracts = Contracts.from_deployment(chain, swarm.deployment)
    prices = {
        node.address: int(contracts.node_registry.get_node(node.address).price_per_token_per_block)
        for node in swarm.nodes
    }
    for node in swarm.nodes:
        if node.stop() == 0:
            continue  # a clean shutdown redeemed every voucher the node held
        # the node killed mid-generation: its own redeem path, as its restart would run it
        key = Account.from_key(swarm.deployment.account(node.spec.account).private_key)
        ledger = open_ledger(sqlite_url(node.home / "node" / node.address / "ledger.sqlite"))
        try:
            as_node = Contracts.from_deployment(chain, swarm.deployment, chain.sender(key))
            redeemer = Redeemer(
                as_node.payment_channels, ledger, chain_id=chain.chain_id, min_amount=0,
                margin=0, clock=ChainClock(chain.timestamp),
                units=TokenUnits.of(as_node.token),
            )  # fmt: skip
            assert redeemer.redeem_due(everything=True)
        finally:
            ledger.close()
    checked = 0
    for path in dict.fromkeys(swarm.ledgers):
        ledger = open_ledger(sqlite_url(path))
        try:
            with ledger.begin() as db:
                totals = served_totals(db, chain.chain_id)
                rows = receipts_of(db)
        finally:
            ledger.close()
        for row in rows:  # each step cost its tokens times the price of the blocks it ran
            assert row.cost == row.tokens * prices[row.server] * (row.span_end - row.span_start)
        for total in totals:  # and each server was paid on-chain exactly that, in sum
            onchain = contracts.payment_channels.get_channel(ChannelId(total.channel_id))
            assert onchain.server == total.server
            assert onchain.redeemed == total.cost, (total, onchain)
            checked += 1
    assert checked >= 13  # main 2, budget 2, restart 2, cli 2, keystore 2, tampered 3+


def test_expired_channels_are_reclaimed(swarm: Swarm) -> None:
    home = swarm.workdir / "cli-home"  # the CLI test's channels, redeemed by now
    chain = swarm.deployment.connect()
    contracts = Contracts.from_deployment(chain, swarm.deployment)
    client = swarm.deployment.account("client-0").address
    before = _cli(home, "channels", "--reclaim")
    assert before.returncode == 0 and "no expired channel to reclaim" in before.stdout
    ledger = open_ledger(sqlite_url(home / "client" / client / "ledger.sqlite"))
    try:
        with ledger.begin() as db:
            ids = [c.channel_id for c in client_channels(
                db, chain.chain_id, contracts.payment_channels.address, client)]  # fmt: skip
    finally:
        ledger.close()
    assert len(ids) >= 2
    channels = [contracts.payment_channels.get_channel(ChannelId(i)) for i in ids]
    left = sum(c.deposit - c.redeemed for c in channels)
    balance = contracts.token.balance_of(client)

    chain.rpc("evm_increaseTime", [2 * 86_400])  # past every channel's expiry
    chain.rpc("evm_mine")
    result = _cli(home, "channels", "--reclaim")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("reclaimed channel") == len(ids)
    assert contracts.token.balance_of(client) == balance + left
    assert all(contracts.payment_channels.get_channel(ChannelId(i)).closed for i in ids)
    assert "closed" in result.stdout
