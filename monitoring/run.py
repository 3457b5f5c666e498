"""`monitor_run`: compare a current window with the production model's reference, save
and log the reports, feed the Evidently workspace, fire alerts.

Order matters: the model, its reference and the current window are resolved and every
report computed *before* the MLflow run starts, so bad input (an empty window, missing
columns, no reference on the run) fails with a clear error and leaves no run behind.
Exit status of the CLI: 0 no alert, 1 alert(s) fired, 2 bad input.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from ml.logs import get_logger
from monitoring.alerts import Alert, apply_rollback_policy, deliver_alerts, evaluate_alerts, log_alerts
from monitoring.config import MonitoringConfig, load_monitoring_config

log = get_logger("monitoring")


@dataclass
class MonitorResult:
    run_id: str | None
    model_run_id: str
    model_uri: str
    metrics: dict[str, float]
    alerts: list[Alert]
    report_paths: dict[str, dict[str, Path]] = field(default_factory=dict)
    snapshot_ids: list[str] = field(default_factory=list)
    rollback: Any = None

    @property
    def exit_code(self) -> int:
        return 1 if self.alerts else 0


# ------------------------------------------------------------------ model resolution
def resolve_model(model: str | None, model_name: str = "two_tower", alias: str = "production") -> tuple[str, str]:
    """(training run id, model URI) for a run id, `runs:/...`, `models:/name@alias|version`, or
    None = `models:/<model_name>@<alias>` when that alias exists in the registry."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ml.settings import ensure_tracking_uri

    ensure_tracking_uri()
    client = MlflowClient()
    if model is None:
        model = f"models:/{model_name}@{alias}"
        try:
            client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            raise ValueError(f"no production model: registered model {model_name!r} has no alias {alias!r} "
                             f"({exc.message if hasattr(exc, 'message') else exc}); pass --run-id or --model-uri") from None
    if model.startswith("models:/"):
        ref = model[len("models:/"):].strip("/")
        try:
            if ref.startswith("m-") and "/" not in ref and "@" not in ref:  # an MLflow 3 logged-model id
                return client.get_logged_model(ref).source_run_id, model
            if "@" in ref:
                name, al = ref.split("@", 1)
                version = client.get_model_version_by_alias(name, al)
            else:
                name, ver = ref.split("/", 1)
                version = client.get_model_version(name, ver)
        except (MlflowException, ValueError) as exc:
            raise ValueError(f"cannot resolve {model}: {exc}") from None
        run_id = version.run_id
        if not run_id and getattr(version, "model_id", None):
            run_id = client.get_logged_model(version.model_id).source_run_id
        if not run_id:
            raise ValueError(f"{model} (version {version.version}) has no source run; pass --run-id of its training run")
        return run_id, model
    if model.startswith("runs:/"):
        run_id = model[len("runs:/"):].split("/", 1)[0]
        return run_id, model
    try:
        run = client.get_run(model)
    except MlflowException as exc:
        raise ValueError(f"run {model!r} not found in {client.tracking_uri}: pass a training run id, runs:/ or models:/ URI") from exc
    return model, run.data.tags.get("towerops.model_uri") or f"runs:/{model}/recommender"


