"""The MLproject entry points as a user runs them: `mlflow run <project> -e <entry> --env-manager local`,
all sharing one tracking database, audit trail and deployments folder in tmp_path.

`main` must leave: a train run, an evaluate run, registered version 1, a gate-passed promotion
to production, the version deployed into the deployments folder (pointer, manifest, files with
their sha256), and a monitor run, all nested under the `main` run. Then `synth`, `validate`,
`train`, `promote` (without `data`: the gate evaluates on the candidate's recorded training
data), `rollback`, `compare`, `monitor` and `export_tfjs`, and the exit codes README documents:
a failed gate exits 3, bad input 2, monitor alerts 1 (run as the entry's own command line, since
`mlflow run` itself exits 1 whenever the entry fails).

The project is copied into tmp_path (code, MLproject, configs) so the runs write nothing into the
checkout, and so its `configs/registry.yaml` can hold a gate a two-epoch tiny model passes (`main`
has no parameter for the registry config); every other file is the shipped one.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.helpers import REPO_ROOT, mlflow_env

# `main` (in the module fixture) runs inside the first test's time limit
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

EXPERIMENT = "chain"
PROJECT_PARTS = ("MLproject", "conda.yaml", "pyproject.toml", "towerops.yaml", "configs", "ml", "registry", "monitoring",
                 "pipelines")
TINY = {"model": {"user_embedding_dim": 32, "item_embedding_dim": 32, "hidden_units": [64, 32], "dropout_rate": 0.1},
        "training": {"batch_size": 128, "epochs": 2, "patience": 2, "seed": 7}, "features": {"text_dim": 16}}
OPEN_GATE = {"absolute": {"ndcg_at_10": 0.0}, "relative": {"ndcg_at_10": 1.0}, "baselines": {}, "health": {}}
STRICT_GATE = {"absolute": {"ndcg_at_10": 0.999}, "relative": {}, "baselines": {}, "health": {}}


class Chain:
    """One project copy, one environment, one tracking store for the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.project = root / "project"
        self.env = mlflow_env(root)
        for var in ("SUPABASE_URL", "TOWEROPS_SUPABASE_STORAGE_URL", "TOWEROPS_S3_ENDPOINT_URL", "SUPABASE_DB_URL",
                    "TOWEROPS_DEPLOY_DSN", "TOWEROPS_DEPLOY_CONFIG", "TOWEROPS_AUDIT_DB_URL", "TOWEROPS_ALERT_WEBHOOK_URL"):
            self.env.pop(var, None)                                     # local deployments folder, SQLite audit trail
        self.env["PYTHONPATH"] = str(self.project)
        self.deployments = Path(self.env["TOWEROPS_DEPLOY_DIR"]) / "model-artifacts" / "two_tower"

    def mlflow_run(self, entry: str, **params: object) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "mlflow", "run", str(self.project), "-e", entry, "--env-manager", "local",
               "--experiment-name", EXPERIMENT]
        for k, v in params.items():
            cmd += ["-P", f"{k}={v}"]
        return subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=900)

    def entry_command(self, entry: str, **params: object) -> subprocess.CompletedProcess:
        """The entry's command line from MLproject, run directly: its exit status is the CLI's own."""
        spec = yaml.safe_load((self.project / "MLproject").read_text())["entry_points"][entry]
        values = {k: (v or {}).get("default", "") for k, v in spec.get("parameters", {}).items()}
        values.update({k: str(v) for k, v in params.items()})
        command = spec["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()})
        return subprocess.run(command, shell=True, cwd=self.project, env=self.env, capture_output=True, text=True,
                              timeout=900)

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.env["MLFLOW_TRACKING_URI"])

    def runs(self, step: str) -> list:
        client = self.client()
        exp = client.get_experiment_by_name(EXPERIMENT)
        return client.search_runs([exp.experiment_id], f"tags.`towerops.step` = '{step}'",
                                  order_by=["attributes.start_time ASC"])

    def registry(self, monkeypatch: pytest.MonkeyPatch):
        """The registry (no deploy hook) on the chain's store, for reading versions and the audit trail."""
        from registry.service import open_registry

        monkeypatch.setenv("MLFLOW_TRACKING_URI", self.env["MLFLOW_TRACKING_URI"])
        monkeypatch.delenv("TOWEROPS_AUDIT_DB_URL", raising=False)
        return open_registry(str(self.project / "configs" / "registry.yaml"), deploy=False)

    def pointer(self) -> dict:
        return json.loads((self.deployments / "production.json").read_text())


