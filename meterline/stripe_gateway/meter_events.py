"""Sending one usage batch to Stripe as a v1 meter event, and what the answer means."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import stripe

from meterline.billing.catalog import EventType

ALREADY_EXISTS = "An event already exists with identifier"


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
        await client.v1.billing.meter_events.create_async(
            params={
                "event_name": event_name,
                "identifier": identifier,
                "timestamp": int(timestamp.timestamp()),
                "payload": {"stripe_customer_id": customer, "value": str(value)},
            }
        )
    except stripe.InvalidRequestError as exc:
        message = exc.user_message or str(exc)
        if ALREADY_EXISTS in message:  # a repeat of a request Stripe already accepted
            return SendResult(Outcome.DELIVERED, message)
        return SendResult(Outcome.REJECTED, message)
    except (stripe.RateLimitError, stripe.APIConnectionError) as exc:
        # 429 (also Stripe's one-call-per-customer-and-meter limit), timeouts, dropped
        # connections: the event may or may not be there; the same identifier is safe to resend.
        return SendResult(Outcome.TRANSIENT, f"{type(exc).__name__}: {exc.user_message or exc}")
    except (stripe.AuthenticationError, stripe.PermissionError) as exc:
        # Our key, not the batch: nothing was recorded; retry once an operator fixes it.
        return SendResult(Outcome.TRANSIENT, f"{type(exc).__name__}: {exc.user_message or exc}")
    except stripe.StripeError as exc:
        status = exc.http_status or 0
        outcome = Outcome.TRANSIENT if status >= 500 or status == 0 else Outcome.REJECTED
        return SendResult(outcome, f"{type(exc).__name__} ({status}): {exc.user_message or exc}")
    return SendResult(Outcome.DELIVERED)
