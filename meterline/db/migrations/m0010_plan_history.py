"""Plans are versioned and a company's plan is an effective-dated history (docs/design.md,
"Plans: effective-dated and versioned").

- `plan_versions`: one row per (tier, version); the allowances of a version are the
  `tier_allowances` rows of that version. What existed becomes version 1 of every tier.
- `company_plans`: the periods of each company's plan. A company with a paid tier today gets
  one period from the start of the month its paid usage starts (or its creation).
- `companies.plan_seq`: bumped with every write of a company's periods; a recording checks it
  under a share lock on the company, so it never writes by a plan that changed meanwhile.
- `usage_rollups.cap` becomes informational (the cap is decided per event, by its instant).
"""

from piccolo.apps.migrations.auto.migration_manager import MigrationManager

from meterline.db.raw_migration import sql_migration

ID = "2026-12-08T06:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "plan versions and company plan periods"

STATEMENTS = [
    """
    CREATE TABLE plan_versions (
        tier varchar(32) NOT NULL REFERENCES tiers (name) ON DELETE CASCADE,
        version integer NOT NULL CHECK (version >= 1),
        effective_from timestamptz NOT NULL,
        note varchar(500),
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tier, version)
    )
    """,
    "INSERT INTO plan_versions (tier, version, effective_from, note) "
    "SELECT name, 1, 'epoch', 'the plans before versions' FROM tiers",
    "ALTER TABLE tier_allowances ADD COLUMN version integer NOT NULL DEFAULT 1",
    "ALTER TABLE tier_allowances ALTER COLUMN version DROP DEFAULT",
    "ALTER TABLE tier_allowances DROP CONSTRAINT tier_allowances_unique",
    "ALTER TABLE tier_allowances ADD CONSTRAINT tier_allowances_unique "
    "UNIQUE (tier, version, event_type)",
    "ALTER TABLE tier_allowances ADD CONSTRAINT tier_allowances_version_fk "
    "FOREIGN KEY (tier, version) REFERENCES plan_versions (tier, version) ON DELETE CASCADE",
    """
    CREATE TABLE company_plans (
        company_id uuid NOT NULL REFERENCES companies (id) ON DELETE RESTRICT,
        effective_from timestamptz NOT NULL,
        tier varchar(32) NOT NULL REFERENCES tiers (name) ON DELETE RESTRICT,
        version integer,
        billed boolean NOT NULL,
        subscription_id varchar(255),
        reason varchar(32) NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (company_id, effective_from),
        CONSTRAINT company_plans_free_not_billed CHECK (NOT (billed AND tier = 'free'))
    )
    """,
    "ALTER TABLE companies ADD COLUMN plan_seq bigint NOT NULL DEFAULT 0",
    # A paid tier today: billed by its live subscription (a manual account otherwise), from the
    # start of the month its paid usage starts. Every subscription predates versions: v1.
    """
    INSERT INTO company_plans (company_id, effective_from, tier, version, billed,
                               subscription_id, reason)
    SELECT id,
           date_trunc('month', coalesce(usage_stamped_from, created_at) AT TIME ZONE 'UTC')
               AT TIME ZONE 'UTC',
           tier, 1, live, CASE WHEN live THEN stripe_subscription_id END,
           CASE WHEN live THEN 'subscription' ELSE 'operator' END
    FROM (SELECT *, stripe_customer_id IS NOT NULL AND stripe_subscription_id IS NOT NULL
                    AND subscription_status IN ('active', 'trialing', 'past_due', 'unpaid')
                    AS live
          FROM companies WHERE tier <> 'free') c
    """,
    # What is pending at deploy: a cancellation at period end (free from the period's end) and
    # a change Meterline scheduled (its tier from the period's end, confirmed by Stripe then).
    """
    INSERT INTO company_plans (company_id, effective_from, tier, version, billed,
                               subscription_id, reason)
    SELECT c.id, s.current_period_end, 'free', NULL, false, s.id, 'scheduled_end'
    FROM companies c JOIN subscriptions s ON s.id = c.stripe_subscription_id
    WHERE c.tier <> 'free' AND s.cancel_at_period_end AND s.current_period_end IS NOT NULL
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO company_plans (company_id, effective_from, tier, version, billed,
                               subscription_id, reason)
    SELECT c.id, s.current_period_end, c.scheduled_tier, NULL, true, s.id, 'scheduled_change'
    FROM companies c JOIN subscriptions s ON s.id = c.stripe_subscription_id
    WHERE c.tier <> 'free' AND c.scheduled_tier IS NOT NULL AND c.scheduled_tier <> 'free'
      AND NOT s.cancel_at_period_end AND s.current_period_end IS NOT NULL
    ON CONFLICT DO NOTHING
    """,
    "ALTER TABLE usage_rollups DROP CONSTRAINT IF EXISTS usage_rollups_within_cap",
    "ALTER TABLE usage_rollups ADD COLUMN version integer",
]


async def forwards() -> MigrationManager:
    return sql_migration(ID, DESCRIPTION, STATEMENTS)
