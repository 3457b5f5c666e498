"""Tracking overhead: the same training with no MLflow vs through a PostgreSQL-backed
`towerops server` on loopback, and the cost of logging metric values over HTTP.

Prints one JSON object. Same data, config and seed for both trainings; a short warm-up
training first so TF start-up costs land on neither side. The tracked side is
`ml.tracking.training.train_run` (params, per-epoch metrics, artifacts, the pyfunc model, all
proxied through the server), the untracked side calls the trainer directly (it still
writes the same model bundle to disk). Metric logging: 1,000 values in one log_batch
vs `--one-by-one` single log_metric calls, both as seconds per 1,000 values.

    python bench/tracking.py [--users 2000 --items 1000 --interactions 50000 --epochs 5]
    PostgreSQL: $TOWEROPS_BENCH_PG_DSN (default postgresql://postgres@127.0.0.1:5432/postgres);
    a throwaway database is created there and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOWEROPS_LOG_LEVEL", "WARNING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(dsn: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql)
    conn.close()


def _start_server(dsn: str, state: Path) -> tuple[subprocess.Popen, str]:
    import requests

    from ml.tracking.server import ServerSettings, prepare

    port = _free_port()
    plan = prepare(ServerSettings(dsn=dsn, port=port, workers=1, artifacts_destination=str(state / "artifacts"),
                                  state_dir=state))
    proc = subprocess.Popen(plan.argv, env=plan.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if requests.get(url + "/health", timeout=2).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"mlflow server did not come up on {url}")


class FitTimer:
    """Keras callback factory: wall time of model.fit (epochs plus per-epoch callbacks, incl. MLflow's)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def callback(self):
        import keras

        timer = self

        class _Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self._t0 = time.perf_counter()

            def on_train_end(self, logs=None):
                timer.seconds.append(time.perf_counter() - self._t0)

        return _Timer()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--interactions", type=int, default=50000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--embedding-dim", type=int, default=64)
    ap.add_argument("--one-by-one", type=int, default=300, help="single log_metric calls timed (scaled to 1,000)")
    args = ap.parse_args()

    import mlflow  # noqa: F401 - imported up front: import time is neither side's tracking cost

    import ml.training.trainer
    from ml.config import load_config
    from ml.data.synthetic import generate_synthetic
    from ml.tracking.server import parse_dsn

    timer = FitTimer()
    real_factory = ml.training.trainer.create_standard_trainer

    def timed_trainer(model_dir, config=None, callbacks=()):  # noqa: ANN001, ANN202 - instrumentation only
        return real_factory(model_dir, config, callbacks=[*callbacks, timer.callback()])

    ml.training.trainer.create_standard_trainer = timed_trainer  # train_run imports it from ml.training.trainer at call time

    d = args.embedding_dim
    overrides = {"model.user_embedding_dim": d, "model.item_embedding_dim": d, "model.hidden_units": [2 * d, d],
                 "training.epochs": args.epochs, "training.patience": args.epochs, "training.batch_size": 256,
                 "training.seed": 0, "features.text_dim": 32}
    config = load_config(None, overrides)  # the same config object's values on both sides
    warm_config = load_config(None, {**overrides, "training.epochs": 1})
    data = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=0)
    warm = generate_synthetic(n_users=200, n_items=100, n_interactions=2000, seed=1)
    admin_dsn = os.environ.get("TOWEROPS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"towerops_bench_{uuid.uuid4().hex[:10]}"
    dsn = parse_dsn(admin_dsn).with_database(db).libpq_uri

    with tempfile.TemporaryDirectory(prefix="towerops-bench-") as tmp_s:
        tmp = Path(tmp_s)
        timed_trainer(tmp / "warm", warm_config).train(dataset=warm.dataset)

        t0 = time.perf_counter()
        timed_trainer(tmp / "untracked", config).train(dataset=data.dataset)
        untracked_s = time.perf_counter() - t0

        _admin(admin_dsn, f'CREATE DATABASE "{db}"')
        proc = None
        try:
            t_srv = time.perf_counter()
            proc, url = _start_server(dsn, tmp / "server")
            server_start_s = time.perf_counter() - t_srv
            os.environ["MLFLOW_TRACKING_URI"] = url
            from mlflow import MlflowClient
            from mlflow.entities import Metric

            from ml.tracking.training import train_run

            t0 = time.perf_counter()
            result = train_run(data.dataset, None, overrides, model_dir=tmp / "tracked", experiment="bench")
            tracked_s = time.perf_counter() - t0

            client = MlflowClient(url)
            run_id = client.create_run(client.create_experiment("bench-metrics")).info.run_id
            now = int(time.time() * 1000)
            t0 = time.perf_counter()
            client.log_batch(run_id, metrics=[Metric("m_batch", float(i), now, i) for i in range(1000)])
            batch_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(args.one_by_one):
                client.log_metric(run_id, "m_single", float(i), step=i)
            single_s = (time.perf_counter() - t0) * 1000 / args.one_by_one
            client.set_terminated(run_id)
            assert len(client.get_metric_history(run_id, "m_batch")) == 1000
        finally:
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            _admin(admin_dsn, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    print(json.dumps({
        "workload": {"users": args.users, "items": args.items, "interactions": args.interactions,
                     "epochs": args.epochs, "embedding_dim": args.embedding_dim},
        "untracked_fit_s": round(timer.seconds[1], 2),
        "tracked_fit_s": round(timer.seconds[2], 2),
        "fit_ratio_tracked_vs_untracked": round(timer.seconds[2] / timer.seconds[1], 3),
        "fit_overhead_pct": round(100 * (timer.seconds[2] / timer.seconds[1] - 1), 1),
        "untracked_train_s": round(untracked_s, 2),
        "tracked_train_s": round(tracked_s, 2),
        "ratio_tracked_vs_untracked": round(tracked_s / untracked_s, 3),
        "overhead_pct": round(100 * (tracked_s / untracked_s - 1), 1),
        "note": "fit_* = Keras fit incl. per-epoch MLflow log_batch; *_train_s = whole call incl. bundle export "
                "and, tracked, uploading artifacts + the pyfunc model through the server",
        "goal_overhead_pct": 5.0,
        "server_start_s": round(server_start_s, 1),
        "metrics_s_per_1000_values_log_batch": round(batch_s, 3),
        "metrics_s_per_1000_values_one_by_one": round(single_s, 3),
        "one_by_one_calls_timed": args.one_by_one,
        "tracked_run_id": result.run_id,
        "backend": "PostgreSQL via towerops server (1 worker), artifacts proxied to a local folder",
    }))


if __name__ == "__main__":
    main()
