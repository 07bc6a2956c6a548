"""Every error leaves with a stable `extensions.code`; unexpected ones are masked and logged."""

from __future__ import annotations

import logging
import re

from graphql import GraphQLError, GraphQLSyntaxError

from meterline.db.sql import is_database_busy
from meterline.metrics import DATABASE_BUSY
from meterline.services.errors import DatabaseBusy, MeterlineError

logger = logging.getLogger("meterline.graphql")

INTERNAL = "INTERNAL_SERVER_ERROR"
BUSY_MESSAGE = "The database is busy and could not answer in time; try again in a moment."
# graphql-core's words for a value that does not fit its type (variable or literal)
_BAD_VALUE = re.compile(
    r"^(Variable |Expected value of type |\w+ cannot represent |Value '.*' does not exist in)"
)


def is_unexpected(error: GraphQLError) -> bool:
    """An exception raised while resolving that is not one of ours: a bug, or an outage."""
    original = error.original_error
    return (
        original is not None
        and not isinstance(original, (MeterlineError, GraphQLError))
        and not is_database_busy(original)
    )


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


# graphql-core's suggestions, at the end of a message or inside one: " Did you mean
# 'usageLimits'?", " Did you mean 'a', 'b', or 'c'?", " Did you mean the enum value 'X'?"
_SUGGESTION = re.compile(r" Did you mean (?:[a-z][a-z ]* )?'[^']*'(?:,? (?:or )?'[^']*')*\?")


def _without_suggestion(error: GraphQLError) -> GraphQLError:
    """The same error without graphql-core's suggestions: a new object, since validation
    errors are cached and shared between requests."""
    message = _SUGGESTION.sub("", error.message)
    if message == error.message:
        return error
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )


def with_codes(
    errors: list[GraphQLError], request_id: str | None, *, hide_suggestions: bool = False
) -> list[GraphQLError]:
    """Adds `extensions.code` to every error; unexpected ones are replaced by a masked error
    (their details are in the log, under the `requestId` the masked error carries). With
    `hide_suggestions`, graphql-core's "Did you mean ...?" guesses are cut from every message;
    what a message says of the request itself (its own fields, the types they take, a required
    argument it left out) stays: that is schema.graphql's public contract, not a guess."""
    processed = []
    for error in errors:
        if hide_suggestions:
            error = _without_suggestion(error)
        if isinstance(error.original_error, DatabaseBusy):  # says itself what happened
            DATABASE_BUSY.labels("graphql").inc()
        if is_database_busy(error.original_error):
            # Retryable, and nothing about it is secret; counted for /metrics.
            DATABASE_BUSY.labels("graphql").inc()
            processed.append(
                GraphQLError(
                    BUSY_MESSAGE,
                    nodes=error.nodes,
                    source=error.source,
                    positions=error.positions,
                    path=error.path,
                    extensions={"code": DatabaseBusy.code, "requestId": request_id},
                )
            )
        elif is_unexpected(error):
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
            original = error.original_error
            details = original.extensions if isinstance(original, MeterlineError) else {}
            error.extensions = {"code": _code(error), **details, **(error.extensions or {})}
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
        elif is_database_busy(error.original_error):
            logger.warning(
                "database busy resolving %s: %s",
                ".".join(str(p) for p in error.path or []),
                error.original_error,
                extra={"request_id": request_id},
            )
        else:
            logger.info("graphql error: %s", error.message, extra={"request_id": request_id})
