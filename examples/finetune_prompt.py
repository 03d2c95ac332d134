"""Prompt tuning through a paid swarm: teach SmolLM2 a small classification task by training
soft prompts and a classification head on the client, every forward and backward computed,
paid for and committed by the servers.

    .venv/bin/python examples/finetune_prompt.py                  # a local devnet and 2 nodes
    .venv/bin/python examples/finetune_prompt.py --model tiny --steps 4 --quiet   # a smoke run

The task: templated English sentences about a product or a service, each praising or
criticising it ("The battery was superb.", "I found the staff rude."). The held-out split uses
nouns never seen in training, so the model has to read the opinion word. The script prints
held-out accuracy before training (the head is random: about chance) and after, with the
spend of each phase, and saves the trained prompts and head (safetensors).

Without `--initial-peers` it starts a devnet and `--nodes` node processes serving the model
(stopped at the end); with them, it joins that swarm and pays from `--account` on
`--deployment` (both as `stakeswarm client` takes them with `--devnet`).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from eth_account import Account
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from client.classification import DistributedModelForSequenceClassification
from ledger.deployment import Deployment
from stakeswarm.home import Home
from stakeswarm.models import SMOLLM2_NAME
from stakeswarm.swarm import LocalSwarm, SwarmConfig, resolve_model
from stakeswarm.tiny_models import make_tiny_model

POSITIVE = ["superb", "excellent", "wonderful", "great", "fantastic", "delightful", "lovely"]
NEGATIVE = ["awful", "terrible", "horrible", "dreadful", "poor", "disappointing", "rude"]
TRAIN_NOUNS = ["battery", "screen", "service", "staff", "food", "room", "delivery", "camera"]
HELD_OUT_NOUNS = ["keyboard", "hotel", "coffee", "speaker"]
TEMPLATES = [
    "The {noun} was {word}.",
    "I found the {noun} {word}.",
    "Honestly, the {noun} is {word}.",
    "Our {noun} turned out {word}.",
    "What a {word} {noun}!",
]
LABELS = ("negative", "positive")

console = Console()


def sentences(nouns: Sequence[str]) -> list[tuple[str, int]]:
    """Every template with every noun and opinion word: (sentence, 1 positive / 0 negative)."""
    return [
        (template.format(noun=noun, word=word), label)
        for template in TEMPLATES
        for noun in nouns
        for label, words in ((1, POSITIVE), (0, NEGATIVE))
        for word in words
    ]


def batches(
    data: list[tuple[str, int]], size: int, tokenizer: object
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input ids, attention mask, labels) of `size` examples at a time, right-padded."""
    for start in range(0, len(data), size):
        chunk = data[start : start + size]
        encoded = tokenizer([text for text, _ in chunk], return_tensors="pt", padding=True)  # type: ignore[operator]
        yield encoded["input_ids"], encoded["attention_mask"], torch.tensor([y for _, y in chunk])


def accuracy(
    model: DistributedModelForSequenceClassification,
    data: list[tuple[str, int]],
    size: int,
    tokenizer: object,
) -> float:
    right = 0
    with torch.no_grad():
        for ids, mask, labels in batches(data, size, tokenizer):
            right += int(
                (model(input_ids=ids, attention_mask=mask).logits.argmax(-1) == labels).sum()
            )
    return right / len(data)


@contextmanager
def swarm_for(
    args: argparse.Namespace, model_path: Path
) -> Iterator[tuple[list[str], Deployment, str]]:
    """(initial peers, deployment, paying account's key): the one given, or a local devnet
    with `--nodes` nodes started here and stopped after."""
    if args.initial_peers:
        deployment = Deployment.load(Path(args.deployment))
        yield list(args.initial_peers), deployment, deployment.account(args.account).private_key
        return
    with tempfile.TemporaryDirectory(prefix="stakeswarm-finetune-") as tmp:
        console.print(f"starting a devnet and {args.nodes} nodes serving {model_path.name} ...")
        local = LocalSwarm.launch(
            SwarmConfig(model_path, nodes=args.nodes), Home.resolve(Path(tmp))
        )
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
    built here, or a folder."""
    if choice == "tiny":
        return make_tiny_model(workdir, "llama", 6, with_tokenizer=True)
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
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--pre-seq-len", type=int, default=4, help="soft prompt positions")
    parser.add_argument(
        "--tuning-mode",
        choices=["ptune", "deep_ptune"],
        default="ptune",
        help="prompts prepended to the input, or also a row added before every block",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--out", default="finetuned.safetensors", help="where the prompts go")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.initial_peers and not args.deployment:
        parser.error("--initial-peers needs --deployment")
    torch.manual_seed(0)
    rng = random.Random(0)
    train, held_out = sentences(TRAIN_NOUNS), sentences(HELD_OUT_NOUNS)
    rng.shuffle(train)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as work:
        model_path = resolve(args.model, Path(work))
        with swarm_for(args, model_path) as (peers, deployment, key):
            model = DistributedModelForSequenceClassification.from_pretrained(
                model_path,
                initial_peers=peers,
                wallet=Account.from_key(key),
                deployment=deployment,
                home=Path(work) / "client",
                num_labels=2,
                tuning_mode=args.tuning_mode,
                pre_seq_len=args.pre_seq_len,
            )
            try:
                tokenizer = model.tokenizer
                if tokenizer is None:
                    raise SystemExit(f"{model_path} has no tokenizer")
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
                show = model.client.parts.payments.units.show
                spent = model.client.training_route().spent
                before = accuracy(model, held_out, args.batch, tokenizer)
                cost_eval = spent.wei
                console.print(
                    f"held-out accuracy before training: {before:.1%} "
                    f"({len(held_out)} sentences with unseen nouns; {len(train)} to train on)"
                )
                optimizer = torch.optim.Adam(
                    [p for p in model.parameters() if p.requires_grad], lr=args.lr
                )
                model.train()
                data: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = iter(())
                with Progress(
                    TextColumn("[bold]training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("spent {task.fields[spent]}"),
                    TimeElapsedColumn(), console=console, disable=args.quiet,
                ) as progress:  # fmt: skip
                    task = progress.add_task(
                        "train", total=args.steps, loss=float("nan"), spent="0"
                    )
                    for _ in range(args.steps):
                        batch = next(data, None)
                        if batch is None:
                            rng.shuffle(train)
                            data = batches(train, args.batch, tokenizer)
                            batch = next(data)
                        ids, mask, labels = batch
                        optimizer.zero_grad()
                        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                        loss.backward()
                        optimizer.step()
                        progress.update(
                            task, advance=1, loss=loss.item(), spent=show(spent.wei - cost_eval)
                        )
                train_cost = spent.wei - cost_eval
                model.eval()
                after = accuracy(model, held_out, args.batch, tokenizer)
                saved = model.save_trainable(args.out)
            finally:
                model.close()
    console.print(f"held-out accuracy after {args.steps} steps: {after:.1%}")
    console.print(
        f"training paid {show(train_cost)} ({spent.forward_tokens + spent.backward_tokens} "
        f"token-spans forward and backward); all of it {show(spent.wei)}; "
        f"{time.monotonic() - began:.0f} s in all"
    )
    console.print(f"prompts and head saved to {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
