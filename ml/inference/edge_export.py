"""Browser-readable preprocessing for edge clients: what `edge/user-input.js` needs to build
a cold user's tower input from their swipes, written next to the TF.js towers.

    <tfjs>/edge.json             {"format": 1, "recipe", "user_dim", "arrays": {name: {path, dtype, shape}},
                                  "layout": [block, ...], "item_ids", "item_embeddings", ...}
    <tfjs>/edge/<name>.f32       small vectors (little-endian float32), e.g. the default profile
    <tfjs>/edge/item_features.{indptr,indices}.i32, .values.f32
                                 the item features as CSR rows when mostly zero (one-hot columns)

Paths in edge.json are relative to the deployment's version folder (the bundle root): the TF.js
export is deployed as `tfjs/`, and big matrices the bundle already holds (`embeddings/*.npy`)
are referenced, not copied (the item features, mostly one-hot columns, go as CSR rows when that
is smaller: 8 bytes per nonzero instead of 4 per entry). The layout is a list of blocks (mean of an array's rows over the
liked or the noped items, the history counts, a constant vector) that `buildUserInput` in
edge/user-input.js and `build_user_input` here interpret the same way.

The layout mirrors the engine's cold-user path (`RealtimeInferenceEngine.embed_history`); the
export checks that, on probe histories, `build_user_input` + the user tower give the engine's
embeddings, and refuses to write an export that does not (a tower input that changed shape
must change the layout here too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ml.logs import get_logger

log = get_logger("deployment")

EDGE_FORMAT = 1
RECIPE = "towerops.user_input.v2"  # v2: the standardize block (pipelines fitted with features.standardize)
EDGE_JSON = "edge.json"
TFJS_PREFIX = "tfjs"  # where the TF.js export sits in a deployment's version folder
CHECK_ATOL = 1e-5
SPARSE_ARRAYS = ("item_features",)  # mostly one-hot columns: shipped as CSR when that is smaller
CSR_MAX_DENSITY = 0.4               # CSR takes 8 bytes per nonzero against 4 per entry dense


class EdgeExportError(ValueError):
    """The bundle cannot be exported for edge clients (the message says why and what to do)."""


def _block_width(block: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> int:
    if block["kind"] == "history":
        return 3
    if block["kind"] == "standardize":
        return 0
    a = arrays[block["array"]]
    return int(a.size) if block["kind"] == "constant" else int(a.shape[1])


def build_user_input(layout: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray],
                     liked_rows: Sequence[int], noped_rows: Sequence[int]) -> np.ndarray:
    """The user tower's input (user_dim,) float32 from a layout, as edge/user-input.js computes it."""
    liked = np.asarray(liked_rows, dtype=np.int64)
    noped = np.asarray(noped_rows, dtype=np.int64)
    parts: list[np.ndarray] = []
    for block in layout:
        kind = block["kind"]
        if kind == "mean":
            rows = liked if block["of"] == "liked" else noped
            table = arrays[block["array"]]
            total = table[rows].astype(np.float64).sum(axis=0) if len(rows) else np.zeros(table.shape[1])
            parts.append((total.astype(np.float32) / np.float32(max(len(rows), 1))).astype(np.float32))
        elif kind == "history":
            nl, nn = len(liked), len(noped)
            parts.append(np.array([np.log1p(nl), np.log1p(nn), (nl + 1) / (nl + nn + 2)], dtype=np.float32))
        elif kind == "constant":
            parts.append(np.asarray(arrays[block["array"]], dtype=np.float32).ravel())
        elif kind == "standardize":  # (x - mean) / scale over every column built so far
            mean = np.asarray(arrays[block["mean"]], dtype=np.float32).ravel()
            scale = np.asarray(arrays[block["scale"]], dtype=np.float32).ravel()
            built = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
            if built.shape != mean.shape or mean.shape != scale.shape:
                raise EdgeExportError(f"standardize block: {built.size} columns built, mean has {mean.size} and scale "
                                      f"{scale.size}; the three must agree")
            parts = [((built - mean) / scale).astype(np.float32)]
        else:
            raise EdgeExportError(f"layout block kind {kind!r} is unknown (mean, history, constant, standardize)")
    return np.concatenate(parts).astype(np.float32)


