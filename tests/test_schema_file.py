"""schema.graphql is the frontend's contract: it must be what the code serves."""

from pathlib import Path

from meterline.schema import build_schema

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema.graphql"


def test_schema_file_is_current() -> None:
    served = build_schema(introspection=True).as_str().strip()
    committed = SCHEMA_FILE.read_text().strip()
    assert committed == served, "schema.graphql is stale: run `make schema` and commit it"


def test_design_names_are_present() -> None:
    sdl = SCHEMA_FILE.read_text()
    for name in [
        "currentUsage: [MeterUsage!]!",
        "usageLimits: UsageLimits!",
        "monthlySummary(month: String = null): MonthlySummary",
        "usageHistory(months: Int = 12): [MonthlySummary!]!",
        "recordUsage(input: RecordUsageInput!): RecordUsageResult!",
        "union RecordUsageResult = UsageRecorded | UsageLimitExceeded | PaymentRequired",
        "enum UsageEventType {\n  GUEST_INVITATION\n  SMS_SENT\n  AI_QUERY\n  WHATSAPP_MESSAGE\n"
        "  EMAIL_SENT\n}",
        "enum SyncState {\n  LOCAL_ONLY\n  PENDING\n  SENDING\n  SENT\n  FAILED\n  UNKNOWN\n}",
    ]:
        assert name in sdl, name


async def test_validation_is_cached_across_requests() -> None:
    """A document is validated once per process: the rules must be the same classes every
    request, or ValidationCache misses (validation is a third of a small request's CPU)."""
    import uuid

    from strawberry.extensions.validation_cache import DEFAULT_MAXSIZE, _get_validate_cache

    cache = _get_validate_cache(DEFAULT_MAXSIZE)
    schema = build_schema(introspection=False)
    query = f"query Probe{uuid.uuid4().hex} {{ __typename }}"  # never seen before
    before = cache.cache_info()
    for _ in range(3):
        result = await schema.execute(query)
        assert result.errors is None
    after = cache.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 2)
