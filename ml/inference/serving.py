"""Serving a registered model over HTTP: `towerops serve` runs this module's WSGI app on waitress.

Why not `mlflow models serve`: its FastAPI app answers a request without Content-Type or
with deeply nested JSON with a 500, converts `"top_k": true` to 1 and `"exclude_seen":
"false"` to True through the model signature, and echoes whole requests and server paths
in errors. This app speaks the same scoring protocol (POST /invocations with
`dataframe_records`, `dataframe_split`, `instances` or `inputs`, plus `params`; GET /ping,
/health, /version; answers `{"predictions": [...]}`), parses every request strictly
(`ml.inference.engine.parse_request`: bools are bools, `top_k` a positive integer up to
MAX_TOP_K, item lists lists of strings, no unknown fields) and calls the pyfunc's
`predict_records` in process, so the prediction log and logs/inference.log are the same.

Bad input is always a 4xx with `{"error_code", "message"}` whose message names the field
and the fix and repeats at most ECHO_LIMIT characters of any value; a body over the size
limit is 413, a missing or non-JSON Content-Type 415. An unexpected failure is a 500 with no
detail (the traceback goes to logs/inference.log only). The server keeps serving either way.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ml.inference.engine import ENV_MODEL_VERSION, ENV_SCORING, SCORING_MODES, InferenceRequestError, shown
from ml.logs import get_logger

log = get_logger("inference")

MAX_BODY_BYTES = 5 * 1024 * 1024   # one request; a bigger body is 413
MAX_ROWS = 1000                    # request rows per call
MAX_MESSAGE = 1000                 # characters of an error message, whatever built it
INPUT_KEYS = ("dataframe_records", "dataframe_split", "instances", "inputs")


# ---------------------------------------------------------------------------- serving command
def resolve_model_version(model_uri: str) -> str | None:
    """Registry version behind `models:/name@alias` or `models:/name/<n>`; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = model_uri[len("models:/"):].strip("/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        name, _, version = ref.partition("/")
        if version.isdigit():
            return version
    except MlflowException as exc:
        raise ValueError(f"cannot resolve {model_uri}: {exc.message}. Register a version and set the alias first "
                         "(e.g. `towerops registry promote`), or pass runs:/<run_id>/recommender") from exc
    return None


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1,
                  scoring: str | None = None, prediction_log: str | None = None,
                  sample_rate: float | None = None, timeout_s: int | None = None, challenger_uri: str | None = None,
                  ab_salt: str | None = None, arms: str | None = None, control_arm: str | None = None,
                  shadow: bool = False) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the scoring server (`python -m ml.inference.serving`, waitress) for
    the recommender; settings are checked first. `workers` is the number of request threads.
    With `challenger_uri`, one endpoint serves both versions (A/B split by `ab_salt` and `arms`,
    or the challenger only shadow-scored); both aliases are resolved here, so an unknown one
    fails before the server starts."""
    import sys

    from ml.inference.prediction_log import ENV_PATH, ENV_SAMPLE, sample_rate_from_env

    if not 0 < port < 65536:
        raise ValueError(f"port={port} must be between 1 and 65535")
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    env = dict(os.environ)
    if scoring is not None:
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring={scoring!r} is not one of {', '.join(SCORING_MODES)}")
        env[ENV_SCORING] = scoring
    if prediction_log:
        env[ENV_PATH] = str(Path(prediction_log).resolve())
    if sample_rate is not None:
        env[ENV_SAMPLE] = str(sample_rate)
    sample_rate_from_env(env.get(ENV_SAMPLE))  # a bad rate fails here, not in every worker
    version = resolve_model_version(model_uri)
    if version is not None:
        env[ENV_MODEL_VERSION] = version
    if timeout_s is not None:
        env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout_s))
    argv = [sys.executable, "-m", "ml.inference.serving", "--model-uri", model_uri, "--host", host,
            "--port", str(port), "--threads", str(workers)]
    if challenger_uri:
        ab = ab_settings(ab_salt, arms, control_arm, shadow)
        if challenger_uri == model_uri:
            raise ValueError(f"--challenger-uri {challenger_uri} is the --model-uri itself: pass another version, "
                             "e.g. models:/two_tower@challenger")
        challenger_version = resolve_model_version(challenger_uri)
        argv += ["--challenger-uri", challenger_uri, "--ab-salt", ab.salt, "--control-arm", ab.control,
                 "--arms", ab.spec]
        if ab.shadow:
            argv.append("--shadow")
        if version is not None:
            argv += ["--control-version", version]
        if challenger_version is not None:
            argv += ["--challenger-version", challenger_version]
    elif ab_salt or arms or control_arm or shadow:
        raise ValueError("--ab-salt, --arms, --control-arm and --shadow need a second version: pass --challenger-uri "
                         "(e.g. models:/two_tower@challenger)")
    return argv, env


# ---------------------------------------------------------------------------- request parsing
class HTTPError(Exception):
    """A client error: HTTP status and the message sent back."""

    def __init__(self, status: int, message: str, error_code: str = "INVALID_PARAMETER_VALUE") -> None:
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


def _no_constants(name: str) -> Any:
    raise HTTPError(400, f"{name} is not valid JSON (NaN and Infinity are not numbers in JSON): send a number, "
                         "e.g. \"top_k\": 10", "BAD_REQUEST")


def media_type(content_type: str | None) -> str:
    """'application/json; charset=utf-8' -> 'application/json'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_json_body(body: bytes, content_type: str | None, limit: int = MAX_BODY_BYTES) -> Any:
    """The decoded JSON of a request body, or an HTTPError saying what to send instead."""
    mtype = media_type(content_type)
    if not mtype:
        raise HTTPError(415, "no Content-Type: send the request as JSON with the header "
                             "Content-Type: application/json", "BAD_REQUEST")
    if mtype != "application/json":
        extra = " (CSV input is not supported: send dataframe_records)" if mtype == "text/csv" else ""
        raise HTTPError(415, f"Content-Type {shown(mtype, 60)} is not supported{extra}: send JSON with "
                             "Content-Type: application/json", "BAD_REQUEST")
    if len(body) > limit:
        raise HTTPError(413, f"request body is {len(body)} bytes, over the limit of {limit}: send fewer rows per "
                             "request", "BAD_REQUEST")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, f"request body is not UTF-8 (byte {exc.start}): send JSON encoded as UTF-8",
                        "BAD_REQUEST") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; "
                             "Ensure that input is a valid JSON formatted string", "BAD_REQUEST") from None
    except RecursionError:
        raise HTTPError(400, "request body is nested too deeply: a request is {\"dataframe_records\": "
                             "[{\"user_id\": ...}]}", "BAD_REQUEST") from None
    except ValueError as exc:  # e.g. an integer with more than 4300 digits
        raise HTTPError(400, f"request body is not valid JSON: {shown(str(exc), 200)}", "BAD_REQUEST") from None