def edge_layout(engine: Any) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, str | None]]]:
    """(layout, {array name: (values, bundle-relative path of an existing .npy or None)}) for an engine's bundle.

    Mirrors `RealtimeInferenceEngine.embed_history` for a user the model does not know, i.e.
    `ml.model.inputs.user_tower_inputs` with the default profile and the OOV user row:
    [mean liked item features | mean noped item features | history | default profile] (content),
    standardised by the pipeline's user scaler when it has one, then, with an ID stage, [mean liked item-id vector | mean noped item-id vector | OOV user-id vector].
    """
    bundle = engine.bundle
    feats = np.asarray(bundle.item_features, dtype=np.float32)
    arrays: dict[str, tuple[np.ndarray, str | None]] = {
        "item_features": (feats, "embeddings/item_features.npy"),
        "default_profile": (np.asarray(engine._default_profile(), dtype=np.float32), None),
    }
    layout: list[dict[str, Any]] = [
        {"kind": "mean", "of": "liked", "array": "item_features"},
        {"kind": "mean", "of": "noped", "array": "item_features"},
        {"kind": "history"},
        {"kind": "constant", "array": "default_profile"},
    ]
    scaler = getattr(bundle.pipeline, "user_scaling", None)
    if scaler is not None:  # features.standardize: the content columns go through the pipeline's user scaler
        arrays["user_mean"] = (np.asarray(scaler.mean, dtype=np.float32), None)
        arrays["user_scale"] = (np.asarray(scaler.scale, dtype=np.float32), None)
        layout.append({"kind": "standardize", "mean": "user_mean", "scale": "user_scale"})
    tables = getattr(bundle, "id_tables", None)
    if tables is not None and tables.dim > 0:
        arrays["item_id_table"] = (np.asarray(tables.item, dtype=np.float32), "embeddings/item_id_table.npy")
        layout += [
            {"kind": "mean", "of": "liked", "array": "item_id_table"},
            {"kind": "mean", "of": "noped", "array": "item_id_table"},
        ]
        if tables.user.shape[1] > 0:  # a user-id vector (model.user_id_vector): the edge always feeds the OOV row
            arrays["user_oov"] = (np.asarray(tables.user[-1], dtype=np.float32), None)  # users/ is not deployed
            layout.append({"kind": "constant", "array": "user_oov"})
    return layout, arrays


def _probe_histories(n_items: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    probes = [(np.array([0]), np.array([], dtype=np.int64)), (np.array([], dtype=np.int64), np.array([n_items - 1]))]
    for n_like, n_nope in ((3, 2), (7, 0), (1, 5)):
        rows = rng.choice(n_items, size=min(n_items, n_like + n_nope), replace=n_items < n_like + n_nope)
        probes.append((rows[:n_like], rows[n_like:]))
    probes.append((np.array([0, 0, min(1, n_items - 1)]), np.array([], dtype=np.int64)))  # a repeated like counts twice
    return probes


def check_layout(engine: Any, layout: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray],
                 atol: float = CHECK_ATOL) -> float:
    """Largest |embedding difference| between the layout (through the user tower) and the engine on probes."""
    worst = 0.0
    for liked, noped in _probe_histories(len(engine.bundle.item_ids)):
        x = build_user_input(layout, arrays, liked, noped)
        got = np.asarray(engine.user_tower(x[None, :]), dtype=np.float32)[0]
        want = np.asarray(engine.embed_history(liked.astype(np.int64), noped.astype(np.int64)), dtype=np.float32)
        worst = max(worst, float(np.abs(got - want).max()))
    if worst > atol:
        raise EdgeExportError(
            f"the edge layout does not reproduce the engine's cold-user embeddings (max difference {worst:.2e} > "
            f"{atol:.0e}): the user tower's input changed; update ml/inference/edge_export.py edge_layout and "
            "edge/user-input.js together")
    return worst


