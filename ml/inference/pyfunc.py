"""The MLflow pyfunc around the real-time engine: what `mlflow models serve` and `towerops serve` run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.inference.engine import (
    ENV_MODEL_VERSION,
    InferenceRequestError,
    RealtimeInferenceEngine,
    Recommendation,
    _as_list,
    _missing,
    parse_top_k,
)
from ml.logs import get_logger

log = get_logger("inference")

# ---------------------------------------------------------------------------- pyfunc
def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


def _request_error_class():
    """InferenceRequestError that MLflow's scoring server maps to HTTP 400 with its message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class ServingRequestError(MlflowException, InferenceRequestError):
        def __init__(self, message: str) -> None:
            MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)

    return ServingRequestError


def _model_version(model_dir: Path) -> str:
    """$TOWEROPS_MODEL_VERSION (set by `towerops serve`), else the logged model's run id."""
    explicit = os.environ.get(ENV_MODEL_VERSION)
    if explicit:
        return explicit
    for parent in list(model_dir.resolve().parents)[:3]:
        mlmodel = parent / "MLmodel"
        if mlmodel.exists():
            import yaml

            meta = yaml.safe_load(mlmodel.read_text()) or {}
            for key in ("run_id", "model_id"):
                if meta.get(key):
                    return str(meta[key])
    return "unknown"


REQUEST_COLUMNS = ("user_id", "top_k", "exclude_seen", "candidate_items", "liked_items", "noped_items")
OUTPUT_MODES = ("rows", "lists")


class TwoTowerRecommender(_pyfunc_base()):
    """MLflow pyfunc: a DataFrame of requests in, recommendations out.

    Request columns: user_id; optional top_k, exclude_seen, candidate_items,
    liked_items, noped_items (lists of item ids). Params: `top_k` (default k) and
    `output`: "rows" (default; one row per item: user_id, item_id, score, rank) or
    "lists" (one row per request: user_id, items, scores; what `spark_udf` needs).
    A bad request row fails the whole call with an InferenceRequestError (HTTP 400).
    """

    def load_context(self, context) -> None:
        from ml.inference.prediction_log import PredictionLogger

        model_dir = Path(context.artifacts["model_dir"])
        self.engine = RealtimeInferenceEngine(model_dir)
        self.engine.warmup()
        self.prediction_log = PredictionLogger(model_version=_model_version(model_dir))
        log.info("pyfunc ready: model_version=%s, prediction log %s (sample %.3g)", self.prediction_log.model_version,
                 self.prediction_log.path, self.prediction_log.sample_rate)

    def _ensure_loaded(self) -> None:
        if not hasattr(self, "prediction_log"):
            from ml.inference.prediction_log import PredictionLogger

            self.prediction_log = PredictionLogger(model_version=_model_version(self.engine.model_dir))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._predict(model_input, params)
        except InferenceRequestError as exc:
            raise _request_error_class()(str(exc)) from exc

    def _predict(self, model_input: Any, params: dict | None) -> pd.DataFrame:
        self._ensure_loaded()
        t_call = time.perf_counter()
        params = params or {}
        default_k = parse_top_k(params.get("top_k", 10))
        output = str(params.get("output") or "rows")
        if output not in OUTPUT_MODES:
            raise InferenceRequestError(f"params.output={output!r} must be one of {', '.join(OUTPUT_MODES)}")
        if isinstance(model_input, dict):
            model_input = pd.DataFrame([model_input])
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if "user_id" not in model_input.columns and "liked_items" not in model_input.columns:
            raise InferenceRequestError(
                f"request needs a user_id column (or liked_items for a cold user); got columns {list(model_input.columns)}"
            )
        columns = [c for c in REQUEST_COLUMNS if c in model_input.columns]
        records = model_input[columns].to_dict(orient="records")
        answers: list[tuple[str | None, Recommendation]] = []
        ids = self.engine.bundle.item_ids
        for rec in records:
            t0 = time.perf_counter()
            user_id = rec.get("user_id")
            user_id = None if _missing(user_id) else str(user_id)
            top_k = rec.get("top_k")
            try:
                top_k = default_k if _missing(top_k) else parse_top_k(top_k)
                exclude = rec.get("exclude_seen")
                exclude = True if _missing(exclude) else bool(exclude)
                answer = self.engine.recommend(
                    user_id=user_id,
                    candidate_items=_as_list(rec.get("candidate_items"), "candidate_items"),
                    top_k=top_k,
                    exclude_seen=exclude,
                    liked_items=_as_list(rec.get("liked_items"), "liked_items"),
                    noped_items=_as_list(rec.get("noped_items"), "noped_items"),
                )
            except InferenceRequestError as exc:
                self.prediction_log.log(user_id=user_id, cold=not _missing(rec.get("liked_items")),
                                        top_k=top_k if isinstance(top_k, int) else None, items=[], scores=[],
                                        latency_ms=(time.perf_counter() - t0) * 1e3, status="error", error=str(exc))
                log.warning("bad request for user_id=%r: %s", user_id, exc)
                raise
            latency = (time.perf_counter() - t0) * 1e3
            answers.append((user_id, answer))
            if self.prediction_log.sampled():
                try:
                    self.prediction_log.write(self.prediction_log.record(
                        user_id=user_id, cold=answer.cold, top_k=top_k, items=[ids[r] for r in answer.item_rows.tolist()],
                        scores=answer.scores.tolist(), latency_ms=latency))
                except OSError:
                    log.exception("could not append to prediction log %s", self.prediction_log.path)
        log.debug("predict: %d request row(s) in %.2f ms", len(records), (time.perf_counter() - t_call) * 1e3)
        if output == "lists":
            return pd.DataFrame({
                "user_id": [u for u, _ in answers],
                "items": [[ids[r] for r in a.item_rows.tolist()] for _, a in answers],
                "scores": [a.scores.astype(np.float64).tolist() for _, a in answers],
            })
        rows: list[dict[str, Any]] = []
        for user_id, a in answers:
            rows.extend({"user_id": user_id, "item_id": ids[r], "score": float(s), "rank": n + 1}
                        for n, (r, s) in enumerate(zip(a.item_rows.tolist(), a.scores.tolist())))
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])
