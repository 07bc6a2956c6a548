"""Sending one usage batch to Stripe as a v1 meter event, and what the answer means."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import stripe

from meterline.billing.catalog import EventType
from meterline.stripe_gateway.client import rejection_of

ALREADY_EXISTS = "An event already exists with identifier"
# Past this, a call counts as unanswered (well under the job's lease of 120 s).
CALL_TIME_LIMIT_SECONDS = 30.0


def meter_event_name(event_type: EventType) -> str:
    """The `event_name` of the Stripe meter of an event type (setup-stripe creates them)."""
    return event_type.value


class Outcome(StrEnum):
    DELIVERED = "delivered"  # Stripe has it (now, or from an earlier attempt)
    TRANSIENT = "transient"  # unknown or not yet: send the same request again later
    REJECTED = "rejected"  # Stripe refused it for good
    # 401/403: Stripe refused Meterline's API key before looking at the request, so this call
    # certainly recorded nothing (whatever an earlier attempt did). Fixed only by a person.
    KEY_REFUSED = "key_refused"


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    message: str = ""
    repeat: bool = False  # delivered by an earlier attempt: Stripe answered "already exists"


async def send_meter_event(
    client: stripe.StripeClient,
    *,
    identifier: str,
    event_name: str,
    customer: str,
    value: int,
    timestamp: datetime,
) -> SendResult:
    try:
        async with asyncio.timeout(CALL_TIME_LIMIT_SECONDS):  # httpx times each phase, not the call
            await client.v1.billing.meter_events.create_async(
                params={
                    "event_name": event_name,
                    "identifier": identifier,
                    "timestamp": int(timestamp.timestamp()),
                    "payload": {"stripe_customer_id": customer, "value": str(value)},
                }
            )
    except stripe.InvalidRequestError as exc:  # a 400/404 with Stripe's own JSON error
        message = exc.user_message or str(exc)
        if ALREADY_EXISTS in message or (exc.param == "identifier" and "exist" in message):
            # a repeat of an accepted request
            return SendResult(Outcome.DELIVERED, message, repeat=True)
        return SendResult(Outcome.REJECTED, message)
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        # 401 (no valid key: rotated, revoked, mistyped) or 403 (a restricted key without the
        # meter event permission). Stripe authenticates before it executes anything, so nothing
        # was recorded. The SDK also raises AuthenticationError, unsent, when it has no key.
        rejection = rejection_of(exc)
        if rejection is not None:
            answer = rejection.describe()
        else:
            answer = f"HTTP {exc.http_status}" if exc.http_status else "no key sent"
        detail = exc.user_message or str(exc) or "refused"
        return SendResult(Outcome.KEY_REFUSED, f"Stripe refused the API key ({answer}): {detail}")
    except (stripe.StripeError, TimeoutError) as exc:
        # Everything else may or may not have been recorded (429 including Stripe's
        # one-call-per-customer-and-meter limit, 5xx, timeouts, dropped connections, a 200 whose
        # body did not parse). The same identifier is safe to send again.
        status = getattr(exc, "http_status", None)
        detail = getattr(exc, "user_message", None) or str(exc) or "timed out"
        return SendResult(Outcome.TRANSIENT, f"{type(exc).__name__} ({status}): {detail}")
    return SendResult(Outcome.DELIVERED)
