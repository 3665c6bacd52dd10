"""facepass.index.migrations: an index built the way main built it before migrations is upgraded in place."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql as pg

from facepass.db import make_engine
from facepass.index.migrations import current_revision, head_revision, migrate
from facepass.index.store import VectorStore
from facepass.settings import Settings
from facepass.vision.pack import ModelPack

# The schema exactly as main's VectorStore.create_schema() made it (metadata.create_all + HNSW).
old = sa.MetaData()
old_faces = sa.Table(
    "face_embeddings",
    old,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("session_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("photo_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False),
    sa.Column("bbox_x1", sa.Float, nullable=False),
    sa.Column("bbox_y1", sa.Float, nullable=False),
    sa.Column("bbox_x2", sa.Float, nullable=False),
    sa.Column("bbox_y2", sa.Float, nullable=False),
    sa.Column("det_score", sa.Float, nullable=False),
    sa.Column("embedding", Vector(512), nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.UniqueConstraint("photo_id", "face_index", name="face_embeddings_photo_face_key"),
)
sa.Index(
    "face_embeddings_embedding_hnsw",
    old_faces.c.embedding,
    postgresql_using="hnsw",
    postgresql_ops={"embedding": "vector_cosine_ops"},
)
old_ledger = sa.Table(
    "indexed_photos",
    old,
    sa.Column("photo_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("session_id", pg.UUID(as_uuid=True), nullable=False, index=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("face_count", sa.Integer, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("error_message", sa.Text),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    sa.CheckConstraint("status IN ('indexed', 'no_face', 'failed')", name="indexed_photos_status_check"),
)


@pytest.fixture
def fresh_db(settings: Settings) -> Iterator[str]:
    """A new, empty database on the embedded server."""
    name = f"migr_{uuid.uuid4().hex[:10]}"
    admin = make_engine(settings.local_url())
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(settings.local_url()).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


def test_index_of_the_previous_schema_is_upgraded_and_keeps_its_rows(fresh_db: str) -> None:
    engine = make_engine(fresh_db)
    session_id = uuid.uuid4()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((30, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    photo_ids = [uuid.uuid4() for _ in range(10)]
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
        old.create_all(conn)
        conn.execute(
            old_ledger.insert(),
            [
                {
                    "photo_id": p,
                    "session_id": session_id,
                    "status": "indexed",
                    "face_count": 3,
                    "model_name": "m",
                }
                for p in photo_ids
            ],
        )
        conn.execute(
            old_faces.insert(),
            [
                {
                    "session_id": session_id,
                    "photo_id": photo_ids[i // 3],
                    "face_index": i % 3,
                    "bbox_x1": 0.0,
                    "bbox_y1": 0.0,
                    "bbox_x2": 1.0,
                    "bbox_y2": 1.0,
                    "det_score": 0.9,
                    "embedding": vectors[i],
                    "model_name": "m",
                }  # fmt: skip
                for i in range(30)
            ],
        )
    assert current_revision(engine) is None

    store = VectorStore(fresh_db, pool_size=1)
    store.create_schema()  # what every process does at start
    store.create_schema()  # and again: nothing to do
    assert current_revision(engine) == head_revision()
    inspector = sa.inspect(engine)
    assert "face_embeddings_embedding_hnsw" not in {
        ix["name"] for ix in inspector.get_indexes("face_embeddings")
    }
    # 0005: the ledger keyed by (session, photo), face rows unique per session too.
    assert inspector.get_pk_constraint("indexed_photos")["constrained_columns"] == ["session_id", "photo_id"]
    assert [u["column_names"] for u in inspector.get_unique_constraints("face_embeddings")] == [
        ["session_id", "photo_id", "model_name", "face_index"]
    ]
    assert store.count_embeddings(session_id) == 30
    assert store.ledger(session_id) == dict.fromkeys(photo_ids, "indexed")
    with engine.connect() as conn:
        missing_half = conn.scalar(
            sa.text("SELECT count(*) FROM face_embeddings WHERE embedding_half IS NULL")
        )
    assert missing_half == 0
    hits = store.search(session_id, vectors[4], limit=3, model_name="m")
    assert (hits[0].photo_id, hits[0].face_index) == (photo_ids[1], 1)
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    store.close()
    engine.dispose()


def test_an_empty_database_is_built_by_the_migrations(fresh_db: str) -> None:
    engine = make_engine(fresh_db)
    migrate(engine)
    migrate(engine)
    assert {"face_embeddings", "indexed_photos", "alembic_version"} <= set(
        sa.inspect(engine).get_table_names()
    )
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_a_configured_index_is_only_checked_until_jobs_migrate_runs(
    fresh_db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a configured database the service, the writer and the bulk job only check the schema
    (ready_schema(False)): behind, a DatabaseSchemaMissing that names `python -m jobs.migrate`,
    and nothing created. `python -m jobs.migrate --check` says the same (exit 1); the command
    migrates; then the check passes."""
    from facepass.db import resolve_databases
    from facepass.errors import DatabaseSchemaMissing
    from jobs import migrate as migrate_job

    monkeypatch.setenv("FACEPASS_CLOUD_DSN", settings.cloud_url())
    monkeypatch.setenv("FACEPASS_LOCAL_DSN", fresh_db)
    configured = resolve_databases(Settings())
    assert configured.migrate_at_start is False  # the embedded default migrates; a configured one not
    assert settings.migrate_at_start is True
    store = VectorStore(configured.local_url(), pool_size=1)
    with pytest.raises(
        DatabaseSchemaMissing, match=r"revision none, this code needs .*python -m jobs\.migrate"
    ):
        store.ready_schema(migrate=configured.migrate_at_start)
    assert current_revision(store.engine) is None and not sa.inspect(store.engine).get_table_names()
    assert migrate_job.main(["--check"]) == 1
    assert "python -m jobs.migrate" in capsys.readouterr().err

    assert migrate_job.main([]) == 0
    assert f"schema revision none -> {head_revision()}" in capsys.readouterr().out
    assert migrate_job.main(["--check"]) == 0
    store.ready_schema(migrate=False)  # current now: no error
    assert current_revision(store.engine) == head_revision()
    store.close()