def _columns_to_records(columns: Any, where: str) -> list[Any]:
    """{"user_id": [...], "top_k": [...]} -> one dict per row (all columns the same length)."""
    lengths = {k: len(v) for k, v in columns.items() if isinstance(v, list)}
    if len(lengths) != len(columns) or len(set(lengths.values())) > 1:
        raise InferenceRequestError(f"{where} as columns must map each field to a list, all of the same length; "
                                    "or send a list of rows: [{\"user_id\": \"u00001\"}]")
    n = next(iter(lengths.values()), 0)
    return [{k: columns[k][i] for k in columns} for i in range(n)]


def parse_invocation(payload: Any, max_rows: int = MAX_ROWS) -> tuple[list[Any], Any]:
    """(request rows, params) from a decoded /invocations body in the MLflow scoring format."""
    example = '{"dataframe_records": [{"user_id": "u00001", "top_k": 10}]}'
    if not isinstance(payload, dict):
        raise InferenceRequestError(f"the request must be a JSON object like {example}; got "
                                    f"{type(payload).__name__}: {shown(payload)}")
    given = [k for k in INPUT_KEYS if k in payload]
    unknown = [k for k in payload if k not in (*INPUT_KEYS, "params")]
    if unknown:
        raise InferenceRequestError(f"unknown key(s) {', '.join(shown(k, 40) for k in unknown[:5])} in the request; "
                                    f"use one of {', '.join(INPUT_KEYS)} and optionally params, e.g. {example}")
    if len(given) != 1:
        raise InferenceRequestError(f"the request needs exactly one of {', '.join(INPUT_KEYS)}"
                                    f"{' (got ' + ', '.join(given) + ')' if given else ''}, e.g. {example}")
    key = given[0]
    body = payload[key]
    if key == "dataframe_split":
        if not isinstance(body, dict) or not isinstance(body.get("columns"), list) or not isinstance(body.get("data"), list) \
                or set(body) - {"columns", "data", "index"}:
            raise InferenceRequestError('dataframe_split must be {"columns": [...], "data": [[...], ...]}')
        cols = body["columns"]
        if not all(isinstance(c, str) for c in cols) or len(set(cols)) != len(cols):
            raise InferenceRequestError("dataframe_split.columns must be distinct field names (strings)")
        rows = []
        for n, row in enumerate(body["data"]):
            if not isinstance(row, list) or len(row) != len(cols):
                raise InferenceRequestError(f"dataframe_split.data[{n}] must be a list of {len(cols)} values "
                                            "(one per column)")
            rows.append(dict(zip(cols, row)))
    elif isinstance(body, dict) and key in ("inputs", "instances"):
        rows = _columns_to_records(body, key)
    elif isinstance(body, list):
        rows = body
    else:
        raise InferenceRequestError(f"{key} must be a list of rows like [{{\"user_id\": \"u00001\"}}], got "
                                    f"{type(body).__name__}: {shown(body)}")
    if not rows:
        raise InferenceRequestError(f"{key} holds no rows: send at least one, e.g. {example}")
    if len(rows) > max_rows:
        raise HTTPError(413, f"{len(rows)} rows in one request, over the limit of {max_rows}: split the request",
                        "BAD_REQUEST")
    return rows, payload.get("params")


