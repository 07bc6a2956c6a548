"""Event types, tiers and the default plans that seed the `tiers` tables.

The plans here are seed data only: the running service reads tiers from the database, where an
operator may edit them. Adding an event type is one enum member plus one entry per plan below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

CURRENCY = "usd"
# One recorded event's quantity (docs/design.md: 1 to 100,000).
MIN_QUANTITY = 1
MAX_QUANTITY = 100_000


class EventType(StrEnum):
    GUEST_INVITATION = "guest_invitation"
    SMS_SENT = "sms_sent"
    AI_QUERY = "ai_query"
    WHATSAPP_MESSAGE = "whatsapp_message"
    EMAIL_SENT = "email_sent"


class Tier(StrEnum):
    FREE = "free"
    STARTER = "starter"
    PROFESSIONAL = "professional"
    ENTERPRISE = "enterprise"


@dataclass(frozen=True)
class Allowance:
    """What a tier includes of one event type per month, and the price of each unit beyond it."""

    included: int | None  # None = unlimited
    unit_price: Decimal

    def __post_init__(self) -> None:
        if self.included is not None and (
            isinstance(self.included, bool) or not isinstance(self.included, int)
        ):
            raise TypeError("included must be an int or None")
        if self.included is not None and self.included < 0:
            raise ValueError("included must be >= 0 or None")
        if not isinstance(self.unit_price, Decimal):
            # A float price would make every cost inexact (and float has no is_finite()).
            raise TypeError("unit_price must be a Decimal")
        if not self.unit_price.is_finite() or self.unit_price < 0:
            raise ValueError("unit_price must be a finite, non-negative Decimal")


@dataclass(frozen=True)
class Plan:
    tier: Tier
    grace_days: int  # dunning grace before a past-due company is restricted
    allowances: Mapping[EventType, Allowance]
    hard_cap: bool = False  # usage beyond the allowance is refused (free), not billed
    version: int = 1  # plans are versioned (billing/plans.py); a version never changes

    def allowance(self, event_type: EventType) -> Allowance:
        return self.allowances[event_type]

    def cap(self, event_type: EventType) -> int | None:
        """The most a month may use of `event_type`; None = never refused for volume."""
        return self.allowance(event_type).included if self.hard_cap else None


DEFAULT_UNIT_PRICES: Mapping[EventType, Decimal] = {
    EventType.GUEST_INVITATION: Decimal("0.10"),
    EventType.SMS_SENT: Decimal("0.05"),
    EventType.AI_QUERY: Decimal("0.20"),
    EventType.WHATSAPP_MESSAGE: Decimal("0.08"),
    EventType.EMAIL_SENT: Decimal("0.01"),
}

_DEFAULT_INCLUDED: Mapping[Tier, Mapping[EventType, int | None]] = {
    Tier.FREE: {
        EventType.GUEST_INVITATION: 50,
        EventType.SMS_SENT: 0,
        EventType.AI_QUERY: 0,
        EventType.WHATSAPP_MESSAGE: 0,
        EventType.EMAIL_SENT: 100,
    },
    Tier.STARTER: {
        EventType.GUEST_INVITATION: 500,
        EventType.SMS_SENT: 1000,
        EventType.AI_QUERY: 50,
        EventType.WHATSAPP_MESSAGE: 500,
        EventType.EMAIL_SENT: 5000,
    },
    Tier.PROFESSIONAL: {
        EventType.GUEST_INVITATION: 2000,
        EventType.SMS_SENT: 5000,
        EventType.AI_QUERY: 200,
        EventType.WHATSAPP_MESSAGE: 2000,
        EventType.EMAIL_SENT: 20000,
    },
    Tier.ENTERPRISE: dict.fromkeys(EventType),
}

_DEFAULT_GRACE_DAYS: Mapping[Tier, int] = {
    Tier.FREE: 0,
    Tier.STARTER: 14,
    Tier.PROFESSIONAL: 14,
    Tier.ENTERPRISE: 14,
}

DEFAULT_PLANS: Mapping[Tier, Plan] = {
    tier: Plan(
        tier=tier,
        grace_days=_DEFAULT_GRACE_DAYS[tier],
        hard_cap=tier is Tier.FREE,  # paid tiers are never blocked for volume: overage is billed
        allowances={
            event_type: Allowance(included, DEFAULT_UNIT_PRICES[event_type])
            for event_type, included in _DEFAULT_INCLUDED[tier].items()
        },
    )
    for tier in Tier
}
