"""The gateway under load: 32 streamed chat completions at once through three real nodes
(blocks 0:2, 2:4, 4:6 of a tiny Llama), with the `openai` package's async client. Every answer
is the one local transformers gives for its own prompt (no session mixed with another), the
keys' charges add up exactly to what the nodes redeemed on-chain once they stopped, and a
second wave leaves the gateway's memory where the first left it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import psutil
import pytest
from eth_account import Account
from transformers import AutoTokenizer

from client.config import ClientConfig
from gateway.config import GatewayConfig
from gateway.keys import new_key
from gateway.service import Gateway, running_gateway
from ledger.contracts import Contracts
from ledger.db import create_gateway_key, gateway_keys
from ledger.deployment import Deployment
from ledger.types import ChannelId
from stakeswarm.tiny_models import load_reference_model, make_tiny_model
from tests.integration.nodes import NodeSpec, chain_snapshot, running_nodes

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.slow,  # reason: 64 requests of 12 tokens through 3 nodes, about 2 minutes on 2 cores
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600", "--announce-interval", "5")
REQUESTS = 32
KEYS = 4  # the requests are spread over these keys
MAX_TOKENS = 12
PROMPTS = ["I ate dosa today", "Tell me a story", "What is a block?", "Count to ten"]
MEMORY_GROWTH = 300 * 2**20  # bytes a second wave of requests may add to the process, at most


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_tiny_model(tmp_path_factory.mktemp("model"), "llama", 6)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def expected_answers(model_path: Path) -> dict[str, str]:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    reference = load_reference_model(model_path)
    answers = {}
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = reference.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        answers[prompt] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return answers


async def wave(gateway: Gateway, secrets: list[str]) -> dict[int, tuple[str, str]]:
    """REQUESTS streamed requests at once: request i -> (its prompt, the text streamed)."""

    async def one(i: int) -> tuple[str, str]:
        prompt = PROMPTS[i % len(PROMPTS)]
        client = openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=secrets[i % KEYS], max_retries=0, timeout=600
        )
        stream = await client.chat.completions.create(
            model=gateway.config.served_model, messages=[{"role": "user", "content": prompt}],
            max_tokens=MAX_TOKENS, temperature=0, stream=True,
        )  # fmt: skip
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        await client.close()
        return prompt, text

    results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return dict(enumerate(results))


def test_32_streams_at_once_answer_right_and_add_up_to_what_the_nodes_redeemed(
    deployment: Deployment, model_path: Path, tmp_path: Path
) -> None:
    expected = expected_answers(model_path)
    specs = [NodeSpec(f"node-{i}", f"{2 * i}:{2 * i + 2}", args=NODE_ARGS) for i in range(3)]
    chain = deployment.connect()
    wallet = Account.from_key(deployment.account("client-2").private_key)
    with chain_snapshot(chain):
        with running_nodes(deployment, tmp_path / "nodes", model_path, specs) as nodes:
            client = ClientConfig(
                model_path=model_path,
                initial_peers=tuple(m for node in nodes for m in node.maddrs),
                home=tmp_path / "gateway",
                device="cpu",
            )
            config = GatewayConfig(client=client, port=0, max_concurrent=REQUESTS)
            with running_gateway(config, account=wallet, deployment=deployment) as gateway:
                secrets = []
                for k in range(KEYS):
                    secret, digest = new_key()
                    with gateway.keys.begin() as db:
                        create_gateway_key(db, name=f"load-{k}", key_hash=digest, budget=10**18)
                    secrets.append(secret)
                process = psutil.Process()
                for round_ in range(2):
                    answers = asyncio.run(wave(gateway, secrets))
                    assert all(text == expected[prompt] for prompt, text in answers.values())
                    if round_ == 0:
                        after_first = process.memory_info().rss
                assert process.memory_info().rss - after_first < MEMORY_GROWTH
                payments = gateway.model.client.payments
                channels = [c.channel_id for c in payments.known_channels()]
                signed = payments.budget.spent
                with gateway.keys.begin() as db:
                    rows = gateway_keys(db)
                    charged = sum(row.spent for row in rows)
                    assert sum(row.requests for row in rows) == 2 * REQUESTS
            assert len(channels) == 3  # one per node
            assert charged == signed
        # the nodes stopped, and redeemed the last voucher of each channel on the way out
        contracts = Contracts.from_deployment(chain, deployment)
        redeemed = sum(
            contracts.payment_channels.get_channel(ChannelId(c)).redeemed for c in channels
        )
        assert redeemed == charged
