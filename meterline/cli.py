"""`meterline ...` commands (also `python -m meterline`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from meterline.billing.catalog import Tier
from meterline.config import ConfigError, Settings

if TYPE_CHECKING:
    from litestar import Litestar


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise SystemExit(f"meterline: {exc}") from exc


def _company_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as exc:
        raise SystemExit(f"meterline: {text!r} is not a company UUID") from exc


Clock = Callable[[], datetime]


def _real_clock() -> datetime:
    return datetime.now(UTC)


def _moment(text: str) -> datetime:
    """`--as-of`: an ISO 8601 moment with its offset (`2026-12-01T00:00:00Z`), kept in UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 moment") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no offset: say which moment it is, e.g. {text}Z or {text}+00:00"
        )
    return moment.astimezone(UTC)


def _clock_use(args: argparse.Namespace) -> str:
    """What a command does with the time: "none" (it never reads the clock, or must read the
    machine's: the server, tokens), "read" (shows our state as of a moment), or "write" (it
    records the moment as now, or sets it beside Stripe's present: development only)."""
    command, action = args.command, getattr(args, "action", None)
    if command in ("serve", "token", "portal-link", "migrate", "schema", "setup-stripe"):
        return "none"
    sync_acts = bool(getattr(args, "resolve", None) or getattr(args, "redrive", None))
    reads = {
        # `company drift` is not here: it compares the month with Stripe's preview of now.
        "company": action in ("list", "show"),
        "sync-usage": bool(getattr(args, "status", False)) and not sync_acts,
        "webhooks": action == "list",
        "stripe": action == "flags" and not getattr(args, "resolve", None),
        "plans": action == "list",
    }
    return "read" if reads.get(command, False) else "write"


def _command_clock(args: argparse.Namespace) -> Clock:
    """The clock every rule of the command reads: the machine's, or `--as-of`'s moment.

    `--as-of` is the one way to run a command at another moment than now (tests that fix the
    app's clock run their commands on it). A command that writes records that moment as "now"
    (a dunning clearance, a lease, a flag's resolution), so production refuses it there; a
    read-only command may look at any moment."""
    as_of: datetime | None = args.as_of
    if as_of is None:
        return _real_clock
    name = " ".join(str(p) for p in (args.command, getattr(args, "action", None)) if p)
    use = _clock_use(args)
    if use == "none":
        raise SystemExit(
            f"meterline: --as-of does not apply to `{name}`: it runs on the machine's clock"
        )
    if use == "write" and not _settings().is_development:
        raise SystemExit(
            f"meterline: --as-of is refused in production for `{name}`: it would record that "
            "moment as now (or set it beside Stripe's present). Read-only commands (company "
            "list|show, sync-usage --status, webhooks list, stripe flags, plans list) accept it."
        )
    return lambda: as_of


def _dev_secret(settings: Settings, name: str) -> str:
    """A development secret kept under .meterline/, so tokens survive a restart of `make run`."""
    path = Path(settings.embedded_data_dir).parent / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def listening_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches `serve` listening on host:port."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def with_dev_defaults(settings: Settings) -> Settings:
    """In development, unset token secrets get local values and the portal's links point at
    where `serve` listens; production never invents them."""
    if not settings.is_development:
        return settings
    return replace(
        settings,
        jwt_secret=settings.jwt_secret or _dev_secret(settings, "jwt_secret"),
        service_jwt_secret=settings.service_jwt_secret
        or _dev_secret(settings, "service_jwt_secret"),
        portal_token_secret=settings.portal_token_secret
        or _dev_secret(settings, "portal_token_secret"),
        public_base_url=settings.public_base_url or listening_url(settings.host, settings.port),
    )


async def _with_database(settings: Settings, work: Callable[[], Awaitable[Any]]) -> Any:
    from meterline.db import engine
    from meterline.db.embedded import resolve_database_url

    url = resolve_database_url(settings.database_url, settings.embedded_data_dir)
    await engine.open_pool(url, min_size=1, max_size=4)
    try:
        return await work()
    finally:
        await engine.close_pool()


def _migrate_only(settings: Settings) -> str:
    """Migrate the database; what was done, in words."""
    from meterline.db import engine
    from meterline.db.embedded import resolve_database_url
    from meterline.db.migrate import migrate

    engine.configure(resolve_database_url(settings.database_url, settings.embedded_data_dir))
    return asyncio.run(migrate()).describe()


