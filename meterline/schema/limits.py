"""Validation rules of Meterline's own.

- Operation depth, counting every field, introspection included: Strawberry's QueryDepthLimiter
  skips `__`-prefixed fields, and in this schema introspection is the only way to nest deeply,
  so its limit would never bite.
- A recording stands alone: recordUsageBatch holds at most 1,000 events, but aliases would let
  one request repeat it (30 aliases over one `$events` variable: 30,000 events), and mutation
  fields run one after the other, each in its own transaction, so a document with two
  recordings, or a recording and another mutation, is not all-or-nothing (a retry of the whole
  document after the other field failed would record again). A request records through one
  field, recordUsage (1 event) or recordUsageBatch (up to 1,000), with only `__typename`
  beside it.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
)


def _depth(
    selections: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    seen: frozenset[str],
    budget: int,
) -> int:
    """Depth of a selection set; stops counting once past `budget` (the limit + 1)."""
    if selections is None or budget <= 0:
        return 0
    deepest = 0
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            depth = 1 + _depth(selection.selection_set, fragments, seen, budget - 1)
        elif isinstance(selection, InlineFragmentNode):
            depth = _depth(selection.selection_set, fragments, seen, budget)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in seen:
                continue
            depth = _depth(fragment.selection_set, fragments, seen | {name}, budget)
        else:  # pragma: no cover - no other selection kinds exist
            continue
        deepest = max(deepest, depth)
    return deepest


def _root_fields(
    selections: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
    seen: frozenset[str] = frozenset(),
) -> list[FieldNode]:
    """The operation's own fields, fragments spread at its root included."""
    found: list[FieldNode] = []
    for selection in selections.selections:
        if isinstance(selection, FieldNode):
            found.append(selection)
        elif isinstance(selection, InlineFragmentNode):
            found.extend(_root_fields(selection.selection_set, fragments, seen))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in seen:
                found.extend(_root_fields(fragment.selection_set, fragments, seen | {name}))
    return found


def _fragments(document: DocumentNode) -> dict[str, FragmentDefinitionNode]:
    return {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}


RECORDING_FIELDS = ("recordUsage", "recordUsageBatch")


class OneRecordingFieldRule(ValidationRule):
    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        fields = _root_fields(node.selection_set, _fragments(self.context.document))
        # Fields with one response key run once (GraphQL merges them): count the keys.
        keys = {(f.alias or f.name).value for f in fields if f.name.value in RECORDING_FIELDS}
        others = {f.name.value for f in fields} - {*RECORDING_FIELDS, "__typename"}
        if len(keys) > 1:
            self.report_error(
                GraphQLError(
                    f"A request records through one field, recordUsage (1 event) or "
                    f"recordUsageBatch (up to 1,000 events); this one has {len(keys)} "
                    f"({', '.join(sorted(keys))}). Send the events as one batch.",
                    [node],
                )
            )
        elif keys and others:
            self.report_error(
                GraphQLError(
                    f"A recording stands alone in its request: send "
                    f"{', '.join(sorted(others))} in a request of its own.",
                    [node],
                )
            )


def max_depth_rule(max_depth: int) -> type[ValidationRule]:
    class MaxDepthRule(ValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            fragments = _fragments(self.context.document)
            depth = _depth(node.selection_set, fragments, frozenset(), max_depth + 1)
            if depth > max_depth:
                name = node.name.value if node.name else "anonymous"
                self.report_error(
                    GraphQLError(f"'{name}' exceeds maximum operation depth of {max_depth}", [node])
                )

    return MaxDepthRule
