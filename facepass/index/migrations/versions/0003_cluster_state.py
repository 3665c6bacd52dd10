"""State that must outlive any node: the job book and the sessions' fencing tokens.

The job book used to live in a named Ray actor: losing the node that held it lost
every job record and ended the bulk job (measured on a three-node test cluster).
It now lives in the local index database, next to the session locks that decide
who runs a session, so a node loss erases nothing.

``session_fences`` holds, per session, the fencing token of the newest run that
took the session's lock (tokens come from one sequence, so a later run always
has a larger one). The writer commits a photo of a run only while the run's
token is still the session's newest: a runner that lost its lock (its database
connection dropped mid-run) cannot write over, or undo, the next run's work.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS reindex_jobs ("
        " job_id text PRIMARY KEY,"
        " session_id uuid NOT NULL,"
        " status text NOT NULL,"
        " state jsonb NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS reindex_jobs_running ON reindex_jobs (session_id) "
        "WHERE status = 'running'"
    )
    op.execute("CREATE INDEX IF NOT EXISTS reindex_jobs_updated_at ON reindex_jobs (updated_at)")
    op.execute("CREATE SEQUENCE IF NOT EXISTS session_fence_tokens")
    op.execute(
        "CREATE TABLE IF NOT EXISTS session_fences ("
        " session_id uuid PRIMARY KEY,"
        " token bigint NOT NULL,"
        " updated_at timestamptz NOT NULL DEFAULT now())"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS session_fences")
    op.execute("DROP SEQUENCE IF EXISTS session_fence_tokens")
    op.execute("DROP TABLE IF EXISTS reindex_jobs")
