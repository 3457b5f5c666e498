"""MLflow plumbing shared by every tracked run: the tracking URI, starting or joining a run,
and surviving a tracking server that goes away mid-run."""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

from ml.logs import get_logger
from ml.settings import ReadOnlyStoreError, check_store_writable, ensure_tracking_uri, get_settings, is_read_only_error

log = get_logger("training")

DEFAULT_EXPERIMENT = "towerops"


def start_run(run_name: str | None = None, experiment: str | None = None, nested: bool = False, tags: Mapping[str, str] | None = None):
    """`mlflow.start_run` that joins the run `mlflow run` created (MLFLOW_RUN_ID) when there is one."""
    import mlflow

    uri = ensure_tracking_uri()
    check_store_writable(uri)  # a read-only mlflow.db: a clear error before any run
    try:
        if not mlflow.active_run() and not os.environ.get("MLFLOW_RUN_ID"):
            set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT, uri)
        if nested and mlflow.active_run():
            return mlflow.start_run(run_name=run_name, nested=True, tags=dict(tags or {}))
        return mlflow.start_run(run_name=run_name, tags=dict(tags or {}))
    except Exception as exc:
        if is_read_only_error(exc):  # e.g. a disk remounted read-only after the check
            raise ReadOnlyStoreError(f"the tracking store {uri} refused a write (read-only): make the database and its "
                                     "folder writable, or point MLFLOW_TRACKING_URI at a writable store") from None
        raise


def set_experiment(name: str, uri: str) -> None:
    """`mlflow.set_experiment`, except that a new experiment on a SQLite store keeps its artifacts
    beside the database (`<db folder>/mlruns/<name>`) rather than in whatever folder the process
    runs in (the embedded default, mlflow.db in the working folder, keeps ./mlruns)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ml.settings import sqlite_file

    db = sqlite_file(uri)
    if db is not None and mlflow.get_experiment_by_name(name) is None:
        try:
            folder = re.sub(r"[^\w.-]", "_", name) or "experiment"
            mlflow.create_experiment(name, artifact_location=str(db.resolve().parent / "mlruns" / folder))
        except MlflowException:  # created meanwhile by another process: use it as it is
            pass
    mlflow.set_experiment(name)


class TrackingServerUnavailable(ConnectionError):
    """The MLflow tracking server stopped answering during a run (the run is not FINISHED)."""


def tracking_server_reachable(uri: str | None = None, timeout_s: float = 3.0) -> bool:
    """True when the tracking URI is not an HTTP server, or when its /health answers."""
    import requests

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        return requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).ok
    except requests.RequestException:
        return False


@contextmanager
def guard_tracking_loss(active_run: Any) -> Iterator[Any]:
    """Wrap an `mlflow.start_run(...)` so losing the tracking server ends in a clear error.

    MLflow's client already retries each request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backoff),
    so a server back within that window is invisible and the run carries on. When a
    request finally fails and /health does not answer, wait up to
    $TOWEROPS_TRACKING_RECOVERY_S (default 120) for the server, mark the run FAILED there,
    and raise TrackingServerUnavailable. If it never comes back, the run is left RUNNING
    on the server (say so, with the command that fixes it) and the client's active-run
    stack is cleared, so MLflow's exit hook cannot later mark it FINISHED.
    """
    run_id = active_run.info.run_id
    try:
        with active_run:
            try:
                yield active_run
            except Exception as exc:
                if tracking_server_reachable():
                    raise
                raise _tracking_lost(run_id, exc) from exc
    except TrackingServerUnavailable:
        raise
    except Exception as exc:  # ending the run failed: the server is (still) gone
        if isinstance(exc.__context__, TrackingServerUnavailable):
            raise exc.__context__ from None
        if tracking_server_reachable():
            raise
        raise TrackingServerUnavailable(_lost_message(run_id, exc, recovered=False)) from exc


def _lost_message(run_id: str, exc: BaseException, recovered: bool) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    reason = " ".join(str(exc).split())[:240]
    if recovered:
        return (f"the MLflow tracking server {uri} stopped answering during run {run_id} ({reason}); "
                "it is back and the run is marked FAILED. Train again.")
    return (f"the MLflow tracking server {uri} stopped answering during run {run_id} ({reason}) and did not come "
            f"back; the run stays RUNNING there until you run `towerops server mark-failed {run_id}` against it.")


def _tracking_lost(run_id: str, exc: BaseException) -> TrackingServerUnavailable:
    """Wait for the server, then let the enclosing `with` mark the run FAILED (or not block on it)."""
    from mlflow import MlflowClient

    deadline = time.time() + get_settings().tracking_recovery_s
    log.error("tracking server unreachable during run %s; waiting until %s for it to come back to mark the run "
              "FAILED", run_id, time.strftime("%H:%M:%S", time.localtime(deadline)))
    while time.time() < deadline and not tracking_server_reachable():
        time.sleep(1.0)
    if tracking_server_reachable():
        try:
            MlflowClient().set_tag(run_id, "towerops.failure", "tracking server unreachable during training")
        except Exception:  # noqa: BLE001 - the status below matters, the tag is a courtesy
            pass
        log.error("tracking server is back; run %s will be marked FAILED", run_id)
        return TrackingServerUnavailable(_lost_message(run_id, exc, recovered=True))
    # Server still down: end the run locally with one quick attempt, not another retry window.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    log.error("tracking server still unreachable; run %s stays RUNNING on it", run_id)
    return TrackingServerUnavailable(_lost_message(run_id, exc, recovered=False))


def mlflow_epoch_callback(run_id: str):
    """Keras callback logging each epoch's metrics (train and val_) with step=epoch."""
    import keras
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()

    class _MlflowEpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            now = int(time.time() * 1000)
            metrics = [Metric(k, float(v), now, epoch) for k, v in (logs or {}).items() if isinstance(v, (int, float))]
            if metrics:
                client.log_batch(run_id, metrics=metrics, synchronous=True)

    return _MlflowEpochLogger()
