"""What the service needs from its two databases, checked, and failures named.

A database error inside a request says little ("relation does not exist", "connection
refused"); ``diagnose`` turns it into a typed error that names the database (cloud
catalog or local index) and what is missing, by checking each database the way
``/healthz`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.exc

from facepass.errors import (
    LOCAL_INDEX,
    DatabaseError,
    DatabaseSchemaMissing,
    DatabaseTimeout,
    DatabaseUnavailable,
    IndexCannotWrite,
)

# SQLSTATEs of a schema that lacks what the code expects.
_UNDEFINED = {"42P01": "table", "42703": "column", "3F000": "schema"}
_NAMED = re.compile(r'(?:relation|column|schema) "([^"]+)" does not exist')
# SQLSTATEs of a statement stopped by the connection's bounds (lock_timeout, statement_timeout).
_TIMED_OUT = {"55P03": "waited for a lock", "57014": "ran"}
# SQLSTATE class 53 (insufficient resources) but 53300 (too many connections: a login refused,
# the server is up and has room): the server cannot store what it is given.
_NO_ROOM = {"53000": "out of resources", "53100": "disk full", "53200": "out of memory"}
_NO_ROOM_CLASS = "53"
_TOO_MANY_CONNECTIONS = "53300"


@dataclass(frozen=True, slots=True)
class DatabaseProbe:
    """One database: what to call it, how to reach it, the tables the service reads."""

    label: str
    engine: sa.Engine
    tables: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.engine.url.database or "?"

    def check(self) -> None:
        """Returns when the database answers and holds every table; raises a typed error otherwise."""
        try:
            with self.engine.connect() as conn:
                present = {
                    table
                    for table in self.tables
                    if conn.scalar(sa.text("SELECT to_regclass(:t)"), {"t": table}) is not None
                }
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
            raise DatabaseUnavailable(
                self.label, f"database {self.name} does not answer: {_cause(exc)}"
            ) from exc
        missing = tuple(t for t in self.tables if t not in present)
        if missing:
            tables = ", ".join(f'"{t}"' for t in missing)
            raise DatabaseSchemaMissing(self.label, f"database {self.name} has no table {tables}", missing)


def is_database_failure(exc: BaseException) -> bool:
    """A database that is down or lacks its schema (not a bug in a query)."""
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return True
    return isinstance(exc, sqlalchemy.exc.ProgrammingError) and _sqlstate(exc) in _UNDEFINED


def cannot_write(exc: BaseException) -> IndexCannotWrite | None:
    """The typed error when ``exc`` (a driver error, or SQLAlchemy's wrapping one) says the
    index has no room (SQLSTATE class 53: a full disk, out of memory), else None."""
    orig = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    state = getattr(orig, "sqlstate", None)
    if not isinstance(state, str) or not state.startswith(_NO_ROOM_CLASS) or state == _TOO_MANY_CONNECTIONS:
        return None
    what = _NO_ROOM.get(state, "out of resources")
    return IndexCannotWrite(
        LOCAL_INDEX,
        f"cannot write ({what}, SQLSTATE {state}: {_cause(exc)})",
    )


def diagnose(exc: BaseException, probes: Iterable[DatabaseProbe]) -> DatabaseError:
    """The typed error behind a failed database call: a statement stopped by its time bounds
    (named by the tables it read), else the first database that fails its check, else (it
    recovered meanwhile) what the error itself names."""
    probes = list(probes)
    full = cannot_write(exc)
    if full is not None:
        return full
    state = _sqlstate(exc) if isinstance(exc, sqlalchemy.exc.DBAPIError) else None
    if state in _TIMED_OUT:
        statement = str(getattr(exc, "statement", "") or "")
        owner = next(
            (p for p in probes if any(re.search(rf"\b{re.escape(t)}\b", statement) for t in p.tables)), None
        )
        label = owner.label if owner else "database"
        return DatabaseTimeout(
            label,
            f"a query {_TIMED_OUT[state]} past its limit ({_cause(exc)}): a table locked by another "
            "connection, or the server overloaded; try again later",
        )
    for probe in probes:
        try:
            probe.check()
        except DatabaseError as found:
            return found
    named = _NAMED.search(str(getattr(exc, "orig", exc)))
    owner = next((p for p in probes if named and named.group(1) in p.tables), None)
    label = owner.label if owner else "database"
    if isinstance(exc, sqlalchemy.exc.ProgrammingError):
        kind = _UNDEFINED.get(_sqlstate(exc) or "", "object")
        missing = (named.group(1),) if named else ()
        what = f'{kind} "{missing[0]}"' if missing else f"a {kind}"
        return DatabaseSchemaMissing(label, f"{what} is missing: {_cause(exc)}", missing)
    return DatabaseUnavailable(label, f"connection failed (it answers again now): {_cause(exc)}")


def _sqlstate(exc: sqlalchemy.exc.DBAPIError) -> str | None:
    state = getattr(exc.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _cause(exc: BaseException) -> str:
    """The driver's first line: enough to act on, no statement, no parameters."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