# ---------------------------------------------------------------------------- the WSGI app
Predictor = Callable[[list[Any], Any], Any]  # (rows, params) -> DataFrame


class ScoringApp:
    """WSGI app of the scoring protocol around `predict(rows, params)` (the pyfunc's strict path)."""

    def __init__(self, predict: Predictor, version: str = "unknown", max_body_bytes: int = MAX_BODY_BYTES,
                 max_rows: int = MAX_ROWS) -> None:
        self.predict = predict
        self.model: Any = None  # the TwoTowerRecommender behind `predict`, when built by for_model_dir
        self.version = version
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows

    @classmethod
    def for_model_dir(cls, model_dir: str | Path, **kwargs: Any) -> "ScoringApp":
        """The app around a TwoTowerRecommender loaded from a bundle folder (what the server runs)."""
        from types import SimpleNamespace

        from ml.inference.pyfunc import TwoTowerRecommender

        model = TwoTowerRecommender()
        model.load_context(SimpleNamespace(artifacts={"model_dir": str(model_dir)}))
        app = cls(lambda rows, params: model.predict_records(rows, params, strict=True),
                  version=model.prediction_log.model_version, **kwargs)
        app.model = model
        return app

    # -------------------------------------------------------------- WSGI
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            status, body, ctype, headers = self._handle(environ)
        except HTTPError as exc:
            status, ctype, headers = exc.status, "application/json", []
            body = _error_body(exc.error_code, exc.message)
        except InferenceRequestError as exc:
            status, ctype, headers = 400, "application/json", []
            body = _error_body("INVALID_PARAMETER_VALUE", str(exc))
        except Exception:  # noqa: BLE001 - never a traceback to the client; the log has it
            log.exception("scoring server: unexpected error on %s %s", environ.get("REQUEST_METHOD"),
                          shown(environ.get("PATH_INFO"), 200))
            status, ctype, headers = 500, "application/json", []
            body = _error_body("INTERNAL_ERROR", "internal error while scoring; the server log (logs/inference.log) "
                                                 "has the details")
        phrase = _REASONS.get(status, "Error")
        start_response(f"{status} {phrase}", [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers])
        return [body]

    def _handle(self, environ: dict) -> tuple[int, bytes, str, list[tuple[str, str]]]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "") or "/"
        if path in ("/ping", "/health"):
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"{path} answers GET", "BAD_REQUEST")
            return 200, b"\n", "application/json", []
        if path == "/version":
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, "/version answers GET", "BAD_REQUEST")
            import mlflow

            return 200, mlflow.__version__.encode(), "text/plain; charset=utf-8", []
        if path != "/invocations":
            raise HTTPError(404, f"no route {method} {shown(path, 80)}: the scoring server answers POST /invocations, "
                                 "GET /ping, /health and /version", "ENDPOINT_NOT_FOUND")
        if method != "POST":
            raise HTTPError(405, f"/invocations answers POST (got {shown(method, 20)}); send the request as a JSON "
                                 "body", "BAD_REQUEST")
        body = self._read_body(environ)
        payload = parse_json_body(body, environ.get("CONTENT_TYPE"), self.max_body_bytes)
        rows, params = parse_invocation(payload, self.max_rows)
        frame = self.predict(rows, params)
        out = json.dumps({"predictions": frame.to_dict(orient="records")}, allow_nan=False, default=_jsonable)
        return 200, out.encode(), "application/json", []

    def _read_body(self, environ: dict) -> bytes:
        raw = environ.get("CONTENT_LENGTH") or ""
        stream = environ.get("wsgi.input")
        if raw:
            try:
                length = int(raw)
            except ValueError:
                raise HTTPError(400, "Content-Length is not a number", "BAD_REQUEST") from None
            if length < 0:
                raise HTTPError(400, "Content-Length is negative", "BAD_REQUEST")
            if length > self.max_body_bytes:
                raise HTTPError(413, f"request body is {length} bytes, over the limit of {self.max_body_bytes}: send "
                                     "fewer rows per request", "BAD_REQUEST")
            return stream.read(length) if stream is not None and length else b""
        data = stream.read(self.max_body_bytes + 1) if stream is not None else b""
        if len(data) > self.max_body_bytes:
            raise HTTPError(413, f"request body is over the limit of {self.max_body_bytes} bytes: send fewer rows "
                                 "per request", "BAD_REQUEST")
        return data


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            415: "Unsupported Media Type", 500: "Internal Server Error"}


