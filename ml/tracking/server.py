"""The team tracking server: `mlflow server` on a PostgreSQL backend store.

Why a launcher rather than a bare `mlflow server` line: everything that can go wrong
is checked *before* the server starts, with a message that says what to fix.

- PostgreSQL is reached with psycopg2 first; an unreachable server, a bad DSN or a
  refused login is a ValueError/ConnectionError naming host, port, database and user
  (never the password).
- MLflow's schema migrations run here, explicitly, under a PostgreSQL advisory lock
  and in one transaction: a fresh database gets all of MLflow's tables or none, an old
  one is upgraded wholly or not at all. Server workers never race to create tables.
- Artifacts are proxied (`--serve-artifacts`, default root `mlflow-artifacts:/`), so
  clients need no storage credentials: a local folder, or `s3://bucket/prefix` on any
  S3-compatible endpoint (MLFLOW_S3_ENDPOINT_URL; Supabase Storage's `/storage/v1/s3`).
- Webhooks get a fixed Fernet key (TOWEROPS_WEBHOOK_ENCRYPTION_KEY, else one generated
  once into `<state_dir>/webhook_encryption.key`, mode 0600); loopback receivers only
  when asked.
- Basic auth (`--app-name basic-auth`) keeps its users in PostgreSQL too (a second
  database, `<db>_auth` by default), configured through a generated basic_auth.ini.
"""

from __future__ import annotations

import configparser
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from ml.logs import get_logger
from ml.settings import get_settings, secret_value

log = get_logger("deployment")

DSN_ENV_VARS = ("TOWEROPS_TRACKING_DSN", "MLFLOW_BACKEND_STORE_URI")
AUTH_DSN_ENV = "TOWEROPS_AUTH_DSN"
WEBHOOK_KEY_ENV = "TOWEROPS_WEBHOOK_ENCRYPTION_KEY"
WEBHOOK_KEY_FILE = "webhook_encryption.key"
DEFAULT_STATE_DIR = Path(".towerops/server")
_MIGRATION_LOCK_KEY = 0x746F776572  # "tower": one advisory lock for all launchers on a database
_PG_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")


# ------------------------------------------------------------------ DSNs
@dataclass(frozen=True)
class PgTarget:
    """A parsed PostgreSQL DSN; `describe()` is safe to print (no password)."""

    uri: str  # postgresql+psycopg2://...: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, absent here
    host: str
    port: int
    database: str
    user: str
    password: str | None

    @property
    def libpq_uri(self) -> str:
        """The same DSN as psycopg2/libpq read it."""
        return self.uri.replace("postgresql+psycopg2://", "postgresql://", 1)

    def describe(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port}, database {self.database!r}, user {self.user!r}"

    def with_database(self, name: str) -> "PgTarget":
        parts = urlsplit(self.uri)
        return parse_dsn(urlunsplit(parts._replace(path=f"/{name}")))

    def redacted(self) -> str:
        parts = urlsplit(self.uri)
        if self.password is None:
            return self.uri
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def parse_dsn(dsn: str | None) -> PgTarget:
    """Check that `dsn` is a postgresql:// URL with a database name; normalise the scheme."""
    if not dsn:
        raise ValueError("no backend store DSN: pass --dsn postgresql://USER[:PASSWORD]@HOST:PORT/DB "
                         f"or set {' or '.join(DSN_ENV_VARS)}")
    parts = urlsplit(dsn)
    if parts.scheme not in _PG_SCHEMES:
        shown = dsn.split("://", 1)[0] if "://" in dsn else dsn[:20]
        raise ValueError(f"backend store DSN must start with postgresql:// (got scheme {shown!r}); "
                         "example: postgresql://mlflow:secret@127.0.0.1:5432/mlflow")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ValueError("backend store DSN has no database name: add it after the host, "
                         "e.g. postgresql://postgres@127.0.0.1:5432/mlflow")
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise ValueError(f"backend store DSN has a bad port: {exc}") from None
    uri = urlunsplit(parts._replace(scheme="postgresql+psycopg2"))
    return PgTarget(uri=uri, host=parts.hostname or "localhost", port=port, database=database,
                    user=unquote(parts.username) if parts.username else os.environ.get("PGUSER", os.environ.get("USER", "?")),
                    password=unquote(parts.password) if parts.password else None)


def _scrub(text: str, target: PgTarget) -> str:
    msg = " ".join(str(text).split())
    if target.password:
        msg = msg.replace(target.password, "***")
    return msg


