"""Sending one usage batch to Stripe as a v1 meter event, and what the answer means."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import stripe

from meterline.billing.catalog import EventType

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


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    message: str = ""


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
            return SendResult(Outcome.DELIVERED, message)  # a repeat of an accepted request
        return SendResult(Outcome.REJECTED, message)
    except (stripe.StripeError, TimeoutError) as exc:
        # Everything else may or may not have been recorded (429 including Stripe's
        # one-call-per-customer-and-meter limit, 5xx, timeouts, dropped connections, a 200 whose
        # body did not parse) or was refused for our key (401/403), not for the batch. The same
        # identifier is safe to send again.
        status = getattr(exc, "http_status", None)
        detail = getattr(exc, "user_message", None) or str(exc) or "timed out"
        return SendResult(Outcome.TRANSIENT, f"{type(exc).__name__} ({status}): {detail}")
    return SendResult(Outcome.DELIVERED)
