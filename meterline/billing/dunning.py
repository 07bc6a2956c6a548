"""Billing status from the dunning facts the company row holds. Pure: `now` is an argument."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class BillingStatus(StrEnum):
    OK = "ok"
    PAST_DUE = "past_due"
    RESTRICTED = "restricted"


@dataclass(frozen=True)
class Dunning:
    past_due_since: datetime | None  # earliest failed payment of an open invoice; None = OK
    grace_ends_at: datetime | None
    restricted: bool = False  # forced, e.g. an invoice marked uncollectible

    def status(self, now: datetime) -> BillingStatus:
        if self.past_due_since is None and not self.restricted:
            return BillingStatus.OK
        if self.restricted or (self.grace_ends_at is not None and now >= self.grace_ends_at):
            return BillingStatus.RESTRICTED
        return BillingStatus.PAST_DUE


def grace_end(earliest_failure: datetime, grace_days: int) -> datetime:
    return earliest_failure + timedelta(days=grace_days)


def dunning_from_invoices(
    earliest_open_failure: datetime | None,
    uncollectible_since: datetime | None,
    grace_days: int,
) -> Dunning:
    """DESIGN's rule: past due while an open invoice has a failed payment, from the earliest
    such failure (a second failure never extends the grace); an invoice marked uncollectible
    restricts at once and until an operator clears it."""
    starts = [t for t in (earliest_open_failure, uncollectible_since) if t is not None]
    if not starts:
        return Dunning(None, None, False)
    since = min(starts)
    return Dunning(since, grace_end(since, grace_days), restricted=uncollectible_since is not None)