def check_postgres(target: PgTarget, timeout_s: int = 5) -> str:
    """Connect once with psycopg2; returns the server version. Raises ConnectionError with the fix."""
    import psycopg2

    try:
        conn = psycopg2.connect(target.libpq_uri, connect_timeout=timeout_s)
    except psycopg2.OperationalError as exc:
        reason = _scrub(exc, target)
        if any(m in reason for m in ("password authentication failed", "no password supplied", "role")):
            hint = "check the user and password in the DSN"
        elif "does not exist" in reason and "database" in reason:
            hint = f"create it first: createdb -h {target.host} -p {target.port} -U {target.user} {target.database}"
        else:
            hint = "is PostgreSQL running and listening there? (see DEVELOPERS.md)"
        raise ConnectionError(f"cannot connect to {target.describe()}: {reason}; {hint}") from None
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            return cur.fetchone()[0]
    finally:
        conn.close()


def ensure_database(target: PgTarget) -> bool:
    """Create `target.database` on the same server if it is missing; True when created."""
    import psycopg2
    from psycopg2 import sql

    admin = target.with_database("postgres")
    try:
        conn = psycopg2.connect(admin.libpq_uri, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        raise ConnectionError(f"cannot connect to {admin.describe()} to create database "
                              f"{target.database!r}: {_scrub(exc, admin)}") from None
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.database,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
            except psycopg2.Error as exc:
                raise PermissionError(f"database {target.database!r} does not exist on {target.host}:{target.port} and "
                                      f"user {target.user!r} cannot create it ({_scrub(exc, target)}); create it "
                                      "once as an administrator or pass a DSN to an existing one") from None
            log.info("created database %s on %s:%s", target.database, target.host, target.port)
            return True
    finally:
        conn.close()


# ------------------------------------------------------------------ migrations
@dataclass
class MigrationResult:
    before: str | None  # alembic revision before (None: fresh database)
    after: str
    created: bool

    @property
    def changed(self) -> bool:
        return self.before != self.after


def _engine(uri: str):
    """One DBAPI connection shared by every SQLAlchemy connection (StaticPool).

    MLflow's alembic env.py opens its own connection from the engine; sharing the DBAPI
    connection puts table creation, every migration and the advisory lock in a single
    PostgreSQL transaction, so a failure anywhere rolls all of it back.
    """
    import sqlalchemy
    from sqlalchemy.pool import StaticPool

    return sqlalchemy.create_engine(uri, poolclass=StaticPool)


def schema_revision(target: PgTarget) -> tuple[str | None, str]:
    """(current revision of the MLflow schema in the database or None, the head this MLflow wants)."""
    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision

    engine = _engine(target.uri)
    try:
        with engine.connect() as conn:
            current = None
            if sqlalchemy.inspect(conn).has_table("alembic_version"):
                current = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
        return current, _get_latest_schema_revision()
    finally:
        engine.dispose()


def migrate_tracking_db(target: PgTarget) -> MigrationResult:
    """Bring the database to MLflow's head schema, all-or-nothing.

    Fresh database: MLflow's initial tables plus every migration; existing one: the
    missing migrations. Both in one transaction under an advisory lock. A database with
    some MLflow tables but no version stamp is refused rather than guessed at.
    """
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, _get_latest_schema_revision
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    head = _get_latest_schema_revision()
    engine = _engine(target.uri)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            inspector = sqlalchemy.inspect(conn)
            tables = set(inspector.get_table_names())
            before = None
            if "alembic_version" in tables:
                before = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
            created = False
            if before is None:
                mlflow_tables = tables & set(InitialBase.metadata.tables)
                if mlflow_tables:
                    raise ValueError(
                        f"{target.describe()} has MLflow tables ({', '.join(sorted(mlflow_tables))}) but no "
                        "alembic_version stamp: it was not created by `mlflow`/`towerops server`, or an old "
                        "initialisation was interrupted. Point the server at an empty database or restore a backup.")
                InitialBase.metadata.create_all(conn)
                created = True
            if before == head:
                conn.rollback()
                return MigrationResult(before=before, after=head, created=False)
            config = _get_alembic_config(target.uri)
            config.attributes["connection"] = conn
            log.info("migrating MLflow schema on %s: %s -> %s", target.describe(), before or "empty", head)
            command.upgrade(config, "heads")
            conn.commit()
            after = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).scalar()
            conn.commit()
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise ConnectionError(f"lost {target.describe()} while migrating (nothing was applied): "
                              f"{_scrub(exc.orig if hasattr(exc, 'orig') else exc, target)}") from None
    finally:
        engine.dispose()
    log.info("MLflow schema on %s is at %s", target.describe(), after)
    return MigrationResult(before=before, after=after, created=created)


