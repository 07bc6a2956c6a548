"""The demo company `make run` seeds into an empty database, so GraphiQL has something to show."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from meterline.billing.catalog import EventType, Tier
from meterline.billing.periods import month_of, month_start
from meterline.db import companies
from meterline.services import usage
from meterline.services.plan_history import set_tier_by_operator

DEMO_COMPANY_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "demo.weddingflow.pro")
# The portal link `make run` prints lives as long as the development token beside it.
DEMO_PORTAL_TTL_MINUTES = 12 * 60

# (event type, quantity): a starter-tier company a little over its SMS allowance.
DEMO_USAGE: list[tuple[EventType, int]] = [
    (EventType.GUEST_INVITATION, 320),
    (EventType.SMS_SENT, 1_012),
    (EventType.AI_QUERY, 18),
    (EventType.WHATSAPP_MESSAGE, 140),
    (EventType.EMAIL_SENT, 2_450),
]


async def seed_demo(now: datetime, *, late_grace_hours: int) -> bool:
    """Create the demo company with this month's usage. False when it already exists."""
    if await companies.get(DEMO_COMPANY_ID) is not None:
        return False
    await set_tier_by_operator(DEMO_COMPANY_ID, Tier.STARTER, now=now)
    start = month_start(month_of(now))
    for index, (event_type, quantity) in enumerate(DEMO_USAGE):
        # Spread over the month so far, in two events each, with idempotency keys so a rerun
        # after a crash cannot double them.
        for part, share in enumerate((quantity // 2, quantity - quantity // 2)):
            at = start + (now - start) * (index * 2 + part + 1) / (len(DEMO_USAGE) * 2 + 1)
            await usage.record_usage(
                DEMO_COMPANY_ID,
                usage.RecordRequest(
                    event_type=event_type,
                    quantity=share,
                    idempotency_key=f"demo-{event_type.value}-{part}",
                    occurred_at=min(at, now - timedelta(seconds=1)) if at < now else None,
                    metadata={"source": "demo"},
                ),
                now=now,
                late_grace_hours=late_grace_hours,
            )
    return True
