"""A LangChain chain answering through the swarm: `prompt | ChatOpenAI | parser`, with
`ChatOpenAI` pointed at a stakeswarm gateway (the OpenAI API), paid per token by the gateway's
wallet and charged to an API key.

    .venv/bin/python examples/gateway_langchain.py                # a local devnet, 2 nodes
    .venv/bin/python examples/gateway_langchain.py --model tiny --quiet   # a smoke run

Without `--initial-peers` it starts a devnet and `--nodes` node processes serving the model
(stopped at the end); with them, it joins that swarm and pays from `--account` on
`--deployment` (as `stakeswarm client` takes them with `--devnet`). Either way it starts a
gateway in this process on a free port, creates an API key with a small budget, asks the
chain a question (answered once whole and once streamed), and prints the answer, what the
key was charged and what the gateway's wallet signed for it: the same amount.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from eth_account import Account
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from rich.console import Console
from transformers import AutoTokenizer

from client.config import ClientConfig
from gateway.config import GatewayConfig
from gateway.keys import new_key
from gateway.service import running_gateway
from ledger.db import create_gateway_key, gateway_key_by_name
from ledger.deployment import TOKEN, Deployment
from stakeswarm.home import Home
from stakeswarm.models import SMOLLM2_NAME
from stakeswarm.swarm import LocalSwarm, SwarmConfig, resolve_model
from stakeswarm.tiny_models import make_tiny_model

# the tiny model's chat template: its special tokens as turn markers
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)

console = Console()


@contextmanager
def swarm_for(
    args: argparse.Namespace, model_path: Path, workdir: Path
) -> Iterator[tuple[list[str], Deployment, str]]:
    """(initial peers, deployment, paying account's key): the swarm given, or a local devnet
    with `--nodes` nodes started here and stopped after."""
    if args.initial_peers:
        deployment = Deployment.load(Path(args.deployment))
        yield list(args.initial_peers), deployment, deployment.account(args.account).private_key
        return
    console.print(f"starting a devnet and {args.nodes} nodes serving {model_path.name} ...")
    local = LocalSwarm.launch(SwarmConfig(model_path, nodes=args.nodes), Home.resolve(workdir))
    try:
        yield (
            local.initial_peers,
            local.deployment,
            local.deployment.account(args.account).private_key,
        )
    finally:
        local.stop()


def resolve(choice: str, workdir: Path) -> Path:
    """The model folder: SmolLM2 (prepared once under the default home), a random tiny Llama
    with a chat template built here, or a folder."""
    if choice == "tiny":
        path = make_tiny_model(workdir, "llama", 6, with_tokenizer=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        tokenizer.save_pretrained(path)
        return path
    return resolve_model(choice, Home.resolve(), lambda m: console.print(f"[dim]{m}[/]"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2", help=f"smollm2 ({SMOLLM2_NAME}), tiny, or a folder"
    )
    parser.add_argument("--nodes", type=int, default=2, help="nodes of the local swarm")
    parser.add_argument("--initial-peers", nargs="*", default=[], help="join this swarm instead")
    parser.add_argument("--deployment", help="with --initial-peers: the deployment file")
    parser.add_argument("--account", default="client-0", help="the dev account that pays")
    parser.add_argument(
        "--question", default="I ate dosa today. What should I cook for dinner?", help="to ask"
    )
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens of the answer")
    parser.add_argument("--quiet", action="store_true", help="no logs")
    args = parser.parse_args(argv)
    if args.initial_peers and not args.deployment:
        parser.error("--initial-peers needs --deployment")
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="stakeswarm-gateway-") as tmp:
        work = Path(tmp)
        model_path = resolve(args.model, work)
        with swarm_for(args, model_path, work / "swarm") as (peers, deployment, key):
            config = GatewayConfig(
                client=ClientConfig(
                    model_path=model_path, initial_peers=tuple(peers), home=work / "gateway"
                ),
                port=0,
            )
            wallet = Account.from_key(key)
            with running_gateway(config, account=wallet, deployment=deployment) as gateway:
                secret, digest = new_key()
                with gateway.keys.begin() as db:  # what `gateway keys create` does
                    create_gateway_key(db, name="example", key_hash=digest, budget=TOKEN)
                payments = gateway.model.client.payments
                before = payments.budget.spent
                llm = ChatOpenAI(
                    base_url=gateway.url + "/v1",
                    api_key=secret,  # type: ignore[arg-type]
                    model=gateway.config.served_model,
                    temperature=0,
                    max_tokens=args.max_tokens,  # type: ignore[call-arg]
                )
                prompt = ChatPromptTemplate.from_messages(
                    [("system", "You answer briefly."), ("user", "{question}")]
                )
                chain = prompt | llm | StrOutputParser()
                console.print(f"[bold]question[/] {args.question}")
                answer = chain.invoke({"question": args.question})
                console.print(f"[bold]answer[/] {answer}")
                console.print("[bold]streamed[/] ", end="")
                streamed = "".join(
                    console.print(piece, end="") or piece
                    for piece in chain.stream({"question": args.question})
                )
                console.print()
                with gateway.keys.begin() as db:
                    row = gateway_key_by_name(db, "example")
                    assert row is not None
                    charged, requests = row.spent, row.requests
                signed = payments.budget.spent - before
                show = payments.units.show
                console.print(
                    f"the key was charged {show(charged)} for {requests} requests; "
                    f"the gateway's wallet signed vouchers for {show(signed)}"
                )
                if streamed != answer or charged != signed:
                    console.print("[red]the streamed answer or the charges disagree[/]")
                    return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
