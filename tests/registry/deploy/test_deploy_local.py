"""The deployer on the local-folder backend: manifest, pointer last, idempotent re-sync,
resume after an interruption, retention with rollback targets, bad input, the config, the
CLI, and (slow) the TF.js export of a trained bundle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.deploy import DEPLOYED, fast_config, make_bundle


def _deployer(tmp_path: Path, backend=None, **cfg):
    from registry.deploy.deployer import SupabaseDeployer
    from registry.deploy.storage.local import LocalFolderBackend

    backend = backend or LocalFolderBackend(tmp_path / "store", "model-artifacts")
    return SupabaseDeployer(fast_config(**cfg), backend=backend, model_name="tt", use_table=False)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_records_every_file_and_the_pointer_names_it(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    d = _deployer(tmp_path)
    result = d.deploy_model(model_dir=bundle, version="v1.2.0", description="seed API", registry_version="7",
                            run_id="abc", metrics={"ndcg_at_10": 0.25})
    base = tmp_path / "store" / "model-artifacts" / "tt"
    manifest = json.loads((base / "v1.2.0" / "manifest.json").read_text())
    assert set(manifest["files"]) == set(DEPLOYED)                         # users/, checkpoints/ stay behind
    for rel, info in manifest["files"].items():
        data = (bundle / rel).read_bytes()
        assert info["size"] == len(data) and info["sha256"] == hashlib.sha256(data).hexdigest()
        assert (base / "v1.2.0" / rel).read_bytes() == data
    assert (manifest["version"], manifest["semver"], manifest["registry_version"], manifest["run_id"],
            manifest["metrics"], manifest["description"]) == ("v1.2.0", "1.2.0", "7", "abc", {"ndcg_at_10": 0.25},
                                                              "seed API")
    assert manifest["created_at"].endswith("Z") and manifest["total_bytes"] == sum(
        i["size"] for i in manifest["files"].values())
    pointer = json.loads((base / "production.json").read_text())
    assert (pointer["version"], pointer["manifest_path"], pointer["history"]) == (
        "v1.2.0", "tt/v1.2.0/manifest.json", ["v1.2.0"])
    assert pointer["manifest_sha256"] == hashlib.sha256((base / "v1.2.0" / "manifest.json").read_bytes()).hexdigest()
    assert result.activated and result.previous is None and result.files == len(DEPLOYED) + 1
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in base.rglob("*") if p.is_file())   # readable by readers


def test_resync_of_an_unchanged_version_writes_nothing(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    d = _deployer(tmp_path)
    d.deploy_model(model_dir=bundle, version="v1.0.0")
    store = tmp_path / "store"
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    again = d.deploy_model(model_dir=bundle, version="1.0.0")              # '1.0.0' and 'v1.0.0' are one version
    assert again.uploaded == [] and again.unchanged and again.bytes_uploaded == 0
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()} == before


class _DiesAfter:
    """A local backend whose process 'dies' (an exception no retry catches) after n uploads."""

    def __new__(cls, root: Path, n: int):
        from registry.deploy.storage.local import LocalFolderBackend

        class Dying(LocalFolderBackend):
            left = n

            def put_file(self, *args, **kwargs):
                if Dying.left <= 0:
                    raise KeyboardInterrupt("killed")
                Dying.left -= 1
                return super().put_file(*args, **kwargs)

        return Dying(root, "model-artifacts")


def test_an_interrupted_deploy_resumes_and_uploads_only_the_rest(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    with pytest.raises(KeyboardInterrupt):
        _deployer(tmp_path, backend=_DiesAfter(tmp_path / "store", 6), workers=1).deploy_model(bundle, "v1.0.0")
    base = tmp_path / "store" / "model-artifacts" / "tt"
    assert not (base / "production.json").exists() and not (base / "v1.0.0" / "manifest.json").exists()
    assert len([p for p in (base / "v1.0.0").rglob("*") if p.is_file()]) == 6     # no partial files
    result = _deployer(tmp_path).deploy_model(bundle, "v1.0.0")
    assert result.skipped == 6 and len(result.uploaded) == len(DEPLOYED) - 6 + 1
    assert json.loads((base / "production.json").read_text())["version"] == "v1.0.0"


def test_a_transient_error_is_retried_then_a_persistent_one_stops_before_activation(tmp_path) -> None:
    from registry.deploy.storage import TransientStorageError
    from registry.deploy.storage.local import LocalFolderBackend

    class Flaky(LocalFolderBackend):
        failures = 2

        def put_file(self, key, *args, **kwargs):
            if key.endswith("item_ids.json") and Flaky.failures > 0:
                Flaky.failures -= 1
                raise TransientStorageError("503 from the server")
            return super().put_file(key, *args, **kwargs)

    bundle = make_bundle(tmp_path / "bundle")
    assert _deployer(tmp_path, backend=Flaky(tmp_path / "s1", "model-artifacts")).deploy_model(bundle, "v1.0.0").activated
    Flaky.failures = 99
    with pytest.raises(TransientStorageError, match="after 3 attempts; nothing was activated"):
        _deployer(tmp_path, backend=Flaky(tmp_path / "s2", "model-artifacts")).deploy_model(bundle, "v1.0.0")
    assert not (tmp_path / "s2" / "model-artifacts" / "tt" / "production.json").exists()


def test_retention_keeps_max_versions_production_and_the_rollback_target(tmp_path) -> None:
    d = _deployer(tmp_path, max_versions=3)
    bundles = [make_bundle(tmp_path / f"b{i}", seed=i) for i in range(6)]
    for i in range(4):                                                      # v1.0.0 .. v1.3.0
        d.deploy_model(bundles[i], f"v1.{i}.0")
    base = tmp_path / "store" / "model-artifacts" / "tt"
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["v1.1.0", "v1.2.0", "v1.3.0"]

    back = d.rollback("v1.1.0")                                             # named rollback, no upload
    assert back.repointed_only and back.uploaded == [] and back.previous == "v1.3.0"
    d.deploy_model(bundles[4], "v1.4.0")
    d.deploy_model(bundles[5], "v1.5.0")
    # production v1.5.0, its rollback target v1.4.0, and v1.3.0 (highest of the rest)
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["v1.3.0", "v1.4.0", "v1.5.0"]
    assert d.rollback().version == "v1.4.0"
    d.rollback("v1.3.0")                                                    # the lowest kept version
    d.deploy_model(make_bundle(tmp_path / "b6", seed=6), "v2.0.0")
    # v1.3.0 is what a rollback returns to: kept although it has the lowest semver; v1.4.0 goes
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["v1.3.0", "v1.5.0", "v2.0.0"]
    d.deploy_model(make_bundle(tmp_path / "b7", seed=7), "v2.1.0")
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["v1.5.0", "v2.0.0", "v2.1.0"]
    assert d.pointer()["history"][-2:] == ["v2.0.0", "v2.1.0"]


def test_rollback_target_survives_retention_even_when_it_is_the_oldest(tmp_path) -> None:
    d = _deployer(tmp_path, max_versions=2)
    d.deploy_model(make_bundle(tmp_path / "b0", seed=0), "v1.0.0")
    d.deploy_model(make_bundle(tmp_path / "b1", seed=1), "v3.0.0")
    d.rollback()                                                            # production v1.0.0
    d.deploy_model(make_bundle(tmp_path / "b2", seed=2), "v2.0.0")         # replaces v1.0.0
    base = tmp_path / "store" / "model-artifacts" / "tt"
    # v3.0.0 has the highest semver but is neither production nor the rollback target
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["v1.0.0", "v2.0.0"]
    assert d.rollback().version == "v1.0.0"


def test_a_version_in_production_is_never_overwritten(tmp_path) -> None:
    d = _deployer(tmp_path)
    d.deploy_model(make_bundle(tmp_path / "a", seed=1), "v1.0.0")
    before = _tree(tmp_path / "store")
    with pytest.raises(ValueError, match="v1.0.0.*holds production.*new version"):
        d.deploy_model(make_bundle(tmp_path / "b", seed=2), "v1.0.0")
    assert _tree(tmp_path / "store") == before


@pytest.mark.parametrize("version", ["1.2", "latest", "v1.2.0-rc1", ""])
def test_bad_version_names_the_value_and_writes_nothing(tmp_path, version) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    with pytest.raises(ValueError, match=f"version {version!r} is not a semantic version.*v1.2.0"):
        _deployer(tmp_path).deploy_model(bundle, version)
    assert not (tmp_path / "store").exists() or _tree(tmp_path / "store") == {}


def test_bad_bundles_name_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        _deployer(tmp_path).deploy_model(tmp_path / "nowhere", "v1.0.0")
    bundle = make_bundle(tmp_path / "bundle")
    import shutil

    shutil.rmtree(bundle / "saved_model" / "item_tower")
    with pytest.raises(FileNotFoundError, match="lacks saved_model/item_tower/"):
        _deployer(tmp_path).deploy_model(bundle, "v1.0.0")
    assert _tree(tmp_path / "store") == {}


@pytest.mark.parametrize("raw, message", [
    ({"versioning": {"max_versions": 1}}, "max_versions=1 must be an integer >= 2"),
    ({"versioning": {"strategy": "date"}}, "strategy='date' is not supported"),
    ({"supabase": {"storage_bucket": "Bad Bucket"}}, "storage_bucket='Bad Bucket' is not a valid bucket name"),
    ({"supabase": {"model_table": "x; drop table y"}}, "model_table='x; drop table y' is not a table name"),
    ({"supabase": {"bucket": "x"}}, "unknown key supabase.bucket: did you mean 'supabase.storage_bucket'"),
    ({"deploy": {}}, "unknown config section 'deploy': remove it; allowed sections: storage, supabase, versioning"),
    ({"storage": {"backend": "ftp"}}, None),
    ({"storage": {"verify": "sometimes"}}, "storage.verify='sometimes'"),
    ({"storage": {"retry": {"attempts": 0}}}, "attempts=0 must be at least 1"),
])
def test_config_errors_name_the_key_and_the_fix(tmp_path, raw, message) -> None:
    import yaml

    from registry.deploy.config import load_deploy_config
    from registry.deploy.deployer import SupabaseDeployer

    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(raw))
    if message is None:  # the backend name is checked when the deployer opens it
        with pytest.raises(ValueError, match="storage backend 'ftp' is unknown: use one of auto, local, supabase, s3"):
            SupabaseDeployer(str(path))
        return
    with pytest.raises(ValueError, match=message):
        load_deploy_config(path)


def test_config_file_defaults_and_seed_format(tmp_path, monkeypatch) -> None:
    from support.helpers import REPO_ROOT

    from registry.deploy.config import load_deploy_config

    cfg = load_deploy_config(REPO_ROOT / "configs" / "deployment.yaml")
    assert (cfg.storage_bucket, cfg.model_table, cfg.auto_deployment, cfg.strategy, cfg.rollback_enabled,
            cfg.max_versions) == ("model-artifacts", "model_versions", True, "semantic", True, 10)
    monkeypatch.chdir(tmp_path)                                            # no configs/ here: defaults
    monkeypatch.delenv("TOWEROPS_DEPLOY_CONFIG", raising=False)
    assert load_deploy_config().max_versions == 10
    monkeypatch.setenv("TOWEROPS_DEPLOY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match=r"missing.yaml \(\$TOWEROPS_DEPLOY_CONFIG\) does not exist"):
        load_deploy_config()


def test_deploy_hook_from_env_defaults_to_the_local_folder_and_respects_auto_deployment(tmp_path, monkeypatch) -> None:
    from registry.deploy.hook import RegistryDeployHook, deploy_hook_from_env
    from registry.deploy.storage import resolve_backend_kind

    monkeypatch.chdir(tmp_path)
    for var in ("TOWEROPS_DEPLOY_CONFIG", "SUPABASE_URL", "TOWEROPS_SUPABASE_STORAGE_URL", "TOWEROPS_S3_ENDPOINT_URL",
                "TOWEROPS_DEPLOY_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    hook = deploy_hook_from_env()
    assert isinstance(hook, RegistryDeployHook) and resolve_backend_kind(hook.config.backend) == "local"
    (tmp_path / "off.yaml").write_text("supabase: {auto_deployment: false}\n")
    monkeypatch.setenv("TOWEROPS_DEPLOY_CONFIG", str(tmp_path / "off.yaml"))
    assert deploy_hook_from_env() is None
    monkeypatch.setenv("SUPABASE_URL", "https://abc.supabase.co")
    assert resolve_backend_kind("auto") == "supabase"


def test_supabase_backend_config_errors_are_clear(monkeypatch) -> None:
    from registry.deploy.storage.supabase import SupabaseStorageBackend, storage_base_url

    assert storage_base_url("https://abc.supabase.co") == "https://abc.supabase.co/storage/v1/"
    assert storage_base_url("http://127.0.0.1:54321/storage/v1") == "http://127.0.0.1:54321/storage/v1/"
    for var in ("SUPABASE_URL", "TOWEROPS_SUPABASE_STORAGE_URL", "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="needs SUPABASE_URL"):
        SupabaseStorageBackend("model-artifacts")
    with pytest.raises(ValueError, match="SUPABASE_SERVICE_ROLE_KEY"):
        SupabaseStorageBackend("model-artifacts", url="https://abc.supabase.co")
    with pytest.raises(ValueError, match="'ftp://x' is not an http"):
        SupabaseStorageBackend("model-artifacts", url="ftp://x", key="k")


def test_cli_deploy_list_and_bad_input(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    monkeypatch.chdir(tmp_path)
    for var in ("TOWEROPS_DEPLOY_CONFIG", "SUPABASE_URL", "TOWEROPS_SUPABASE_STORAGE_URL", "TOWEROPS_S3_ENDPOINT_URL",
                "TOWEROPS_DEPLOY_BACKEND", "TOWEROPS_DEPLOY_DSN", "SUPABASE_DB_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TOWEROPS_DEPLOY_DIR", str(tmp_path / "deployments"))
    bundle = make_bundle(tmp_path / "bundle")
    runner = CliRunner()
    bad = runner.invoke(app, ["deploy", "--model-dir", str(bundle), "--version", "1.2", "--model-name", "tt"])
    assert bad.exit_code == 2 and "'1.2' is not a semantic version" in bad.output
    assert not (tmp_path / "deployments").exists() or _tree(tmp_path / "deployments") == {}
    ok = runner.invoke(app, ["deploy", "--model-dir", str(bundle), "--version", "v1.2.0", "--model-name", "tt",
                             "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["activated"] is True
    listed = runner.invoke(app, ["deployments", "list", "--model-name", "tt", "--json"])
    assert [(r["version"], r["active"], r["complete"]) for r in json.loads(listed.stdout)] == [("v1.2.0", True, True)]
    nothing = runner.invoke(app, ["deployments", "rollback", "--model-name", "tt"])
    assert nothing.exit_code == 2 and "no earlier production version" in nothing.output


@pytest.mark.slow
def test_a_trained_bundle_ships_its_tfjs_export(tiny_model_dir, tmp_path) -> None:
    from ml.inference.tfjs import load_layers_model_weights

    d = _deployer(tmp_path)
    result = d.deploy_model(tiny_model_dir, "v1.0.0")
    base = tmp_path / "store" / "model-artifacts" / "tt" / "v1.0.0"
    manifest = json.loads((base / "manifest.json").read_text())
    for tower in ("user_tower", "item_tower"):
        assert f"tfjs/{tower}/model.json" in manifest["files"]
        doc = json.loads((base / "tfjs" / tower / "model.json").read_text())
        assert doc["format"] == "layers-model"
        _, weights = load_layers_model_weights(base / "tfjs" / tower / "model.json")  # shards complete
        assert weights
        assert f"keras/{tower}.keras" in manifest["files"] and f"saved_model/{tower}/saved_model.pb" in manifest["files"]
    assert "embeddings/item_embeddings.npy" in manifest["files"] and "preprocessing/pipeline.joblib" in manifest["files"]
    assert not (tiny_model_dir / "tfjs").exists()                           # the bundle itself is untouched
    assert result.activated
