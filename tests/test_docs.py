"""The contracts are documented: every setting the code reads, every CLI command and option,
every route and every error code appears in docs/design.md; every link in the docs resolves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from meterline.app import create_app
from meterline.cli import build_parser
from meterline.config import Settings

ROOT = Path(__file__).parents[1]
DESIGN = ROOT / "docs" / "design.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# How the code reads the environment: the settings' helpers, and os.environ directly.
_READS = re.compile(
    r"""(?:_opt|_int)\(\s*env,\s*"([A-Z][A-Z0-9_]*)"|environ(?:\.get|\.setdefault)?[\[(]\s*"([A-Z][A-Z0-9_]*)\""""
)
# serve --workers hands resolved settings to its workers by name (cli.py).
_HANDED_OVER = re.compile(r'^\s*"([A-Z][A-Z0-9_]*)": settings\.', re.M)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def documented(name: str) -> bool:
    """`name` stands in a code span of the design, alone or as a word of one."""
    word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
    return any(word.search(span) for span in code_spans(DESIGN.read_text()))


def settings_read() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "meterline").rglob("*.py"):
        text = path.read_text()
        names |= {a or b for a, b in _READS.findall(text)}
        names |= set(_HANDED_OVER.findall(text))
    return names


def commands() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command and sub-command, with its parser ("company drift", ...)."""
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    full = f"{prefix} {name}".strip()
                    found.append((full, sub))
                    walk(full, sub)

    walk("", build_parser())
    return found


def test_the_scan_finds_the_settings_it_should() -> None:
    """The scan itself must work, or the test below would pass on nothing."""
    read = settings_read()
    assert {"DATABASE_URL", "WEBHOOK_EVENT_RETENTION_DAYS", "XDG_RUNTIME_DIR", "HOST"} <= read
    assert len(read) >= 30


@pytest.mark.parametrize("name", sorted(settings_read()))
def test_every_setting_is_documented(name: str) -> None:
    assert documented(name), f"{name} is read by the code but not in docs/design.md (Settings)"


@pytest.mark.parametrize("command", [name for name, _ in commands()])
def test_every_command_is_documented(command: str) -> None:
    assert documented(command), f"`meterline {command}` is not in docs/design.md (CLI)"


def options() -> list[str]:
    found = {
        option
        for _, parser in [("", build_parser()), *commands()]
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    return sorted(found)


@pytest.mark.parametrize("option", options())
def test_every_option_is_documented(option: str) -> None:
    assert documented(option), f"the option {option} is not in docs/design.md (CLI)"


def routes() -> list[str]:
    app = create_app(Settings(env="development"), manage_database=False)
    return sorted({route.path for route in app.routes})


def test_the_app_serves_the_routes_it_should() -> None:
    assert {"/graphql", "/cron/sync-usage", "/cron/prune-webhook-events", "/metrics"} <= set(
        routes()
    )


@pytest.mark.parametrize("path", routes())
def test_every_route_is_documented(path: str) -> None:
    assert documented(path), f"the route {path} is not in docs/design.md (Routes)"


def error_codes() -> list[str]:
    """Every `code = "..."` of the domain errors, and the codes the schema assigns itself."""
    sources = [ROOT / "meterline/services/errors.py", ROOT / "meterline/schema/errors.py"]
    found: set[str] = set()
    for path in sources:
        found |= set(re.findall(r'"([A-Z][A-Z_]{5,})"', path.read_text()))
    return sorted(found)


def test_the_error_codes_include_the_new_ones() -> None:
    assert {"STRIPE_REQUEST_REJECTED", "DATABASE_BUSY", "GRAPHQL_VALIDATION_FAILED"} <= set(
        error_codes()
    )


@pytest.mark.parametrize("code", error_codes())
def test_every_error_code_is_documented(code: str) -> None:
    table = DESIGN.read_text().split("### GraphQL error codes", 1)[1]
    assert f"| `{code}` |" in table, f"{code} is not in docs/design.md's error code table"


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_links_resolve(doc: Path) -> None:
    """Relative links point at files of the repository, and anchors at headings there."""
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path_part, _, anchor = target.partition("#")
        linked = (doc.parent / path_part).resolve() if path_part else doc
        assert linked.exists(), f"{doc.name}: {target} does not exist"
        assert ROOT in linked.parents or linked == ROOT, f"{doc.name}: {target} leaves the repo"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{doc.name}: no heading for #{anchor} in {linked}"


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", doc.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found
