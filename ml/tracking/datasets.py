"""A training run's data, location-free: what it trained on as an MLflow dataset, and the exact
evaluation set (the data with its three-way time split) as a run artifact.

Why: the gate runs on whichever host moved the alias (the webhook receiver, a cron
reconcile, a laptop). A path recorded relative to the trainer's folder, or a PostgreSQL
table name, means nothing there. So each training run logs
- an MLflow dataset input (`mlflow.log_input`, context `training`) whose source is absolute:
  the data folder's absolute path, or the DSN without its password (plus the tables), with the
  content hash as digest (full sha256 in the input tag `towerops.data_hash`);
- `evaluation/test_set/`: users, items and interactions as Parquet, the interactions with a
  `towerops_split` column (train / valid / test) exactly as training split them, and
  `split.json` (shares, hash, source). The gate downloads it through the tracking server and
  evaluates champion and challenger on exactly that test part.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.data.schema import Dataset

log = get_logger("training")

EVAL_SET_PATH = "evaluation/test_set"
SPLIT_COLUMN = "towerops_split"
SPLIT_FORMAT = 1
TABLES = ("users", "items", "interactions")
DATASET_NAME = "towerops-training-data"


# ------------------------------------------------------------------ the MLflow dataset source
@cache
def _source_class() -> type:
    """A DatasetSource for towerops data (built on first use: mlflow is imported only then)."""
    from mlflow.data.dataset_source import DatasetSource

    class TowerOpsDataSource(DatasetSource):
        """Where training data came from: `kind` folder | postgresql | memory, an absolute `uri`
        without secrets, the tables (or queries) read, and the `env:VAR` reference if one was given."""

        def __init__(self, kind: str, uri: str, tables: Mapping[str, str] | None = None,
                     reference: str | None = None) -> None:
            self.kind, self.uri, self.tables, self.reference = kind, uri, dict(tables or {}), reference

        @staticmethod
        def _get_source_type() -> str:
            return "towerops"

        def load(self) -> Any:
            from ml.data.loaders import load_dataset

            return load_dataset(self.reference or self.uri)

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> Any:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            out: dict[str, Any] = {"kind": self.kind, "uri": self.uri, "tables": self.tables}
            if self.reference:
                out["reference"] = self.reference
            return out

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> Any:
            return cls(source_dict.get("kind", "folder"), source_dict.get("uri", ""), source_dict.get("tables"),
                       source_dict.get("reference"))

    return TowerOpsDataSource


def describe_data_source(dataset: "Dataset", given: Any = None) -> dict[str, Any]:
    """{kind, uri, tables[, reference]}: the training data's absolute location, no password in it."""
    from ml.data.loaders import is_postgres_dsn
    from ml.secrets import is_secret_ref, mask_dsn, resolve_secret_ref

    sources = dict(dataset.sources or {})
    reference = str(given) if is_secret_ref(given) else None
    text = resolve_secret_ref(str(given), "data source") if isinstance(given, (str, Path)) else None
    if text and is_postgres_dsn(text):
        from urllib.parse import urlsplit, urlunsplit

        masked = mask_dsn(text)
        try:  # drop the user's password entirely (not even ***) and keep host, port, database
            parts = urlsplit(text)
            netloc = (f"{parts.username}@" if parts.username else "") + (parts.hostname or "") + \
                (f":{parts.port}" if parts.port else "")
            masked = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        except ValueError:
            pass
        return {"kind": "postgresql", "uri": masked, "tables": {t: sources.get(t, "") for t in TABLES},
                **({"reference": reference} if reference else {})}
    files = {t: sources.get(t, "") for t in TABLES}
    paths = [Path(p) for p in files.values() if p and not str(p).startswith(("postgres:", "synthetic"))]
    if text and Path(text).exists():
        folder = Path(text).resolve()
    elif paths:
        folder = paths[0].resolve().parent
    else:
        return {"kind": "memory", "uri": str(sources.get("interactions") or "in-memory"), "tables": files,
                **({"reference": reference} if reference else {})}
    return {"kind": "folder", "uri": str(folder),
            "tables": {t: str(Path(p).resolve()) if p and Path(p).exists() else p for t, p in files.items()},
            **({"reference": reference} if reference else {})}


# ------------------------------------------------------------------ writing
def _frame_digest(frames: Mapping[str, Any]) -> str:
    import pandas as pd

    h = hashlib.sha256()
    for name in TABLES:
        frame = frames[name]
        h.update(name.encode())
        h.update(",".join(map(str, frame.columns)).encode())
        flat = frame.copy()
        for col in flat.columns:
            if flat[col].dtype == object and flat[col].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
                flat[col] = flat[col].map(lambda v: "|".join(map(str, v)) if isinstance(v, (list, tuple, np.ndarray))
                                          else v)
        h.update(pd.util.hash_pandas_object(flat, index=False).to_numpy().tobytes())
    return h.hexdigest()


def split_labels(interactions: Any, validation_split: float, test_split: float) -> np.ndarray:
    """train / valid / test per interaction row, by the one three-way time split."""
    from ml.data.split import time_split_per_user

    split = time_split_per_user(interactions, validation_split, test_split)
    labels = np.full(len(interactions), "train", dtype=object)
    labels[split.valid] = "valid"
    labels[split.test] = "test"
    return labels


