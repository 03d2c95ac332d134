"""The OpenAI-compatible gateway against two real nodes (blocks 0:3 and 3:6 of a tiny Llama with
a chat template) on the session's Anvil, driven by the official `openai` client, LangChain's
`ChatOpenAI` and plain HTTP: greedy answers equal `DistributedModelForCausalLM.generate`, every
key is charged exactly the vouchers its requests signed, and each refusal has its status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from transformers import AutoTokenizer

from client.config import ClientConfig
from client.model import DistributedModelForCausalLM
from gateway.config import GatewayConfig
from gateway.keys import new_key
from gateway.service import Gateway, running_gateway
from ledger.db import create_gateway_key, gateway_key_by_name, gateway_keys
from ledger.deployment import Deployment
from stakeswarm.tiny_models import make_tiny_model
from tests.integration.nodes import REPO_ROOT, NodeProcess, NodeSpec
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.timeout(600)

NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600", "--announce-interval", "5")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "user", "content": "I ate dosa today"}]
MAX_CONCURRENT = 2


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 6)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def node_specs() -> list[NodeSpec]:
    return [NodeSpec("node-0", "0:3", args=NODE_ARGS), NodeSpec("node-1", "3:6", args=NODE_ARGS)]


@pytest.fixture(scope="module")
def gateway(
    deployment: Deployment,
    nodes: list[NodeProcess],
    model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
) -> Iterator[Gateway]:
    """The gateway under test keeps its keys and its wallet's ledger on PostgreSQL (`--db`);
    the example and the docs' commands run it on its SQLite default."""
    home = tmp_path_factory.mktemp("gateway-home")
    db = postgres_server.create_database()
    client = ClientConfig(
        model_path=model_path,
        initial_peers=tuple(m for node in nodes for m in node.maddrs),
        home=home,
        device="cpu",
        ledger_url=db,
    )
    config = GatewayConfig(
        client=client, port=0, max_concurrent=MAX_CONCURRENT, max_tokens=400, keys_url=db
    )
    wallet = Account.from_key(deployment.account("client-1").private_key)
    with running_gateway(config, account=wallet, deployment=deployment) as started:
        yield started


@dataclass
class Key:
    name: str
    secret: str


def make_key(gateway: Gateway, name: str, budget: int = 10**18) -> Key:
    secret, digest = new_key()
    with gateway.keys.begin() as db:
        create_gateway_key(db, name=name, key_hash=digest, budget=budget)
    return Key(name, secret)


def key_row(gateway: Gateway, key: Key):  # noqa: ANN201
    with gateway.keys.begin() as db:
        return gateway_key_by_name(db, key.name)


def signed(gateway: Gateway) -> int:
    """Base units of the vouchers the gateway's wallet signed so far (its client's spending)."""
    return gateway.model.client.payments.budget.spent


def settled(gateway: Gateway, key: Key, requests: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while key_row(gateway, key).requests < requests:
        assert time.monotonic() < deadline, "the request was never settled"
        time.sleep(0.1)


def openai_client(gateway: Gateway, key: Key) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key.secret, max_retries=0)


