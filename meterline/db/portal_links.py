"""SQL of `portal_link_generations`: which portal links of a company are still valid.

A link's token carries the company's generation when it was made; revoking moves the
generation on, so every earlier link stops at once and later ones work. Every moment comes from
the caller (the app's clock)."""

from __future__ import annotations

import uuid
from datetime import datetime

from meterline.db import sql


async def generation(company_id: uuid.UUID) -> int:
    """The company's current generation (0 until its first revocation)."""
    row = await sql.fetchrow(
        "SELECT generation FROM portal_link_generations WHERE company_id = $1", company_id
    )
    return int(row["generation"]) if row is not None else 0


async def revoke(company_id: uuid.UUID, now: datetime) -> int:
    """Moves the company's generation on, in one statement (concurrent revocations each count);
    the new generation."""
    row = await sql.fetchrow(
        """
        INSERT INTO portal_link_generations AS g (company_id, generation, revoked_at)
        VALUES ($1, 1, $2)
        ON CONFLICT (company_id) DO UPDATE
            SET generation = g.generation + 1, revoked_at = EXCLUDED.revoked_at
        RETURNING generation
        """,
        company_id,
        now,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return int(row["generation"])