def _error_body(code: str, message: str) -> bytes:
    text = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + " ..."
    return json.dumps({"error_code": code, "message": text}).encode()


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---------------------------------------------------------------------------- online A/B
@dataclass(frozen=True)
class ABSettings:
    """Two registered versions behind one endpoint: who gets which, and whether the challenger is only shadowed."""

    salt: str
    arms: dict[str, float]      # normalised weights; exactly two arms
    spec: str                   # the split as given (hashed exactly as `towerops ab assign --arms` hashes it)
    control: str                # the arm --model-uri answers; the other arm is the challenger
    shadow: bool = False

    @property
    def treatment(self) -> str:
        return next(a for a in self.arms if a != self.control)


def ab_settings(salt: str | None, arms: str | None, control: str | None, shadow: bool) -> ABSettings:
    """Checked A/B settings (the same arm spec and hash as `towerops ab assign`); errors name the fix."""
    from ml.inference.ab_assignment import parse_arms

    if not salt or not salt.strip():
        raise ValueError("serving two versions needs --ab-salt (the experiment name `towerops ab assign --salt` "
                         "uses), e.g. --ab-salt reco-2026-12")
    spec = arms or "control=50,treatment=50"
    weights = parse_arms(spec)
    if len(weights) != 2:
        raise ValueError(f"--arms {arms!r} names {len(weights)} arms; serving splits between exactly two (the "
                         "control and the challenger), e.g. --arms control=90,treatment=10")
    control = control or ("control" if "control" in weights else next(iter(weights)))
    if control not in weights:
        raise ValueError(f"--control-arm {control!r} is not one of the arms {', '.join(weights)}: pass one of them "
                         "(the arm that --model-uri answers)")
    return ABSettings(salt=salt, arms=weights, spec=spec, control=control, shadow=shadow)


