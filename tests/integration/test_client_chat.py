"""`client generate --stop/--repetition-penalty/--system` and `client chat`, typed as a user
types them, against two real nodes (blocks 0:3 and 3:6 of a tiny Llama with a chat template)
on the session's Anvil; every answer is checked against local transformers, every payment
against the tokens the servers computed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from ledger.db import open_ledger, receipts_of, sqlite_url
from ledger.deployment import Deployment
from stakeswarm.tiny_models import load_reference_model, make_tiny_model
from tests.integration.interrupt import sigint_reaches_it
from tests.integration.nodes import REPO_ROOT, NodeProcess, NodeSpec, node_home

pytestmark = pytest.mark.timeout(900)

NODE_ARGS = ("--commit-interval", "2", "--redeem-interval", "3600", "--announce-interval", "5")
# ChatML-like, with the tiny tokenizer's special tokens as the turn markers (<|eos|> ends a turn)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
PROMPT = "I ate dosa today"
SYSTEM = "You are a terse assistant."


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
def reference(model_path: Path):  # noqa: ANN201
    return load_reference_model(model_path)


@pytest.fixture(scope="module")
def tokenizer(model_path: Path):  # noqa: ANN201
    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def price(nodes: list[NodeProcess]) -> int:
    """Wei per token through the whole route (both nodes)."""
    return sum(int(node.status()["price_per_token"]) for node in nodes)


def _client(
    deployment: Deployment,
    home: Path,
    nodes: list[NodeProcess],
    model: Path,
    *args: str,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    peers = [arg for node in nodes for m in node.maddrs for arg in ("--initial-peers", m)]
    result = subprocess.run(
        [sys.executable, "-m", "stakeswarm", "client", *args, "--model", str(model), *peers,
         "--devnet", "--home", str(node_home(deployment, home))],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, input=stdin,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _new_text(tokenizer: Any, out: torch.Tensor, prompt_length: int) -> str:
    return tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)


def _paid_tokens(stdout: str, nodes: list[NodeProcess]) -> list[int]:
    """Tokens each server was paid for, from the 'Paid this run' table."""
    paid = []
    for node in nodes:
        row = re.search(rf"{node.address}[\s│]+(\d+)[\s│]+[0-9.]+ SWARM", stdout)
        assert row, stdout
        paid.append(int(row.group(1)))
    return paid


def _total(stdout: str) -> Decimal:
    total = re.search(r"total[\s│]+([0-9.]+) SWARM", stdout)
    assert total, stdout
    return Decimal(total.group(1))


def _tokens(wei: int) -> Decimal:
    return Decimal(wei).scaleb(-18)


def test_stop_cuts_the_text_before_the_stop_string_and_pays_no_further_token(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path,
    reference, tokenizer, price: int,
) -> None:  # fmt: skip
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    free = reference.generate(ids, max_new_tokens=16, do_sample=False)
    # a stop string the greedy text reaches a few tokens in
    stop = next(
        piece
        for k in range(4, 16)
        if (piece := tokenizer.decode(free[0, ids.shape[1] + k : ids.shape[1] + k + 1]).strip())
        and "\ufffd" not in piece
    )
    local = reference.generate(
        ids, max_new_tokens=16, do_sample=False, stop_strings=[stop], tokenizer=tokenizer
    )
    generated = local.shape[1] - ids.shape[1]
    assert 1 <= generated < 16  # setup: the stop string ends generation early
    text = _new_text(tokenizer, local, ids.shape[1])
    shown = text[: text.index(stop)]

    result = _client(deployment, tmp_path / "home", nodes, model_path,
                     "generate", PROMPT, "--max-new-tokens", "16", "--stop", stop)  # fmt: skip
    assert result.stdout.startswith(shown + "\n"), (result.stdout, shown, stop)
    assert f"{generated} tokens in" in result.stdout
    # every server computed the prompt and each token but the last: nothing after the stop
    paid = ids.shape[1] + generated - 1
    assert _paid_tokens(result.stdout, nodes) == [paid, paid]
    assert _total(result.stdout) == _tokens(paid * price)


def test_repetition_penalty_changes_greedy_output_as_transformers_does(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path,
    reference, tokenizer,
) -> None:  # fmt: skip
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    free = reference.generate(ids, max_new_tokens=20, do_sample=False)
    assert len(set(free[0, ids.shape[1] :].tolist())) < 20  # setup: greedy repeats itself
    penalised = reference.generate(ids, max_new_tokens=20, do_sample=False, repetition_penalty=1.5)
    expected = _new_text(tokenizer, penalised, ids.shape[1])
    assert expected != _new_text(tokenizer, free, ids.shape[1])

    result = _client(deployment, tmp_path / "home", nodes, model_path,
                     "generate", PROMPT, "--max-new-tokens", "20",
                     "--repetition-penalty", "1.5")  # fmt: skip
    assert result.stdout.startswith(expected + "\n"), (result.stdout, expected)
    assert "20 tokens in" in result.stdout


def test_system_message_goes_into_the_chat_prompt(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path,
    reference, tokenizer,
) -> None:  # fmt: skip
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    plain = tokenizer.apply_chat_template(
        messages[1:], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    local = reference.generate(ids, max_new_tokens=8, do_sample=False)
    expected = _new_text(tokenizer, local, ids.shape[1])
    generated = local.shape[1] - ids.shape[1]

    # --system alone: a system message only makes sense in a chat, so it implies --chat
    result = _client(deployment, tmp_path / "home", nodes, model_path,
                     "generate", PROMPT, "--max-new-tokens", "8", "--system", SYSTEM)  # fmt: skip
    assert result.stdout.startswith(expected + "\n"), (result.stdout, expected)
    paid = ids.shape[1] + generated - 1  # the system message was sent, and paid for
    assert ids.shape[1] > plain.shape[1]
    assert _paid_tokens(result.stdout, nodes) == [paid, paid]


def test_chat_keeps_one_session_per_conversation_and_pays_each_token_once(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path,
    reference, tokenizer, price: int,
) -> None:  # fmt: skip
    new = 6
    render = tokenizer.apply_chat_template
    system = [{"role": "system", "content": SYSTEM}]

    def encode(text: str) -> torch.Tensor:
        return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]

    # what local transformers answers, turn by turn, for the same conversation
    first = render([*system, {"role": "user", "content": "hello"}], add_generation_prompt=True,
                   tokenize=False)  # fmt: skip
    ids1 = encode(first)
    out1 = reference.generate(ids1, max_new_tokens=new, do_sample=False)
    answer1 = out1[0, ids1.shape[1] :]
    history = [
        *system,
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": tokenizer.decode(answer1, skip_special_tokens=True)},
        {"role": "user", "content": "and then?"},
    ]
    second = render(history, add_generation_prompt=True, tokenize=False)
    held = first + tokenizer.decode(answer1, skip_special_tokens=False)
    assert second.startswith(held)  # setup: the template extends the conversation
    delta = encode(second[len(held) :])
    out2 = reference.generate(torch.cat([out1, delta], dim=1), max_new_tokens=new,
                              do_sample=False)  # fmt: skip
    answer2 = out2[0, out1.shape[1] + delta.shape[1] :]
    third = render([*system, {"role": "user", "content": "hi again"}], add_generation_prompt=True,
                   tokenize=False)  # fmt: skip
    ids3 = encode(third)
    out3 = reference.generate(ids3, max_new_tokens=new, do_sample=False)
    answer3 = out3[0, ids3.shape[1] :]

    home = tmp_path / "home"
    result = _client(deployment, home, nodes, model_path,
                     "chat", "--max-new-tokens", str(new), "--system", SYSTEM,
                     stdin="hello\nand then?\n/reset\nhi again\n/exit\n")  # fmt: skip
    out = result.stdout

    # the turns, in order, each answer as local transformers gives it
    turns = [("hello", answer1), ("and then?", answer2), ("hi again", answer3)]
    at = 0
    for message, answer in turns:
        text = tokenizer.decode(answer, skip_special_tokens=True)
        at = out.index(f"you: {message}\n", at)
        at = out.index(f"assistant: {text}\n", at)
    assert out.index("you: /reset") < out.index("history cleared") < out.index("you: hi again")

    # the cost of every turn: turn 2 pays its new tokens and its answer, not the history again
    costs = re.findall(
        r"turn (\d) \(session (\d)\): (\d+) new tokens, paid for (\d+) tokens: ([0-9.]+) SWARM",
        out,
    )
    paid = [
        ids1.shape[1] + answer1.shape[0] - 1,  # the prompt, and each answer token but the last
        1 + delta.shape[1] + answer2.shape[0] - 1,  # answer 1's last token, the new turn, ...
        ids3.shape[1] + answer3.shape[0] - 1,  # a new session: its whole prompt
    ]
    assert [(int(t), int(s), int(n), int(p)) for t, s, n, p, _ in costs] == [
        (1, 1, answer1.shape[0], paid[0]),
        (2, 1, answer2.shape[0], paid[1]),
        (3, 2, answer3.shape[0], paid[2]),
    ], out
    assert paid[1] < out1.shape[1] + delta.shape[1]  # far less than the whole conversation
    assert [Decimal(cost[4]) for cost in costs] == [_tokens(p * price) for p in paid]
    chat = re.search(r"chat: 3 turn\(s\) in 2 session\(s\), paid ([0-9.]+) SWARM", out)
    assert chat and Decimal(chat.group(1)) == _tokens(sum(paid) * price), out
    assert _paid_tokens(out, nodes) == [sum(paid), sum(paid)]

    # the servers saw two sessions: the conversation before /reset, and the one after
    address = deployment.account("client-0").address
    ledger = open_ledger(sqlite_url(home / "client" / address / "ledger.sqlite"))
    try:
        with ledger.begin() as db:
            receipts = receipts_of(db, server=nodes[0].address)
    finally:
        ledger.close()
    per_session: dict[bytes, int] = defaultdict(int)
    for receipt in receipts:
        per_session[receipt.session_id] += receipt.tokens
    assert list(per_session.values()) == [paid[0] + paid[1], paid[2]]


def test_chat_says_when_the_conversation_is_full_and_reset_makes_room(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path,
    tokenizer,
) -> None:  # fmt: skip
    new = 4

    def length(message: str) -> int:
        messages = [{"role": "user", "content": message}]
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True
        )
        return len(rendered["input_ids"])

    # room for either message alone and its answer, not for a second turn after the first
    max_length = max(length("hello"), length("hi again")) + new
    result = _client(deployment, tmp_path / "home", nodes, model_path,
                     "chat", "--max-new-tokens", str(new), "--max-length", str(max_length),
                     stdin="hello\nand then?\n/reset\nhi again\n")  # fmt: skip
    out = result.stdout
    full = out.index("the conversation is full:")
    assert out.index("you: and then?") < full < out.index("you: /reset")
    assert f"of {max_length} tokens" in out and "type /reset to start over" in out
    assert "turn 1 (session 1)" in out and "turn 2 (session 2)" in out  # "and then?" not run
    assert "chat: 2 turn(s) in 2 session(s)" in out  # the end of input ends the chat


def test_ctrl_c_in_a_chat_says_interrupted_and_sums_up_the_chat(
    deployment: Deployment, nodes: list[NodeProcess], model_path: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    peers = [arg for node in nodes for m in node.maddrs for arg in ("--initial-peers", m)]
    command = [
        sys.executable, "-m", "stakeswarm", "client", "chat", "--model", str(model_path),
        "--max-new-tokens", "400", *peers,
        "--devnet", "--home", str(node_home(deployment, tmp_path / "home")),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=sigint_reaches_it,
    )  # fmt: skip
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("hello\n")  # and the pipe stays open: the chat waits for more
        process.stdin.flush()
        seen = ""
        while not re.search(r"assistant: .", seen):  # the answer has begun: steps were paid
            char = process.stdout.read(1)
            assert char, seen
            seen += char
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    paid = re.search(r"interrupted after (\d+) tokens; paid ([0-9.]+) SWARM this chat", err)
    assert paid and Decimal(paid.group(2)) > 0, err
    assert "Traceback" not in err, err
    summed = re.search(r"chat: 1 turn\(s\) in 1 session\(s\), paid ([0-9.]+) SWARM", out)
    assert summed and summed.group(1) == paid.group(2), out
    assert "Paid this run" in out, out
