"""What the gateway accepts of an OpenAI request (`gateway.openai_types`), and how the text of a
choice is cut and streamed (`gateway.engine.Choices`)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.engine import Choices, Delta, Event, Finished
from gateway.errors import BadRequest
from gateway.openai_types import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_messages,
    completion_prompt,
    decoding,
    parse,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_chat_request_with_openai_defaults() -> None:
    request = parse(ChatCompletionRequest, {**CHAT, "user": "u1", "metadata": {"a": "b"}})
    decode = decoding(request, max_n=4)
    assert (decode.temperature, decode.top_p, decode.n, decode.max_tokens) == (1.0, 1.0, 1, None)
    assert not decode.stream and not decode.include_usage
    assert chat_messages(request) == [{"role": "user", "content": "hi"}]


def test_streaming_options_stop_and_new_style_max_tokens() -> None:
    request = parse(ChatCompletionRequest, {
        **CHAT, "stream": True, "stream_options": {"include_usage": True}, "stop": "\n",
        "max_completion_tokens": 9, "temperature": 0, "seed": 3, "n": 2,
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                     {"role": "user", "content": "hi"}],
    })  # fmt: skip
    decode = decoding(request, max_n=4)
    assert decode.stream and decode.include_usage
    assert (decode.stop, decode.max_tokens, decode.temperature, decode.seed, decode.n) == (
        ("\n",), 9, 0.0, 3, 2,
    )  # fmt: skip
    assert chat_messages(request)[0] == {"role": "system", "content": "be brief"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"model": None}, "model"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"n": 0}, "n"),
    ],
)
def test_malformed_fields_are_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse(ChatCompletionRequest, {**CHAT, **body})
    assert refused.value.param is not None and refused.value.param.startswith(param)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"n": 5}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"max_tokens": 3, "max_completion_tokens": 3}, "max_completion_tokens"),
    ],
)
def test_what_the_gateway_does_not_support_is_refused_not_ignored(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        decoding(parse(ChatCompletionRequest, {**CHAT, **body}), max_n=4)
    assert refused.value.param == param


def test_completion_prompts_and_what_they_refuse() -> None:
    base = {"model": "m", "prompt": ["once"]}
    assert completion_prompt(parse(CompletionRequest, base)) == "once"
    with pytest.raises(BadRequest):
        completion_prompt(parse(CompletionRequest, {**base, "prompt": ["a", "b"]}))
    with pytest.raises(BadRequest):
        decoding(parse(CompletionRequest, {**base, "echo": True}), max_n=1)
    with pytest.raises(BadRequest):
        parse(CompletionRequest, ["not", "an", "object"])


class CharTokenizer:
    """One character per token id (its code point); 0 is end of text."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i)


def run(stop: tuple[str, ...], *steps: list[int], n: int = 1) -> tuple[list[str], list[str | None]]:
    events: list[Event] = []
    choices = Choices(n, CharTokenizer(), stop=stop, eos={0}, emit=events.append)
    for step in steps:
        choices.put(step)
    choices.end("length")
    texts = ["".join(e.text for e in events if isinstance(e, Delta) and e.index == i)
             for i in range(n)]  # fmt: skip
    reasons = [next(e.reason for e in events if isinstance(e, Finished) and e.index == i)
               for i in range(n)]  # fmt: skip
    return texts, reasons


def codes(text: str) -> list[list[int]]:
    return [[ord(c)] for c in text]


def test_a_stop_sequence_cuts_the_text_before_it_even_across_tokens() -> None:
    assert run(("END",), *codes("abcENDxyz")) == (["abc"], ["stop"])
    assert run(("END",), *codes("abcEN")) == (["abcEN"], ["length"])  # never completed


def test_held_back_text_is_sent_once_it_cannot_start_a_stop_sequence() -> None:
    events: list[Event] = []
    choices = Choices(1, CharTokenizer(), stop=("xy",), eos={0}, emit=events.append)
    choices.put([ord("a")])
    choices.put([ord("x")])  # may begin "xy": held
    assert [e.text for e in events if isinstance(e, Delta)] == ["a"]
    choices.put([ord("z")])
    assert [e.text for e in events if isinstance(e, Delta)] == ["a", "xz"]


def test_each_choice_ends_on_its_own_end_of_text() -> None:
    texts, reasons = run((), [ord("a"), ord("b")], [0, ord("c")], [ord("d"), ord("e")], n=2)
    assert texts == ["a", "bce"] and reasons == ["stop", "length"]
