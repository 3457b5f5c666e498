"""Load the three input tables from a folder (CSV/Parquet) or PostgreSQL, and write folders.

Every loader only reads raw frames and hands them to `validate_dataset`, so a CSV
export, a Parquet dump and a Supabase/PostgreSQL database all end up as the same
normalised `Dataset` and are checked by the same rules with the same error report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.data.schema import TAG_SEPARATOR, Dataset
from ml.data.validation import DataValidationError, Problem, validate_dataset, validate_items
from ml.logs import get_logger
from ml.secrets import describe_secret, mask_dsn, resolve_secret_ref

log = get_logger("training")

TABLE_NAMES: tuple[str, ...] = ("users", "items", "interactions")
# Order matters when several files exist for one table: the first match wins.
FILE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".csv.gz")
ID_COLUMNS: tuple[str, ...] = ("user_id", "item_id")


class DatabaseConnectionError(ConnectionError):
    """PostgreSQL could not be reached; the message never contains the password."""


# --------------------------------------------------------------------------- folders


def find_table_file(folder: str | Path, table: str) -> Path | None:
    """Return the first existing `<table>.parquet|.csv|.csv.gz` in `folder`."""
    folder = Path(folder)
    found = [folder / f"{table}{suffix}" for suffix in FILE_SUFFIXES if (folder / f"{table}{suffix}").is_file()]
    if len(found) > 1:
        log.warning("several files for table %s in %s; using %s", table, folder, found[0].name)
    return found[0] if found else None


class TableFileError(ValueError):
    """A table file that cannot be read as a table (empty, wrong delimiter); `fix` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def _header_line(path: Path) -> str | None:
    """The first non-empty line of a CSV (gzip too); None for a file with no text at all."""
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                return line.rstrip("\r\n")
    return None


def check_csv_shape(path: str | Path) -> None:
    """Raise TableFileError for an empty CSV, or one whose header is split by ';', tabs or '|' instead of commas."""
    path = Path(path)
    header = _header_line(path)
    if header is None:
        raise TableFileError(f"the file is empty ({path.stat().st_size} bytes, no header row)",
                             "export the table with a header row naming its columns and one row per record "
                             "(see ml/data/schema.py for the columns)")
    if "," in header:
        return
    counts = {d: header.count(d) for d in DELIMITERS}
    delimiter = max(counts, key=lambda d: counts[d])
    if counts[delimiter]:
        raise TableFileError(f"the header is separated by {DELIMITERS[delimiter]} ({delimiter!r}), not commas: "
                             f"{header[:120]!r}", "save the file as comma-separated CSV (in a spreadsheet: CSV "
                             f"'comma delimited'; in pandas: to_csv(path, sep=',')), or convert it: "
                             f"pandas.read_csv(path, sep={delimiter!r}).to_csv(path, index=False)")


def read_table_file(path: str | Path) -> pd.DataFrame:
    """Read one CSV/Parquet file with id columns kept as strings (so '007' stays '007').

    An empty CSV or one separated by another delimiter raises TableFileError with the fix.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return pd.read_parquet(path)
    check_csv_shape(path)
    return pd.read_csv(
        path,
        dtype={c: str for c in ID_COLUMNS},
        float_precision="round_trip",
        low_memory=False,
    )


def read_user_ids(path: str | Path) -> list[str]:
    """The `user_id` column of a CSV/Parquet file, as strings (A/B assignment input)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"users file {path} does not exist: pass a CSV/Parquet with a user_id column")
    frame = read_table_file(path)
    if "user_id" not in frame.columns:
        raise ValueError(f"{path}: no user_id column (found {list(frame.columns)}); add a user_id header")
    return frame["user_id"].astype(str).tolist()


