"""Migrate the local index to this code's schema, as the index's owner role.

    python -m jobs.migrate                      # upgrade (FACEPASS_MIGRATE_DSN, else FACEPASS_LOCAL_DSN)
    python -m jobs.migrate --check              # exit 1 if the schema is behind; change nothing
    python -m jobs.migrate --grant facepass_app # and let that role read and write the rows

The service, the index writer and the bulk job do not migrate a configured database: at
start they only check its revision (a 503 and a log line naming this command while it is
behind). Run it before starting a new version (`make demo`, `make demo-bulk` and the
cluster setup do). ``--grant ROLE`` gives the service's role what it needs at run time
and nothing more: SELECT, INSERT, UPDATE, DELETE on the index's tables and USAGE on their
sequences, now and for tables later migrations add (ALTER DEFAULT PRIVILEGES); advisory
locks need no grant. Read access to the catalog is its owner's to grant
(``GRANT SELECT ON sessions, photos TO ...``).
"""

from __future__ import annotations

import argparse
import logging
import sys

import sqlalchemy as sa

from facepass.db import make_engine, resolve_databases
from facepass.errors import DatabaseSchemaMissing
from facepass.index.migrations import current_revision, head_revision, migrate, require_current
from facepass.settings import Settings

log = logging.getLogger("facepass.migrate")
DML = "SELECT, INSERT, UPDATE, DELETE"


def grant_runtime_role(engine: sa.Engine, role: str) -> None:
    """DML on every table of the index (and on the tables later migrations add), nothing else."""
    quoted = engine.dialect.identifier_preparer.quote(role)
    statements = (
        f"GRANT USAGE ON SCHEMA public TO {quoted}",
        f"GRANT {DML} ON ALL TABLES IN SCHEMA public TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {DML} ON TABLES TO {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {quoted}",
    )
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only say whether the schema is current")
    parser.add_argument("--grant", metavar="ROLE", help="the service's role: DML on the index's rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = resolve_databases(Settings())
    engine = make_engine(settings.migrate_url(), pool_size=1)
    try:
        name = engine.url.database
        if args.check:
            try:
                print(f"local index {name}: schema revision {require_current(engine)} (current)")
            except DatabaseSchemaMissing as exc:
                print(str(exc), file=sys.stderr)
                return 1
            return 0
        before = current_revision(engine)
        migrate(engine)
        print(f"local index {name}: schema revision {before or 'none'} -> {head_revision()}")
        if args.grant:
            grant_runtime_role(engine, args.grant)
            print(f"local index {name}: role {args.grant} may read and write its rows (no DDL)")
        return 0
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