def _copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for part in PROJECT_PARTS:
        src = REPO_ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=ignore)
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    configs = dest / "configs"
    registry = yaml.safe_load((configs / "registry.yaml").read_text())
    (configs / "registry.yaml").write_text(yaml.safe_dump({**registry, "gate": OPEN_GATE}))
    (configs / "registry_strict.yaml").write_text(yaml.safe_dump({**registry, "gate": STRICT_GATE}))
    (configs / "tiny.json").write_text(json.dumps(TINY))
    monitoring = yaml.safe_load((configs / "monitoring.yaml").read_text())
    monitoring["drift"] = {**monitoring.get("drift", {}), "embedding_sample": 60}  # Evidently's t-SNE map: keep it cheap
    (configs / "monitoring_quiet.yaml").write_text(yaml.safe_dump({**monitoring, "alerts": []}))
    always = {"name": "always", "metric": "item_drift_share", "op": ">=", "threshold": -1.0, "severity": "error"}
    (configs / "monitoring_loud.yaml").write_text(yaml.safe_dump({**monitoring, "alerts": [always]}))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_deployed(chain: Chain, semver_tag: str, registry_version: str, run_id: str) -> dict:
    """The pointer names the version; its manifest lists every file with the right size and sha256."""
    pointer = chain.pointer()
    assert pointer["version"] == semver_tag, pointer
    folder = chain.deployments / semver_tag
    manifest_path = chain.deployments.parent / pointer["manifest_path"]     # bucket-relative: two_tower/v1.0.0/...
    assert manifest_path == folder / "manifest.json" and _sha256(manifest_path) == pointer["manifest_sha256"]
    manifest = json.loads(manifest_path.read_text())
    assert (manifest["version"], str(manifest["registry_version"]), manifest["run_id"]) == (
        semver_tag, registry_version, run_id)
    for rel, spec in manifest["files"].items():
        f = folder / rel
        assert f.is_file() and f.stat().st_size == spec["size"] and _sha256(f) == spec["sha256"], rel
    assert {"metadata.json", "config.json"} <= set(manifest["files"])
    assert any(r.startswith("keras/") for r in manifest["files"]) and any(r.startswith("embeddings/") for r in manifest["files"])
    return manifest


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Chain:
    root = tmp_path_factory.mktemp("chain")
    _copy_project(root / "project")
    chain = Chain(root)
    proc = chain.mlflow_run("main", users=300, items=200, interactions=6000, epochs=2, config="configs/tiny.json",
                            data_dir=root / "data", model_dir=root / "model")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return chain


def test_main_runs_every_stage_nested_under_one_run(chain: Chain, monkeypatch) -> None:
    import mlflow
    import pandas as pd

    (main,) = chain.runs("main")
    (train,), (evaluate,), (monitor,) = chain.runs("train"), chain.runs("evaluate"), chain.runs("monitor")
    for run in (main, train, evaluate, monitor):
        assert run.info.status == "FINISHED", run.data.tags.get("towerops.step")
    for run in (train, evaluate, monitor):
        assert run.data.tags["mlflow.parentRunId"] == main.info.run_id
    tags = main.data.tags
    assert tags["towerops.train_run_id"] == train.info.run_id
    assert tags["towerops.evaluate_run_id"] == evaluate.info.run_id
    assert tags["towerops.monitor_run_id"] == monitor.info.run_id
    assert (tags["towerops.registered_version"], tags["towerops.production_version"]) == ("1", "1")

    # train: the config file's values as params, per-epoch metrics, the artifacts README lists
    client = chain.client()
    p = train.data.params
    assert p["model.hidden_units"] == "[64, 32]" and p["model.item_embedding_dim"] == "32"
    assert p["data.rows.interactions"] == "6000" and len(p["data.hash"]) == 64
    for key in ("loss", "val_loss", "auc", "val_auc"):
        assert [m.step for m in client.get_metric_history(train.info.run_id, key)] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert {"training_curves.png", "data_fingerprint.json", "config.json", "metadata.json", "preprocessing", "keras",
            "saved_model"} <= artifacts

    # evaluate: the model's metrics and the baselines, on the main run's data
    m = evaluate.data.metrics
    assert {"ndcg_at_10", "popular.ndcg_at_10", "random.ndcg_at_10"} <= set(m)
    lift = next(k for k in ("lift_over_popular.ndcg_at_10", "lift.ndcg_at_10") if k in m)
    assert m[lift] == pytest.approx(m["ndcg_at_10"] / m["popular.ndcg_at_10"], rel=1e-5)
    assert evaluate.data.tags["towerops.model_uri"] == train.data.tags["towerops.model_uri"]

    # register -> gate -> promote: version 1 of the train run, production, audited with the gate's result
    reg = chain.registry(monkeypatch)
    v1 = reg.version("1")
    assert v1.run_id == train.info.run_id and v1.tags["semver"] == "1.0.0" and v1.tags["stage"] == "production"
    assert reg.alias_version("production") == "1"
    assert float(v1.tags["metric.ndcg_at_10"]) == pytest.approx(m["ndcg_at_10"], rel=1e-5)
    trail = [(e.action, e.version, e.trigger, e.gate_passed) for e in reversed(reg.history(10))]
    assert trail == [("register", "1", "main", None), ("promote", "1", "main", True)]

    # deploy: into the deployments folder, verified by the manifest's hashes
    _assert_deployed(chain, "v1.0.0", "1", train.info.run_id)
    assert tags["towerops.deployment.version"] == "v1.0.0"

    # monitor: reports against the reference logged on the train run
    assert monitor.data.tags.get("towerops.model_run_id", train.info.run_id) == train.info.run_id
    assert client.list_artifacts(monitor.info.run_id)
    assert any(a.path.startswith("monitoring") for a in client.list_artifacts(train.info.run_id))

    # the logged recommender answers
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chain.env["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(train.data.tags["towerops.model_uri"])
    users = pd.read_csv(chain.root / "data" / "users.csv", dtype=str)["user_id"].head(3).tolist()
    out = model.predict(pd.DataFrame({"user_id": users}))
    assert len(out) == 30 and out.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, 11))).all()


