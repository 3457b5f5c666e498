"""What every `towerops` command shares: user errors and their exit status, output to a
terminal or a pipe (tables that fit the terminal, printed in full when piped; no colour
codes outside a terminal), `--format text|json`, and MLproject's empty-string parameters."""

from __future__ import annotations

import enum
import json
import math
from typing import Any, NoReturn

import typer
from rich.console import Console

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, ConnectionError,
                                                PermissionError)
_PIPE_WIDTH = 100_000  # a pipe or file has no width: never wrap or cut what goes there


class OutputFormat(str, enum.Enum):
    """`--format`: text for people, json for programs (NaN written as null)."""

    text = "text"
    json = "json"


def console(stderr: bool = False) -> Console:
    """A rich console on stdout/stderr as they are now: the terminal's width on a terminal,
    unlimited width and no colours on a pipe or file."""
    found = Console(stderr=stderr, highlight=False)
    if found.is_terminal:
        return found
    return Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH, no_color=True)


def info(message: str) -> None:
    """A status line for a person, on stderr (stdout stays for results)."""
    console(stderr=True).print(message, markup=False, soft_wrap=True)


def fail(exc: BaseException | str, code: int = 2) -> NoReturn:
    """Print `error: <message>` once on stderr (secrets redacted) and exit with `code` (2: bad input)."""
    from rich.markup import escape

    from ml.secrets import redact

    console(stderr=True).print(f"[bold red]error:[/] {escape(redact(str(exc)))}", soft_wrap=True)
    raise typer.Exit(code)


def explain_mlflow_error(exc: BaseException) -> str:
    """An MLflow exception (its client, its server's answer) as one line saying what to fix."""
    import os

    from ml.secrets import redact_url

    message = str(getattr(exc, "message", None) or exc).strip()
    first = message.splitlines()[0] if message else type(exc).__name__
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    low = message.lower()
    if "webhook url scheme" in low or ("webhook url" in low and "private" in low):
        return (f"the tracking server refused the webhook URL: {first} Register an https:// URL, or (receivers on "
                "loopback or a private network over http) restart the server with `towerops server "
                "--allow-loopback-webhooks`, which sets MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and "
                "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true")
    if "failed with exception" in low or "max retries exceeded" in low or "connection refused" in low:
        where = redact_url(tracking) if tracking else "the tracking server"
        return (f"the tracking server {where} does not answer ({first[:200]}): start it (`towerops server`) or fix "
                "tracking.uri in towerops.yaml / $MLFLOW_TRACKING_URI; `towerops doctor` checks the set-up")
    if "webhook" in low and ("not supported" in low or "notimplemented" in low or "filestore" in low):
        return (f"{first}: webhooks need a tracking server with a SQL backend (`towerops server`), reached over "
                "http(s)")
    code = getattr(exc, "error_code", None)
    return f"MLflow{' ' + str(code) if code else ''}: {first}"


def is_json(fmt: OutputFormat | str, as_json: bool = False) -> bool:
    """`--format json` (or the older `--json` flag)."""
    return as_json or OutputFormat(fmt) is OutputFormat.json


def json_safe(obj: Any) -> Any:
    """`obj` with NaN/inf as None, so the output is valid JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):  # numpy scalars
        try:
            return json_safe(obj.item())
        except (TypeError, ValueError):
            return obj
    return obj


def print_json(obj: Any) -> None:
    """One JSON document on stdout."""
    typer.echo(json.dumps(json_safe(obj), indent=2, default=str))


def print_table(table: Any) -> None:
    """A rich Table on stdout: fitted to a terminal, in full on a pipe."""
    console().print(table)


def opt(value: str | None) -> str | None:
    """MLproject passes empty strings (or 'None') for parameters that were not given."""
    return value if value is not None and value.strip() not in ("", "None") else None
