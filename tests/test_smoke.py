from tests.conftest import Api

CURRENT = "{ currentUsage { eventType used included remaining overageCost { amount currency } } }"
RECORD = """mutation($input: RecordUsageInput!) { recordUsage(input: $input) {
  __typename
  ... on UsageRecorded { duplicate event { id eventType quantity syncState } usage { used remaining } }
  ... on UsageLimitExceeded { included used requested message }
} }"""


async def test_smoke(api: Api) -> None:
    data = await api.data(CURRENT)
    assert len(data["currentUsage"]) == 5
    r = await api.data(RECORD, {"input": {"eventType": "GUEST_INVITATION", "quantity": 3}})
    assert r["recordUsage"]["__typename"] == "UsageRecorded", r
    assert r["recordUsage"]["usage"] == {"used": 3, "remaining": 47}
