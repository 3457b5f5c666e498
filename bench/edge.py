"""The edge client at catalog scale, in headless Chromium, next to the Python engine on the same bundle.

Prints one JSON object. The catalog is bench/serve.py's cached bundle: the synthetic generator's
items (100,000 by default) through a trained seed-size tower ([512, 256, 128] -> 768, one epoch;
speed does not depend on model quality), deployed with `towerops deploy`'s deployer to a local
folder and served on loopback by `towerops edge serve`'s server. For each catalog encoding (the
exact low-rank catalog of the edge export, and the full n x 768 embeddings):

    time_to_first_recommendation_ms   navigation start -> demo ready (page, TF.js, production.json,
                                      manifest, every file fetched and sha256-checked, user tower
                                      built) + the first ranking after the first swipe
    per_swipe_rerank_ms               each later swipe: user tower + scoring of the whole catalog
                                      (client timings), and the same with the page re-rendered
    agreement_with_engine             the page's top-10 for the swipes vs RealtimeInferenceEngine

Baseline, same run, same bundle and swipes: RealtimeInferenceEngine in this process (its load
time, and its cold-user recommendations per request).

    python bench/edge.py [--items 100000 --dim 768 --swipes 30 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOWEROPS_LOG_LEVEL", "WARNING")

import numpy as np  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MODEL = "bench_edge"


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "mean": round(float(a.mean()), 2), "n": int(len(a))}


def deploy(bundle: Path, root: Path) -> tuple[Path, dict]:
    """Deploy the bundle as bench_edge v1.0.0 to a local folder; returns (bucket folder, edge.json)."""
    from registry.deploy.config import DeployConfig
    from registry.deploy.deployer import SupabaseDeployer
    from registry.deploy.storage.local import LocalFolderBackend

    t0 = time.perf_counter()
    deployer = SupabaseDeployer(DeployConfig(backend="local", local_dir=str(root)),
                                backend=LocalFolderBackend(root, "model-artifacts"), model_name=MODEL, use_table=False,
                                progress=False)
    deployer.deploy_model(model_dir=bundle, version="v1.0.0")
    bucket = root / "model-artifacts"
    edge = json.loads((bucket / MODEL / "v1.0.0" / "tfjs" / "edge.json").read_text())
    edge["_deploy_s"] = round(time.perf_counter() - t0, 1)
    return bucket, edge


def swipe_plan(ids: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """n (item id, liked|noped) swipes: about two likes for each nope, distinct items."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(ids), n, replace=False)
    return [(ids[r], "liked" if rng.random() < 0.65 else "noped") for r in rows]


def bench_browser(context, url: str, plan: list[tuple[str, str]], engine) -> dict:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=600_000)
    if page.get_attribute("body", "data-state") != "ready":
        raise RuntimeError(f"the demo did not load: {page.inner_text('#error')}")
    info = page.evaluate("""() => { const r = toweropsDemo.rec; return {ready_ms: toweropsDemo.readyAt,
        load: r.timings, bytes: r.bytesFetched, n: r.nItems, dim: r.dim, scoring: r.scoring, backend: r.backend}; }""")
    ui, client = [], []
    for item, label in plan:
        t = page.evaluate("""([item, label]) => { const t0 = performance.now(); toweropsDemo.swipe(item, label);
            const ui = performance.now() - t0; const c = toweropsDemo.timings[toweropsDemo.timings.length - 1];
            return {ui, total: c.total_ms, embed: c.embed_ms, score: c.score_ms}; }""", [item, label])
        ui.append(t["ui"])
        client.append(t)
    shown = page.eval_on_selector_all("#rec-list li", "els => els.map(e => [e.dataset.itemId, Number(e.dataset.score)])")
    liked = [i for i, lab in plan if lab == "liked"]
    noped = [i for i, lab in plan if lab == "noped"]
    want = engine.get_recommendations(liked_items=liked, noped_items=noped, top_k=10)
    page.close()
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    first = client[0]
    later = client[1:]
    return {
        "scoring": info["scoring"], "tfjs_backend": info["backend"], "items": info["n"], "embedding_dim": info["dim"],
        "downloaded_and_verified_mb": round(info["bytes"] / 1e6, 1),
        "time_to_first_recommendation_ms": round(info["ready_ms"] + first["total"], 1),
        "ready_ms": round(info["ready_ms"], 1),
        "client_load_ms": {k: round(v, 1) for k, v in info["load"].items()},
        "first_rank_ms": round(first["total"], 2),
        "per_swipe_rerank_ms": pct([c["total"] for c in later]),
        "per_swipe_user_tower_ms": pct([c["embed"] for c in later]),
        "per_swipe_scoring_ms": pct([c["score"] for c in later]),
        "per_swipe_with_render_ms": pct(ui[1:]),
        "agreement_with_engine": {
            "top10_same_order": [i for i, _ in shown] == [w["item_id"] for w in want],
            "top10_overlap": len({i for i, _ in shown} & {w["item_id"] for w in want}),
            "max_abs_score_diff": float(max(abs(s - w["score"]) for (_, s), w in zip(shown, want))),
        },
    }


