"""Domain errors with the stable code the API shows in `extensions.code`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meterline.stripe_gateway.client import StripeRejection


class MeterlineError(Exception):
    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, *, extensions: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.extensions = extensions or {}  # shown beside `code` in the GraphQL error


class BadUserInput(MeterlineError):
    code = "BAD_USER_INPUT"


class IdempotencyKeyReused(MeterlineError):
    code = "IDEMPOTENCY_KEY_REUSED"


class Forbidden(MeterlineError):
    code = "FORBIDDEN"


class StripeUnavailable(MeterlineError):
    """Stripe did not answer, or not yet (network, timeout, 429, 5xx), or is not configured:
    the same request may succeed later."""

    code = "STRIPE_UNAVAILABLE"


class StripeRequestRejected(MeterlineError):
    """Stripe answered and refused the request (4xx other than 429): retrying it unchanged
    fails the same way; an operator must look (the extensions say what Stripe refused)."""

    code = "STRIPE_REQUEST_REJECTED"

    def __init__(self, message: str, rejection: StripeRejection) -> None:
        super().__init__(
            f"{message} ({rejection.describe()}). Retrying will not help; an operator should "
            "look at it.",
            extensions={
                "stripe": {
                    "status": rejection.status,
                    "code": rejection.code,
                    "param": rejection.param,
                    "requestId": rejection.request_id,
                }
            },
        )


class DatabaseBusy(MeterlineError):
    """A statement waited past the statement timeout (a lock held elsewhere) or lost a
    deadlock: nothing was written, and the same request may succeed in a moment."""

    code = "DATABASE_BUSY"


class PortalNotConfigured(MeterlineError):
    """The usage portal needs PUBLIC_BASE_URL and PORTAL_TOKEN_SECRET: an operator must set
    them; retrying will not help."""

    code = "PORTAL_NOT_CONFIGURED"
