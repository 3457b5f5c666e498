"""Reference frames for monitoring, built from a model bundle plus its training data.

Why a stored reference: "drift" only means something against what the production
model was trained on. The frames are computed once, from the bundle and the training
dataset, and logged as artifacts `monitoring/reference/*` of the model's *training run*
(`log_reference`). `pipelines/workflow.py` calls it right after training; for a run
trained elsewhere, backfill with `towerops monitor reference --run-id <id> --data <src>`.
Monitoring never rebuilds a missing reference silently: `load_reference` raises,
naming the run and the missing artifact.

Files (all Parquet except the manifest):
    items.parquet            item feature table (one row per item in the data)
    users.parquet            user feature table (one row per user with swipes)
    item_embeddings.parquet  sample of item embeddings, columns e0..e{d-1}
    user_embeddings.parquet  sample of known users' embeddings
    predictions.parquet      top-k per sampled user: rank, score, item_id, popular (0/1)
    calibration.parquet      score bins -> observed like rate (the model's expected like rate)
    reference.json           manifest: top_k, popular item ids, category vocabularies, sizes
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ml.inference.scoring import top_k_indices
from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.bundle.load import ModelBundle
    from ml.data.schema import Dataset

log = get_logger("monitoring")

REFERENCE_DIR = "monitoring/reference"
FRAME_NAMES = ("items", "users", "item_embeddings", "user_embeddings", "predictions", "calibration")
ITEM_NUMERIC = ["price", "duration_s", "release_year", "n_tags", "title_words"]
ITEM_CATEGORICAL = ["genre", "maker"]
USER_NUMERIC = ["n_swipes", "n_likes", "like_rate"]


@dataclass
class Reference:
    """The loaded reference: frames by name plus the manifest."""

    frames: dict[str, pd.DataFrame]
    manifest: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.frames[name]


# ------------------------------------------------------------------ feature tables
def item_feature_frame(items: pd.DataFrame) -> pd.DataFrame:
    """Human-readable item features (the drift report's columns), one row per item."""
    released = pd.to_datetime(items["released_at"], errors="coerce")
    tags = items["tags"].map(lambda t: len(t) if isinstance(t, (list, tuple, np.ndarray)) else 0)
    return pd.DataFrame({
        "item_id": items["item_id"].astype(str).to_numpy(),
        "price": pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=float),
        "duration_s": pd.to_numeric(items["duration_s"], errors="coerce").to_numpy(dtype=float),
        "release_year": (released.dt.year + released.dt.dayofyear / 366.0).to_numpy(dtype=float),
        "n_tags": tags.to_numpy(dtype=float),
        "title_words": items["title"].fillna("").astype(str).str.split().map(len).to_numpy(dtype=float),
        "genre": items["genre"].astype(object).where(items["genre"].notna(), None).to_numpy(),
        "maker": items["maker"].astype(object).where(items["maker"].notna(), None).to_numpy(),
    })


def user_feature_frame(users: pd.DataFrame, interactions: pd.DataFrame) -> pd.DataFrame:
    """Per active user: history counts, like rate and the profile columns."""
    inter = interactions.assign(user_id=interactions["user_id"].astype(str))
    grouped = inter.groupby("user_id")["label"].agg(n_swipes="size", n_likes="sum")
    grouped["like_rate"] = grouped["n_likes"] / grouped["n_swipes"]
    profile = users.assign(user_id=users["user_id"].astype(str)).set_index("user_id")
    out = grouped.join(profile, how="left").reset_index()
    return out.astype({c: float for c in USER_NUMERIC})