def bench_engine(bundle: Path, plan: list[tuple[str, str]]) -> tuple[dict, object]:
    from ml.inference.engine import RealtimeInferenceEngine

    t0 = time.perf_counter()
    engine = RealtimeInferenceEngine(bundle, scoring="exact")  # the engine's default: exact, rank reduction on
    engine.warmup()
    load_ms = (time.perf_counter() - t0) * 1e3
    times = []
    for n in range(1, len(plan) + 1):  # the same growing histories as the page
        liked = [i for i, lab in plan[:n] if lab == "liked"]
        noped = [i for i, lab in plan[:n] if lab == "noped"]
        t = time.perf_counter()
        engine.get_recommendations(liked_items=liked, noped_items=noped, top_k=10)
        times.append((time.perf_counter() - t) * 1e3)
    return {"load_ms": round(load_ms, 1), "per_request_ms": pct(times[1:]), "first_request_ms": round(times[0], 2)}, engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--interactions", type=int, default=200_000)
    ap.add_argument("--swipes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "results" / "serve")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOWEROPS_LOG_DIR", str(args.workdir / "logs"))
    from playwright.sync_api import sync_playwright
    from serve import build_bundle

    from pipelines.edge_server import EdgeServer

    t0 = time.perf_counter()
    bundle = build_bundle(args.workdir, args.items, args.users, args.interactions, args.dim, args.seed)
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
                    "bundle": str(bundle), "bundle_build_s": round(time.perf_counter() - t0, 1)}
    plan = swipe_plan(json.loads((bundle / "embeddings" / "item_ids.json").read_text()), args.swipes, args.seed)
    engine_result, engine = bench_engine(bundle, plan)
    result["baseline_python_engine"] = engine_result
    with tempfile.TemporaryDirectory(prefix="towerops-bench-edge-") as tmp:
        bucket, edge = deploy(bundle, Path(tmp))
        result["deploy_s"] = edge["_deploy_s"]
        result["edge_export"] = {"scoring": edge["scoring"]["kind"], "rank": edge["scoring"].get("rank"),
                                 "user_input_dim": edge["user_dim"]}
        server = EdgeServer(bucket, MODEL, port=0)
        server.start_background()
        try:
            with sync_playwright() as p:
                for mode, query in (("lowrank", ""), ("full", "&lowrank=0")):
                    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
                        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                                       args=CHROMIUM_ARGS)
                        try:
                            result[f"browser_{mode}"] = bench_browser(context, server.url + query, plan, engine)
                        finally:
                            context.close()
        finally:
            server.shutdown()
            server.server_close()
    base = result["baseline_python_engine"]
    result["ratios"] = {
        f"{mode}_rerank_p50_over_engine_request_p50": round(result[f"browser_{mode}"]["per_swipe_rerank_ms"]["p50"]
                                                             / max(base["per_request_ms"]["p50"], 1e-9), 2)
        for mode in ("lowrank", "full")}
    result["ratios"].update({
        f"{mode}_time_to_first_recommendation_over_engine_load": round(
            result[f"browser_{mode}"]["time_to_first_recommendation_ms"] / max(base["load_ms"], 1e-9), 2)
        for mode in ("lowrank", "full")})
    result["ratios"]["lowrank_over_full_time_to_first_recommendation"] = round(
        result["browser_lowrank"]["time_to_first_recommendation_ms"]
        / result["browser_full"]["time_to_first_recommendation_ms"], 2)
    result["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