def greedy_text(gateway: Gateway, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """What `DistributedModelForCausalLM.generate` answers greedily, through the same swarm."""
    first = gateway.model
    tokenizer = first.tokenizer
    model = DistributedModelForCausalLM(first.config, first.head, first.client, tokenizer)
    model.generation_config = first.generation_config
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_openai_chat_greedy_equals_generate_streamed_or_not_and_is_charged_its_vouchers(
    gateway: Gateway,
) -> None:
    key = make_key(gateway, "openai")
    client = openai_client(gateway, key)
    model = gateway.config.served_model
    assert [m.id for m in client.models.list().data] == [model]
    expected = greedy_text(gateway, MESSAGES, 10)
    assert expected  # setup: the tiny model says something

    before = signed(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=10, temperature=0
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason in ("length", "stop")
    cost = int(raw.headers["x-stakeswarm-cost"])
    assert cost > 0
    assert cost == signed(gateway) - before  # the key pays exactly the vouchers signed
    assert answer.usage is not None and answer.usage.model_extra["cost"] == cost
    row = key_row(gateway, key)
    assert (row.spent, row.requests) == (cost, 1)
    assert row.completion_tokens == answer.usage.completion_tokens

    before = signed(gateway)
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    streamed_cost = chunks[-1].usage.model_extra["cost"]
    assert streamed_cost == cost == signed(gateway) - before  # the same work, the same price
    settled(gateway, key, 2)
    assert key_row(gateway, key).spent == 2 * cost


def test_completions_and_sampling_with_a_seed_repeat(gateway: Gateway) -> None:
    key = make_key(gateway, "completions")
    client = openai_client(gateway, key)
    model = gateway.config.served_model
    kwargs = {"model": model, "prompt": "I ate dosa", "max_tokens": 8, "temperature": 0.9}
    first = client.completions.create(**kwargs, seed=7, n=2)
    again = client.completions.create(**kwargs, seed=7, n=2)
    print("FIRST", first.model_dump_json(), "AGAIN", again.model_dump_json())
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert first.usage is not None and first.usage.prompt_tokens > 0

    greedy = {**kwargs, "temperature": 0, "max_tokens": 12}
    full = client.completions.create(**greedy).choices[0].text
    stop = next(
        full[i : i + 2] for i in range(2, len(full) - 1) if "\ufffd" not in full[i : i + 2]
    )  # a stop sequence the greedy text reaches a few tokens in
    cut = client.completions.create(**greedy, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage is not None and cut.usage.completion_tokens < 12  # nothing generated after


def test_langchain_chat_openai_answers_through_a_chain_and_streams(gateway: Gateway) -> None:
    key = make_key(gateway, "langchain")
    llm = ChatOpenAI(
        base_url=gateway.url + "/v1", api_key=key.secret, model=gateway.config.served_model,
        temperature=0, max_tokens=10, max_retries=0,
    )  # fmt: skip
    expected = greedy_text(gateway, MESSAGES, 10)
    assert llm.invoke(MESSAGES[0]["content"]).content == expected
    chain = ChatPromptTemplate.from_messages([("user", "{question}")]) | llm | StrOutputParser()
    assert chain.invoke({"question": MESSAGES[0]["content"]}) == expected
    assert "".join(chain.stream({"question": MESSAGES[0]["content"]})) == expected
    settled(gateway, key, 3)


def test_key_over_budget_gets_402_before_anything_is_signed(gateway: Gateway) -> None:
    key = make_key(gateway, "poor", budget=1)
    client = openai_client(gateway, key)
    before = signed(gateway)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model=gateway.config.served_model, messages=MESSAGES, max_tokens=4
        )
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "insufficient_quota"
    assert signed(gateway) == before
    assert key_row(gateway, key).requests == 0


def _stream(http: httpx.Client, key: Key, gateway: Gateway, max_tokens: int):  # noqa: ANN202
    return http.stream(
        "POST", "/v1/chat/completions",
        headers={"authorization": f"Bearer {key.secret}"},
        json={"model": gateway.config.served_model, "messages": MESSAGES,
              "max_tokens": max_tokens, "temperature": 0, "stream": True},
    )  # fmt: skip


def _content_chunks(lines: Iterator[str], count: int) -> None:
    seen = 0
    for line in lines:
        if line.startswith("data: {") and '"content"' in line:
            seen += 1
            if seen == count:
                return
    raise AssertionError("the stream ended early")


def test_disconnect_mid_stream_stops_generation_and_charges_what_was_generated(
    gateway: Gateway,
) -> None:
    key = make_key(gateway, "leaver")
    before = signed(gateway)
    with (
        httpx.Client(base_url=gateway.url, timeout=60) as http,
        _stream(http, key, gateway, 60) as response,
    ):
        assert response.status_code == 200
        _content_chunks(response.iter_lines(), 3)
    # the response was closed unread: the connection is gone, mid-stream
    settled(gateway, key, 1)
    row = key_row(gateway, key)
    assert 3 <= row.completion_tokens < 30  # stopped soon after, far from the 60 asked
    assert row.spent > 0
    assert row.spent == signed(gateway) - before


def test_requests_beyond_the_limit_get_429(gateway: Gateway) -> None:
    key = make_key(gateway, "busy")
    with httpx.Client(base_url=gateway.url, timeout=60) as http, contextlib.ExitStack() as open_:
        readers = []  # (a reader dropped closes its connection: the request would stop)
        for _ in range(MAX_CONCURRENT):  # long enough to be running still
            response = open_.enter_context(_stream(http, key, gateway, 400))
            assert response.status_code == 200
            readers.append(response.iter_lines())
            _content_chunks(readers[-1], 1)
        with httpx.Client(base_url=gateway.url, timeout=60) as other:
            refused = other.post(
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {key.secret}"},
                json={"model": gateway.config.served_model, "messages": MESSAGES},
            )
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    settled(gateway, key, MAX_CONCURRENT)


def test_refusals_are_openai_shaped_with_their_status(gateway: Gateway) -> None:
    key = make_key(gateway, "refused")
    good = {"model": gateway.config.served_model, "messages": MESSAGES, "max_tokens": 2}
    auth = {"authorization": f"Bearer {key.secret}"}
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        cases = [
            ({"authorization": "Bearer sk-ss-" + "x" * 43}, json.dumps(good), 401),
            ({}, json.dumps(good), 401),
            (auth, '{"model": "x", "messages": [', 400),
            (auth, json.dumps({**good, "model": "gpt-4"}), 404),
            (auth, json.dumps({**good, "logprobs": True}), 400),
            (auth, json.dumps({**good, "max_tokens": 0}), 400),
        ]
        for headers, body, status in cases:
            response = http.post(
                "/v1/chat/completions",
                headers={**headers, "content-type": "application/json"},
                content=body,
            )
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert key_row(gateway, key).requests == 0


def test_the_langchain_example_answers_through_its_own_gateway(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path
) -> None:
    deployment.save(tmp_path / "deployment.json")
    peers = [m for node in nodes for m in node.maddrs]
    result = subprocess.run(
        [sys.executable, "examples/gateway_langchain.py", "--model", str(model_path),
         "--initial-peers", *peers, "--deployment", str(tmp_path / "deployment.json"),
         "--account", "client-2", "--max-tokens", "8", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    charged = re.search(r"charged ([0-9.]+) SWARM for 2 requests; .* signed vouchers for "
                        r"([0-9.]+) SWARM", result.stdout)  # fmt: skip
    assert charged and charged.group(1) == charged.group(2) and float(charged.group(1)) > 0


def test_the_gateway_s_root_is_the_live_dashboard_with_its_own_spend(
    gateway: Gateway, nodes: list[NodeProcess]
) -> None:
    key = make_key(gateway, "dashboard-reader")
    openai_client(gateway, key).completions.create(
        model=gateway.config.served_model, prompt="Hello", max_tokens=2
    )
    settled(gateway, key, 1)
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        page = http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        swarm = http.get("/api/swarm").json()
    served = {row["address"] for row in swarm["nodes"]}
    assert {node.address for node in nodes} <= served  # every node of the swarm has its row
    rows = dict(swarm["extra"]["rows"])
    assert rows["wallet paying the swarm"] == gateway.model.client.address
    charged = sum(r.spent for r in _all_keys(gateway))
    assert rows["charged to keys (vouchers signed)"] == gateway.model.client.payments.units.show(
        charged
    )
    assert int(rows["requests served"]) >= 1


def _all_keys(gateway: Gateway) -> list[Any]:
    with gateway.keys.begin() as db:
        return gateway_keys(db)
