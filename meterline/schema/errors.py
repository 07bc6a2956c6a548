"""Every error leaves with a stable `extensions.code`; unexpected ones are masked and logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from meterline.services.errors import MeterlineError

logger = logging.getLogger("meterline.graphql")

INTERNAL = "INTERNAL_SERVER_ERROR"


def is_unexpected(error: GraphQLError) -> bool:
    """An exception raised while resolving that is not one of ours: a bug, or an outage."""
    original = error.original_error
    return original is not None and not isinstance(original, (MeterlineError, GraphQLError))


def _code(error: GraphQLError) -> str:
    original = error.original_error
    if isinstance(original, MeterlineError):
        return original.code
    if error.message.startswith("Variable "):  # a variable that does not fit its type
        return "BAD_USER_INPUT"
    if original is None or isinstance(original, GraphQLError):
        return "GRAPHQL_VALIDATION_FAILED"
    return INTERNAL


def _request_id(context: object) -> str | None:
    return getattr(context, "request_id", None)


class ErrorCodes(SchemaExtension):
    """Adds `extensions.code` to every error and masks unexpected ones (their details are in
    the log, under the request id the response carries in `extensions.requestId`)."""

    async def on_operation(self) -> AsyncIterator[None]:
        yield
        result = self.execution_context.result
        if result is None or not result.errors:
            return
        request_id = _request_id(self.execution_context.context)
        processed = []
        for error in result.errors:
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
                extensions = dict(error.extensions or {})
                extensions.setdefault("code", _code(error))
                error.extensions = extensions
                processed.append(error)
        result.errors = processed


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
