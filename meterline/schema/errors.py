"""Every error leaves with a stable `extensions.code`; unexpected ones are masked and logged."""

from __future__ import annotations

import logging
import re

from graphql import GraphQLError, GraphQLSyntaxError

from meterline.services.errors import MeterlineError

logger = logging.getLogger("meterline.graphql")

INTERNAL = "INTERNAL_SERVER_ERROR"
# graphql-core's words for a value that does not fit its type (variable or literal)
_BAD_VALUE = re.compile(
    r"^(Variable |Expected value of type |\w+ cannot represent |Value '.*' does not exist in)"
)


def is_unexpected(error: GraphQLError) -> bool:
    """An exception raised while resolving that is not one of ours: a bug, or an outage."""
    original = error.original_error
    return original is not None and not isinstance(original, (MeterlineError, GraphQLError))


def _code(error: GraphQLError) -> str:
    original = error.original_error
    if isinstance(original, MeterlineError):
        return original.code
    if _BAD_VALUE.match(error.message):
        # A value that does not fit its type, given as a variable or written in the document:
        # the same mistake, the same code.
        return "BAD_USER_INPUT"
    if isinstance(error, GraphQLSyntaxError) or isinstance(original, GraphQLSyntaxError):
        return "GRAPHQL_PARSE_FAILED"
    if original is None or isinstance(original, GraphQLError):
        return "GRAPHQL_VALIDATION_FAILED"
    return INTERNAL


def with_codes(errors: list[GraphQLError], request_id: str | None) -> list[GraphQLError]:
    """Adds `extensions.code` to every error; unexpected ones are replaced by a masked error
    (their details are in the log, under the `requestId` the masked error carries)."""
    processed = []
    for error in errors:
        if is_unexpected(error):
            processed.append(
                GraphQLError(
                    "Internal server error.",
                    nodes=error.nodes,
                    source=error.source,
                    positions=error.positions,
                    path=error.path,
                    extensions={"code": INTERNAL, "requestId": request_id},
                )
            )
        else:
            error.extensions = {"code": _code(error), **(error.extensions or {})}
            processed.append(error)
    return processed


def log_errors(errors: list[GraphQLError], request_id: str | None) -> None:
    for error in errors:
        if is_unexpected(error):
            logger.error(
                "unexpected error resolving %s",
                ".".join(str(p) for p in error.path or []),
                exc_info=error.original_error,
                extra={"request_id": request_id},
            )
        else:
            logger.info("graphql error: %s", error.message, extra={"request_id": request_id})
