"""The MLflow pyfunc around the real-time engine: what `mlflow models serve` and `towerops serve` run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.inference.engine import (
    InferenceRequestError,
    RealtimeInferenceEngine,
    Recommendation,
    RecommendationRequest,
    _missing,
    parse_request,
    parse_top_k,
    shown,
)
from ml.logs import get_logger
from ml.settings import get_settings

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
    explicit = get_settings().model_version
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
        """A DataFrame (or dict / records) of requests, as `mlflow models serve` and spark_udf pass them."""
        if isinstance(model_input, dict):
            model_input = pd.DataFrame([model_input])
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if "user_id" not in model_input.columns and "liked_items" not in model_input.columns:
            raise InferenceRequestError(
                "request needs a user_id column (or liked_items for a cold user); got columns "
                f"{shown([str(c) for c in model_input.columns])}"
            )
        columns = [c for c in REQUEST_COLUMNS if c in model_input.columns]
        records = model_input[columns].to_dict(orient="records")
        return self.predict_records(records, params)

    def predict_records(self, records: list[Any], params: dict | None = None, strict: bool = False) -> pd.DataFrame:
        """Answer request rows (dicts). strict: rows and params come from JSON and must have exact types
        (`towerops serve`); otherwise they are DataFrame rows (NaN = missing)."""
        self._ensure_loaded()
        t_call = time.perf_counter()
        default_k, output = parse_params(params, strict)
        answers: list[tuple[str | None, Recommendation]] = []
        ids = self.engine.bundle.item_ids
        for n, rec in enumerate(records):
            t0 = time.perf_counter()
            raw_user = rec.get("user_id") if isinstance(rec, dict) else None
            try:
                req: RecommendationRequest = parse_request(rec, default_k, strict=strict,
                                                           where=f"row {n}" if len(records) > 1 else "request")
                answer = self.engine.recommend(user_id=req.user_id, candidate_items=req.candidate_items,
                                               top_k=req.top_k, exclude_seen=req.exclude_seen,
                                               liked_items=req.liked_items, noped_items=req.noped_items)
            except InferenceRequestError as exc:
                user_id = raw_user if isinstance(raw_user, str) else None
                self.prediction_log.log(user_id=user_id[:200] if user_id else None,
                                        cold=isinstance(rec, dict) and not _missing(rec.get("liked_items")),
                                        top_k=None, items=[], scores=[],
                                        latency_ms=(time.perf_counter() - t0) * 1e3, status="error", error=str(exc))
                log.warning("bad request for user_id=%s: %s", shown(raw_user), exc)
                raise
            latency = (time.perf_counter() - t0) * 1e3
            answers.append((req.user_id, answer))
            if self.prediction_log.sampled():
                try:
                    self.prediction_log.write(self.prediction_log.record(
                        user_id=req.user_id, cold=answer.cold, top_k=req.top_k,
                        items=[ids[r] for r in answer.item_rows.tolist()], scores=answer.scores.tolist(),
                        latency_ms=latency))
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


PARAMS = ("top_k", "output")


def parse_params(params: Any, strict: bool = False) -> tuple[int, str]:
    """(default top_k, output mode) from the request's params; strict: only known keys, exact types."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InferenceRequestError(f"params must be an object like {{\"top_k\": 10, \"output\": \"rows\"}}, got "
                                    f"{type(params).__name__}: {shown(params)}")
    if strict:
        unknown = [k for k in params if k not in PARAMS]
        if unknown:
            raise InferenceRequestError(f"params: unknown key(s) {', '.join(shown(k, 40) for k in unknown[:5])}; "
                                        f"known: {', '.join(PARAMS)}")
        if "top_k" in params and not isinstance(params["top_k"], (int, float)):
            raise InferenceRequestError(f"params.top_k={shown(params['top_k'])} must be a positive integer "
                                        "(a JSON number, not a string), e.g. 10")
    try:
        default_k = parse_top_k(params.get("top_k", 10))
    except InferenceRequestError as exc:
        raise InferenceRequestError(f"params.{exc}") from None
    output = params.get("output")
    output = "rows" if output is None else output
    if not isinstance(output, str) or output not in OUTPUT_MODES:
        raise InferenceRequestError(f"params.output={shown(output)} must be one of {', '.join(OUTPUT_MODES)}")
    return default_k, output
