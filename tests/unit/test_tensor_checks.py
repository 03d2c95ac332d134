"""What a step's tensors must be (node.tensors.check_hidden_states, check_attention_mask) and
how each caller refuses what breaks it: the node with BAD_TENSOR, its blocks with
`InvalidInputError`, the client with `SessionStateError` (the verifier's refusals are in
test_verifier_audit)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

from client.errors import SessionStateError
from client.session import InferenceSession
from node.errors import BadTensorError, InvalidInputError, TensorProblem
from node.protocol import ErrorCode, ProtocolError
from node.sessions import check_hidden, check_mask
from node.sketch import FP16_MAX
from node.tensors import DTYPES, check_attention_mask, check_hidden_states

HIDDEN = 8


def hidden(*shape: int, value: float = 0.5, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.full(shape or (2, 3, HIDDEN), value, dtype=dtype)


def problem_of(tensor: Any, **rules: Any) -> TensorProblem | None:
    try:
        check_hidden_states(tensor, hidden_size=HIDDEN, **rules)
    except BadTensorError as exc:
        return exc.problem
    return None


@pytest.mark.parametrize(
    "tensor, rules, problem",
    [
        (hidden(), {}, None),
        ([[0.5] * HIDDEN], {}, TensorProblem.NOT_A_TENSOR),
        (hidden(3, HIDDEN), {}, TensorProblem.SHAPE),
        (hidden(2, 3, HIDDEN + 1), {}, TensorProblem.SHAPE),
        (hidden(0, 3, HIDDEN), {}, TensorProblem.EMPTY),
        (hidden(2, 0, HIDDEN), {}, TensorProblem.EMPTY),
        (hidden(), {"batch": 2}, None),
        (hidden(), {"batch": 1}, TensorProblem.BATCH),
        (hidden(), {"dtype": torch.float32}, None),
        (hidden(), {"dtype": torch.float16}, TensorProblem.DTYPE),
        (hidden(dtype=torch.bfloat16), {"dtype": DTYPES.values()}, None),
        (hidden(dtype=torch.float64), {"dtype": DTYPES.values()}, TensorProblem.DTYPE),
        (hidden(value=float("nan")), {}, None),  # values unchecked unless asked
        (hidden(value=float("nan")), {"finite": True}, TensorProblem.NOT_FINITE),
        (hidden(value=float("-inf")), {"max_abs": FP16_MAX}, TensorProblem.NOT_FINITE),
        (hidden(value=1e9), {"finite": True}, None),
        (hidden(value=-FP16_MAX), {"max_abs": FP16_MAX}, None),
        (hidden(value=-FP16_MAX - 1), {"max_abs": FP16_MAX}, TensorProblem.TOO_LARGE),
        # the first rule broken is the one named
        (hidden(1, 0, HIDDEN), {"batch": 2}, TensorProblem.EMPTY),
        (
            hidden(1, 3, HIDDEN, value=float("nan"), dtype=torch.float16),
            {"batch": 2, "dtype": torch.float32, "finite": True},
            TensorProblem.BATCH,
        ),
        (
            hidden(value=float("nan"), dtype=torch.float16),
            {"dtype": torch.float32, "finite": True},
            TensorProblem.DTYPE,
        ),
    ],
)
def test_hidden_states_are_refused_for_the_first_rule_they_break(
    tensor: Any, rules: dict[str, Any], problem: TensorProblem | None
) -> None:
    assert problem_of(tensor, **rules) is problem


def test_a_refusal_says_what_was_wrong_and_is_an_invalid_input() -> None:
    with pytest.raises(BadTensorError, match=r"must be \[batch, tokens, 8\], got \[3, 8\]") as e:
        check_hidden_states(hidden(3, HIDDEN), hidden_size=HIDDEN)
    assert isinstance(e.value, InvalidInputError) and isinstance(e.value, ValueError)
    with pytest.raises(BadTensorError, match="are float16, expected float32 or bfloat16"):
        check_hidden_states(
            hidden(dtype=torch.float16), hidden_size=HIDDEN, dtype=(torch.float32, torch.bfloat16)
        )
    with pytest.raises(BadTensorError, match="magnitude 70000, over 65504"):
        check_hidden_states(hidden(value=7e4), hidden_size=HIDDEN, max_abs=FP16_MAX)


def mask_problem(mask: Any, **rules: Any) -> TensorProblem | None:
    try:
        check_attention_mask(mask, batch=2, length=4, **rules)
    except BadTensorError as exc:
        return exc.problem
    return None


def test_masks_are_zeros_and_ones_of_batch_by_positions() -> None:
    ones = torch.ones(2, 4, dtype=torch.int64)
    assert mask_problem(ones) is None
    assert mask_problem(ones.tolist()) is TensorProblem.NOT_A_TENSOR
    assert mask_problem(ones[:, :3]) is TensorProblem.MASK_SHAPE
    assert mask_problem(ones[:1]) is TensorProblem.MASK_SHAPE
    assert mask_problem(ones * 2) is TensorProblem.MASK_VALUES
    assert mask_problem(-ones) is TensorProblem.MASK_VALUES
    # the wire's dtype is int64; the blocks take bool and every integer dtype
    for dtype in (torch.bool, torch.int32, torch.uint8):
        assert mask_problem(ones.to(dtype)) is TensorProblem.MASK_DTYPE
        assert mask_problem(ones.to(dtype), any_integer=True) is None
    assert mask_problem(ones.float(), any_integer=True) is TensorProblem.MASK_DTYPE
    assert mask_problem(ones.to(torch.int32) * 2, any_integer=True) is TensorProblem.MASK_VALUES


# --- the node: BAD_TENSOR ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensor",
    [
        hidden(2, 0, HIDDEN),
        hidden(1, 3, HIDDEN),
        hidden(dtype=torch.bfloat16),
        hidden(value=float("inf")),
        hidden(value=FP16_MAX * 1.01),
    ],
)
def test_the_node_refuses_bad_hidden_states_with_bad_tensor(tensor: torch.Tensor) -> None:
    with pytest.raises(ProtocolError) as refused:
        check_hidden(tensor, hidden_size=HIDDEN, dtype=torch.float32, batch=2)
    assert refused.value.code is ErrorCode.BAD_TENSOR


def test_the_node_says_why_it_bounds_values() -> None:
    with pytest.raises(ProtocolError, match="over 65504 \\(float16's largest\\)") as refused:
        check_hidden(hidden(value=1e5), hidden_size=HIDDEN, dtype=torch.float32)
    assert refused.value.code is ErrorCode.BAD_TENSOR
    check_hidden(hidden(value=FP16_MAX), hidden_size=HIDDEN, dtype=torch.float32)


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(2, 3, dtype=torch.int64),
        torch.ones(2, 4, dtype=torch.bool),
        torch.full((2, 4), 2, dtype=torch.int64),
    ],
)
def test_the_node_refuses_bad_masks_with_bad_tensor(mask: torch.Tensor) -> None:
    with pytest.raises(ProtocolError) as refused:
        check_mask(mask, 2, 4)
    assert refused.value.code is ErrorCode.BAD_TENSOR
    check_mask(torch.ones(2, 4, dtype=torch.int64), 2, 4)


# --- the client: SessionStateError, before anything is sent ------------------------------------


def client_session(batch_size: int | None = None) -> InferenceSession:
    # a step checks its tensors before it touches the client's route, payments or network
    client = SimpleNamespace(hidden_size=HIDDEN)
    return InferenceSession(cast(Any, client), max_length=8, batch_size=batch_size)


@pytest.mark.parametrize(
    "tensor, mask, message",
    [
        (hidden(3, HIDDEN), None, r"must be \[batch, tokens, 8\]"),
        (hidden(2, 0, HIDDEN), None, "empty"),
        (hidden(1, 3, HIDDEN), None, "the session's batch is 2, the hidden states have batch 1"),
        (hidden(), torch.ones(2, 4), r"\[batch, past \+ tokens\] = \[2, 3\], got \[2, 4\]"),
        (hidden(), torch.full((2, 3), 2), "values must be 0 or 1"),
    ],
)
def test_the_client_refuses_bad_step_tensors_before_sending(
    tensor: torch.Tensor, mask: torch.Tensor | None, message: str
) -> None:
    session = client_session(batch_size=2)
    with pytest.raises(SessionStateError, match=message):
        session.step(tensor, mask)
    assert session.position == 0 and session.hops == []