class ABRouter:
    """`predict(rows, params)` for two models: each row goes to its user's arm (sha256 of salt:user_id,
    `ml.inference.ab_assignment.assign_arm`, so it matches `towerops ab assign`); a row without a user_id
    (an anonymous cold start) goes to the control. With `shadow`, every row is answered by the
    control and also scored by the challenger in the background, logged as a shadow line and never
    returned. Each model's prediction log lines carry its arm and version."""

    def __init__(self, models: Mapping[str, Any], settings: ABSettings, shadow_queue: int = 64) -> None:
        missing = [a for a in settings.arms if a not in models]
        if missing:
            raise ValueError(f"no model for arm(s) {', '.join(missing)}")
        self.models, self.settings = dict(models), settings
        self._shadow_slots = threading.BoundedSemaphore(shadow_queue)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow") if settings.shadow else None
        self.shadow_dropped = 0

    def arm_of(self, row: Any) -> str:
        from ml.inference.ab_assignment import assign_arm

        user = row.get("user_id") if isinstance(row, dict) else None
        if not isinstance(user, str) or not user:
            return self.settings.control
        return assign_arm(user, self.settings.spec, self.settings.salt)

    def __call__(self, rows: list[Any], params: Any) -> Any:
        import pandas as pd

        control = self.models[self.settings.control]
        if self.settings.shadow:
            frame = control.predict_records(rows, params, strict=True)
            self._shadow(rows, params)
            return frame
        # contiguous runs of one arm, answered in order, so the output order is the request's
        runs: list[tuple[str, list[Any]]] = []
        for row in rows:
            arm = self.arm_of(row)
            if runs and runs[-1][0] == arm:
                runs[-1][1].append(row)
            else:
                runs.append((arm, [row]))
        self._check(rows, params)
        frames = [self.models[arm].predict_records(part, params, strict=True) for arm, part in runs]
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    def _check(self, rows: list[Any], params: Any) -> None:
        """Every row parsed before any arm answers, so a bad row fails the call with nothing logged as shown."""
        from ml.inference.engine import parse_request
        from ml.inference.pyfunc import parse_params

        default_k, _ = parse_params(params, strict=True)
        for n, row in enumerate(rows):
            try:
                parse_request(row, default_k, strict=True, where=f"row {n}" if len(rows) > 1 else "request")
            except InferenceRequestError as exc:
                model = self.models[self.arm_of(row)]
                user = row.get("user_id") if isinstance(row, dict) else None
                model.prediction_log.log(user_id=user[:200] if isinstance(user, str) else None, cold=False, top_k=None,
                                         items=[], scores=[], latency_ms=0.0, status="error", error=str(exc))
                raise

    def _shadow(self, rows: list[Any], params: Any) -> None:
        if not self._shadow_slots.acquire(blocking=False):
            self.shadow_dropped += 1
            if self.shadow_dropped in (1, 100) or self.shadow_dropped % 10000 == 0:
                log.warning("shadow scoring is behind: %d request(s) not shadow-scored so far", self.shadow_dropped)
            return
        challenger = self.models[self.settings.treatment]

        def score() -> None:
            try:
                challenger.predict_records(rows, params, strict=True)
            except InferenceRequestError:
                pass  # the control answered the client; the shadow's refusal is in its log lines
            except Exception:  # noqa: BLE001 - a shadow failure never reaches a client
                log.exception("shadow challenger failed on a request")
            finally:
                self._shadow_slots.release()

        assert self._pool is not None
        self._pool.submit(score)