def migrate_auth_db(target: PgTarget) -> None:
    """Create/upgrade the basic-auth user store (its own alembic table `alembic_version_auth`)."""
    import sqlalchemy
    from mlflow.server.auth.db.utils import migrate_if_needed

    engine = sqlalchemy.create_engine(target.uri)
    try:
        with engine.connect() as conn:  # serialise with other launchers; session lock, released on close
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY + 1})
            migrate_if_needed(engine, "head")
    finally:
        engine.dispose()


# ------------------------------------------------------------------ artifacts
def check_artifacts_destination(dest: str, env: Mapping[str, str] | None = None) -> str:
    """Local folder (created, must be writable) or s3://bucket[/prefix] (bucket must answer). Returns the URI."""
    env = os.environ if env is None else env
    if dest.startswith("s3://"):
        parts = urlsplit(dest)
        if not parts.netloc:
            raise ValueError(f"artifacts destination {dest!r} has no bucket: use s3://BUCKET[/PREFIX]")
        import boto3
        import botocore.exceptions
        from botocore.config import Config

        endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or None
        style = env.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                              aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                              region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
                              config=Config(s3={"addressing_style": style}, connect_timeout=5, read_timeout=10,
                                            retries={"max_attempts": 2}))
        where = f"bucket {parts.netloc!r}" + (f" at {endpoint}" if endpoint else "")
        try:
            client.head_bucket(Bucket=parts.netloc)
        except botocore.exceptions.NoCredentialsError:
            raise PermissionError(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("404", "NoSuchBucket"):
                raise FileNotFoundError(f"S3 {where} does not exist: create it first") from None
            raise PermissionError(f"S3 {where} refused access ({code}): check AWS_ACCESS_KEY_ID/"
                                  "AWS_SECRET_ACCESS_KEY and the bucket policy") from None
        except botocore.exceptions.EndpointConnectionError as exc:
            raise ConnectionError(f"cannot reach S3 {where}: {exc}; check MLFLOW_S3_ENDPOINT_URL") from None
        return dest
    if "://" in dest and not dest.startswith("file://"):
        raise ValueError(f"artifacts destination {dest!r}: use a local folder or s3://bucket/prefix")
    path = Path(dest.removeprefix("file://")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise PermissionError(f"artifacts folder {path} is not writable by this user")
    return str(path)


# ------------------------------------------------------------------ webhooks, auth
def _persistent_secret(path: Path, make: Any) -> str:
    """Read a secret kept in a 0600 file, or make it once (never logged)."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    log.info("generated %s (keep it with the server's state)", path)
    return value


def webhook_encryption_key(state_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """The fixed Fernet key MLflow encrypts webhook secrets with (env, else a 0600 file made once).

    Without a fixed key each server process invents its own and stored webhooks become unreadable.
    """
    env = os.environ if env is None else env
    key = secret_value(get_settings(env).webhook_encryption_key)  # $TOWEROPS_WEBHOOK_ENCRYPTION_KEY
    if key:
        return key
    from cryptography.fernet import Fernet

    return _persistent_secret(Path(state_dir) / WEBHOOK_KEY_FILE, lambda: Fernet.generate_key().decode())


def flask_secret_key(state_dir: Path, env: Mapping[str, str] | None = None) -> str:
    """basic-auth's CSRF secret: MLFLOW_FLASK_SERVER_SECRET_KEY, else a 0600 file made once."""
    import secrets

    env = os.environ if env is None else env
    if env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    return _persistent_secret(Path(state_dir) / "flask_secret.key", lambda: secrets.token_urlsafe(32))


def write_auth_config(state_dir: Path, auth: PgTarget, default_permission: str = "READ") -> Path:
    """basic_auth.ini pointing the user store at PostgreSQL (mode 0600: the DSN may hold a password)."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["mlflow"] = {"default_permission": default_permission, "database_uri": auth.uri, "admin_username": "admin",
                     "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth"}
    path = Path(state_dir) / "basic_auth.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        cfg.write(fh)
    os.chmod(path, 0o600)
    return path


# ------------------------------------------------------------------ the command line
@dataclass
class ServerSettings:
    """What `towerops server` was asked for."""

    dsn: str | None
    host: str = "127.0.0.1"
    port: int = 5000
    artifacts_destination: str = "mlartifacts"
    workers: int | None = None
    auth: bool = False
    auth_dsn: str | None = None
    allow_loopback_webhooks: bool = False
    state_dir: Path = DEFAULT_STATE_DIR
    extra_args: list[str] = field(default_factory=list)


@dataclass
class LaunchPlan:
    """The checked command line and environment (the environment holds secrets: never log it)."""

    argv: list[str]
    env: dict[str, str]
    target: PgTarget
    artifacts: str
    migration: MigrationResult

    def describe(self) -> str:
        return (f"mlflow server on http://{self.argv[self.argv.index('--host') + 1]}:"
                f"{self.argv[self.argv.index('--port') + 1]}, backend {self.target.describe()}, "
                f"artifacts {self.artifacts}")


def resolve_dsn(dsn: str | None, env: Mapping[str, str] | None = None) -> str | None:
    from ml.secrets import resolve_secret_ref

    env = os.environ if env is None else env
    chosen = dsn or secret_value(get_settings(env).tracking_dsn) or env.get("MLFLOW_BACKEND_STORE_URI") or None
    return resolve_secret_ref(chosen, "backend store DSN")


def server_argv(target: PgTarget, settings: ServerSettings, artifacts: str) -> list[str]:
    """The `mlflow server` command line (same interpreter as this one)."""
    argv = [sys.executable, "-m", "mlflow", "server",  # the DSN travels in MLFLOW_BACKEND_STORE_URI: not in `ps`
            "--serve-artifacts", "--artifacts-destination", artifacts,
            "--default-artifact-root", "mlflow-artifacts:/",
            "--host", settings.host, "--port", str(settings.port)]
    if settings.workers:
        argv += ["--workers", str(settings.workers)]
    if settings.auth:
        argv += ["--app-name", "basic-auth"]
    return argv + list(settings.extra_args)


def server_env(target: PgTarget, settings: ServerSettings, webhook_key: str, auth_ini: Path | None,
               base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: backend DSN, webhook key and flags, auth config, S3 addressing."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_BACKEND_STORE_URI"] = target.uri
    env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] = webhook_key
    if settings.allow_loopback_webhooks:
        env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] = "http,https"
        env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] = "true"
    if env.get("MLFLOW_S3_ENDPOINT_URL") and not env.get("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE"):
        env["MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE"] = "path"  # Supabase/MinIO-style endpoints
    if auth_ini is not None:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = flask_secret_key(Path(settings.state_dir), env)
    env.pop("MLFLOW_TRACKING_URI", None)  # the server is the store; a client URI here only confuses it
    return env


def prepare(settings: ServerSettings, migrate: bool = True) -> LaunchPlan:
    """Every preflight check, then the migrations; returns what to exec. Raises user errors."""
    target = parse_dsn(resolve_dsn(settings.dsn))
    if not (0 < settings.port < 65536):
        raise ValueError(f"--port {settings.port} is not a TCP port (1-65535)")
    if settings.workers is not None and settings.workers < 1:
        raise ValueError(f"--workers {settings.workers}: need at least 1")
    version = check_postgres(target)
    log.info("backend store: %s (PostgreSQL %s)", target.describe(), version)
    artifacts = check_artifacts_destination(settings.artifacts_destination)
    auth_ini = None
    if settings.auth:
        _require_auth_extra()
        if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            raise ValueError("--auth needs MLFLOW_AUTH_ADMIN_PASSWORD in the environment (the admin's password "
                             "on first start; later starts reuse the stored admin)")
    if migrate:
        migration = migrate_tracking_db(target)
    else:
        current, head = schema_revision(target)
        if current != head:
            raise ValueError(f"MLflow schema on {target.describe()} is at {current or 'nothing (empty database)'}, "
                             f"this MLflow needs {head}: run `towerops server migrate` (take a backup first)")
        migration = MigrationResult(before=current, after=head, created=False)
    if settings.auth:
        from ml.secrets import resolve_secret_ref

        auth_target = parse_dsn(resolve_secret_ref(settings.auth_dsn or secret_value(get_settings().auth_dsn), "--auth-dsn")
                                or target.with_database(f"{target.database}_auth").uri)
        ensure_database(auth_target)
        migrate_auth_db(auth_target)
        auth_ini = write_auth_config(Path(settings.state_dir), auth_target)
    key = webhook_encryption_key(Path(settings.state_dir))
    env = server_env(target, settings, key, auth_ini)
    return LaunchPlan(argv=server_argv(target, settings, artifacts), env=env, target=target, artifacts=artifacts,
                      migration=migration)


def _require_auth_extra() -> None:
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        raise ValueError("--auth needs MLflow's auth extra: pip install 'mlflow[auth]'") from None


def exec_server(plan: LaunchPlan) -> None:
    """Replace this process with `mlflow server`, so signals reach it directly."""
    log.info("starting %s", plan.describe())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(plan.argv[0], plan.argv, plan.env)


def mark_run_failed(run_id: str, reason: str) -> dict[str, Any]:
    """Mark a run that a dead client left RUNNING as FAILED (uses MLFLOW_TRACKING_URI)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        raise ValueError(f"run {run_id} is {run.info.status}, not RUNNING: nothing to do")
    client.set_tag(run_id, "towerops.failure", reason)
    client.set_terminated(run_id, "FAILED")
    return {"run_id": run_id, "status": "FAILED"}