def test_entry_points_chain_and_exit_codes(chain: Chain, monkeypatch) -> None:
    import pandas as pd

    root = chain.root
    # synth + validate through mlflow run; bad data: validate fails, the CLI exits 2
    proc = chain.mlflow_run("synth", users=300, items=200, interactions=6000, seed=3, out=root / "data2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"users.csv", "items.csv", "interactions.csv"} <= {p.name for p in (root / "data2").iterdir()}
    proc = chain.mlflow_run("validate", data=root / "data2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = root / "bad"
    shutil.copytree(root / "data2", bad)
    inter = pd.read_csv(bad / "interactions.csv", dtype=str)
    inter.loc[4, "user_id"] = "no-such-user"
    inter.to_csv(bad / "interactions.csv", index=False)
    direct = chain.entry_command("validate", data=bad)
    assert direct.returncode == 2 and "interactions.csv" in direct.stderr and "no-such-user" in direct.stderr, direct.stderr

    # train a second model on the new data, promote it WITHOUT data: the gate evaluates on its recorded training data
    proc = chain.mlflow_run("train", data=root / "data2", config="configs/tiny.json", model_dir=root / "model2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    train2 = chain.runs("train")[-1]
    assert train2.data.params["data.source"].startswith(str(root / "data2"))
    proc = chain.mlflow_run("promote", run_id=train2.info.run_id)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reg = chain.registry(monkeypatch)
    assert reg.alias_version("production") == "2" and reg.version("2").tags["semver"] == "2.0.0"  # a retrain: a new major
    promoted = reg.history(1)[0]
    assert (promoted.action, promoted.version, promoted.trigger, promoted.gate_passed) == ("promote", "2", "mlflow_run", True)
    _assert_deployed(chain, "v2.0.0", "2", train2.info.run_id)

    from ml.data.loaders import load_dataset
    from ml.evaluation.evaluate import evaluate_bundle

    gate_ndcg = {c["metric"]: c["value"] for c in promoted.gate_result["checks"] if c["kind"] == "absolute"}["ndcg_at_10"]
    recorded = evaluate_bundle(root / "model2", load_dataset(str(root / "data2")), ks=reg.config.eval_ks, baselines=())
    assert gate_ndcg == pytest.approx(recorded.metrics["ndcg_at_10"], rel=1e-6)
    other = evaluate_bundle(root / "model2", load_dataset(str(root / "data")), ks=reg.config.eval_ks, baselines=())
    assert other.metrics["ndcg_at_10"] != pytest.approx(gate_ndcg, rel=1e-6)   # the data choice is visible

    # a failed gate: the promote entry exits 3, names the metric and the shortfall, and nothing moves
    before = (chain.deployments / "production.json").read_bytes()
    direct = chain.entry_command("promote", version=1, config="configs/registry_strict.yaml")
    assert direct.returncode == 3, direct.stderr[-3000:]
    assert "not promoted to production" in direct.stderr and "ndcg_at_10" in direct.stderr and "short by" in direct.stderr
    assert reg.alias_version("production") == "2" and (chain.deployments / "production.json").read_bytes() == before
    refused = reg.history(1)[0]
    assert (refused.action, refused.version, refused.gate_passed) == ("refused", "1", False)

    # rollback: production back to v1, the pointer re-points without uploading
    proc = chain.mlflow_run("rollback", reason="chain test")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert reg.alias_version("production") == "1"
    assert chain.pointer()["version"] == "v1.0.0"
    last = reg.history(1)[0]
    assert (last.action, last.version, last.previous_version, last.trigger) == ("rollback", "1", "2", "mlflow_run")

    # compare: champion v1 vs challenger v2 on the same data, a compare run with a winner
    proc = chain.mlflow_run("compare", champion="models:/two_tower/1", challenger="models:/two_tower/2",
                            data=root / "data2", ks="10", n_bootstrap=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (compare,) = chain.runs("compare")
    assert compare.info.status == "FINISHED" and compare.data.tags["towerops.winner"] in {"champion", "challenger", "tie"}
    assert "delta.ndcg_at_10" in compare.data.metrics

    # monitor: quiet config -> FINISHED run; an alert -> the CLI exits 1; no input -> 2
    proc = chain.mlflow_run("monitor", data=root / "data2", config="configs/monitoring_quiet.yaml",
                            workspace=root / "workspace")
    assert proc.returncode == 0, proc.stderr[-3000:]
    monitor = chain.runs("monitor")[-1]
    assert monitor.info.status == "FINISHED" and "mlflow.parentRunId" not in monitor.data.tags
    direct = chain.entry_command("monitor", data=root / "data2", config="configs/monitoring_loud.yaml",
                                 workspace=root / "workspace")
    assert direct.returncode == 1, direct.stderr[-3000:]
    assert "always" in direct.stderr + direct.stdout
    direct = chain.entry_command("monitor", data=root / "missing", workspace=root / "workspace")
    assert direct.returncode == 2 and "missing" in direct.stderr, direct.stderr[-3000:]

    # export_tfjs of the production model
    proc = chain.mlflow_run("export_tfjs", model="models:/two_tower@production", out=root / "tfjs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for tower in ("user_tower", "item_tower"):
        spec = json.loads((root / "tfjs" / tower / "model.json").read_text())
        assert spec["format"] == "layers-model" and spec["weightsManifest"]



def test_catalog_refresh_then_retrain_through_mlflow_run(chain: Chain, monkeypatch) -> None:
    """`mlflow run -e catalog_refresh` on an items-only folder gives a minor version in production whose old
    item embeddings are the production bundle's bit for bit; `mlflow run -e retrain` then gives a new major."""
    import numpy as np
    import pandas as pd

    from ml.data.loaders import _for_csv, load_dataset

    root = chain.root
    reg = chain.registry(monkeypatch)
    base_version = reg.alias_version("production")
    base_semver = reg.version(base_version).tags["semver"]
    major = base_semver.split(".")[0]
    items = load_dataset(str(root / "data")).items
    new = items.sample(12, random_state=5).copy()
    new["item_id"] = [f"fresh{i:02d}" for i in range(12)]
    folder = root / "items-only"   # the catalog alone: a refresh reads no users or interactions
    folder.mkdir()
    _for_csv(pd.concat([items, new], ignore_index=True)).to_csv(folder / "items.csv", index=False)

    proc = chain.mlflow_run("catalog_refresh", items=folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    refreshed_version = reg.alias_version("production")
    assert refreshed_version != base_version
    semver = reg.version(refreshed_version).tags["semver"]
    assert semver.split(".")[0] == major and semver != base_semver and semver.endswith(".0"), (base_semver, semver)
    (run,) = chain.runs("catalog_refresh")
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" in run.data.tags
    (parent,) = chain.runs("catalog_refresh_pipeline")
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.info.status == "FINISHED"
    assert chain.pointer()["version"] == f"v{semver}"
    def deployed(version: str) -> tuple[list[str], np.ndarray]:   # the catalog as storage holds it
        folder = chain.deployments / f"v{version}" / "embeddings"
        return json.loads((folder / "item_ids.json").read_text()), np.load(folder / "item_embeddings.npy")

    ids, emb = deployed(semver)
    base_ids, base_emb = deployed(base_semver)
    assert {f"fresh{i:02d}" for i in range(12)} <= set(ids) and len(ids) == len(base_ids) + 12
    row = {item: i for i, item in enumerate(ids)}
    assert np.array_equal(emb[[row[i] for i in base_ids]], base_emb)

    # three epochs, not main's two: new towers (a retrain that reproduces the towers bit for bit keeps the
    # embedding space, and semver rightly calls it a minor)
    proc = chain.mlflow_run("retrain", data=root / "data", training_config="configs/tiny.json", epochs=3,
                            reason="chain test")
    assert proc.returncode == 0, proc.stderr[-4000:]
    retrained = reg.alias_version("production")
    new_semver = reg.version(retrained).tags["semver"]
    assert int(new_semver.split(".")[0]) > int(major), (semver, new_semver)
    (retrain,) = chain.runs("retrain")
    assert retrain.info.status == "FINISHED" and retrain.data.tags.get("towerops.gate_passed") == "true"
    assert chain.pointer()["version"] == f"v{new_semver}"
