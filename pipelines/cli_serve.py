"""`towerops serve`, `batch-infer`, `build-index`, `export-tfjs`: argument parsing only (logic in ml/)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.common import USER_ERRORS, fail, info

MODEL_URI_HELP = "logged model, e.g. models:/two_tower@production or runs:/<run_id>/recommender"
MODEL_HELP = "bundle folder or logged-model URI (anything with ':/', e.g. models:/two_tower@production)"

Model = Annotated[str | None, typer.Option(help=MODEL_HELP)]
ModelDir = Annotated[Path | None, typer.Option(help="model bundle folder")]
ModelUri = Annotated[str | None, typer.Option(help=MODEL_URI_HELP)]


def _bundle(model: str | None, model_dir: Path | None, model_uri: str | None) -> tuple[Path, str | None]:
    """The bundle folder from --model / --model-dir / --model-uri (exactly one), downloading a URI."""
    from ml.bundle.resolve import bundle_dir_from_uri

    given = [v for v in (model, str(model_dir) if model_dir else None, model_uri) if v]
    if len(given) != 1:
        raise ValueError("pass exactly one of --model, --model-dir (a bundle folder) or --model-uri "
                         f"(e.g. models:/two_tower@production); got {len(given)}")
    if model:
        model_uri, model_dir = (model, None) if ":/" in model else (None, Path(model))
    model_uri = model_uri or None
    if model_dir is not None:
        if not model_dir.exists():
            raise FileNotFoundError(f"--model-dir {model_dir} does not exist; pass the model_dir written by training")
        return model_dir, None
    from ml.settings import ensure_tracking_uri

    ensure_tracking_uri()
    return bundle_dir_from_uri(model_uri), model_uri


def _errors() -> tuple[type[BaseException], ...]:
    """User-facing failures: bad input, missing files, unreachable services, registry misses, lock timeouts."""
    from mlflow.exceptions import MlflowException

    return (*USER_ERRORS, MlflowException, TimeoutError)


def serve(
    model_uri: Annotated[str, typer.Option(help=MODEL_URI_HELP)] = "models:/two_tower@production",
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 5001,
    workers: Annotated[int, typer.Option(help="request threads of the server (waitress; one catalog in memory)")] = 4,
    scoring: Annotated[str | None, typer.Option(help="exact, ann or auto (default: $TOWEROPS_SCORING or auto)")] = None,
    prediction_log: Annotated[Path | None, typer.Option(help="prediction log file (default: $TOWEROPS_PREDICTION_LOG "
                                                           "or logs/predictions.jsonl)")] = None,
    sample: Annotated[float | None, typer.Option(help="fraction of requests written to the prediction log")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the command instead of running it")] = False,
    challenger_uri: Annotated[str | None, typer.Option(help="a second version served from the same endpoint, e.g. "
                                                           "models:/two_tower@challenger (A/B split, or --shadow)")] = None,
    ab_salt: Annotated[str | None, typer.Option(help="experiment name hashed with each user_id (the --salt of "
                                                    "`towerops ab assign`)")] = None,
    arms: Annotated[str | None, typer.Option(help="two arms and weights, e.g. control=90,treatment=10 "
                                                 "(default control=50,treatment=50)")] = None,
    control_arm: Annotated[str | None, typer.Option(help="the arm --model-uri answers (default: control, else the "
                                                         "first); the other arm gets --challenger-uri")] = None,
    shadow: Annotated[bool, typer.Option("--shadow", help="show everyone the control; score the challenger too and "
                                                         "log it as shadow lines, never returned")] = False,
) -> None:
    """Serve the registered recommender over the MLflow scoring protocol (waitress, strict request
    checks; prediction log tagged with its version), or two versions with an online A/B split."""
    from ml.inference.serving import serve_command
    from ml.settings import ensure_tracking_uri

    try:
        ensure_tracking_uri()
        argv, env = serve_command(model_uri, host=host, port=port, workers=workers, scoring=scoring,
                                  prediction_log=str(prediction_log) if prediction_log else None,
                                  sample_rate=sample, challenger_uri=challenger_uri, ab_salt=ab_salt, arms=arms,
                                  control_arm=control_arm, shadow=shadow)
    except _errors() as exc:
        fail(exc)
    if dry_run:
        typer.echo(" ".join(argv))
        return
    from ml.settings import get_settings

    info(f"serving {model_uri} (version {get_settings(env).model_version or '?'})"
         + (f" and {challenger_uri} ({'shadow' if shadow else 'A/B'})" if challenger_uri else "")
         + f" on http://{host}:{port}")
    os.execvpe(argv[0], argv, env)


def batch_infer(
    model: Model = None,
    model_dir: ModelDir = None,
    model_uri: ModelUri = None,
    out: Annotated[Path, typer.Option(help="output folder (versions/<v>/, current -> newest)")] = Path("outputs/batch"),
    top_k: Annotated[int, typer.Option(help="items per user")] = 10,
    chunk_size: Annotated[int, typer.Option(help="users scored per matrix product")] = 1024,
    scoring: Annotated[str, typer.Option(help="exact (BLAS) or ann (the bundle's faiss index)")] = "exact",
    exclude_seen: Annotated[bool, typer.Option("--exclude-seen/--include-seen", help="drop items users swiped")] = True,
    dsn: Annotated[str | None, typer.Option(envvar="TOWEROPS_BATCH_DSN",
                                               help="PostgreSQL DSN to publish to (env TOWEROPS_BATCH_DSN)")] = None,
    table_prefix: Annotated[str, typer.Option(help="PostgreSQL table/view name prefix")] = "towerops",
    schema: Annotated[str, typer.Option(help="PostgreSQL schema")] = "public",
    pgvector: Annotated[bool | None, typer.Option("--pgvector/--no-pgvector", help="force pgvector or float4[] "
                                                     "(default: pgvector when available)")] = None,
    keep_versions: Annotated[int, typer.Option(help="versions kept (Parquet and PostgreSQL), the current included")] = 2,
    track: Annotated[bool | None, typer.Option("--track/--no-track", help="log an MLflow run "
                                                  "(default: only inside `mlflow run`)")] = None,
) -> None:
    """Embeddings and top-K for every known user to Parquet (and PostgreSQL), switched atomically."""
    from ml.inference.batch.run import run_batch
    from ml.tracking.batch import run_batch_tracked

    try:
        bundle, uri = _bundle(model, model_dir, model_uri)
        # `--dsn ''` (MLproject's default) falls back to the environment, so a password stays out of params
        from ml.settings import get_settings, secret_value

        dsn = dsn or secret_value(get_settings().batch_dsn) or None
        kwargs = dict(top_k=top_k, chunk_size=chunk_size, exclude_seen=exclude_seen, scoring=scoring, dsn=dsn,
                      table_prefix=table_prefix, schema=schema, use_pgvector=pgvector, keep_versions=keep_versions)
        tracked = track if track is not None else bool(os.environ.get("MLFLOW_RUN_ID"))
        if tracked:
            result = run_batch_tracked(bundle, out, model_uri=uri, **kwargs)
        else:
            result = run_batch(bundle, out, model_label=uri, **kwargs)
    except _errors() as exc:
        fail(exc)
    typer.echo(json.dumps(result.summary()))


def build_index(
    model_dir: Annotated[Path, typer.Option(help="model bundle folder to add ann/ to")],
    factory: Annotated[str | None, typer.Option(help="faiss index factory (default IVF<~4*sqrt(n)>,Flat)")] = None,
    nprobe: Annotated[int | None, typer.Option(help="IVF lists probed per query (default nlist/4)")] = None,
    k: Annotated[int, typer.Option(help="k of the recall@k measured against exact search")] = 10,
    queries: Annotated[int, typer.Option(help="user embeddings used as recall queries")] = 1000,
) -> None:
    """Build the bundle's approximate index and measure its recall@k vs exact search."""
    from ml.inference.ann import build_bundle_index

    try:
        meta = build_bundle_index(model_dir, factory=factory, nprobe=nprobe, k=k, n_queries=queries)
    except _errors() as exc:
        fail(exc)
    typer.echo(json.dumps(meta))


def export_tfjs_cmd(
    model: Model = None,
    model_dir: ModelDir = None,
    model_uri: ModelUri = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: <bundle>/tfjs)")] = None,
) -> None:
    """Export the user and item towers as TensorFlow.js layers models (model.json + shards)."""
    from ml.inference.tfjs import export_tfjs

    try:
        bundle, uri = _bundle(model, model_dir, model_uri)
        if out is None and uri:
            raise ValueError("with --model-uri, pass --out (the downloaded bundle is a temporary copy)")
        paths = export_tfjs(bundle, out)
    except _errors() as exc:
        fail(exc)
    typer.echo(json.dumps({k: str(v) for k, v in paths.items()}))


def register(app: typer.Typer) -> None:
    """Add the serving and batch-scoring commands to the `towerops` app."""
    app.command("serve")(serve)
    app.command("batch-infer")(batch_infer)
    app.command("build-index")(build_index)
    app.command("export-tfjs")(export_tfjs_cmd)
