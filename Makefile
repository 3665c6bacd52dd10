# One command each, on a fresh machine with only python3: `make demo`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := PYTHONPATH=$(CURDIR) $(UV) run --frozen
# Ray's uv hook (on by default) sees `uv run` among a driver's ancestors and makes every new
# worker `uv run` in an uploaded copy of the project, which builds a venv there while other
# workers already import from it: measured, fresh actors failed photos with
# "No module named 'skimage.transform._geometric'" and PIL "cannot identify image file" (its
# JPEG plugin import failed half-way). Workers use the project's venv, as cluster.yaml's nodes do.
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0

.PHONY: install demo demo-s3 demo-bulk test test-all unit integration slow cluster-test lint format bench bench-smoke bench-gpu serve clean

install:
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	$(UV) sync --frozen
	@# Photos of labeled people (face_recognition's source archive on PyPI, pinned by SHA-256) for
	@# search quality's tests and bench: fetched once into .facepass/labeled.
	$(RUN) python -m facepass.demo.labeled --fetch

demo: install
	$(RUN) python -m jobs.migrate
	RAY_DEDUP_LOGS=0 $(RUN) python -m jobs.demo

# The same from a private bucket of a real S3-compatible server on loopback (SeaweedFS), signed GETs,
# then a selfie search whose presigned photo URL is opened.
demo-s3: install
	$(RUN) python -m jobs.migrate
	RAY_DEDUP_LOGS=0 $(RUN) python -m jobs.demo --s3

# The bulk job (all sessions) through the real `ray job submit`, on a local Ray head it starts
# and stops: `make demo-bulk PHOTOS=3` for a smaller catalog.
PHOTOS ?= 6
demo-bulk: install
	$(RUN) python -m jobs.demo_bulk --photos-per-session $(PHOTOS)

# Throughput of (a) the bare model, (b) the seed's loop, (c) the pipeline: `make bench N=10000`.
N ?= 600
bench: install
	RAY_DEDUP_LOGS=0 $(RUN) python -m bench.run --n $(N)

# CI-sized smoke run of the benchmark (about 2 minutes here).
bench-smoke: install
	$(RUN) python -m bench.run --n 12 --latency-ms 20,50 --seed-loop-sample 6 --limit-sample 12 --rerun-n 2000 \
		--writer-photos 500 --search-sessions 3 --search-session-faces 2000 --search-big-faces 0 --orch-n 200 --orch-storage-n 10000 \
		--paired-rounds 1 --follow-groups 5 --follow-backlog 300 --follow-idle-s 5 \
		--gpu-standin-n 2 --gpu-standin-batches 8 --gpu-standin-seconds 1

# On a GPU node: photos/s of one GPU with photos batched through the model and without
# (`make bench-gpu GPU_ARGS="--packs model,buffalo_l --batches 1,8,16,32"`). Not run here (no GPU).
GPU_ARGS ?=
bench-gpu:
	$(UV) sync --frozen --extra gpu
	$(RUN) --extra gpu python -m bench.gpu $(GPU_ARGS)

serve: install
	$(RUN) python -m jobs.migrate
	$(RUN) serve run serve_app:app

lint: install
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

# Test tiers, chosen by pytest markers (pyproject.toml), each in a pytest process of its own with
# its own embedded PostgreSQL (no order dependence between tiers):
#   unit         tests/unit: the core, no Ray
#   integration  tests/integration not marked `slow`: one real Ray head + Serve + PostgreSQL over
#                HTTP (force-reindex, API keys, search, one run per session, decode actors, metrics)
#   slow         tests/integration marked `slow`: bulk job, follow, model change, schemathesis,
#                audit, database edges
#   cluster      tests/cluster (marked `cluster`): several Ray nodes on this machine, node loss,
#                drain, join, RPC faults, the autoscaler
# `make test` after every change (lint, unit, integration); `make test-all` (every tier; CI runs it)
# before a commit that touches the pool, the runs or the cluster.
PYTEST := $(RUN) bash scripts/pytest.sh

test: install lint
	$(PYTEST) tests/unit
	$(PYTEST) tests/integration -m "not slow"

test-all: test
	$(PYTEST) tests/integration -m slow
	$(PYTEST) tests/cluster

unit: install
	$(PYTEST) tests/unit

integration: install
	$(PYTEST) tests/integration -m "not slow"

slow: install
	$(PYTEST) tests/integration -m slow

cluster-test: install
	$(PYTEST) tests/cluster

format: install
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

clean:
	rm -rf .facepass .pytest_cache .mypy_cache .ruff_cache
