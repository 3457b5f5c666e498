"""Serving a registered model over HTTP with `mlflow models serve`, with the prediction log switched on."""

from __future__ import annotations

import os
from pathlib import Path

from ml.inference.engine import ENV_MODEL_VERSION, ENV_SCORING, SCORING_MODES


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
                  sample_rate: float | None = None, timeout_s: int | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `mlflow models serve` of the recommender (settings checked first)."""
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
    # mlflow starts `uvicorn` from PATH: make it this interpreter's, also when called by absolute path
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers)]
    return argv, env
