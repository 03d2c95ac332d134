"""The gateway's errors: each is one OpenAI-shaped HTTP error
(`{"error": {"message", "type", "param", "code"}}`) with its status code."""

from __future__ import annotations


class GatewayError(Exception):
    """A request the gateway refuses or cannot serve, as the API answers it."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault, when one is
        if code is not None:
            self.code = code

    def body(self) -> dict[str, object]:
        """The JSON body OpenAI's clients parse."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(GatewayError):
    """Malformed JSON, a field out of range, or something the gateway does not support."""

    status = 400
    type = "invalid_request_error"


class Unauthorized(GatewayError):
    """No API key, or one the gateway does not know (or revoked)."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class BudgetExhausted(GatewayError):
    """The key's budget cannot pay for this request."""

    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class ModelNotFound(GatewayError):
    """A model the gateway does not serve."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class TooManyRequests(GatewayError):
    """Every generation slot is busy."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class SwarmUnavailable(GatewayError):
    """No route through the swarm (or the gateway's wallet cannot pay one)."""

    status = 503
    type = "service_unavailable"
    code = "no_route"