def profile_columns(users_frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(numeric, categorical) profile columns of a user feature table."""
    extra = [c for c in users_frame.columns if c not in ("user_id", *USER_NUMERIC)]
    num = [c for c in extra if pd.api.types.is_numeric_dtype(users_frame[c]) and not pd.api.types.is_bool_dtype(users_frame[c])]
    return num, [c for c in extra if c not in num]


def embedding_frame(emb: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(emb, dtype=np.float32), columns=[f"e{i}" for i in range(emb.shape[1])])


# ------------------------------------------------------------------ model outputs
def embed_dataset(bundle: "ModelBundle", dataset: "Dataset") -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Item and user embeddings of a dataset through the bundle's towers: what the
    production model would compute for these items and these users' histories."""
    pl = bundle.pipeline
    items = dataset.items
    item_vectors = pl.item_matrix(items)
    item_ids = items["item_id"].astype(str).tolist()
    catalog_rows = bundle.item_id_rows(item_ids)  # ID stage: items the model never saw use the OOV row
    item_tower = bundle.load_item_tower()
    item_emb = np.asarray(item_tower.predict(bundle.item_inputs(catalog_rows, item_features=item_vectors),
                                             batch_size=8192, verbose=0), dtype=np.float32)
    item_pos = {iid: n for n, iid in enumerate(item_ids)}
    inter = dataset.interactions
    user_ids = sorted(set(inter["user_id"].astype(str)))
    user_pos = {u: n for n, u in enumerate(user_ids)}
    user_rows = inter["user_id"].astype(str).map(user_pos).to_numpy(dtype=np.int64)
    item_rows = inter["item_id"].astype(str).map(item_pos).to_numpy(dtype=np.int64)
    labels = inter["label"].to_numpy(dtype=np.int64)
    users = dataset.users.assign(user_id=dataset.users["user_id"].astype(str)).set_index("user_id")
    profiles = pl.profile_matrix(users.reindex(user_ids).reset_index())
    feats = bundle.user_inputs(profiles, user_rows, item_rows, labels, id_rows=bundle.user_id_rows(user_ids),
                               item_features=item_vectors, item_id_rows=catalog_rows)
    user_emb = np.asarray(bundle.user_tower.predict(feats, batch_size=8192, verbose=0), dtype=np.float32)
    return item_ids, item_emb, user_ids, user_emb


def top_k_frame(user_emb: np.ndarray, item_emb: np.ndarray, item_ids: list[str], k: int,
                popular: set[str], seen: list[np.ndarray] | None = None) -> pd.DataFrame:
    """Top-k per user by dot product (seen rows excluded): rank, score, item_id, popular."""
    k = min(k, item_emb.shape[0])
    ranks, scores, rows = [], [], []
    for lo in range(0, len(user_emb), 2048):
        s = user_emb[lo:lo + 2048] @ item_emb.T
        if seen is not None:
            for n, rows_seen in enumerate(seen[lo:lo + 2048]):
                if len(rows_seen) and len(rows_seen) < s.shape[1] - k:
                    s[n, rows_seen] = -np.inf
        top = top_k_indices(s, k)  # the one top-k: ties to the lower item row
        rows.append(top.ravel())
        scores.append(np.take_along_axis(s, top, axis=1).ravel())
        ranks.append(np.tile(np.arange(1, k + 1), len(s)))
    ids = np.asarray(item_ids, dtype=object)[np.concatenate(rows)] if rows else np.array([], dtype=object)
    return pd.DataFrame({"rank": np.concatenate(ranks) if ranks else [], "score": np.concatenate(scores) if scores else [],
                         "item_id": ids, "popular": np.isin(ids, list(popular)).astype(float)})


def calibration_frame(scores: np.ndarray, labels: np.ndarray, bins: int) -> pd.DataFrame:
    """Observed like rate per score quantile bin: maps a score to the like rate the model 'expects'."""
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)))
    idx = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, max(len(edges) - 2, 0))
    rates = pd.Series(labels, dtype=float).groupby(idx).mean()
    lo = edges[:-1] if len(edges) > 1 else edges
    return pd.DataFrame({"lower": lo, "like_rate": rates.reindex(range(len(lo))).ffill().bfill().fillna(labels.mean()).to_numpy()})


def expected_like_rate(calibration: pd.DataFrame, scores: np.ndarray) -> np.ndarray:
    """Per score, the reference like rate of its calibration bin."""
    idx = np.clip(np.searchsorted(calibration["lower"].to_numpy(), scores, side="right") - 1, 0, len(calibration) - 1)
    return calibration["like_rate"].to_numpy()[idx]


def seen_rows(bundle: "ModelBundle", user_rows: np.ndarray) -> list[np.ndarray]:
    return [bundle.history(int(r))[0] for r in user_rows]


