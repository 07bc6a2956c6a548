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
