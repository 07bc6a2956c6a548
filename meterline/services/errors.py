"""Domain errors with the stable code the API shows in `extensions.code`."""

from __future__ import annotations


class MeterlineError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadUserInput(MeterlineError):
    code = "BAD_USER_INPUT"


class IdempotencyKeyReused(MeterlineError):
    code = "IDEMPOTENCY_KEY_REUSED"


class Forbidden(MeterlineError):
    code = "FORBIDDEN"


class StripeUnavailable(MeterlineError):
    code = "STRIPE_UNAVAILABLE"