def download_bundle(model_uri: str) -> Path:
    """Local folder of the bundle inside a logged pyfunc (artifacts/model_dir)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    # The pyfunc's `model_dir` artifact keeps the bundle folder's own name under artifacts/.
    nested = sorted((local / "artifacts").glob("*/metadata.json")) if (local / "artifacts").is_dir() else []
    for cand in (local / "artifacts" / "model_dir", *(p.parent for p in nested), local / "model_dir", local):
        if (cand / "metadata.json").exists():
            return cand
    raise FileNotFoundError(f"{model_uri} holds no towerops model bundle (no artifacts/model_dir/metadata.json)")


# ------------------------------------------------------------------ current window
def _window(dataset, start: Any, end: Any, source: str):
    from ml.data.schema import Dataset

    inter = dataset.interactions
    if start is not None:
        inter = inter[inter["timestamp"] >= pd.Timestamp(start)]
    if end is not None:
        inter = inter[inter["timestamp"] < pd.Timestamp(end)]
    if inter.empty:
        span = f" between {start or '-inf'} and {end or '+inf'}" if start is not None or end is not None else ""
        raise ValueError(f"current window from {source} has no interactions{span}: nothing to monitor; "
                         "widen --start/--end or point at data with swipes")
    items = dataset.items[dataset.items["item_id"].astype(str).isin(set(inter["item_id"].astype(str)))]
    users = dataset.users[dataset.users["user_id"].astype(str).isin(set(inter["user_id"].astype(str)))]
    return Dataset(users=users.reset_index(drop=True), items=items.reset_index(drop=True),
                   interactions=inter.reset_index(drop=True), sources=dataset.sources)


def compute_reports(reference, bundle, dataset=None, log_frame: pd.DataFrame | None = None,
                    config: MonitoringConfig | None = None, metadata: Mapping[str, str] | None = None) -> list:
    """Every report the inputs allow: data-side reports need `dataset` (the window), serving
    reports need `log_frame` (prediction log); online quality needs outcomes (swipes)."""
    from monitoring import reports as R
    from monitoring.prediction_log import explode_recommendations
    from monitoring.reference import embed_dataset, embedding_frame, expected_like_rate, item_feature_frame, top_k_frame, user_feature_frame

    config = config or MonitoringConfig()
    meta = dict(metadata or {})
    drift = {**config.drift, "embedding_threshold": next(
        (a.threshold for a in config.alerts if a.metric == "item_embedding_drift"), 0.65)}
    top_k = int(reference.manifest.get("top_k", 10))
    popular = set(reference.manifest.get("popular_items", []))
    rng = np.random.default_rng(0)

    class _Timed(list):
        """Logs how long each report took (the bench's breakdown)."""

        def __init__(self) -> None:
            super().__init__()
            self._t = time.perf_counter()

        def append(self, item) -> None:
            now = time.perf_counter()
            log.debug("report %s: %.2fs", item.name, now - self._t)
            self._t = now
            super().append(item)

    out = _Timed()
    cur_preds = explode_recommendations(log_frame, popular) if log_frame is not None else None
    if dataset is not None:
        cur_items = item_feature_frame(dataset.items)
        cur_users = user_feature_frame(dataset.users, dataset.interactions)
        out.append(R.item_drift_report(reference["items"], cur_items, drift, meta))
        out.append(R.user_drift_report(reference["users"], cur_users, drift, meta))
        out.append(R.data_quality_report(reference["items"], cur_items, reference.manifest.get("vocab", {}), meta))
        _, item_emb, user_ids, user_emb = embed_dataset(bundle, dataset)
        out.append(R.embedding_drift_report(
            {"item": reference["item_embeddings"], "user": reference["user_embeddings"]},
            {"item": embedding_frame(item_emb), "user": embedding_frame(user_emb)}, drift, meta))
        if cur_preds is None:  # what the model would recommend to this window's users now
            n_sample = min(len(user_ids), int(config.reference.get("sample_users", 2000)))
            pick = np.sort(rng.choice(len(user_ids), n_sample, replace=False))
            swiped = dataset.interactions.assign(row=dataset.interactions["item_id"].astype(str).map(bundle.item_index))
            by_user = swiped.dropna(subset=["row"]).groupby(swiped["user_id"].astype(str))["row"].agg(list)
            seen = [np.asarray(by_user.get(user_ids[p], []), dtype=np.int64) for p in pick]
            cur_preds = top_k_frame(user_emb[pick], np.asarray(bundle.item_embeddings), bundle.item_ids, top_k, popular, seen)
        outcomes = _outcomes(reference, bundle, dataset, log_frame, top_k, expected_like_rate)
        if len(outcomes) >= int(config.drift.get("min_outcomes", 30)):
            out.append(R.online_quality_report(outcomes, reference.manifest.get("expected_like_rate_top_k"), meta))
        else:
            log.info("online quality skipped: %d recommended-and-swiped pair(s) < drift.min_outcomes=%s",
                     len(outcomes), config.drift.get("min_outcomes"))
    if cur_preds is not None and len(cur_preds):
        out.append(R.prediction_drift_report(reference["predictions"], cur_preds, drift, meta))
    if log_frame is not None:
        out.append(R.performance_report(log_frame, str(config.performance.get("window", "5min")), meta))
    return list(out)


def _outcomes(reference, bundle, dataset, log_frame, top_k: int, expected_fn: Callable) -> pd.DataFrame:
    """Recommended items the user then swiped: liked (0/1), expected like rate of the score."""
    inter = dataset.interactions[["user_id", "item_id", "label"]].astype({"user_id": str, "item_id": str})
    inter = inter.drop_duplicates(["user_id", "item_id"], keep="last")
    if log_frame is not None:
        from monitoring.prediction_log import explode_recommendations

        recs = explode_recommendations(log_frame.dropna(subset=["user_id"]), set())[["user_id", "item_id", "score"]]
        recs = recs.drop_duplicates(["user_id", "item_id"], keep="last")
    else:  # known users: the production model's own top-k over the catalog (its embeddings predate the window)
        known = [u for u in inter["user_id"].unique() if u in bundle.user_index]
        if not known:
            return pd.DataFrame(columns=["liked", "expected"])
        rows = np.array([bundle.user_index[u] for u in known])
        from monitoring.reference import top_k_frame

        preds = top_k_frame(np.asarray(bundle.user_embeddings)[rows], np.asarray(bundle.item_embeddings),
                            bundle.item_ids, top_k, set())
        recs = preds.assign(user_id=np.repeat(np.asarray(known, dtype=object), top_k if len(preds) else 0)[:len(preds)])
    joined = recs.merge(inter, on=["user_id", "item_id"], how="inner")
    return pd.DataFrame({"liked": joined["label"].astype(float).to_numpy(),
                         "expected": expected_fn(reference["calibration"], joined["score"].to_numpy(dtype=float))})


def sample_window(dataset, frac: float = 0.5, seed: int = 0):
    """A fresh window from the same population: a random `frac` of users with all their swipes.

    Why users, not rows: per-user counts (n_swipes, like rate) keep their distribution, so an
    unshifted window is not flagged for an artefact of the sampling itself.
    """
    from ml.data.schema import Dataset

    if not 0.0 < frac <= 1.0:
        raise ValueError(f"frac={frac} must be in (0, 1]")
    users = pd.Series(sorted(set(dataset.interactions["user_id"].astype(str))))
    keep = set(users.sample(frac=frac, random_state=seed))
    inter = dataset.interactions[dataset.interactions["user_id"].astype(str).isin(keep)]
    return Dataset(users=dataset.users, items=dataset.items, interactions=inter.reset_index(drop=True),
                   sources={**dataset.sources, "interactions": f"sample({frac}, seed={seed})"})


# ------------------------------------------------------------------ the job
@dataclass
class MonitorInputs:
    """What one monitoring run compares: the model, its reference, the window and/or the served log."""

    model_run_id: str
    model_uri: str
    reference: Any
    bundle: Any
    source: str                        # as it may be logged: env:VAR as written, a DSN without password
    window: Any = None                 # the current Dataset (None: prediction log only)
    log_frame: pd.DataFrame | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return {"model_uri": self.model_uri, "model_run_id": self.model_run_id}


def monitor_run(
    current_source: str | Path | None = None,
    model_uri_or_run_id: str | None = None,
    config: MonitoringConfig | str | Path | None = None,
    prediction_log: str | Path | None = None,
    workspace: str | Path | None = "monitoring_workspace",
    start: Any = None,
    end: Any = None,
    queries: Mapping[str, str] | None = None,
    dataset: Any = None,
    nested: bool = False,
    run_name: str = "monitor",
    rollback: Callable[..., Any] | None = None,
) -> MonitorResult:
    """Monitor one window. `current_source` is a data folder or postgresql:// DSN (with
    optional `queries` per table), or pass an in-memory `dataset`; `prediction_log` adds
    prediction drift from what was served, latency and throughput."""
    cfg = config if isinstance(config, MonitoringConfig) else load_monitoring_config(config)
    t0 = time.time()
    inputs = load_inputs(cfg, current_source, model_uri_or_run_id, prediction_log, start, end, queries, dataset)
    outputs = compute_reports(inputs.reference, inputs.bundle, inputs.window, inputs.log_frame, cfg, inputs.metadata)
    metrics: dict[str, float] = {}
    for o in outputs:
        metrics.update(o.metrics)
    if inputs.window is not None:
        metrics["window_interactions"] = float(len(inputs.window.interactions))
    alerts = evaluate_alerts(metrics, cfg.alerts)
    result = record_monitor_run(inputs, outputs, metrics, alerts, cfg, workspace=workspace,
                                params={"monitor.source": inputs.source[:500], "monitor.prediction_log": str(prediction_log),
                                        "monitor.start": str(start), "monitor.end": str(end)},
                                nested=nested, run_name=run_name, rollback=rollback)
    log.info("monitor run %s: %d report(s), %d alert(s), %.1fs", result.run_id, len(outputs), len(alerts),
             time.time() - t0)
    return result


def load_inputs(cfg: MonitoringConfig, current_source: str | Path | None, model_uri_or_run_id: str | None,
                prediction_log: str | Path | None = None, start: Any = None, end: Any = None,
                queries: Mapping[str, str] | None = None, dataset: Any = None) -> MonitorInputs:
    """Resolve the model, its reference and bundle, the current window and the prediction log:
    everything that can be bad input, checked before any MLflow run starts."""
    from ml.bundle.load import load_bundle
    from ml.data.loaders import describe_source, load_dataset
    from monitoring.prediction_log import read_prediction_log
    from monitoring.reference import load_reference

    if current_source is None and dataset is None and prediction_log is None:
        raise ValueError("nothing to monitor: pass current data (--data folder or postgresql:// DSN) "
                         "and/or --prediction-log")
    model_run_id, model_uri = resolve_model(model_uri_or_run_id, cfg.rollback.get("model_name", "two_tower"),
                                            cfg.rollback.get("alias", "production"))
    reference = load_reference(model_run_id)
    bundle = load_bundle(download_bundle(model_uri))
    source = "in-memory dataset" if dataset is not None else describe_source(str(current_source))
    if dataset is None and current_source is not None:
        dataset = load_dataset(str(current_source), **({"queries": dict(queries)} if queries else {}))
    window = _window(dataset, start, end, source) if dataset is not None else None
    log_frame = None
    if prediction_log is not None:
        log_frame = read_prediction_log(prediction_log, start, end)
        if log_frame.empty:
            raise ValueError(f"prediction log {prediction_log} has no requests in the window "
                             f"[{start or '-inf'}, {end or '+inf'}): nothing to monitor")
    return MonitorInputs(model_run_id, model_uri, reference, bundle, source, window, log_frame)


def record_monitor_run(inputs: MonitorInputs, outputs: list, metrics: dict[str, float], alerts: list[Alert],
                       cfg: MonitoringConfig, workspace: str | Path | None, params: Mapping[str, str],
                       nested: bool = False, run_name: str = "monitor",
                       rollback: Callable[..., Any] | None = None) -> MonitorResult:
    """The MLflow run: params, finite metrics, the reports as artifacts, workspace snapshots, then
    the alerts (logged, delivered, rollback policy)."""
    import mlflow

    from ml.tracking.runs import start_run

    report_paths: dict[str, dict[str, Path]] = {}
    snapshot_ids: list[str] = []
    with start_run(run_name=run_name, nested=nested, tags={
            "towerops.step": "monitor", "towerops.model_run_id": inputs.model_run_id,
            "towerops.model_uri": inputs.model_uri}) as run:
        run_id = run.info.run_id
        mlflow.log_params(dict(params))
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            for o in outputs:
                report_paths[o.name] = o.save(Path(tmp) / "reports")
            (Path(tmp) / "reports" / "summary.json").write_text(json.dumps(
                {"metrics": metrics, "alerts": [vars(a) for a in alerts], "model_uri": inputs.model_uri}, indent=2))
            mlflow.log_artifacts(str(Path(tmp) / "reports"), "monitoring/reports")
        report_paths = {n: {k: Path(f"monitoring/reports/{p.name}") for k, p in ps.items()} for n, ps in report_paths.items()}
        if workspace is not None:
            from monitoring.workspace import add_snapshots

            snapshot_ids = add_snapshots(workspace, [o.snapshot for o in outputs], cfg.workspace.get("project", "towerops"))
            mlflow.set_tag("towerops.evidently_workspace", str(Path(workspace).resolve()))
        mlflow.set_tag("towerops.alerts", ",".join(a.name for a in alerts) or "none")
        log_alerts(alerts, f"model {inputs.model_uri}, monitor run {run_id}")
        rolled = None
        if alerts:
            try:
                deliver_alerts(alerts, cfg, {"model": inputs.model_uri, "run_id": run_id, "source": inputs.source})
            except ConnectionError as exc:
                log.error("alert webhook failed: %s", exc)
                mlflow.set_tag("towerops.webhook", "failed")
            rolled = apply_rollback_policy(alerts, cfg, rollback)
            if rolled is not None:
                mlflow.set_tag("towerops.rollback", str(rolled)[:500])
    return MonitorResult(run_id, inputs.model_run_id, inputs.model_uri, metrics, alerts, report_paths, snapshot_ids,
                         rolled)


def backfill_reference(run_id: str, data: str, config: str | Path | None = None) -> str:
    """Build and log `monitoring/reference/` on a training run that lacks it (`towerops monitor
    reference`); returns the training run id."""
    from ml.data.loaders import load_dataset
    from monitoring.reference import log_reference

    cfg = load_monitoring_config(config)
    dataset = load_dataset(data)
    train_run_id, uri = resolve_model(run_id)
    log_reference(train_run_id, download_bundle(uri), dataset, cfg.reference)
    return train_run_id
