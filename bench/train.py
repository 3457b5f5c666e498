"""Training throughput: the `train` entry point vs a bare Keras/TF loop, same data, same run.

Prints one JSON object. The entry point runs as a subprocess (`python -m pipelines.cli
train`, SQLite tracking) so its wall time and peak RSS are the user's; the baseline is a
bare `tf.function` loop over the same two towers (in-batch softmax only) on the same
feature arrays, same batch size and epochs. Steady-state throughput uses epochs after
the first (graph tracing), read from the entry point's per-epoch log lines.

    python bench/train.py [--users 2000 --items 5000 --interactions 100000 --epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bare_loop(x: dict, y, valid, cfg, epochs: int) -> list[float]:
    """Same towers and batch size, in-batch softmax, Adam, a validation pass per epoch like
    the entry point's; no metrics, callbacks or tracking."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ml.model.towers import build_tower

    keras.utils.set_random_seed(0)
    m = cfg.model
    ut = build_tower(x["user_features"].shape[1], m.hidden_units, m.user_embedding_dim, m.dropout_rate,
                     m.l2_regularization, "user_tower")
    it = build_tower(x["item_features"].shape[1], m.hidden_units, m.item_embedding_dim, m.dropout_rate,
                     m.l2_regularization, "item_tower")
    opt = keras.optimizers.Adam(cfg.training.learning_rate)
    variables = ut.trainable_variables + it.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(u, i):
        with tf.GradientTape() as tape:
            ue, ie = ut(u, training=True), it(i, training=True)
            logits = tf.matmul(ue, ie, transpose_b=True) / m.temperature
            labels = tf.range(tf.shape(logits)[0])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            loss += tf.add_n(ut.losses + it.losses)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(reduce_retracing=True)
    def eval_step(u, i):
        ue, ie = ut(u, training=False), it(i, training=False)
        logits = tf.matmul(ue, ie, transpose_b=True) / m.temperature
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.range(tf.shape(logits)[0]), logits))

    bs = cfg.training.batch_size
    n = len(y)
    times = []
    rng = np.random.default_rng(0)
    uf, itf = x["user_features"], x["item_features"]
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            step(tf.constant(uf[idx]), tf.constant(itf[idx]))
        if valid is not None:
            vu, vi = valid[0]["user_features"], valid[0]["item_features"]
            for start in range(0, len(vu), bs):
                eval_step(tf.constant(vu[start:start + bs]), tf.constant(vi[start:start + bs]))
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--interactions", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    from ml.config import load_config
    from ml.data.loaders import load_folder
    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.training.trainer import TwoTowerTrainer

    tmp = Path(tempfile.mkdtemp(prefix="towerops-bench-train-"))
    data = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=0)
    write_synthetic(data, tmp / "data")
    overrides = {"training.epochs": args.epochs, "training.patience": args.epochs}
    cfg = load_config(REPO / "configs" / "training.json", overrides)

    # 1. the entry point, as a user runs it
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", TOWEROPS_LOG_DIR=str(tmp / "logs"),
               TOWEROPS_LOG_LEVEL="INFO")
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(tmp / "data"), "--model-dir", str(tmp / "model"),
           "--set", f"training.epochs={args.epochs}", "--set", f"training.patience={args.epochs}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(err[-3000:])
        raise SystemExit(f"train entry point failed with exit code {proc.returncode}")
    import resource

    peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    epoch_times = [float(s) for s in re.findall(r"epoch \d+/\d+ \(([\d.]+)s\)", err)]

    # 2. the bare loop on the very same arrays
    trainer = TwoTowerTrainer(tmp / "unused", cfg)
    trainer.prepare(load_folder(tmp / "data"))
    x_train, y_train, valid = trainer.training_arrays(trainer.prepared)
    n_train = len(y_train)
    bare_times = bare_loop(x_train, y_train, valid, cfg, args.epochs)

    steady = lambda ts: sum(ts[1:]) / max(len(ts) - 1, 1) if len(ts) > 1 else ts[0]  # noqa: E731
    entry_epoch, bare_epoch = steady(epoch_times), steady(bare_times)
    overhead = wall - sum(epoch_times)
    result = {
        "workload": {"users": args.users, "items": args.items, "interactions": args.interactions,
                     "train_examples": n_train, "epochs": args.epochs, "embedding_dim": cfg.embedding_dim,
                     "hidden_units": cfg.model.hidden_units, "batch_size": cfg.training.batch_size},
        "entry_point": {"wall_s": round(wall, 2), "epoch_s": [round(t, 2) for t in epoch_times],
                        "fixed_overhead_s": round(overhead, 2),
                        "examples_per_s_steady": round(n_train / entry_epoch, 1),
                        "examples_per_s_end_to_end": round(n_train * args.epochs / wall, 1),
                        "peak_rss_mb": round(peak_rss_mb, 1)},
        "bare_keras_loop": {"epoch_s": [round(t, 2) for t in bare_times],
                            "examples_per_s_steady": round(n_train / bare_epoch, 1)},
        "ratio_entry_vs_bare": round(bare_epoch / entry_epoch, 3),
        "goal_ratio": 0.9,
        "extrapolated_100_epochs_min": round((overhead + 100 * entry_epoch) / 60, 2),
        "goal_100_epochs_min": 10,
        "note": "both sides run a validation pass per epoch; epoch 1 (tracing) is left out of steady state",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
