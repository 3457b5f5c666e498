"""Benchmark: seconds for all monitoring reports over a 100,000-interaction window.

Prints one JSON object. Baseline measured in the same run: building the reference from
the same amount of training data (feature tables, top-k, calibration), so the ratio
says what the Evidently reports cost on top of the plain pandas/numpy work. Goal: <= 60 s.
Usage: python bench/monitor.py [--interactions 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.setdefault("TOWEROPS_LOG_DIR", tempfile.mkdtemp(prefix="bench-logs-"))

    import numpy as np

    from ml.bundle.load import load_bundle
    from ml.data.synthetic import generate_synthetic
    from ml.training.trainer import create_standard_trainer
    from monitoring.config import load_monitoring_config
    from monitoring.prediction_log import read_prediction_log, write_prediction_log
    from monitoring.reference import build_reference
    from monitoring.run import _window, compute_reports

    cfg = load_monitoring_config("configs/monitoring.yaml")
    train = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=1)
    current = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=1, shift=0.5)
    model_dir = Path(tempfile.mkdtemp(prefix="bench-monitor-model-"))
    tiny = {"model": {"user_embedding_dim": 32, "item_embedding_dim": 32, "hidden_units": [64, 32]},
            "training": {"batch_size": 1024, "epochs": 1, "seed": 7}, "features": {"text_dim": 16}}
    create_standard_trainer(model_dir=model_dir, config=tiny).train(dataset=train.dataset)
    bundle = load_bundle(model_dir)

    t0 = time.perf_counter()
    reference = build_reference(bundle, train.dataset, cfg.reference)
    baseline_s = time.perf_counter() - t0

    rng = np.random.default_rng(0)
    log_path = model_dir / "predictions.jsonl"
    start = np.datetime64("2026-11-03T00:00:00")
    write_prediction_log(({"ts": str(start + np.timedelta64(int(i * 0.2 * 1000), "ms")), "user_id": f"u{i % args.users + 1:05d}",
                           "latency_ms": float(rng.gamma(2.0, 10.0)), "top_k": 10,
                           "items": [bundle.item_ids[j] for j in rng.choice(len(bundle.item_ids), 10, replace=False)],
                           "scores": sorted(rng.normal(0, 1, 10).tolist(), reverse=True), "model_version": "1"}
                          for i in range(args.requests)), log_path)

    t1 = time.perf_counter()
    window = _window(current.dataset, None, None, "bench")
    log_frame = read_prediction_log(log_path)
    outputs = compute_reports(reference, bundle, window, log_frame, cfg)
    reports_s = time.perf_counter() - t1
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.perf_counter()
        for o in outputs:
            o.save(tmp)
        save_s = time.perf_counter() - t2
    total = reports_s + save_s
    print(json.dumps({
        "bench": "monitor",
        "interactions": int(len(window.interactions)),
        "requests": args.requests,
        "reports": [o.name for o in outputs],
        "reports_s": round(reports_s, 2),
        "save_html_json_s": round(save_s, 2),
        "total_s": round(total, 2),
        "baseline_reference_build_s": round(baseline_s, 2),
        "ratio_total_to_baseline": round(total / baseline_s, 2) if baseline_s > 0 else None,
        "goal_s": 60,
        "within_goal": total <= 60,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
