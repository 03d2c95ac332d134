"""Exceptions of the client: what a user of `DistributedModelForCausalLM` or
`stakeswarm client` may see, each with a message that says what happened and what to do.

Failures of one server (gone, refusing, lying) are handled inside the client by re-routing;
they surface only as `NoRouteError` when no server is left for some blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class ClientError(Exception):
    """Base of every deliberate client error."""


class ClientConfigError(ClientError, ValueError):
    """A client configuration or argument that cannot work."""


class SwarmJoinError(ClientError, ConnectionError):
    """None of the initial peers could be reached: the swarm cannot be joined."""


class NoRouteError(ClientError):
    """No chain of usable servers covers the blocks (none announced, all failing, too dear)."""


class BudgetExceededError(ClientError):
    """The next step would spend more than the budget left. Nothing was signed for that step.

    `partial` holds the token ids generated so far when `generate` stopped (else None)."""

    def __init__(self, message: str, *, needed: int, left: int) -> None:
        super().__init__(message)
        self.needed = needed  # Wei the refused step would have cost
        self.left = left  # Wei left of the budget
        self.partial: torch.Tensor | None = None


class PaymentError(ClientError):
    """Paying failed on our side: a channel could not be opened or topped up."""


class PaymentRefusedError(ClientError):
    """A server refused our payment (e.g. `payment_behind`): a problem of this client's wallet
    or ledger, not of the server, so it is not re-routed around."""

    def __init__(self, message: str, *, code: str, server: str) -> None:
        super().__init__(message)
        self.code = code  # the node's `ErrorCode` value, e.g. "payment_behind"
        self.server = server  # the server's address


class ServerFailure(ClientError):
    """One server failed a request (unreachable, refused, or a receipt that does not check
    out). Internal: the session re-routes around it."""

    def __init__(self, message: str, *, peer_id: str, ban: bool = True) -> None:
        super().__init__(message)
        self.peer_id = peer_id
        self.ban = ban  # count it against the server (False: e.g. our session merely expired)


class BadReceiptError(ServerFailure):
    """A server's receipt is wrongly signed or does not match what was sent and received."""

    def __init__(self, message: str, *, peer_id: str, problem: str) -> None:
        super().__init__(message, peer_id=peer_id)
        self.problem = problem  # a `client.receipts.ReceiptProblem` value


class SessionStateError(ClientError, ValueError):
    """A step that does not fit the inference session (length, batch, history)."""