# --- commands -------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> None:
    print(_migrate_only(_settings()))


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from meterline.app import create_app
    from meterline.auth import mint_development_token
    from meterline.demo import DEMO_COMPANY_ID, DEMO_PORTAL_TTL_MINUTES, seed_demo
    from meterline.log import configure_logging
    from meterline.services.portal import PortalLink, create_link

    configure_logging()
    settings = _settings()
    if args.host:
        settings = replace(settings, host=args.host)
    if args.port:
        settings = replace(settings, port=args.port)
    settings = with_dev_defaults(settings)  # after --host/--port: PUBLIC_BASE_URL's default
    if settings.database_url is None:  # start the embedded server once, here, for the app too
        from meterline.db.embedded import start_embedded

        settings = replace(settings, database_url=start_embedded(settings.embedded_data_dir))
    print(_migrate_only(settings), flush=True)
    base = f"http://{settings.host}:{settings.port}"
    if args.demo and not settings.is_development:
        print("--demo is ignored in production: no demo data in a real database.")
    elif args.demo:
        now = datetime.now(UTC)

        async def seed_and_link() -> tuple[bool, PortalLink]:
            seeded = await seed_demo(now, late_grace_hours=settings.late_usage_grace_hours)
            link = await create_link(settings, DEMO_COMPANY_ID, DEMO_PORTAL_TTL_MINUTES)
            return seeded, link

        seeded, link = asyncio.run(_with_database(settings, seed_and_link))
        print(f"Demo company {DEMO_COMPANY_ID} {'seeded' if seeded else 'already there'}.")
        token = mint_development_token(settings, company_id=DEMO_COMPANY_ID)
        query = '{"query": "{ currentUsage { eventType used included remaining } }"}'
        print(f"\nGraphiQL: {base}/graphql  (add the header Authorization: Bearer $TOKEN)")
        print("Development token (company_admin of the demo company, valid 12 h):\n")
        print(f"export TOKEN={token}\n")
        print(f'curl -s {base}/graphql -H "Authorization: Bearer $TOKEN" \\')
        print(f"  -H 'Content-Type: application/json' -d '{query}'\n")
        print("Usage portal of the demo company (open it in a browser; valid 12 h):\n")
        print(f"{link.url}\n")
    workers: int = args.workers
    if workers > 1:
        _hand_settings_to_workers(settings)
    print(f"Meterline ({settings.env}) serving on {base}", flush=True)
    processes = (
        f"{workers} worker processes, each with its own" if workers > 1 else "1 process with a"
    )
    print(
        f"{processes} database pool of {settings.db_pool_min_size} to "
        f"{settings.db_pool_max_size} connections (DB_POOL_MIN_SIZE, DB_POOL_MAX_SIZE): "
        f"up to {workers * settings.db_pool_max_size} connections to PostgreSQL in all",
        flush=True,
    )
    app: Any
    if workers == 1:
        app = create_app(settings)
        signal.signal(signal.SIGTERM, _exit_after_graceful_shutdown)
    else:
        # Each worker is a fresh interpreter (spawn) that builds its own app, and its own pool
        # in the app's lifespan, from an import string.
        app = "meterline.cli:app_from_env"
    uvicorn.run(
        app,
        factory=workers > 1,
        # Always explicit: left unset, uvicorn would take WEB_CONCURRENCY from the environment.
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        # Longer than a load balancer's idle timeout (60 s on most): otherwise the server closes
        # a kept-alive connection just as the balancer reuses it, and the request fails.
        timeout_keep_alive=75,
    )