def write_eval_set(dataset: "Dataset", validation_split: float, test_split: float, folder: str | Path,
                   source: Mapping[str, Any] | None = None, data_hash: str | None = None) -> dict[str, Any]:
    """The evaluation set as Parquet tables + split.json in `folder`; returns split.json's content."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    interactions = dataset.interactions.reset_index(drop=True).copy()
    interactions[SPLIT_COLUMN] = split_labels(interactions, validation_split, test_split)
    frames = {"users": dataset.users.reset_index(drop=True), "items": dataset.items.reset_index(drop=True),
              "interactions": interactions}
    for name, frame in frames.items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    counts = {part: int((interactions[SPLIT_COLUMN] == part).sum()) for part in ("train", "valid", "test")}
    meta = {"format": SPLIT_FORMAT, "validation_split": float(validation_split), "test_split": float(test_split),
            "split_column": SPLIT_COLUMN, "rows": {n: int(len(f)) for n, f in frames.items()}, "parts": counts,
            "hash": _frame_digest(frames), "data_hash": data_hash, "source": dict(source or {})}
    (folder / "split.json").write_text(json.dumps(meta, indent=2))
    return meta


def log_training_data(dataset: "Dataset", given: Any, fingerprint: Mapping[str, Any], validation_split: float,
                      test_split: float) -> dict[str, Any]:
    """Inside the training run: log the MLflow dataset input and the evaluation set artifact."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    source = describe_data_source(dataset, given)
    data_hash = str(fingerprint.get("hash", ""))
    ds = MetaDataset(_source_class()(source["kind"], source["uri"], source.get("tables"), source.get("reference")),
                     name=DATASET_NAME, digest=data_hash[:32] or None)
    mlflow.log_input(ds, context="training", tags={"towerops.data_hash": data_hash,
                                                   "towerops.rows": json.dumps(dict(fingerprint.get("rows", {})))})
    with tempfile.TemporaryDirectory(prefix="towerops-evalset-") as tmp:
        meta = write_eval_set(dataset, validation_split, test_split, tmp, source, data_hash)
        mlflow.log_artifacts(tmp, EVAL_SET_PATH)
    mlflow.set_tags({"towerops.data_source": source["uri"], "towerops.data_source_kind": source["kind"],
                     "towerops.eval_set": EVAL_SET_PATH, "towerops.eval_set_hash": meta["hash"]})
    log.info("logged the training data (%s %s) and the evaluation set (%d test interactions, sha256 %s)",
             source["kind"], source["uri"], meta["parts"]["test"], meta["hash"][:12])
    return {"source": source, "eval_set": meta}


# ------------------------------------------------------------------ reading
@dataclass
class EvalSet:
    """The evaluation set a training run logged: the data, its recorded split, and provenance."""

    dataset: "Dataset"
    validation_split: float
    test_split: float
    split: np.ndarray
    hash: str
    uri: str
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def shares(self) -> dict[str, float]:
        return {"validation_split": self.validation_split, "test_split": self.test_split}

    def describe(self) -> str:
        n_test = int((self.split == "test").sum())
        return f"evaluation set {self.uri} ({n_test} test interactions, sha256 {self.hash[:12]})"


def _as_lists(frame: Any) -> Any:
    """Parquet gives list cells back as numpy arrays; the pipeline expects lists."""
    for col in frame.columns:
        if frame[col].dtype == object and frame[col].map(lambda v: isinstance(v, np.ndarray)).any():
            frame[col] = frame[col].map(lambda v: [str(x) for x in v] if isinstance(v, np.ndarray) else v)
    return frame


def read_eval_set(folder: str | Path, uri: str | None = None) -> EvalSet:
    """An evaluation set folder (downloaded artifact) back as an EvalSet; checks its hash and split."""
    import pandas as pd

    from ml.data.schema import Dataset

    folder = Path(folder)
    meta_path = folder / "split.json"
    missing = [n for n in (*(f"{t}.parquet" for t in TABLES), "split.json") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{uri or folder} is not a towerops evaluation set: missing {', '.join(missing)}")
    meta = json.loads(meta_path.read_text())
    frames = {t: _as_lists(pd.read_parquet(folder / f"{t}.parquet")) for t in TABLES}
    digest = _frame_digest(frames)
    if digest != meta.get("hash"):
        raise ValueError(f"{uri or folder}: the evaluation set's content (sha256 {digest[:12]}) differs from the hash "
                         f"recorded at training ({str(meta.get('hash'))[:12]}); the artifact was changed or damaged")
    inter = frames["interactions"]
    recorded = inter[SPLIT_COLUMN].to_numpy(dtype=object)
    v, t = float(meta["validation_split"]), float(meta["test_split"])
    if not np.array_equal(split_labels(inter, v, t), recorded):
        raise ValueError(f"{uri or folder}: the time split of this towerops differs from the one recorded at training "
                         "(ml.data.split changed); evaluate with the towerops version that trained the model")
    interactions = inter.drop(columns=[SPLIT_COLUMN])
    source = dict(meta.get("source") or {})
    dataset = Dataset(frames["users"], frames["items"], interactions,
                      sources={"interactions": f"{uri or folder} (training data {source.get('uri', '?')})"})
    return EvalSet(dataset, v, t, recorded, str(meta["hash"]), uri or str(folder), source)


def eval_set_uri(run_id: str) -> str:
    return f"runs:/{run_id}/{EVAL_SET_PATH}"


def load_eval_set(uri: str, download_dir: str | Path | None = None) -> EvalSet:
    """Download an evaluation set (`runs:/<training run>/evaluation/test_set`) through the tracking server."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="towerops-evalset-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(uri, dst_path=str(download_dir or tmp))
        except (MlflowException, OSError) as exc:
            first = str(getattr(exc, "message", None) or exc).strip().splitlines()
            raise FileNotFoundError(f"the evaluation set {uri} cannot be read: {first[0] if first else exc}") from None
        return read_eval_set(local, uri)
