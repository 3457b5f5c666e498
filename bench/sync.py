"""Deployment throughput: upload a ~200 MB model version with the deployer, then re-sync it
unchanged, against a baseline measured in the same run on the same bytes and server.

Backends (all on loopback): S3 through boto3 on moto's standalone server (baseline: raw
boto3 `upload_file` of each file, same thread count), Supabase Storage's REST API on the
test server in tests/support/storage_server.py (baseline: raw multipart HTTP POSTs with
httpx, same thread count), and the local folder (baseline: shutil.copy2). The deployer's
extra work is sha256 hashing, a stat before and after each upload, the manifest and the
pointer; the no-op re-sync is one stat per file plus reading the manifest and pointer.

Prints one JSON object.

    python bench/sync.py [--mb 200] [--backends s3,supabase,local] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOWEROPS_LOG_LEVEL", "WARNING")


def make_version(root: Path, total_mb: float) -> Path:
    """A bundle-shaped folder of ~total_mb: the item embeddings hold most of it, as in real
    bundles (n_items x 768 float32), plus the small files every version has."""
    small = {"metadata.json": b'{"format": 1, "embedding_dim": 768}', "config.json": b"{}",
             "keras/two_tower.keras": 2_000_000, "keras/user_tower.keras": 1_000_000, "keras/item_tower.keras": 1_000_000,
             "saved_model/user_tower/saved_model.pb": 300_000, "saved_model/user_tower/variables/variables.index": 2_000,
             "saved_model/user_tower/variables/variables.data-00000-of-00001": 3_000_000,
             "saved_model/item_tower/saved_model.pb": 300_000, "saved_model/item_tower/variables/variables.index": 2_000,
             "saved_model/item_tower/variables/variables.data-00000-of-00001": 3_000_000,
             "preprocessing/pipeline.joblib": 1_500_000, "preprocessing/spec.json": 5_000,
             "embeddings/item_ids.json": 800_000, "tfjs/user_tower/model.json": 20_000,
             "tfjs/user_tower/group1-shard1of1.bin": 3_000_000, "tfjs/item_tower/model.json": 20_000,
             "tfjs/item_tower/group1-shard1of1.bin": 3_000_000}
    for rel, content in small.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else os.urandom(content))
    used = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    with open(root / "embeddings" / "item_embeddings.npy", "wb") as fh:
        left = max(int(total_mb * 1e6) - used, 1)
        while left > 0:
            n = min(left, 16 << 20)
            fh.write(os.urandom(n))
            left -= n
    return root


def files_of(root: Path) -> list[tuple[str, Path]]:
    return sorted(((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file()),
                  key=lambda x: -x[1].stat().st_size)


def size_of(root: Path) -> int:
    return sum(p.stat().st_size for _, p in files_of(root))


def run_deployer(backend, bundle: Path, workers: int) -> dict:
    from registry.deploy.config import DeployConfig
    from registry.deploy.deployer import SupabaseDeployer
    from registry.deploy.storage import RetryPolicy

    cfg = DeployConfig(workers=workers, retry=RetryPolicy(attempts=3, backoff_s=0.2), max_versions=10)
    deployer = SupabaseDeployer(cfg, backend=backend, model_name="bench", use_table=False, progress=False)
    t0 = time.perf_counter()
    first = deployer.deploy_model(bundle, "v1.0.0")
    deploy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = deployer.deploy_model(bundle, "v1.0.0")
    noop_s = time.perf_counter() - t0
    assert again.uploaded == [] and again.unchanged, "re-sync uploaded something"
    # mb_per_s: bytes over the upload phase only (the deployer's own measure, DeployResult.mb_per_s);
    # deploy_mb_per_s: over the whole deploy_model call (hashing, manifest, pointer included)
    return {"deploy_s": round(deploy_s, 3), "upload_s": round(first.upload_seconds, 3),
            "mb_per_s": round(first.mb_per_s, 1), "deploy_mb_per_s": round(first.bytes_uploaded / 1e6 / deploy_s, 1),
            "files": first.files, "noop_resync_s": round(noop_s, 3), "noop_uploaded": len(again.uploaded)}


def with_ratios(out: dict) -> dict:
    """Add the ratios against the baseline measured in the same run (same bytes, same server)."""
    out["upload_ratio_vs_baseline"] = round(out["mb_per_s"] / out["baseline_mb_per_s"], 3)
    out["deploy_time_ratio_vs_baseline"] = round(out["deploy_s"] / out["baseline_s"], 3)
    return out


def bench_s3(bundle: Path, workers: int) -> dict:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from moto.server import ThreadedMotoServer

    from registry.deploy.storage.s3 import S3Backend

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # binds a free port itself
    server.start()
    url = "http://{}:{}".format(*server.get_host_and_port())
    try:
        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                              aws_secret_access_key="bench")
        client.create_bucket(Bucket="raw")
        client.create_bucket(Bucket="model-artifacts")
        transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda f: client.upload_file(str(f[1]), "raw", f"bench/v1.0.0/{f[0]}", Config=transfer),
                          files_of(bundle)))
        raw_s = time.perf_counter() - t0
        ours = run_deployer(S3Backend("model-artifacts", endpoint_url=url, region="us-east-1", access_key="bench",
                                      secret_key="bench"), bundle, workers)
    finally:
        server.stop()
    return with_ratios({"baseline": "raw boto3 upload_file per file (moto server)", "baseline_s": round(raw_s, 3),
                        "baseline_mb_per_s": round(size_of(bundle) / 1e6 / raw_s, 1), **ours})


def bench_supabase(bundle: Path, workers: int, tmp: Path) -> dict:
    import httpx
    from support.storage_server import StorageServer

    from registry.deploy.storage.supabase import SupabaseStorageBackend

    server = StorageServer(tmp / "storage-root").start()
    try:
        server.create_bucket("raw")
        server.create_bucket("model-artifacts")
        headers = {"apikey": server.service_key, "Authorization": f"Bearer {server.service_key}", "x-upsert": "true"}
        with httpx.Client(headers=headers, timeout=300) as http:
            def post(item):
                rel, path = item
                with open(path, "rb") as fh:
                    r = http.post(f"{server.storage_url}object/raw/bench/v1.0.0/{rel}",
                                  files={"file": (path.name, fh, "application/octet-stream")})
                r.raise_for_status()

            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(post, files_of(bundle)))
            raw_s = time.perf_counter() - t0
        ours = run_deployer(SupabaseStorageBackend("model-artifacts", url=server.url, key=server.service_key),
                            bundle, workers)
    finally:
        server.kill()
    return with_ratios({"baseline": "raw multipart POST /object per file with httpx (loopback Storage API server)",
                        "baseline_s": round(raw_s, 3), "baseline_mb_per_s": round(size_of(bundle) / 1e6 / raw_s, 1),
                        **ours})


def bench_local(bundle: Path, workers: int, tmp: Path) -> dict:
    from registry.deploy.storage.local import LocalFolderBackend

    t0 = time.perf_counter()
    for rel, path in files_of(bundle):
        dest = tmp / "raw" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    raw_s = time.perf_counter() - t0
    ours = run_deployer(LocalFolderBackend(tmp / "deployments", "model-artifacts"), bundle, workers)
    return with_ratios({"baseline": "shutil.copy2 per file", "baseline_s": round(raw_s, 3),
                        "baseline_mb_per_s": round(size_of(bundle) / 1e6 / raw_s, 1), **ours})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the model version (MB)")
    parser.add_argument("--backends", default="s3,supabase,local")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request lines
    tmp = Path(tempfile.mkdtemp(prefix="towerops-bench-sync-"))
    os.environ["TOWEROPS_LOG_DIR"] = str(tmp / "logs")
    try:
        bundle = make_version(tmp / "bundle", args.mb)
        out = {"version_mb": round(size_of(bundle) / 1e6, 1), "files": len(files_of(bundle)), "workers": args.workers,
               "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            sub = tmp / f"run-{name}-{uuid.uuid4().hex[:6]}"
            sub.mkdir()
            out[name] = {"s3": lambda: bench_s3(bundle, args.workers),
                         "supabase": lambda: bench_supabase(bundle, args.workers, sub),
                         "local": lambda: bench_local(bundle, args.workers, sub)}[name]()
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