def _read_table(file: Path, table: str) -> tuple[pd.DataFrame | None, Problem | None]:
    """One table file read, or the readable problem that stopped it."""
    try:
        return read_table_file(file), None
    except TableFileError as exc:
        return None, Problem(table=table, source=str(file), column=None, message=str(exc), fix=exc.fix)
    except Exception as exc:  # noqa: BLE001 - any parser error becomes a readable problem
        return None, Problem(table=table, source=str(file), column=None,
                             message=f"could not read the file: {type(exc).__name__}: {exc}",
                             fix="check the file is valid CSV (comma-separated, header row) or Parquet")


def load_folder(path: str | Path, rating_scale: Any = "auto", like_threshold: float | None = None) -> Dataset:
    """Load users/items/interactions from a folder of CSV or Parquet files and validate them.

    `rating_scale` / `like_threshold`: the config's `data.*` (how ratings become likes)."""
    folder = Path(path)
    expected = ", ".join(f"<table>{s}" for s in FILE_SUFFIXES)
    if not folder.is_dir():
        shown = mask_dsn(str(path))  # a mistyped DSN (e.g. postgresql+psycopg2://) lands here: no password shown
        fix = f"point to a folder holding users, items and interactions files ({expected})"
        if "://" in shown:
            fix += ", or a postgresql://USER@HOST:PORT/DB DSN (env:VAR to read it from the environment)"
        raise DataValidationError(
            [
                Problem(
                    table="dataset",
                    source=shown,
                    column=None,
                    message=f"data folder {shown} does not exist or is not a folder",
                    fix=fix,
                )
            ]
        )
    problems: list[Problem] = []
    frames: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    for table in TABLE_NAMES:
        file = find_table_file(folder, table)
        if file is None:
            names = " or ".join(f"{table}{s}" for s in FILE_SUFFIXES)
            problems.append(
                Problem(
                    table=table,
                    source=str(folder),
                    column=None,
                    message=f"no {table} file in {folder} (expected {names})",
                    fix=f"export the {table} table as {table}.csv or {table}.parquet into {folder}",
                )
            )
            continue
        sources[table] = str(file)
        frame, problem = _read_table(file, table)
        if problem is not None:
            problems.append(problem)
        else:
            frames[table] = frame
    if problems:
        err = DataValidationError(problems)
        log.error("cannot load %s: %s", folder, err)
        raise err
    log.info(
        "loaded %s: %s",
        folder,
        {t: len(f) for t, f in frames.items()},
    )
    return validate_dataset(frames["users"], frames["items"], frames["interactions"], sources=sources,
                            rating_scale=rating_scale, like_threshold=like_threshold)


def _iso(series: pd.Series) -> pd.Series:
    """ISO 8601 strings for a datetime column ('' for NaT), second precision when exact."""
    s = series
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    values = s.to_numpy(dtype="datetime64[ns]")
    nat = np.isnat(values)
    ints = values[~nat].astype("int64")
    unit = "s" if np.all(ints % 1_000_000_000 == 0) else ("us" if np.all(ints % 1000 == 0) else "ns")
    text = np.datetime_as_string(values, unit=unit).astype(object)
    text[nat] = ""
    return pd.Series(text, index=series.index, dtype=object)


def _join_tags(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return TAG_SEPARATOR.join(str(v) for v in value)
    if isinstance(value, float) and np.isnan(value):
        return ""
    return str(value)


def _drop_derived_label(interactions: pd.DataFrame, like_threshold: float = 0.5) -> pd.DataFrame:
    """Drop `label` when `decision` or `rating` already says the same (it is recomputed on load)."""
    from ml.data.schema import LIKE_VALUES

    if "label" not in interactions.columns:
        return interactions
    label = interactions["label"].to_numpy()
    if "decision" in interactions.columns:
        from_decision = interactions["decision"].astype(str).str.strip().str.lower().isin(LIKE_VALUES).to_numpy()
        if np.array_equal(from_decision.astype(np.int8), label.astype(np.int8)):
            return interactions.drop(columns=["label"])
    if "rating" in interactions.columns:
        rating = pd.to_numeric(interactions["rating"], errors="coerce").to_numpy()
        if not np.isnan(rating).any() and np.array_equal((rating >= like_threshold).astype(np.int8), label.astype(np.int8)):
            return interactions.drop(columns=["label"])
    return interactions


def _for_csv(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col].dtype):
            out[col] = _iso(out[col])
        elif out[col].dtype == object and out[col].map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            out[col] = out[col].map(_join_tags)
    return out