# ------------------------------------------------------------------ build / log / load
def build_reference(bundle: "ModelBundle", dataset: "Dataset", settings: dict[str, Any] | None = None,
                    seed: int = 0) -> Reference:
    """All reference frames from a bundle and the data it was trained on."""
    cfg = {"sample_users": 2000, "sample_items": 5000, "top_k": 10, "popular_top_n": 10, "calibration_bins": 20,
           **(settings or {})}
    t0 = time.time()
    rng = np.random.default_rng(seed)
    pop_order = top_k_indices(np.asarray(bundle.item_popularity, np.float64), int(cfg["popular_top_n"]))
    popular = [bundle.item_ids[i] for i in pop_order]
    items = item_feature_frame(dataset.items)
    users = user_feature_frame(dataset.users, dataset.interactions)

    n_items = len(bundle.item_ids)
    item_sample = np.sort(rng.choice(n_items, size=min(n_items, int(cfg["sample_items"])), replace=False))
    n_users = len(bundle.user_ids)
    user_sample = np.sort(rng.choice(n_users, size=min(n_users, int(cfg["sample_users"])), replace=False))
    u_emb = np.asarray(bundle.user_embeddings[user_sample])
    i_emb = np.asarray(bundle.item_embeddings)
    preds = top_k_frame(u_emb, i_emb, bundle.item_ids, int(cfg["top_k"]), set(popular), seen_rows(bundle, user_sample))

    inter = dataset.interactions
    u_rows = inter["user_id"].astype(str).map(bundle.user_index)
    i_rows = inter["item_id"].astype(str).map(bundle.item_index)
    ok = u_rows.notna() & i_rows.notna()
    ur, ir = u_rows[ok].to_numpy(dtype=np.int64), i_rows[ok].to_numpy(dtype=np.int64)
    scores = np.einsum("ij,ij->i", np.asarray(bundle.user_embeddings)[ur], i_emb[ir])
    calibration = calibration_frame(scores, inter["label"][ok].to_numpy(dtype=float), int(cfg["calibration_bins"]))

    frames = {
        "items": items,
        "users": users,
        "item_embeddings": embedding_frame(i_emb[item_sample]),
        "user_embeddings": embedding_frame(u_emb),
        "predictions": preds,
        "calibration": calibration,
    }
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "top_k": int(cfg["top_k"]),
        "popular_items": popular,
        "vocab": {c: sorted({str(v) for v in items[c].dropna()}) for c in ITEM_CATEGORICAL},
        "profile_vocab": {c: sorted({str(v) for v in users[c].dropna()}) for c in profile_columns(users)[1]},
        "feature_schema_hash": bundle.metadata.get("feature_schema_hash"),
        "embedding_dim": bundle.embedding_dim,
        "expected_like_rate_top_k": float(expected_like_rate(calibration, preds["score"].to_numpy()).mean()) if len(preds) else None,
        "rows": {k: int(len(v)) for k, v in frames.items()},
        "columns": {k: list(map(str, v.columns)) for k, v in frames.items()},
    }
    log.info("built monitoring reference in %.1fs: %s", time.time() - t0, manifest["rows"])
    return Reference(frames=frames, manifest=manifest)


def save_reference(ref: Reference, folder: str | Path) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in ref.frames.items():
        frame.to_parquet(out / f"{name}.parquet", index=False)
    (out / "reference.json").write_text(json.dumps(ref.manifest, indent=2, default=str))
    return out


def read_reference(folder: str | Path, origin: str | None = None) -> Reference:
    """Load a reference folder; a missing file is named with where it should have come from."""
    root = Path(folder)
    wanted = ["reference.json"] + [f"{n}.parquet" for n in FRAME_NAMES]
    missing = [w for w in wanted if not (root / w).is_file()]
    if missing:
        where = origin or str(root)
        raise FileNotFoundError(
            f"no monitoring reference on {where}: missing {', '.join(f'{REFERENCE_DIR}/{m}' for m in missing)}. "
            "Log it with `towerops monitor reference --run-id <training run> --data <training data>`."
        )
    frames = {n: pd.read_parquet(root / f"{n}.parquet") for n in FRAME_NAMES}
    return Reference(frames=frames, manifest=json.loads((root / "reference.json").read_text()))


def log_reference(run_id_or_active: str | None, bundle_dir: str | Path, dataset: "Dataset",
                  settings: dict[str, Any] | None = None) -> Reference:
    """Build the reference and log it to the training run (`None` = the active run) as
    `monitoring/reference/*`. Works on FINISHED runs too (backfill)."""
    import mlflow
    from mlflow import MlflowClient

    from ml.bundle.load import load_bundle

    run_id = run_id_or_active
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise ValueError("log_reference(None, ...) needs an active MLflow run; pass the training run id")
        run_id = active.info.run_id
    client = MlflowClient()
    client.get_run(run_id)  # unknown id: MlflowException naming it, before any work
    ref = build_reference(load_bundle(bundle_dir), dataset, settings)
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifacts(run_id, str(save_reference(ref, tmp)), REFERENCE_DIR)
    client.set_tag(run_id, "towerops.monitoring_reference", REFERENCE_DIR)
    log.info("logged monitoring reference to run %s (%s)", run_id, REFERENCE_DIR)
    return ref


def load_reference(run_id: str) -> Reference:
    """Download `monitoring/reference/` of a training run; clear error when it is not there."""
    import mlflow
    from mlflow import MlflowClient

    names = {Path(a.path).name for a in MlflowClient().list_artifacts(run_id, REFERENCE_DIR)}
    if "reference.json" not in names:
        raise FileNotFoundError(
            f"run {run_id} has no monitoring reference: artifact {REFERENCE_DIR}/reference.json is missing. "
            f"Log it with `towerops monitor reference --run-id {run_id} --data <the run's training data>`."
        )
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_DIR)
    return read_reference(local, origin=f"run {run_id}")
