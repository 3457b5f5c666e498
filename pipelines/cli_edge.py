"""`towerops edge serve`: the edge demo page and a local deployment folder on loopback, for
trying the browser client (edge/) against what `towerops deploy` wrote. Argument parsing
only; the server is `pipelines.edge_server`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.common import USER_ERRORS, fail, info

Deployments = Annotated[Path, typer.Option(help="local deployment folder: the bucket folder holding "
                                           "<model>/production.json, or the local_dir above it")]
ModelName = Annotated[str | None, typer.Option("--model", help="deployed model name (default: the deployment "
                                                  "config's storage.model_name, else the registry's model name)")]
Port = Annotated[int, typer.Option(help="TCP port (0: any free port)")]
Host = Annotated[str, typer.Option(help="loopback address to bind (127.0.0.1, ::1 or localhost)")]
Config = Annotated[str | None, typer.Option("--config", help="deployment config, for the bucket name (default: "
                                               "$TOWEROPS_DEPLOY_CONFIG or configs/deployment.yaml)")]


def edge_serve(deployments: Deployments = Path("deployments"), model: ModelName = None, port: Port = 8765,
               host: Host = "127.0.0.1", config: Config = None) -> None:
    """Serve the swipe demo (edge/demo.html) and a local deployment folder on loopback until Ctrl-C."""
    from pipelines.edge_server import EdgeServer, find_bucket
    from registry.deploy.config import _default_model_name, load_deploy_config

    try:
        cfg = load_deploy_config(config)
        name = model or cfg.model_name or _default_model_name()
        server = EdgeServer(find_bucket(deployments, name, cfg.storage_bucket), name, host=host, port=port)
    except (*USER_ERRORS, OSError) as exc:
        fail(exc)
    info(f"edge demo for {name} at {server.url} (storage {server.bucket_dir} at /store/); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    """Add the `edge` group (`towerops edge serve`) to the towerops CLI."""
    edge_app = typer.Typer(help="Recommendations at the edge: the TF.js browser client and its demo.",
                           no_args_is_help=True)
    edge_app.command("serve")(edge_serve)
    app.add_typer(edge_app, name="edge")