def write_folder(dataset: Dataset, path: str | Path, fmt: str = "csv") -> dict[str, Path]:
    """Write the dataset as `<table>.csv` (or .csv.gz/.parquet) so `load_folder` reads it back equal."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in {"csv", "csv.gz", "parquet"}:
        raise ValueError(f"unknown format {fmt!r}: use 'csv', 'csv.gz' or 'parquet'")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "users": dataset.users,
        "items": dataset.items,
        "interactions": _drop_derived_label(dataset.interactions,
                                            dataset.ratings.scale.like_threshold if dataset.ratings else 0.5),
    }
    written: dict[str, Path] = {}
    for table, frame in tables.items():
        # Remove other formats of the same table so load_folder cannot pick a stale file.
        for suffix in FILE_SUFFIXES:
            stale = folder / f"{table}{suffix}"
            if suffix != f".{fmt}" and stale.exists():
                stale.unlink()
        target = folder / f"{table}.{fmt}"
        if fmt == "parquet":
            frame.reset_index(drop=True).to_parquet(target, index=False)
        else:
            _for_csv(frame).to_csv(target, index=False)
        written[table] = target
    log.info("wrote dataset %s to %s (%s)", dataset.row_counts(), folder, fmt)
    return written


# --------------------------------------------------------------------------- PostgreSQL




def _dsn_parts(dsn: str) -> dict[str, str]:
    from psycopg2.extensions import parse_dsn

    try:
        return dict(parse_dsn(dsn))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"not a valid PostgreSQL DSN: {mask_dsn(dsn)} ({mask_dsn(str(exc))})") from None


def _connect(dsn: str, connect_timeout: int) -> Any:
    import psycopg2

    parts = _dsn_parts(dsn)
    password = parts.get("password")
    where = (
        f"host={parts.get('host', 'localhost')} port={parts.get('port', '5432')} "
        f"dbname={parts.get('dbname', parts.get('user', '?'))} user={parts.get('user', '?')}"
    )
    try:
        return psycopg2.connect(dsn, connect_timeout=connect_timeout)
    except psycopg2.Error as exc:
        reason = mask_dsn(str(exc).strip(), password)
        raise DatabaseConnectionError(f"could not connect to PostgreSQL ({where}): {reason}") from None


def _table_identifier(name: str) -> Any:
    from psycopg2 import sql

    parts = [p for p in name.split(".")]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"table name must be 'table' or 'schema.table', got {name!r}")
    return sql.Identifier(*parts)


def _fetch(conn: Any, query: Any) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(query)
        if cur.description is None:
            raise ValueError("the query returned no result set (is it a SELECT?)")
        columns = [d[0] for d in cur.description]
        rows = cur.fetchall()
    return pd.DataFrame.from_records(rows, columns=columns)


def load_postgres(
    dsn: str,
    tables: dict[str, str] | None = None,
    queries: dict[str, str] | None = None,
    connect_timeout: int = 10,
    rating_scale: Any = "auto",
    like_threshold: float | None = None,
) -> Dataset:
    """Read users/items/interactions from PostgreSQL (tables or custom SELECTs) and validate them.

    `dsn` may be `env:VAR` (read from the environment now, so the password is never a parameter)."""
    from psycopg2 import sql

    dsn = resolve_secret_ref(dsn, "DSN") or ""

    tables = {**{t: t for t in TABLE_NAMES}, **(tables or {})}
    queries = dict(queries or {})
    unknown = set(tables) - set(TABLE_NAMES) | set(queries) - set(TABLE_NAMES)
    if unknown:
        raise ValueError(f"unknown table keys {sorted(unknown)}; use {list(TABLE_NAMES)}")
    conn = _connect(dsn, connect_timeout)
    frames: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    try:
        import psycopg2

        for table in TABLE_NAMES:
            if table in queries:
                query: Any = queries[table]
                sources[table] = "postgres:" + " ".join(str(query).split())
            else:
                query = sql.SQL("SELECT * FROM {}").format(_table_identifier(tables[table]))
                sources[table] = f"postgres:{tables[table]}"
            try:
                frames[table] = _fetch(conn, query)
            except psycopg2.Error as exc:
                conn.rollback()
                raise DataValidationError(
                    [
                        Problem(
                            table=table,
                            source=sources[table],
                            column=None,
                            message=f"query failed: {str(exc).strip()}",
                            fix=f"create the {table} table or pass tables={{'{table}': 'schema.name'}} / queries=...",
                        )
                    ]
                ) from None
        conn.rollback()
    finally:
        conn.close()
    log.info("loaded from PostgreSQL: %s", {t: len(f) for t, f in frames.items()})
    return validate_dataset(frames["users"], frames["items"], frames["interactions"], sources=sources,
                            rating_scale=rating_scale, like_threshold=like_threshold)


# --------------------------------------------------------------------------- dispatch


def is_postgres_dsn(source: str) -> bool:
    return str(source).lower().startswith(("postgresql://", "postgres://"))


def load_dataset(source: str | Path, **kwargs: Any) -> Dataset:
    """Load from a `postgresql://` DSN or a folder path, whichever `source` is.

    `source` may be `env:VAR`: the DSN (or folder) is read from that environment variable
    here, at use time, so it never appears in MLflow params or command lines."""
    if isinstance(source, str):
        source = resolve_secret_ref(source, "data source") or ""
    if isinstance(source, str) and is_postgres_dsn(source):
        return load_postgres(source, **kwargs)
    return load_folder(source, **kwargs)


def load_items(source: str | Path, connect_timeout: int = 10) -> pd.DataFrame:
    """Only the items table of a folder or a `postgresql://` DSN (`env:VAR` too), validated and
    normalised like `load_dataset`'s: a catalog refresh needs the catalog, not the interactions."""
    if isinstance(source, str):
        source = resolve_secret_ref(source, "data source") or ""
    if isinstance(source, str) and is_postgres_dsn(source):
        from psycopg2 import sql

        conn = _connect(source, connect_timeout)
        try:
            import psycopg2

            try:
                frame = _fetch(conn, sql.SQL("SELECT * FROM {}").format(_table_identifier("items")))
            except psycopg2.Error as exc:
                raise DataValidationError([Problem(table="items", source="postgres:items", column=None,
                                                   message=f"query failed: {str(exc).strip()}",
                                                   fix="create the items table in that database")]) from None
            finally:
                conn.rollback()
        finally:
            conn.close()
        log.info("loaded %d items from PostgreSQL", len(frame))
        return validate_items(frame, "postgres:items")
    folder = Path(source)
    file = find_table_file(folder, "items") if folder.is_dir() else None
    if file is None:
        shown = mask_dsn(str(source))
        names = " or ".join(f"items{s}" for s in FILE_SUFFIXES)
        raise DataValidationError([Problem(table="items", source=shown, column=None,
                                           message=f"no items file in {shown} (expected {names})",
                                           fix="point to a data folder holding the items table, or a "
                                               "postgresql://USER@HOST:PORT/DB DSN (env:VAR to read it from "
                                               "the environment)")])
    frame, problem = _read_table(file, "items")
    if problem is not None:
        raise DataValidationError([problem])
    log.info("loaded %d items from %s", len(frame), file)
    return validate_items(frame, str(file))


def describe_source(source: str | Path) -> str:
    """The data source as it may be logged or recorded: `env:VAR` as written, a DSN without its password."""
    return describe_secret(str(source))


__all__ = [
    "DatabaseConnectionError",
    "describe_source",
    "find_table_file",
    "load_dataset",
    "load_folder",
    "load_items",
    "load_postgres",
    "mask_dsn",
    "read_table_file",
    "read_user_ids",
    "TableFileError",
    "write_folder",
]
