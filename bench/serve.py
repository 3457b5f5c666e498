"""Serving and batch-scoring throughput, each figure next to a bare numpy brute-force baseline.

Prints one JSON object. The catalog is a real bundle: the synthetic generator's items
(100,000 by default) through a trained seed-size tower ([512, 256, 128] -> 768, one epoch:
serving speed does not depend on model quality), cached under bench/results/.

    in_process   top-10 for known users through RealtimeInferenceEngine (exact, and ANN when
                 --ann), interleaved request by request with a bare `E @ u` + argpartition
                 baseline on the same users, p50/p99 ms; cold users (tower on 5 swipes) too
    http         `mlflow models serve` of the logged pyfunc (prediction log on, sample 1.0),
                 one request per user over keep-alive, p50/p99 ms and the server's RSS, next to
                 a bare stdlib ThreadingHTTPServer doing the numpy brute force
    batch        users/min of ml.inference.batch.scoring.score_users (chunked float32 GEMM + argpartition,
                 seen items masked) next to the bare GEMM + argpartition loop, same users;
                 ANN batch with its recall@10 against exact

    python bench/serve.py [--items 100000 --users 20000 --requests 300 --batch-users 4096 --ann]
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOWEROPS_LOG_LEVEL", "WARNING")

import numpy as np  # noqa: E402

GOALS = {"in_process_p50_ms": 6.0, "http_p99_ms": 20.0, "batch_users_per_min": 100_000, "serving_rss_gb": 1.5}


# ------------------------------------------------------------------ the bundle
def build_bundle(workdir: Path, items: int, users: int, interactions: int, dim: int, seed: int) -> Path:
    """A trained bundle of the requested catalog size (cached by its parameters)."""
    out = workdir / f"bundle-{items}x{dim}-{users}u-{interactions}i-s{seed}"
    if (out / "metadata.json").exists():
        return out
    from ml.data.synthetic import generate_synthetic
    from ml.training.trainer import create_standard_trainer

    data = generate_synthetic(n_users=users, n_items=items, n_interactions=interactions, seed=seed)
    config = {"model": {"user_embedding_dim": dim, "item_embedding_dim": dim, "hidden_units": [512, 256, 128],
                        "dropout_rate": 0.2, "l2_regularization": 0.0001},
              "training": {"batch_size": 1024, "epochs": 1, "patience": 1, "seed": seed}}
    create_standard_trainer(model_dir=out, config=config).train(dataset=data.dataset)
    return out


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": int(len(a))}


def bare_topk(emb: np.ndarray, u: np.ndarray, k: int) -> np.ndarray:
    s = emb @ u
    idx = np.argpartition(-s, k)[:k]
    return idx[np.argsort(-s[idx])]


# ------------------------------------------------------------------ in process
def bench_in_process(bundle: Path, n_req: int, k: int, ann: bool, seed: int) -> dict:
    from ml.inference.engine import RealtimeInferenceEngine

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    engine = RealtimeInferenceEngine(bundle, scoring="exact")  # rank reduction on (the default)
    load_s = time.perf_counter() - t0
    full = RealtimeInferenceEngine(bundle, scoring="exact", lowrank=False)
    b = engine.bundle
    emb = np.load(bundle / "embeddings" / "item_embeddings.npy")  # the baseline's own copy
    users = rng.choice(len(b.user_ids), n_req, replace=False)
    engine.warmup()
    for r in users[:5]:  # warm caches / BLAS threads
        engine.get_recommendations(b.user_ids[r], top_k=k)
        full.get_recommendations(b.user_ids[r], top_k=k)
        bare_topk(emb, b.user_embeddings[r], k)
    t_engine, t_full, t_bare, agree, max_diff = [], [], [], 0, 0.0
    for r in users:  # interleaved, so load from other processes hits all three alike
        uid, u = b.user_ids[r], np.asarray(b.user_embeddings[r])
        t0 = time.perf_counter()
        got = engine.get_recommendations(uid, top_k=k, exclude_seen=False)
        t1 = time.perf_counter()
        full.get_recommendations(uid, top_k=k, exclude_seen=False)
        t2 = time.perf_counter()
        ref = bare_topk(emb, u, k)
        t3 = time.perf_counter()
        t_engine.append(t1 - t0)
        t_full.append(t2 - t1)
        t_bare.append(t3 - t2)
        agree += len({b.item_index[g["item_id"]] for g in got} & set(ref.tolist()))
        max_diff = max(max_diff, max(abs(g["score"] - float(emb[b.item_index[g["item_id"]]] @ u)) for g in got))
    cold = []
    for _ in range(min(100, n_req)):
        liked = [b.item_ids[i] for i in rng.choice(len(b.item_ids), 5, replace=False)]
        t0 = time.perf_counter()
        engine.get_recommendations(None, liked_items=liked[:4], noped_items=liked[4:], top_k=k)
        cold.append(time.perf_counter() - t0)
    red = engine.reduction
    out = {"catalog": list(emb.shape), "top_k": k,
           "exact": {**pct(t_engine), "rank": red.rank if red else None,
                     "max_row_residual": float(f"{red.max_residual:.3g}") if red else 0.0,
                     f"top{k}_agreement_vs_brute_force": round(agree / (k * len(users)), 5),
                     "max_abs_score_diff_vs_brute_force": float(f"{max_diff:.3g}"), "engine_load_s": round(load_s, 2)},
           "exact_full_rank": pct(t_full),
           "baseline_numpy_brute_force": pct(t_bare),
           "cold_user_exact": pct(cold)}
    if ann:
        from ml.inference.ann import build_bundle_index

        meta = build_bundle_index(bundle, n_queries=1000, k=k, seed=seed)
        annengine = RealtimeInferenceEngine(bundle, scoring="ann")
        t_ann = []
        for r in users:
            t0 = time.perf_counter()
            annengine.get_recommendations(b.user_ids[r], top_k=k)
            t_ann.append(time.perf_counter() - t0)
        out["ann"] = {**pct(t_ann), "index": meta["factory"], "nprobe": meta["nprobe"], "index_dim": meta["dim"],
                      f"recall_at_{k}_vs_exact": round(meta[f"recall_at_{k}"], 4), "build_s": meta["build_s"]}
        out["ann_nprobe_sweep"] = ann_sweep(annengine, emb, b.user_embeddings, users, k)
    return out


def ann_sweep(engine, emb: np.ndarray, user_emb: np.ndarray, users: np.ndarray, k: int) -> list[dict]:
    """Recall@k (vs full brute force) and raw index latency for a range of nprobe."""
    from ml.inference.ann import exact_search

    q = np.asarray(user_emb[users], dtype=np.float32)
    exact, _ = exact_search(emb, q, k)
    qr = engine.query(q)
    rows = []
    for nprobe in (8, 16, 32, 64, 128, 256):
        engine.ann.set_nprobe(nprobe)
        times, hits = [], 0
        for i in range(len(q)):
            t0 = time.perf_counter()
            found, _ = engine.ann.search(qr[i:i + 1], k)
            times.append(time.perf_counter() - t0)
            hits += len(set(found[0].tolist()) & set(exact[i].tolist()))
        rows.append({"nprobe": nprobe, f"recall_at_{k}": round(hits / exact.size, 4), **pct(times)})
    return rows


# ------------------------------------------------------------------ HTTP
BARE_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import numpy as np
root = sys.argv[1]
emb = np.load(root + "/embeddings/item_embeddings.npy")
users = np.load(root + "/users/user_embeddings.npy")
ids = json.load(open(root + "/embeddings/item_ids.json"))
index = {u: i for i, u in enumerate(json.load(open(root + "/users/user_ids.json")))}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        s = emb @ users[index[req["user_id"]]]
        k = int(req.get("top_k", 10))
        top = np.argpartition(-s, k)[:k]; top = top[np.argsort(-s[top])]
        body = json.dumps({"items": [ids[i] for i in top], "scores": s[top].tolist()}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        stack.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def start(argv: list[str], env: dict, port: int, path: str, timeout: float = 600) -> subprocess.Popen:
    import requests

    log = tempfile.NamedTemporaryFile(prefix="towerops-bench-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:4]} exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"{argv[:4]} not up after {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def timed_requests(url: str, payloads: list[dict]) -> list[float]:
    import requests

    session = requests.Session()
    for p in payloads[:5]:
        session.post(url, json=p, timeout=60).raise_for_status()
    times = []
    for p in payloads:
        t0 = time.perf_counter()
        r = session.post(url, json=p, timeout=60)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
    return times


def bench_http(bundle: Path, n_req: int, k: int, ann: bool, seed: int, tmp: Path) -> dict:
    import mlflow

    from ml.tracking.training import log_recommender

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "TOWEROPS_LOG_DIR": str(tmp / "logs"),
           "TOWEROPS_PREDICTION_LOG": str(tmp / "predictions.jsonl"), "TOWEROPS_PREDICTION_LOG_SAMPLE": "1.0",
           "PYTHONPATH": str(REPO), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    # artifacts inside tmp too (the default would be ./mlruns of the working directory)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench-serve", artifact_location=(tmp / "artifacts").as_uri()))
    with mlflow.start_run():
        uri = log_recommender(bundle).model_uri
    user_ids = json.loads((bundle / "users" / "user_ids.json").read_text())
    rng = np.random.default_rng(seed + 1)
    chosen = [user_ids[i] for i in rng.choice(len(user_ids), n_req, replace=False)]
    out: dict = {"requests": n_req}

    port = free_port()
    bare = start([sys.executable, "-c", BARE_SERVER, str(bundle), str(port)], env, port, "/")
    try:
        rss = tree_rss_bytes(bare.pid)
        times = timed_requests(f"http://127.0.0.1:{port}/", [{"user_id": u, "top_k": k} for u in chosen])
        out["baseline_bare_http_numpy"] = {**pct(times), "rss_gb": round(rss / 2**30, 3)}
    finally:
        stop(bare)
    modes = ["exact"] + (["ann"] if ann else [])
    for mode in modes:
        port = free_port()
        proc = start([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                      "-h", "127.0.0.1", "-p", str(port)], {**env, "TOWEROPS_SCORING": mode}, port, "/ping")
        try:
            payloads = [{"dataframe_records": [{"user_id": u, "top_k": k}]} for u in chosen]
            times = timed_requests(f"http://127.0.0.1:{port}/invocations", payloads)
            out[f"mlflow_serve_{mode}"] = {**pct(times), "rss_gb": round(tree_rss_bytes(proc.pid) / 2**30, 3)}
        finally:
            stop(proc)
    lines = (tmp / "predictions.jsonl").read_text().count("\n")
    out["prediction_log_lines"] = lines
    return out


# ------------------------------------------------------------------ batch
def bench_batch(bundle: Path, n_users: int, k: int, ann: bool, chunk: int) -> dict:
    from ml.inference.batch.scoring import score_users
    from ml.inference.engine import RealtimeInferenceEngine

    engine = RealtimeInferenceEngine(bundle, scoring="exact")
    b = engine.bundle
    n_users = min(n_users, len(b.user_ids))
    rows = np.arange(n_users)
    emb = np.load(bundle / "embeddings" / "item_embeddings.npy")
    users = np.asarray(b.user_embeddings[:n_users])

    t0 = time.perf_counter()
    for lo in range(0, n_users, chunk):  # bare baseline: GEMM + argpartition, no masking, no sort
        s = users[lo:lo + chunk] @ emb.T
        np.argpartition(-s, k, axis=1)[:, :k]
    bare_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    exact_top = np.concatenate([c.item_rows for c in score_users(engine, k, chunk, user_rows=rows)])
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    numpy_top = np.concatenate([c.item_rows for c in score_users(engine, k, chunk, user_rows=rows, backend="numpy")])
    numpy_s = time.perf_counter() - t0
    same = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(numpy_top, exact_top)) / exact_top.size
    out = {"users": n_users, "items": int(len(emb)), "top_k": k, "chunk": chunk,
           "rank": engine.reduction.rank if engine.reduction else None,
           "exact_users_per_min": round(n_users / exact_s * 60), "exact_s": round(exact_s, 2),
           "exact_numpy_backend_users_per_min": round(n_users / numpy_s * 60),
           "faiss_vs_numpy_backend_agreement": round(same, 5),
           "baseline_numpy_gemm_users_per_min": round(n_users / bare_s * 60), "baseline_s": round(bare_s, 2)}
    if ann:
        annengine = RealtimeInferenceEngine(bundle, scoring="ann")
        t0 = time.perf_counter()
        ann_top = np.concatenate([c.item_rows for c in score_users(annengine, k, chunk, user_rows=rows)])
        ann_s = time.perf_counter() - t0
        hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(ann_top, exact_top))
        out.update({"ann_users_per_min": round(n_users / ann_s * 60), "ann_s": round(ann_s, 2),
                    f"ann_recall_at_{k}_vs_exact": round(hits / exact_top.size, 4)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--interactions", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--http-requests", type=int, default=300)
    ap.add_argument("--batch-users", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--ann", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "results" / "serve")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOWEROPS_LOG_DIR", str(args.workdir / "logs"))

    t0 = time.perf_counter()
    bundle = build_bundle(args.workdir, args.items, args.users, args.interactions, args.dim, args.seed)
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
                    "bundle": str(bundle), "bundle_build_s": round(time.perf_counter() - t0, 1), "goals": GOALS}
    result["in_process"] = bench_in_process(bundle, args.requests, args.top_k, args.ann, args.seed)
    if not args.skip_http:
        with tempfile.TemporaryDirectory(prefix="towerops-bench-") as tmp:
            result["http"] = bench_http(bundle, args.http_requests, args.top_k, args.ann, args.seed, Path(tmp))
    result["batch"] = bench_batch(bundle, args.batch_users, args.top_k, args.ann, args.chunk)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