def _exit_after_graceful_shutdown(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside uvicorn's own handler: exit 0.

    uvicorn catches SIGTERM while it serves, shuts down gracefully (in-flight requests, then the
    lifespan: the pool closes), then raises the signal again under the handler that was there
    before it started. With the default handler the process would die of that signal (status
    143) after a clean shutdown, and skip the atexit handlers (the embedded PostgreSQL's stop).
    """
    raise SystemExit(0)


def _hand_settings_to_workers(settings: Settings) -> None:
    """Put what this process resolved into the environment the worker processes inherit.

    Workers must not resolve anything again: a second embedded server, or development secrets
    read at another moment, would make one worker refuse the tokens another accepts.
    """
    resolved = {
        "DATABASE_URL": settings.database_url,  # the embedded server's, when it was unset
        "JWT_SECRET": settings.jwt_secret,  # development defaults (with_dev_defaults)
        "SERVICE_JWT_SECRET": settings.service_jwt_secret,
        "PORTAL_TOKEN_SECRET": settings.portal_token_secret,
        "PUBLIC_BASE_URL": settings.public_base_url,
        "HOST": settings.host,  # --host, --port
        "PORT": str(settings.port),
    }
    for name, value in resolved.items():
        if value is not None:
            os.environ[name] = value
    if _settings() != settings:  # something resolved here that no variable above carries
        raise SystemExit(
            "meterline: the worker processes would not rebuild the settings resolved here; "
            "run with --workers 1"
        )


def app_from_env() -> Litestar:
    """The app of one `serve --workers N` worker process: uvicorn imports it by name."""
    from meterline.app import create_app
    from meterline.log import configure_logging

    os.environ.setdefault("PICCOLO_CONF", "meterline.db.piccolo_conf")
    configure_logging()  # a spawned worker starts with no logging configured
    return create_app(_settings())


def cmd_token(args: argparse.Namespace) -> None:
    from meterline.auth import AuthenticationError, mint_development_token, mint_service_token

    settings = with_dev_defaults(_settings())
    company_id = _company_id(args.company)
    try:
        if args.service:
            if settings.service_jwt_secret is None:
                raise SystemExit("meterline: SERVICE_JWT_SECRET is not set")
            token = mint_service_token(
                settings,
                company_id=company_id,
                service=args.name,
                ttl=timedelta(hours=args.ttl_hours or 24 * 30),
            )
        else:
            token = mint_development_token(
                settings,
                company_id=company_id,
                user_id=args.user,
                role=args.role,
                ttl=timedelta(hours=args.ttl_hours or 12),
            )
    except (AuthenticationError, ValueError) as exc:
        raise SystemExit(f"meterline: {exc}") from exc
    print(token)


def cmd_portal_link(args: argparse.Namespace) -> None:
    from meterline.services.errors import MeterlineError
    from meterline.services.portal import create_link

    settings = with_dev_defaults(_settings())
    company_id = _company_id(args.company)
    try:
        link = asyncio.run(
            _with_database(settings, lambda: create_link(settings, company_id, args.ttl_minutes))
        )
    except MeterlineError as exc:
        raise SystemExit(f"meterline: {exc.message}") from exc
    print(link.url)
    print(f"expires at {link.expires_at.isoformat()}", file=sys.stderr)


def cmd_company(args: argparse.Namespace) -> None:
    from meterline.db import companies, flags
    from meterline.db.companies import Company
    from meterline.services.invoices import clear_dunning
    from meterline.services.plan_history import OperatorRefused, set_tier_by_operator

    settings = _settings()

    async def work() -> None:
        if args.action == "list":
            for listed in await companies.list_all(limit=args.limit):
                print(_describe(listed, args.clock()))
            return
        if args.action == "drift":
            await _drift(settings, args.clock())
            return
        company_id = _company_id(args.company)
        company: Company | None
        if args.action == "create":
            company = await companies.get_or_create(company_id, now=args.clock())
        elif args.action == "show":
            company = await companies.get(company_id)
        elif args.action == "set-tier":
            try:
                company = await set_tier_by_operator(company_id, Tier(args.tier), now=args.clock())
            except OperatorRefused as exc:
                raise SystemExit(f"meterline: {exc}") from exc
        elif args.action == "set-stripe":
            if args.customer is None and args.subscription is None:
                raise SystemExit("meterline: give --customer and/or --subscription")
            try:
                company = await companies.set_stripe_ids(
                    company_id, customer_id=args.customer, subscription_id=args.subscription
                )
            except companies.CustomerTaken as exc:
                raise SystemExit(f"meterline: {exc}") from exc
        elif args.action == "clear-dunning":
            company = await clear_dunning(company_id, now=args.clock())
        else:  # pragma: no cover - argparse restricts choices
            raise SystemExit(f"unknown action {args.action}")
        if company is None:
            raise SystemExit(f"meterline: no company {company_id}")
        print(_describe(company, args.clock()))
        if args.action == "show":
            in_force = company.plans.at(args.clock())
            for period in company.plans.periods:
                version = f"v{period.version}" if period.version is not None else "v(by date)"
                print(
                    f"  PLAN from {period.effective_from:%Y-%m-%d %H:%M:%S} {period.tier.value} "
                    f"{version} {'billed' if period.billed else 'not billed'} ({period.reason})"
                    f"{'  <- in force' if period is in_force else ''}"
                )
            for flag in await flags.open_flags(company_id):
                print(
                    f"  FLAG {flag.kind} ({flag.object_id}, {flag.last_seen_at:%Y-%m-%d}): "
                    f"{flag.message}"
                )

    asyncio.run(_with_database(settings, work))


def _describe(company: Any, now: datetime) -> str:
    status = company.dunning.status(now).value
    return (
        f"{company.id}  tier={company.tier.value}  status={status}  "
        f"customer={company.stripe_customer_id or '-'}  "
        f"subscription={company.stripe_subscription_id or '-'}"
        f"({company.subscription_status or '-'})  "
        f"grace_ends_at={company.dunning.grace_ends_at or '-'}"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from meterline.demo import DEMO_COMPANY_ID, seed_demo

    settings = _settings()
    _migrate_only(settings)
    now = args.clock()
    seeded = asyncio.run(
        _with_database(
            settings, lambda: seed_demo(now, late_grace_hours=settings.late_usage_grace_hours)
        )
    )
    print(f"demo company {DEMO_COMPANY_ID} {'seeded' if seeded else 'already exists'}")


def cmd_sync_usage(args: argparse.Namespace) -> None:
    import json

    from meterline.billing.periods import month_of
    from meterline.db import batches, meter_errors
    from meterline.jobs.sync import SyncJob
    from meterline.jobs.telemetry import publish
    from meterline.log import configure_logging
    from meterline.stripe_gateway.client import StripeNotConfigured, close_client, make_client

    configure_logging()
    settings = _settings()

    only = [_company_id(args.company)] if args.company else None

    async def work() -> None:
        now = args.clock()
        if args.resolve:
            if args.delivered == args.not_delivered:
                raise SystemExit("meterline: say --delivered or --not-delivered")
            try:
                count = await batches.resolve_unknown(
                    _batch_id(args.resolve), delivered=args.delivered, now=now
                )
            except batches.NotRedrivable as exc:
                raise SystemExit(f"meterline: {exc}") from exc
            verdict = "sent" if args.delivered else "pending again (a new batch)"
            print(f"{count} events of batch {args.resolve} are {verdict}")
            return
        if args.redrive:
            try:
                count = await batches.redrive(_batch_id(args.redrive), now=now)
            except batches.NotRedrivable as exc:
                raise SystemExit(f"meterline: {exc}") from exc
            print(f"{count} events of batch {args.redrive} are pending again (a new batch)")
            return
        if args.status:
            status = await batches.status(
                current_month=month_of(now), problem_limit=50, company_ids=only
            )
            print("batches:", json.dumps(status.batches_by_state, sort_keys=True))
            oldest = status.oldest_pending
            print(
                f"events not yet in Stripe: {status.pending_events}"
                + (f" (oldest {oldest.isoformat()})" if oldest else "")
            )
            grace = settings.late_usage_grace_hours
            missed = status.missed_invoice(now=now, late_grace_hours=grace)
            if missed:
                print(
                    f"ALERT: {sum(u.units for u in missed)} units of closed months are not in "
                    "Stripe after their invoice closed: Stripe will not bill them"
                )
                for line in batches.summarize(missed):
                    print(f"  {line}")
            closing = status.before_invoice(now=now, late_grace_hours=grace)
            if closing:
                month = closing[0].month
                closes = batches.invoice_closes_at(month, grace)
                print(
                    f"{sum(u.units for u in closing)} units of {month:%Y-%m} to send before "
                    f"Stripe finalises its invoice at {closes.isoformat()}"
                )
                for line in batches.summarize(closing):
                    print(f"  {line}")
            for batch in status.problems:
                print(
                    f"{batch.state:8} {batch.identifier}  {batch.stripe_customer_id} "
                    f"{batch.event_name} {batch.month:%Y-%m} value={batch.value} "
                    f"attempts={batch.attempts}: {batch.last_error or ''}"
                )
            for error_report in await meter_errors.recent(10):
                print(
                    f"Stripe meter error report {error_report.id} ({error_report.type}, "
                    f"{error_report.created_at:%Y-%m-%dT%H:%M:%SZ}): "
                    f"{error_report.error_count} errors"
                    + (f", {error_report.summary}" if error_report.summary else "")
                )
                for sample in error_report.samples:
                    ours = (
                        f"batch mlb_{uuid.UUID(sample['batch_id']).hex}"
                        if sample["batch_id"]
                        else "no batch of ours"
                    )
                    print(f"  {sample['code']}: {sample['message']} ({ours})")
            return
        try:
            client = make_client(settings)
        except StripeNotConfigured as exc:
            raise SystemExit(f"meterline: {exc}") from exc
        budget = timedelta(seconds=args.budget or settings.sync_budget_seconds)
        try:
            job = SyncJob(
                client=client,
                clock=args.clock,
                budget=budget,
                company_ids=only,
                late_grace_hours=settings.late_usage_grace_hours,
            )
            report = await job.run()
        finally:
            await close_client(client)
        await publish(report, now=args.clock(), late_grace_hours=settings.late_usage_grace_hours)
        print(json.dumps(report.as_dict()))

    asyncio.run(_with_database(settings, work))


def cmd_webhooks(args: argparse.Namespace) -> None:
    import json

    from meterline.db import webhook_events
    from meterline.log import configure_logging
    from meterline.services.webhooks import EventNotStored, WebhookProcessor
    from meterline.stripe_gateway.client import SharedClient, StripeNotConfigured
    from meterline.stripe_gateway.mirror import StripeReader

    configure_logging()
    settings = _settings()

    async def work() -> None:
        if args.action == "prune":
            from meterline.jobs.prune import prune_webhook_events

            report = await prune_webhook_events(
                now=args.clock(),
                retention_days=settings.webhook_event_retention_days,
                budget=timedelta(hours=1),
            )
            print(json.dumps(report.as_dict()))
            return
        if args.action == "list":
            status = "failed" if args.failed else None
            for event in await webhook_events.recent(args.limit, status):
                print(
                    f"{event.id}  {event.type:40} {event.status:8} "
                    f"received={event.received_at:%Y-%m-%dT%H:%M:%SZ} attempts={event.attempts}"
                    + (f"  {event.last_error}" if event.last_error else "")
                )
            return
        if bool(args.event) == bool(args.failed):
            raise SystemExit("meterline: give an event id or --failed")
        stripe_client = SharedClient(settings)
        reader = None

        def get_reader() -> StripeReader:
            nonlocal reader
            reader = reader or StripeReader(stripe_client.get())
            return reader

        processor = WebhookProcessor(reader=get_reader, clock=args.clock)
        stuck_before = args.clock() - timedelta(minutes=5)
        ids = (
            [args.event]
            if args.event
            else await webhook_events.unsettled_ids(received_before=stuck_before, limit=1000)
        )
        failures = 0
        try:
            for event_id in ids:
                try:
                    print(f"{event_id}: {await processor.replay(event_id)}")
                except EventNotStored as exc:
                    raise SystemExit(f"meterline: {exc}") from exc
                except StripeNotConfigured as exc:
                    raise SystemExit(f"meterline: {exc}") from exc
                except Exception as exc:  # stored on the event; go on with the others
                    failures += 1
                    print(f"{event_id}: failed again: {type(exc).__name__}: {exc}")
        finally:
            await stripe_client.close()
        if failures:
            raise SystemExit(f"meterline: {failures} of {len(ids)} events failed again")

    asyncio.run(_with_database(settings, work))


def cmd_stripe(args: argparse.Namespace) -> None:
    from meterline.log import configure_logging
    from meterline.services.backfill import backfill
    from meterline.stripe_gateway.client import SharedClient, StripeNotConfigured
    from meterline.stripe_gateway.mirror import StripeReader, StripeReadFailed

    configure_logging()
    settings = _settings()

    async def work() -> None:
        if args.action == "flags":
            await _flags(args)
            return
        stripe_client = SharedClient(settings)
        try:
            reader = StripeReader(stripe_client.get())
            report = await backfill(reader, clock=args.clock, progress=lambda line: print(line))
        except (StripeNotConfigured, StripeReadFailed) as exc:
            raise SystemExit(f"meterline: {exc}") from exc
        finally:
            await stripe_client.close()
        print(
            f"subscriptions: {report.subscriptions} read, {report.subscriptions_refused} not "
            f"applied; invoices: {report.invoices} read, {report.invoices_refused} not applied"
        )

    asyncio.run(_with_database(settings, work))


async def _drift(settings: Settings, now: datetime) -> None:
    from meterline.services.drift import drift_report

    report = await drift_report(settings, now)
    if not report:
        print("no plan changed in Stripe in the middle of a month")
    for drift in report:
        print(f"{drift.company_id}  {drift.subscription_id}  seen {drift.seen_at:%Y-%m-%d %H:%M}")
        print(f"  {drift.what}")
        print(f"  Meterline: this month's overage {drift.meterline_overage} usd (one tier)")
        if drift.stripe_preview is not None:
            preview = drift.stripe_preview
            print(
                f"  Stripe's coming invoice: {preview.amount_due} {preview.currency} for "
                f"{preview.period_start:%Y-%m-%d}..{preview.period_end:%Y-%m-%d}:"
            )
            for line in preview.lines:
                print(f"    {line.amount:>10} {line.description or ''}")
        else:
            print(
                f"  Stripe's coming invoice: unknown ({drift.preview_error or 'no subscription'})"
            )


async def _flags(args: argparse.Namespace) -> None:
    from meterline.db import flags

    if args.resolve:
        try:
            flag_id = uuid.UUID(args.resolve)
        except ValueError as exc:
            raise SystemExit(f"meterline: {args.resolve!r} is not a flag id") from exc
        if not await flags.resolve_by_id(flag_id, now=args.clock()):
            raise SystemExit(f"meterline: no open flag {flag_id}")
        print(f"flag {flag_id} resolved")
        return
    for flag in await flags.open_flags(limit=args.limit):
        print(
            f"{flag.id}  {flag.kind}  company={flag.company_id or '-'}  {flag.object_id}  "
            f"seen {flag.last_seen_at:%Y-%m-%dT%H:%M:%SZ}: {flag.message}"
        )


def _batch_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.removeprefix("mlb_"))
    except ValueError as exc:
        raise SystemExit(f"meterline: {text!r} is not a batch id") from exc


def cmd_setup_stripe(args: argparse.Namespace) -> None:
    import asyncpg
    import stripe

    from meterline.db.tiers import load_plans
    from meterline.services.stripe_setup import Line, SetupError, setup_stripe
    from meterline.stripe_gateway.catalog import StripeCatalog
    from meterline.stripe_gateway.client import StripeNotConfigured, make_client

    settings = _settings()
    try:
        client = make_client(settings)
    except StripeNotConfigured as exc:
        raise SystemExit(f"meterline: {exc}; set it to create the meters and prices") from exc

    def show(line: Line) -> None:
        print(line, flush=True)
        if line.secret:
            variable = (
                "STRIPE_THIN_WEBHOOK_SECRET"
                if line.kind == "event_destination"
                else "STRIPE_WEBHOOK_SECRET"
            )
            print(f"  signing secret (shown once, set {variable}): {line.secret}", flush=True)

    async def work() -> list[str]:
        try:
            plans = await load_plans()
        except asyncpg.UndefinedTableError as exc:
            raise SystemExit(
                "meterline: the tiers tables are missing: run `meterline migrate`"
            ) from exc
        result = await setup_stripe(
            StripeCatalog(client), plans, webhook_url=args.webhook_url, emit=show
        )
        return result.problems

    try:
        problems = asyncio.run(_with_database(settings, work))
    except SetupError as exc:
        raise SystemExit(f"meterline: {exc}") from exc
    except stripe.StripeError as exc:
        status = f" (HTTP {exc.http_status})" if exc.http_status else ""
        message = exc.user_message or str(exc) or type(exc).__name__
        raise SystemExit(
            f"meterline: setup-stripe stopped on a Stripe error{status}: {message}\n"
            "Anything listed above is in place; run setup-stripe again once this is fixed."
        ) from exc
    for problem in problems:
        print(f"meterline: warning: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)


def cmd_plans(args: argparse.Namespace) -> None:
    import json

    from meterline.services.plan_versions import (
        PlanInputError,
        PlanRefused,
        edit_version,
        list_versions,
        migrate_subscribers,
        rows_as_json,
        rows_as_text,
    )
    from meterline.stripe_gateway.catalog import StripeCatalog
    from meterline.stripe_gateway.client import StripeNotConfigured, close_client, make_client
    from meterline.stripe_gateway.lifecycle import StripeLifecycle

    settings = _settings()

    async def listing() -> None:
        now = args.clock()
        rows = await list_versions(now)
        if args.json:
            print(json.dumps(rows_as_json(rows, now), indent=2))
        else:
            print("\n".join(rows_as_text(rows, now)))

    async def edit() -> None:
        edited = await edit_version(
            tier=args.tier,
            event_type=args.event_type,
            included=args.included,
            unit_price=args.unit_price,
            note=args.note,
            now=args.clock(),
        )
        tier, version = edited.tier.value, edited.version
        print(f"created {tier} version {version} (from version {edited.previous}): {edited.change}")
        if edited.tier is Tier.FREE:
            print(f"it applies to every free company from {edited.effective_from.isoformat()}")
        else:
            print(f"run `meterline setup-stripe` so new subscriptions get version {version}")
            print(
                "existing subscribers keep theirs; `meterline plans migrate --tier "
                f"{tier} --to-version {version}` moves them at their next 1st"
            )

    async def migrate() -> None:
        try:
            client = make_client(settings)
        except StripeNotConfigured as exc:
            raise SystemExit(f"meterline: {exc}; set it to move subscriptions") from exc
        try:
            report = await migrate_subscribers(
                args.tier,
                args.to_version,
                lifecycle=StripeLifecycle(client),
                stripe_prices=StripeCatalog(client).prices_by_lookup_key,
                now=args.clock(),
                dry_run=args.dry_run,
                emit=lambda line: print(line, flush=True),
            )
        finally:
            await close_client(client)
        verb = "would move" if report.dry_run else "moved"
        print(
            f"{report.tier.value} to version {report.version}: {verb} {len(report.moved)}, "
            f"skipped {len(report.skipped)}, failed {len(report.failed)}"
        )
        if report.not_ready:
            for problem in report.not_ready:
                print(f"meterline: {problem}", file=sys.stderr)
            raise SystemExit(
                f"meterline: Stripe's {report.tier.value} prices do not bill version "
                f"{report.version}: run `meterline setup-stripe` first"
            )
        if report.failed:
            raise SystemExit(
                f"meterline: {len(report.failed)} companies were not moved (listed above)"
            )

    work = {"list": listing, "edit": edit, "migrate": migrate}[args.action]
    try:
        asyncio.run(_with_database(settings, work))
    except PlanInputError as exc:
        print(f"meterline: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except PlanRefused as exc:
        raise SystemExit(f"meterline: {exc}") from exc


def cmd_schema(args: argparse.Namespace) -> None:
    from meterline.schema import build_schema

    print(build_schema(introspection=True).as_str())


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1 worker process is needed, got {count}")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterline", description=__doc__)
    parser.add_argument(
        "--as-of",
        type=_moment,
        metavar="MOMENT",
        help="run the command as if the clock read MOMENT (ISO 8601 with offset, e.g. "
        "2026-12-01T00:00:00Z): any command that reads the clock in development, read-only "
        "ones in production",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then serve the API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--demo", action="store_true", help="seed the demo company if absent")
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="worker processes (default 1), each with its own database pool",
    )
    serve.set_defaults(func=cmd_serve)

    commands.add_parser("migrate", help="apply migrations and seed tiers").set_defaults(
        func=cmd_migrate
    )

    token = commands.add_parser("token", help="mint a development user token or a service token")
    token.add_argument("--company", required=True, help="company UUID")
    token.add_argument("--service", action="store_true", help="a service token (role service)")
    token.add_argument("--name", default="backend", help="service name (with --service)")
    token.add_argument("--role", default="company_admin")
    token.add_argument("--user", default="dev_user")
    token.add_argument("--ttl-hours", type=int)
    token.set_defaults(func=cmd_token)

    portal_link = commands.add_parser(
        "portal-link", help="print a link to a company's usage portal (read-only)"
    )
    portal_link.add_argument("company", metavar="COMPANY_ID")
    portal_link.add_argument(
        "--ttl-minutes", type=int, default=60, metavar="N", help="valid N minutes (5..1440)"
    )
    portal_link.set_defaults(func=cmd_portal_link)

    company = commands.add_parser("company", help="inspect and administer companies")
    actions = company.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list")
    listing.add_argument("--limit", type=int, default=100)
    for name in ("create", "show", "clear-dunning"):
        actions.add_parser(name).add_argument("company")
    actions.add_parser("drift", help="plan changes made in Stripe mid-month, and their cost")
    set_tier = actions.add_parser("set-tier")
    set_tier.add_argument("company")
    set_tier.add_argument("tier", choices=[t.value for t in Tier])
    set_stripe = actions.add_parser("set-stripe")
    set_stripe.add_argument("company")
    set_stripe.add_argument("--customer")
    set_stripe.add_argument("--subscription")
    company.set_defaults(func=cmd_company)

    sync = commands.add_parser("sync-usage", help="send pending usage to Stripe (one run)")
    # One thing at a time: a look (--status) never carries a change along.
    sync_mode = sync.add_mutually_exclusive_group()
    sync_mode.add_argument("--status", action="store_true", help="what did not sync, and why")
    sync_mode.add_argument("--redrive", metavar="BATCH", help="re-send a failed batch's events")
    sync.add_argument("--budget", type=int, metavar="SECONDS", help="time budget of the run")
    sync.add_argument(
        "--company", metavar="ID", help="only this company's usage (a run, or --status)"
    )
    sync_mode.add_argument(
        "--resolve", metavar="BATCH", help="settle an unknown batch (with one of:)"
    )
    sync.add_argument("--delivered", action="store_true", help="Stripe has it: mark it sent")
    sync.add_argument(
        "--not-delivered", action="store_true", help="Stripe does not: send its events again"
    )
    sync.set_defaults(func=cmd_sync_usage)

    setup = commands.add_parser(
        "setup-stripe", help="create or find the Stripe meters, products, prices and webhooks"
    )
    setup.add_argument(
        "--webhook-url",
        metavar="URL",
        help="Meterline's public base URL: also set up URL/webhooks/stripe and .../thin",
    )
    setup.set_defaults(func=cmd_setup_stripe)

    plans = commands.add_parser(
        "plans", help="the tiers' plan versions: list them, make a new one, move subscribers"
    )
    plan_actions = plans.add_subparsers(dest="action", required=True)
    plan_list = plan_actions.add_parser(
        "list", help="every tier's versions, and how many companies each bills now"
    )
    plan_list.add_argument("--json", action="store_true", help="as JSON")
    plan_edit = plan_actions.add_parser(
        "edit", help="a new version of a tier: its newest version with one event type changed"
    )
    plan_edit.add_argument("--tier", required=True, metavar="TIER")
    plan_edit.add_argument("--event-type", metavar="E", help="the event type to change")
    plan_edit.add_argument(
        "--included", metavar="N|unlimited", help="units included per month (or unlimited)"
    )
    plan_edit.add_argument("--unit-price", metavar="USD", help="price per unit beyond it")
    plan_edit.add_argument("--note", metavar="TEXT", help="why (shown by plans list)")
    plan_migrate = plan_actions.add_parser(
        "migrate", help="move a tier's subscribers on older versions to V at their next 1st"
    )
    plan_migrate.add_argument("--tier", required=True, metavar="TIER")
    plan_migrate.add_argument("--to-version", type=int, required=True, metavar="V")
    plan_migrate.add_argument(
        "--dry-run", action="store_true", help="list who would move; change nothing"
    )
    plans.set_defaults(func=cmd_plans)

    webhooks = commands.add_parser("webhooks", help="stored Stripe events: list, replay, prune")
    webhook_actions = webhooks.add_subparsers(dest="action", required=True)
    listed = webhook_actions.add_parser("list", help="the latest stored events")
    listed.add_argument("--failed", action="store_true", help="only those that failed")
    listed.add_argument("--limit", type=int, default=50)
    replay = webhook_actions.add_parser("replay", help="re-read and apply stored events again")
    replay.add_argument("event", nargs="?", help="a Stripe event id (evt_...)")
    replay.add_argument(
        "--failed",
        action="store_true",
        help="every event that failed (or was left half-way by a crash 5+ minutes ago)",
    )
    webhook_actions.add_parser(
        "prune",
        help="delete settled events older than WEBHOOK_EVENT_RETENTION_DAYS (never unsettled ones)",
    )
    webhooks.set_defaults(func=cmd_webhooks)

    stripe_command = commands.add_parser("stripe", help="read Stripe's state into Meterline")
    stripe_actions = stripe_command.add_subparsers(dest="action", required=True)
    stripe_actions.add_parser(
        "backfill", help="mirror every subscription and invoice from Stripe's lists"
    )
    flag_listing = stripe_actions.add_parser(
        "flags", help="what Stripe reported that Meterline refused or cannot reconcile"
    )
    flag_listing.add_argument("--resolve", metavar="FLAG", help="close a flag once dealt with")
    flag_listing.add_argument("--limit", type=int, default=100)
    stripe_command.set_defaults(func=cmd_stripe)

    commands.add_parser("demo", help="seed the demo company").set_defaults(func=cmd_demo)
    commands.add_parser("schema", help="print the GraphQL SDL").set_defaults(func=cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("PICCOLO_CONF", "meterline.db.piccolo_conf")
    args = build_parser().parse_args(argv)
    args.clock = _command_clock(args)
    args.func(args)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