def load_ab_app(model_uri: str, challenger_uri: str, settings: ABSettings, versions: Mapping[str, str | None],
                **kwargs: Any) -> ScoringApp:
    """The scoring app of two registered versions; a model that fails to load stops start-up with
    an error naming its arm and URI (never an endpoint serving one arm only)."""
    from ml.bundle.resolve import resolve_model

    models: dict[str, Any] = {}
    for arm, uri in ((settings.control, model_uri), (settings.treatment, challenger_uri)):
        try:
            app = ScoringApp.for_model_dir(resolve_model(uri))
        except Exception as exc:  # noqa: BLE001 - any load failure is a start-up error naming the arm
            raise RuntimeError(f"arm {arm!r}: cannot load {uri} ({type(exc).__name__}: {shown(str(exc), 300)}); fix "
                               "the URI or alias (towerops registry promote), or serve one model") from exc
        pl = app.model.prediction_log
        pl.arm, pl.shadow = arm, settings.shadow and arm == settings.treatment
        pl.model_version = versions.get(arm) or pl.model_version
        models[arm] = app.model
    router = ABRouter(models, settings)
    label = f"{settings.control}={models[settings.control].prediction_log.model_version}," \
            f"{settings.treatment}={models[settings.treatment].prediction_log.model_version}"
    app = ScoringApp(router, version=label, **kwargs)
    app.model = router
    return app


# ---------------------------------------------------------------------------- the server
def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001, threads: int = 4,
          challenger_uri: str | None = None, ab: ABSettings | None = None,
          versions: Mapping[str, str | None] | None = None) -> None:
    """Download the model(s), build the app and serve it on waitress until interrupted (blocking)."""
    from waitress import serve as waitress_serve

    from ml.bundle.resolve import resolve_model

    if challenger_uri and ab is not None:
        app = load_ab_app(model_uri, challenger_uri, ab, versions or {})
        log.info("A/B scoring server: %s (%s) vs %s (%s), salt %r, split %s%s, on http://%s:%d", model_uri, ab.control,
                 challenger_uri, ab.treatment, ab.salt, ab.arms, " (challenger in shadow)" if ab.shadow else "",
                 host, port)
    else:
        app = ScoringApp.for_model_dir(resolve_model(model_uri))
    log.info("scoring server for %s (version %s) on http://%s:%d (waitress, %d threads)", model_uri, app.version,
             host, port, threads)
    # waitress' own body limit a little above ours, so oversized bodies get our 413 message
    waitress_serve(app, host=host, port=port, threads=threads, max_request_body_size=MAX_BODY_BYTES + 1024,
                   ident="towerops", clear_untrusted_proxy_headers=True)


def main(argv: list[str] | None = None) -> None:
    """`python -m ml.inference.serving --model-uri ... --host ... --port ... --threads ...` (what `towerops serve` execs)."""
    import argparse

    parser = argparse.ArgumentParser(description="towerops scoring server (MLflow scoring protocol, waitress)")
    parser.add_argument("--model-uri", required=True, help="models:/name@alias, runs:/<id>/recommender or a folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--threads", type=int, default=4, help="request threads")
    parser.add_argument("--challenger-uri", default=None, help="second version: A/B split (or --shadow)")
    parser.add_argument("--ab-salt", default=None)
    parser.add_argument("--arms", default=None, help="e.g. control=90,treatment=10")
    parser.add_argument("--control-arm", default=None)
    parser.add_argument("--shadow", action="store_true")
    parser.add_argument("--control-version", default=None)
    parser.add_argument("--challenger-version", default=None)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads {args.threads} must be at least 1")
    ab = None
    if args.challenger_uri:
        try:
            ab = ab_settings(args.ab_salt, args.arms, args.control_arm, args.shadow)
        except ValueError as exc:
            parser.error(str(exc))
    from ml.logs import LogDirError, configure_logging

    try:  # a server is an entry point: log files and quiet libraries from here on
        configure_logging()
    except (LogDirError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    from ml.settings import ensure_tracking_uri

    ensure_tracking_uri()
    if ab is None:
        serve(args.model_uri, args.host, args.port, args.threads)
        return
    try:
        serve(args.model_uri, args.host, args.port, args.threads, challenger_uri=args.challenger_uri, ab=ab,
              versions={ab.control: args.control_version, ab.treatment: args.challenger_version})
    except RuntimeError as exc:  # a model of one arm did not load: no endpoint at all
        log.error("%s", exc)
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
