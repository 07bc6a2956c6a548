"""Verifying and reading what Stripe posts to the webhook routes.

Snapshot events (`/webhooks/stripe`) carry the object; thin events (`/webhooks/stripe/thin`)
carry only ids and are fetched from `/v2/core/events/{id}`. Both are signed with the route's
own secret (several during a rotation) over the raw body, with Stripe's 5-minute tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe

from meterline.stripe_gateway.mirror import iso_time

TOLERANCE_SECONDS = 300  # Stripe's default: an older signature is a replay


class BadWebhook(Exception):
    """Not a Stripe event signed with one of our secrets: answer 400, store nothing."""


@dataclass(frozen=True)
class SnapshotEvent:
    id: str
    type: str
    created: datetime
    object_id: str | None
    object: dict[str, Any]  # the snapshot; handlers re-read the object instead of trusting it
    payload: dict[str, Any]


@dataclass(frozen=True)
class ThinEvent:
    id: str
    type: str
    created: datetime
    related_object_id: str | None
    payload: dict[str, Any]  # the notification: ids only; the event is fetched from Stripe


def _verify(payload: bytes, header: str | None, secrets: Sequence[str]) -> None:
    if not secrets:
        raise BadWebhook("no signing secret is configured for this route")
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE_SECONDS)
            return
        except stripe.SignatureVerificationError:
            continue
        except UnicodeDecodeError as exc:
            raise BadWebhook("the body is not UTF-8") from exc
    raise BadWebhook("no valid signature for this body (secret, timestamp or body)")


def _json_object(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise BadWebhook("the body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadWebhook("the body is not a JSON object")
    return body


def verify_snapshot(payload: bytes, header: str | None, secrets: Sequence[str]) -> SnapshotEvent:
    _verify(payload, header, secrets)
    body = _json_object(payload)
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    event_id, event_type, created = body.get("id"), body.get("type"), body.get("created")
    if (
        body.get("object") != "event"
        or not isinstance(event_id, str)
        or not event_id
        or len(event_id) > 255
        or not isinstance(event_type, str)
        or not event_type
        or not isinstance(created, int)
        or not isinstance(obj, dict)
    ):
        raise BadWebhook("not a Stripe snapshot event (object, id, type, created, data.object)")
    object_id = obj.get("id")
    return SnapshotEvent(
        id=event_id,
        type=event_type[:128],
        created=datetime.fromtimestamp(created, UTC),
        object_id=object_id if isinstance(object_id, str) else None,
        object=obj,
        payload=body,
    )


def verify_thin(
    client: stripe.StripeClient, payload: bytes, header: str | None, secrets: Sequence[str]
) -> ThinEvent:
    if not secrets:
        raise BadWebhook("no signing secret is configured for this route")
    _verify(payload, header, secrets)
    body = _json_object(payload)
    if not isinstance(body.get("type"), str) or not isinstance(body.get("id"), str):
        raise BadWebhook("not a Stripe thin event (id, type)")
    notification = None
    for secret in secrets:
        try:
            notification = client.parse_event_notification(
                payload, header, secret, TOLERANCE_SECONDS
            )
            break
        except stripe.SignatureVerificationError:
            continue
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # not a thin event
            raise BadWebhook(f"not a Stripe thin event: {exc}") from exc
    if notification is None:
        raise BadWebhook("no valid signature for this body (secret, timestamp or body)")
    try:
        created = iso_time(notification.created)
    except (TypeError, ValueError) as exc:
        raise BadWebhook(f"not a Stripe thin event: {exc}") from exc
    if not isinstance(notification.id, str) or not notification.id or created is None:
        raise BadWebhook("not a Stripe thin event (id, created)")
    related = body.get("related_object")
    related_id = related.get("id") if isinstance(related, dict) else None
    return ThinEvent(
        id=notification.id[:255],
        type=str(notification.type)[:128],
        created=created,
        related_object_id=related_id if isinstance(related_id, str) else None,
        payload=body,
    )
