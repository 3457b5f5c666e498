"""`towerops serve`, `batch-infer`, `build-index`, `export-tfjs`: argument parsing only (logic in ml/)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

MODEL_URI_HELP = "logged model, e.g. models:/two_tower@production or runs:/<run_id>/recommender"


MODEL_HELP = "bundle folder or logged-model URI (anything with ':/', e.g. models:/two_tower@production)"


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

    from pipelines.cli import USER_ERRORS

    return (*USER_ERRORS, MlflowException, TimeoutError)


def register(app: typer.Typer) -> None:
    """Add the serving and batch-scoring commands to the `towerops` app."""
    from pipelines.cli import err, fail

    @app.command("serve")
    def serve(
        model_uri: str = typer.Option("models:/two_tower@production", help=MODEL_URI_HELP),
        host: str = typer.Option("127.0.0.1", help="interface to bind"),
        port: int = typer.Option(5001, help="TCP port"),
        workers: int = typer.Option(1, help="uvicorn worker processes (each holds the catalog in memory)"),
        scoring: str | None = typer.Option(None, help="exact, ann or auto (default: $TOWEROPS_SCORING or auto)"),
        prediction_log: Path | None = typer.Option(None, help="prediction log file (default: "
                                                                 "$TOWEROPS_PREDICTION_LOG or logs/predictions.jsonl)"),
        sample: float | None = typer.Option(None, help="fraction of requests written to the prediction log"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the command instead of running it"),
    ) -> None:
        """Serve the registered recommender with `mlflow models serve` (prediction log tagged with its version)."""
        from ml.inference.serving import serve_command
        from ml.settings import ensure_tracking_uri

        try:
            ensure_tracking_uri()
            argv, env = serve_command(model_uri, host=host, port=port, workers=workers, scoring=scoring,
                                      prediction_log=str(prediction_log) if prediction_log else None,
                                      sample_rate=sample)
        except _errors() as exc:
            fail(exc)
        if dry_run:
            typer.echo(" ".join(argv))
            return
        err.print(f"serving {model_uri} (version {env.get('TOWEROPS_MODEL_VERSION', '?')}) on http://{host}:{port}")
        os.execvpe(argv[0], argv, env)

    @app.command("batch-infer")
    def batch_infer(
        model: str | None = typer.Option(None, help=MODEL_HELP),
        model_dir: Path | None = typer.Option(None, help="model bundle folder"),
        model_uri: str | None = typer.Option(None, help=MODEL_URI_HELP),
        out: Path = typer.Option(Path("outputs/batch"), help="output folder (versions/<v>/, current -> newest)"),
        top_k: int = typer.Option(10, help="items per user"),
        chunk_size: int = typer.Option(1024, help="users scored per matrix product"),
        scoring: str = typer.Option("exact", help="exact (BLAS) or ann (the bundle's faiss index)"),
        exclude_seen: bool = typer.Option(True, "--exclude-seen/--include-seen", help="drop items users swiped"),
        dsn: str | None = typer.Option(None, envvar="TOWEROPS_BATCH_DSN",
                                          help="PostgreSQL DSN to publish to (env TOWEROPS_BATCH_DSN)"),
        table_prefix: str = typer.Option("towerops", help="PostgreSQL table/view name prefix"),
        schema: str = typer.Option("public", help="PostgreSQL schema"),
        pgvector: bool | None = typer.Option(None, "--pgvector/--no-pgvector",
                                                help="force pgvector or float4[] (default: pgvector when available)"),
        keep_versions: int = typer.Option(2, help="versions kept (Parquet and PostgreSQL), the current included"),
        track: bool | None = typer.Option(None, "--track/--no-track",
                                             help="log an MLflow run (default: only inside `mlflow run`)"),
    ) -> None:
        """Embeddings and top-K for every known user to Parquet (and PostgreSQL), switched atomically."""
        from ml.inference.batch.run import run_batch
        from ml.tracking.batch import run_batch_tracked

        try:
            bundle, uri = _bundle(model, model_dir, model_uri)
            # `--dsn ''` (MLproject's default) falls back to the environment, so a password stays out of params
            dsn = dsn or os.environ.get("TOWEROPS_BATCH_DSN") or None
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

    @app.command("build-index")
    def build_index(
        model_dir: Path = typer.Option(..., help="model bundle folder to add ann/ to"),
        factory: str | None = typer.Option(None, help="faiss index factory (default IVF<~4*sqrt(n)>,Flat)"),
        nprobe: int | None = typer.Option(None, help="IVF lists probed per query (default nlist/4)"),
        k: int = typer.Option(10, help="k of the recall@k measured against exact search"),
        queries: int = typer.Option(1000, help="user embeddings used as recall queries"),
    ) -> None:
        """Build the bundle's approximate index and measure its recall@k vs exact search."""
        from ml.inference.ann import build_bundle_index

        try:
            meta = build_bundle_index(model_dir, factory=factory, nprobe=nprobe, k=k, n_queries=queries)
        except _errors() as exc:
            fail(exc)
        typer.echo(json.dumps(meta))

    @app.command("export-tfjs")
    def export_tfjs_cmd(
        model: str | None = typer.Option(None, help=MODEL_HELP),
        model_dir: Path | None = typer.Option(None, help="model bundle folder"),
        model_uri: str | None = typer.Option(None, help=MODEL_URI_HELP),
        out: Path | None = typer.Option(None, help="output folder (default: <bundle>/tfjs)"),
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
