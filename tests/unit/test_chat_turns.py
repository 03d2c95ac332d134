"""What `client generate` and `client chat` do before the swarm: the printer never shows a stop
string, a conversation sends only what its session has not seen, and the new options refuse
what they cannot do with one `error:` line, before any chain, ledger or network work."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from stakeswarm.commands.chat import Conversation
from stakeswarm.commands.client_support import CtrlC, Printer, encode
from stakeswarm.tiny_models import make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD_PEER = "/ip4/127.0.0.1/tcp/1/p2p/QmWtA8FbXdUdnHcxV1N1TTtsxyTbFzZHm8G63Z4sqGGmEd"
# ChatML-like, with the tiny tokenizer's special tokens as the turn markers
CHAT_TEMPLATE = (
    "{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)


def _with_template(path: Path, template: str | None) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _with_template(make_tiny_model(tmp_path_factory.mktemp("m"), "llama", 2), CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def tokenizer(tiny: Path):  # noqa: ANN201
    return AutoTokenizer.from_pretrained(tiny)


def test_the_printer_never_shows_a_stop_string_or_what_follows(tokenizer) -> None:  # noqa: ANN001
    text = "Hello swarm! Hello stakeswarm."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = io.StringIO()
    printer = Printer(tokenizer, out, stops=("swarm!", "never"))
    printer.put(torch.tensor([[7, 8]]))  # the prompt comes first and is not shown
    for token in ids:
        printer.put(torch.tensor([token]))
        assert "Hello ".startswith(out.getvalue())  # never a piece of "swarm!" on screen
    printer.end()
    assert out.getvalue() == "Hello \n"
    assert printer.stopped and printer.tokens == len(ids) and printer.text == "Hello "


def test_the_printer_shows_all_text_without_a_stop_string(tokenizer) -> None:  # noqa: ANN001
    text = "Every server stakes tokens"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    out = io.StringIO()
    printer = Printer(tokenizer, out, stops=("tokens!",))
    printer.put(torch.tensor([[7]]))
    for token in ids:
        printer.put(torch.tensor([token]))
    assert out.getvalue() == "Every server stakes "  # "tokens" may begin "tokens!": held back
    printer.end()
    assert out.getvalue() == text + "\n" and not printer.stopped


class _PressedInAFinalizer:
    """Ctrl-C arriving while Python runs a finalizer: the KeyboardInterrupt is printed as
    "Exception ignored" and lost (it happened in CI, inside pycryptodome's SmartPointer)."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_a_ctrl_c_lost_in_a_finalizer_still_stops_the_text(tokenizer) -> None:  # noqa: ANN001
    out = io.StringIO()
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        printer = Printer(tokenizer, out, ctrl_c=ctrl_c)
        printer.put(torch.tensor([[7]]))
        printer.put(torch.tensor([9]))
        finalized = _PressedInAFinalizer()
        del finalized  # the interrupt is raised in __del__ and dropped there
        with pytest.raises(KeyboardInterrupt):
            printer.put(torch.tensor([10]))  # the next token stops the text
        assert printer.tokens == 1
        with pytest.raises(KeyboardInterrupt):
            printer.end()  # and so does the end of a generate that had no token left
    assert signal.getsignal(signal.SIGINT) is before  # put back


def test_a_conversation_sends_only_what_its_session_has_not_seen(tokenizer) -> None:  # noqa: ANN001
    chat = Conversation(tokenizer, system="Be brief.")
    first = chat.ask("hello")
    assert first.whole
    assert first.rendered == tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    answer = encode(tokenizer, "Hi there")[0]
    chat.answered(first, answer, first.ids.shape[1] + answer.shape[0])

    second = chat.ask("and then?")
    assert not second.whole
    whole = encode(tokenizer, second.rendered)
    assert second.ids.shape[1] < whole.shape[1] - chat.length + answer.shape[0]
    # what the session holds plus what is sent is the whole conversation, as text
    assert chat.held + tokenizer.decode(second.ids[0], skip_special_tokens=False) == (
        second.rendered
    )
    assert "<|eos|>" in tokenizer.decode(second.ids[0])  # the end of the answer's turn

    chat.reset()
    again = chat.ask("hi again")
    assert again.whole and again.rendered.startswith("<|bos|>system\nBe brief.")
    assert "hello" not in again.rendered


def test_a_template_that_rewrites_earlier_turns_sends_the_whole_conversation(
    tiny: Path, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.chat_template = "turns: {{ messages|length }}\n" + CHAT_TEMPLATE
    chat = Conversation(tokenizer)
    first = chat.ask("hello")
    answer = encode(tokenizer, "Hi")[0]
    chat.answered(first, answer, first.ids.shape[1] + answer.shape[0])
    second = chat.ask("and then?")
    assert second.whole and second.rendered.startswith("turns: 3")


def _stakeswarm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "stakeswarm", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, input=stdin,
    )  # fmt: skip


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


def test_a_system_message_the_template_refuses_is_one_error_line(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = _with_template(
        make_tiny_model(tmp_path_factory.mktemp("nosys"), "llama", 2), NO_SYSTEM_TEMPLATE
    )
    home = tmp_path / "home"
    common = ["--model", str(model), "--initial-peers", GOOD_PEER, "--devnet", "--home", str(home)]
    for command in (["generate", "hi"], ["chat"]):
        result = _stakeswarm("client", *command, "--system", "Be brief.", *common)
        assert _error_line(result) == (
            "error: --system: this model's chat template does not take a system message "
            "(System role not supported)"
        )
    assert not home.exists()  # refused before the chain, the ledger and the swarm


def test_chat_without_a_chat_template_is_refused_before_joining(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = make_tiny_model(tmp_path_factory.mktemp("plain"), "llama", 2)
    home = tmp_path / "home"
    result = _stakeswarm(
        "client", "chat", "--model", str(model), "--initial-peers", GOOD_PEER,
        "--devnet", "--home", str(home), stdin="hello\n",
    )  # fmt: skip
    assert _error_line(result) == "error: chat: this model's tokenizer has no chat template"
    assert not home.exists()


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--repetition-penalty", "0", "must be > 0"),
        ("--repetition-penalty", "-1.5", "must be > 0"),
        ("--stop", "", "must not be empty"),
    ],
)
def test_generate_refuses_a_bad_decoding_option(
    tiny: Path, tmp_path: Path, option: str, value: str, problem: str
) -> None:
    home = tmp_path / "home"
    result = _stakeswarm(
        "client", "generate", "hi", "--model", str(tiny), "--initial-peers", GOOD_PEER,
        option, value, "--devnet", "--home", str(home),
    )  # fmt: skip
    assert result.returncode == 2
    assert option in result.stderr and problem in result.stderr, result.stderr
    assert not home.exists()
