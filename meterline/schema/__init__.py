"""The Strawberry schema: DESIGN's GraphQL contract."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.types import ExecutionContext

from meterline.resolvers import usage
from meterline.schema.errors import ErrorCodes, log_errors
from meterline.schema.types import (
    MeterUsage,
    MonthlySummary,
    RecordUsageResult,
    UsageEventConnection,
    UsageLimits,
)

MAX_DEPTH = 8
MAX_TOKENS = 2_000
MAX_ALIASES = 30


@strawberry.type
class Query:
    current_usage: list[MeterUsage] = strawberry.field(
        resolver=usage.current_usage,
        description="Every event type for the current UTC month, zeros included.",
    )
    usage_limits: UsageLimits = strawberry.field(resolver=usage.usage_limits)
    monthly_summary: MonthlySummary | None = strawberry.field(
        resolver=usage.monthly_summary, description='"YYYY-MM"; the current month by default.'
    )
    usage_history: list[MonthlySummary] = strawberry.field(
        resolver=usage.usage_history,
        description="Newest first; 1..24 months from the company's first month, zeros included.",
    )
    usage_events: UsageEventConnection = strawberry.field(
        resolver=usage.usage_events, description="The audit trail, newest first."
    )


@strawberry.type
class Mutation:
    record_usage: RecordUsageResult = strawberry.mutation(resolver=usage.record_usage)


class MeterlineSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        context: Any = execution_context.context if execution_context else None
        log_errors(errors, getattr(context, "request_id", None))


def build_schema(*, introspection: bool) -> strawberry.Schema:
    extensions: list[Any] = [
        ParserCache,
        ValidationCache,
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        ErrorCodes,
    ]
    if not introspection:
        extensions.append(lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]))
    return MeterlineSchema(query=Query, mutation=Mutation, extensions=extensions)
