"""Exceptions of the node's model code: loading spans, running them, caching, sketches.

Every error a bad request or a bad model folder can cause is one of these, with a message that
says what was asked and what was allowed, so the server can turn it into a clear reply and go
on serving. Errors that describe bad input also derive from `ValueError`.
"""

from __future__ import annotations

import enum


class NodeError(Exception):
    """Base class of the node's model-code errors."""


class UnsupportedModelError(NodeError):
    """The model folder holds an architecture the node has no family entry for."""


class ModelFilesError(NodeError):
    """The model folder is missing files or weights, or holds weights that do not fit the config."""


class InvalidSpanError(NodeError, ValueError):
    """A block range outside the model, empty, or reversed."""


class InvalidInputError(NodeError, ValueError):
    """Hidden states or an attention mask of the wrong shape, dtype or content."""


class TensorProblem(enum.StrEnum):
    """What was wrong with a step's tensors (`BadTensorError.problem`)."""

    NOT_A_TENSOR = "not_a_tensor"
    SHAPE = "shape"  # hidden states not [batch, tokens, hidden_size]
    EMPTY = "empty"  # no sequence or no token
    BATCH = "batch"  # another batch than the session's
    DTYPE = "dtype"
    NOT_FINITE = "not_finite"  # NaN or infinity
    TOO_LARGE = "too_large"  # a value of magnitude over the allowed bound
    MASK_SHAPE = "mask_shape"  # attention mask not [batch, past + tokens]
    MASK_DTYPE = "mask_dtype"
    MASK_VALUES = "mask_values"  # attention mask values other than 0 and 1


class BadTensorError(InvalidInputError):
    """Hidden states or an attention mask that break the step-tensor rules
    (`node.tensors.check_hidden_states`, `check_attention_mask`); `problem` says which rule.
    Each caller turns it into its own refusal (a node into `ErrorCode.BAD_TENSOR`)."""

    def __init__(self, problem: TensorProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class CacheError(NodeError):
    """Base class of KV-cache errors."""


class CacheFullError(CacheError):
    """Opening a session cache would exceed the node's token budget."""

    def __init__(self, asked: int, available: int) -> None:
        super().__init__(
            f"KV cache full: asked for {asked} tokens, {available} available "
            f"(tokens = batch * max_length)"
        )
        self.asked = asked
        self.available = available


class SessionLengthError(CacheError, ValueError):
    """A step would grow a session past the max length it declared when it opened."""

    def __init__(self, max_length: int, requested: int) -> None:
        super().__init__(
            f"session length exceeded: the step needs {requested} positions, "
            f"the session declared max_length={max_length}"
        )
        self.max_length = max_length
        self.requested = requested


class SessionExistsError(CacheError, ValueError):
    """A session cache with this owner is already open."""


class CacheClosedError(CacheError):
    """The session cache was closed (its memory returned); it cannot be used any more."""


class SketchFormatError(NodeError, ValueError):
    """Bytes that are not a valid encoded sketch, or a sketch that does not fit the tensor."""