def catalog_reduction(bundle_dir: Path, embeddings: np.ndarray, max_fraction: float = 0.5) -> Any:
    """The catalog in the basis of its item tower's output space, when that space is small; else None.

    The tower ends in a linear Dense (kernel h x d, bias d) then L2-normalises, so every item
    embedding is a multiple of a vector in span(kernel rows, bias): at most h + 1 dimensions (129
    of 768 for the seed's towers), whatever the data. An orthonormal basis of that span comes from
    the weights alone, unlike `ml.inference.scoring.reduce_rank`'s row sample, which misses
    directions only a few items use; `RankReduction.from_basis` then measures the residual on every
    row, and the reduction is kept only within `LOWRANK_TOL` (each score then differs from the full
    product by at most that for a unit-norm user).
    """
    from ml.inference.scoring import LOWRANK_TOL, RankReduction
    from ml.inference.towers import read_keras_tower

    try:
        spec = read_keras_tower(bundle_dir / "keras" / "item_tower.keras")
    except (ValueError, KeyError, OSError):
        return None
    dense = [layer for layer in spec.layers if layer.class_name == "Dense"]
    if not dense or spec.layers[-1].class_name != "UnitNormalization":
        return None
    last = dense[-1]
    kernel = np.asarray(last.weights[0], dtype=np.float64)                       # (h, d)
    span = [kernel.T]
    if last.config.get("use_bias", True) and len(last.weights) > 1:
        span.append(np.asarray(last.weights[1], dtype=np.float64)[:, None])
    u, sv, _ = np.linalg.svd(np.concatenate(span, axis=1), full_matrices=False)  # d x (h + 1)
    basis = u[:, sv > 1e-9 * max(float(sv.max(initial=0.0)), 1e-30)]
    if basis.shape[1] > max_fraction * embeddings.shape[1]:
        return None
    reduction = RankReduction.from_basis(embeddings, basis)
    return reduction if reduction.max_residual <= LOWRANK_TOL else None


def _same_npy(path: Path, value: np.ndarray) -> bool:
    """Whether `path` is a little-endian float32 C-order .npy holding exactly `value`."""
    if not path.is_file():
        return False
    try:
        stored = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return (stored.dtype == np.dtype("<f4") and stored.flags["C_CONTIGUOUS"] and stored.shape == value.shape
            and np.array_equal(stored, value))


