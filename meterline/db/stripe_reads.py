"""Ordering re-reads of Stripe objects.

Webhook handlers re-read the object from Stripe and store its current state, so delivery order
does not matter. Two handlers of one object may still run at once; each takes a number from
this sequence BEFORE its read, and a mirror row only accepts a state read with a higher number
than the one it holds: the read that started last wins, never an older one that finished late.
"""

from __future__ import annotations

from meterline.db import sql


async def next_read_seq() -> int:
    row = await sql.fetchrow("SELECT nextval('stripe_read_seq') AS n")
    assert row is not None
    return int(row["n"])
