"""The measured builds of each kind of machine (issue 31): ``model_trials``.

One row per machine (the CPU's model and flags, or the GPU's model), runtime versions,
generation (the weights' hash) and trials version, with the sharing gate's verdicts, the
timings of every build tried and the variant chosen (jsonb). Actors read it at load instead of
measuring again; the rows of another runtime version or other weights are simply not read.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE IF NOT EXISTS model_trials ("
        " machine text NOT NULL,"
        " runtimes text NOT NULL,"
        " generation text NOT NULL,"
        " version integer NOT NULL,"
        " record jsonb NOT NULL,"
        " measured_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (machine, runtimes, generation, version))"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS model_trials")