def export_edge(bundle_dir: str | Path, out_dir: str | Path, user_dim: int | None = None,
                lowrank: bool = True) -> Path:
    """Write `<out_dir>/edge.json` (+ `edge/*.f32`) for a bundle; `out_dir` is the TF.js export folder.

    `lowrank`: when the catalog's embeddings lie in a small subspace (`catalog_reduction`), also
    write them in its basis (`items_lowrank`, `lowrank_basis`): a browser then downloads and scans
    n x rank floats instead of n x d (129 instead of 768 for the seed's towers).
    """
    from ml.inference.engine import RealtimeInferenceEngine

    bundle_dir, out = Path(bundle_dir), Path(out_dir)
    try:
        engine = RealtimeInferenceEngine(bundle_dir, scoring="exact", lowrank=False)
    except (FileNotFoundError, ValueError) as exc:
        raise EdgeExportError(f"cannot export {bundle_dir} for edge clients: {exc}") from None
    layout, arrays = edge_layout(engine)
    values = {name: v for name, (v, _) in arrays.items()}
    width = sum(_block_width(b, values) for b in layout)
    if user_dim is None:
        from ml.inference.towers import read_keras_tower

        user_dim = read_keras_tower(bundle_dir / "keras" / "user_tower.keras").input_dim
    tower_dim = int(user_dim)
    if width != tower_dim:
        raise EdgeExportError(f"the edge layout builds {width} columns but the user tower takes {tower_dim}; update "
                              "ml/inference/edge_export.py edge_layout to the tower's input")
    worst = check_layout(engine, layout, values)

    (out / "edge").mkdir(parents=True, exist_ok=True)
    for old in (out / "edge").glob("*.[fi]32"):
        old.unlink()
    specs: dict[str, dict[str, Any]] = {}

    def write(name: str, value: np.ndarray, existing: str | None = None) -> dict[str, Any]:
        value = np.ascontiguousarray(value, dtype="<f4")
        if existing is not None and _same_npy(bundle_dir / existing, value):
            path = existing  # already in the bundle (and so in the deployment): referenced, not copied
        else:
            path = f"{TFJS_PREFIX}/edge/{name}.f32"
            (out / "edge" / f"{name}.f32").write_bytes(value.tobytes())
        return {"path": path, "dtype": "float32", "shape": list(value.shape)}

    def write_raw(name: str, value: np.ndarray, dtype: str) -> dict[str, Any]:
        (out / "edge" / name).write_bytes(np.ascontiguousarray(value, dtype=dtype).tobytes())
        return {"path": f"{TFJS_PREFIX}/edge/{name}", "dtype": {"<f4": "float32", "<i4": "int32"}[dtype],
                "shape": list(value.shape)}

    def write_csr(name: str, value: np.ndarray) -> dict[str, Any]:
        """A mostly-zero matrix (one-hot genres, makers, tags) as CSR rows: the same float32 values, fewer bytes."""
        from scipy.sparse import csr_matrix

        m = csr_matrix(np.asarray(value, dtype=np.float32))
        m.sort_indices()
        if not np.array_equal(m.toarray(), value):  # exact re-encoding or nothing
            raise EdgeExportError(f"{name}: the CSR encoding does not reproduce the matrix")
        return {"format": "csr", "dtype": "float32", "shape": list(value.shape),
                "indptr": write_raw(f"{name}.indptr.i32", m.indptr, "<i4"),
                "indices": write_raw(f"{name}.indices.i32", m.indices, "<i4"),
                "values": write_raw(f"{name}.values.f32", m.data, "<f4")}

    for name, (value, existing) in arrays.items():
        density = np.count_nonzero(value) / max(value.size, 1)
        if name in SPARSE_ARRAYS and value.ndim == 2 and density <= CSR_MAX_DENSITY:
            specs[name] = write_csr(name, value)
        else:
            specs[name] = write(name, value, existing)
    scoring: dict[str, Any] = {"kind": "full"}
    reduction = catalog_reduction(bundle_dir, engine.item_matrix) if lowrank else None
    if reduction is not None:
        scoring = {"kind": "lowrank", "items": write("items_lowrank", reduction.items),
                   "basis": write("lowrank_basis", reduction.basis), "rank": reduction.rank,
                   "max_residual": reduction.max_residual}
    meta = engine.bundle.metadata
    doc = {
        "format": EDGE_FORMAT,
        "recipe": RECIPE,
        "user_dim": width,
        "n_items": len(engine.bundle.item_ids),
        "embedding_dim": engine.bundle.embedding_dim,
        "feature_schema_hash": meta.get("feature_schema_hash"),
        "bundle_created_at": meta.get("created_at"),
        "item_ids": "embeddings/item_ids.json",
        "item_embeddings": "embeddings/item_embeddings.npy",
        "user_tower": f"{TFJS_PREFIX}/user_tower/model.json",
        "arrays": specs,
        "layout": layout,
        "scoring": scoring,
        "checked_max_abs_diff": worst,
    }
    path = out / EDGE_JSON
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    log.info("wrote the edge export %s (%d-d user input, %d blocks; matches the engine to %.1e)", path, width,
             len(layout), worst)
    return path