def test_jobs_migrate_uses_the_owner_dsn_when_given(
    fresh_db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FACEPASS_MIGRATE_DSN (the owner role) is the one jobs.migrate connects with; the service's
    FACEPASS_LOCAL_DSN is not touched (here: a database that does not exist)."""
    from jobs import migrate as migrate_job

    missing = sa.make_url(fresh_db).set(database="no_such_index").render_as_string(hide_password=False)
    monkeypatch.setenv("FACEPASS_CLOUD_DSN", settings.cloud_url())
    monkeypatch.setenv("FACEPASS_LOCAL_DSN", missing)
    monkeypatch.setenv("FACEPASS_MIGRATE_DSN", fresh_db)
    assert migrate_job.main([]) == 0
    assert current_revision(make_engine(fresh_db)) == head_revision()


def test_grant_gives_the_service_role_rows_and_no_ddl(fresh_db: str, settings: Settings) -> None:
    """`python -m jobs.migrate --grant ROLE`: the role reads and writes the index's rows (also of
    tables a later migration adds), takes advisory locks, and may change no schema."""
    from jobs.migrate import grant_runtime_role

    role = f"facepass_app_{uuid.uuid4().hex[:6]}"
    owner = make_engine(fresh_db)
    with owner.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
    try:
        migrate(owner)
        grant_runtime_role(owner, role)
        with owner.begin() as conn:  # a table a later migration adds: covered by default privileges
            conn.execute(sa.text("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text)"))
        app = make_engine(sa.make_url(fresh_db).set(username=role).render_as_string(hide_password=False))
        with app.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(42)"))
            conn.execute(
                sa.text(
                    "INSERT INTO indexed_photos (photo_id, session_id, status, face_count, model_name)"
                    " VALUES (:p, :s, 'no_face', 0, 'm')"
                ),
                {"p": uuid.uuid4(), "s": uuid.uuid4()},
            )
            conn.execute(sa.text("INSERT INTO later_table (note) VALUES ('ok')"))
            assert conn.execute(sa.text("SELECT count(*) FROM indexed_photos")).scalar() == 1
            conn.execute(sa.text("DELETE FROM later_table"))
        for ddl in (
            "CREATE TABLE intruder (id int)",
            "ALTER TABLE indexed_photos ADD COLUMN intruder int",
            "DROP TABLE later_table",
            "CREATE SCHEMA intruder",
            "DROP EXTENSION vector",
        ):
            with pytest.raises(sa.exc.ProgrammingError, match="permission denied|must be owner"):
                with app.begin() as conn:
                    conn.execute(sa.text(ddl))
        app.dispose()
    finally:
        with owner.begin() as conn:
            conn.execute(sa.text(f'DROP OWNED BY "{role}"'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))
        owner.dispose()


def test_0006_moves_every_build_of_the_weights_into_their_generation(fresh_db: str) -> None:
    """Rows of the legacy generations `<pack>@ov-f32` and `<pack>` (the fp32 build) become the
    weights' generation `<pack>#<weights id>`, no row re-embedded: a photo caught mid-change with
    rows of both keeps its ledger row's build; the ledger says which build made each photo where
    the old name said it; a pack that is not here keeps its name (its own generation)."""
    engine = make_engine(fresh_db)
    migrate(engine, "0005")
    current = ModelPack.from_settings(Settings()).name
    plain = current.split("#")[0]
    ov, other = f"{plain}@ov-f32", "otherpack/a+b@ov-f32"
    session_id = uuid.uuid4()
    both, fp32_only, elsewhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rng = np.random.default_rng(1)
    faces = [
        (both, ov, 0),
        (both, ov, 1),
        (both, plain, 0),  # the previous build's rows, not yet retired
        (fp32_only, plain, 0),
        (elsewhere, other, 0),
    ]
    with engine.begin() as conn:
        for photo, model in ((both, ov), (fp32_only, plain), (elsewhere, other)):
            conn.execute(
                sa.text(
                    "INSERT INTO indexed_photos (photo_id, session_id, status, face_count, model_name) "
                    "VALUES (:p, :s, 'indexed', :n, :m)"
                ),
                {
                    "p": photo,
                    "s": session_id,
                    "n": sum(1 for f in faces if f[:2] == (photo, model)),
                    "m": model,
                },
            )
        for photo, model, index in faces:
            vector = rng.standard_normal(512)
            vector /= np.linalg.norm(vector)
            conn.execute(
                sa.text(
                    "INSERT INTO face_embeddings (session_id, photo_id, face_index, bbox_x1, bbox_y1, "
                    "bbox_x2, bbox_y2, det_score, embedding, model_name) "
                    "VALUES (:s, :p, :i, 0, 0, 1, 1, 0.9, CAST(:v AS vector), :m)"
                ),
                {"s": session_id, "p": photo, "i": index, "v": str(vector.tolist()), "m": model},
            )
        conn.execute(
            sa.text("INSERT INTO follow_sessions (session_id, model_name) VALUES (:s, :m)"),
            {"s": session_id, "m": ov},
        )
    migrate(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        ledger = {
            r.photo_id: (r.model_name, r.variant)
            for r in conn.execute(sa.text("SELECT photo_id, model_name, variant FROM indexed_photos"))
        }
        rows = sorted(
            (r.photo_id == both, r.photo_id == elsewhere, r.model_name, r.face_index)
            for r in conn.execute(sa.text("SELECT photo_id, model_name, face_index FROM face_embeddings"))
        )
        followed = conn.scalar(sa.text("SELECT model_name FROM follow_sessions"))
    assert ledger == {
        both: (current, "openvino-f32/cpu"),
        fp32_only: (current, None),  # the fp32 build did not say its device
        elsewhere: (other, "openvino-f32/cpu"),
    }
    assert rows == [
        (False, False, current, 0),
        (False, True, other, 0),
        (True, False, current, 0),  # the ledger's build (OpenVINO): its two faces
        (True, False, current, 1),
    ]
    assert followed == current
    engine.dispose()
