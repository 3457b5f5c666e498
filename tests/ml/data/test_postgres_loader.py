"""load_postgres against a real, fresh PostgreSQL database (tags as text[], timestamptz, bigint ids)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import psycopg2
import psycopg2.extras
import pytest

from ml.data.loaders import DatabaseConnectionError, load_dataset, load_postgres
from ml.data.schema import Dataset
from ml.data.synthetic import generate_synthetic
from ml.data.validation import DataValidationError

pytestmark = pytest.mark.integration

SCHEMA_SQL = """
CREATE SCHEMA app;
CREATE TABLE app.users (user_id text PRIMARY KEY, age integer, country text);
CREATE TABLE app.items (
    item_id text PRIMARY KEY, title text, description text, tags text[], genre text, maker text,
    price numeric(10, 2), duration_s double precision, released_at date
);
CREATE TABLE app.interactions (
    id bigserial PRIMARY KEY, user_id text REFERENCES app.users, item_id text REFERENCES app.items,
    decision text, "timestamp" timestamptz NOT NULL
);
CREATE TABLE public.users (user_id bigint PRIMARY KEY, age integer);
CREATE TABLE public.items (
    item_id bigint PRIMARY KEY, title text, description text, tags text[], genre text, maker text,
    price double precision, duration_s double precision, released_at timestamptz
);
CREATE TABLE public.interactions (user_id bigint, item_id bigint, rating real, "timestamp" bigint);
"""


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate_synthetic(n_users=40, n_items=30, n_interactions=300, seed=11).dataset


@pytest.fixture
def db(pg_dsn: str, small: Dataset) -> str:
    conn = psycopg2.connect(pg_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'America/New_York'")  # timestamptz must still come back as UTC
            cur.execute(SCHEMA_SQL)
            psycopg2.extras.execute_values(
                cur, "INSERT INTO app.users VALUES %s", list(small.users[["user_id", "age", "country"]].itertuples(index=False, name=None))
            )
            items = [
                (r.item_id, r.title, r.description, list(r.tags), r.genre, r.maker, r.price, r.duration_s, r.released_at.date())
                for r in small.items.itertuples(index=False)
            ]
            psycopg2.extras.execute_values(cur, "INSERT INTO app.items VALUES %s", items)
            inter = [
                (r.user_id, r.item_id, r.decision, r.timestamp.tz_localize("UTC").to_pydatetime())
                for r in small.interactions.itertuples(index=False)
            ]
            psycopg2.extras.execute_values(
                cur, 'INSERT INTO app.interactions (user_id, item_id, decision, "timestamp") VALUES %s', inter
            )
            # public.*: integer ids, epoch-second timestamps, ratings instead of decisions
            cur.execute("INSERT INTO public.users VALUES (1, 30), (2, 40)")
            cur.execute(
                "INSERT INTO public.items VALUES "
                "(10, 'A', NULL, ARRAY['x','y'], 'g', 'm', 1.5, 60, '2024-01-01T00:00:00+02:00'),"
                "(20, NULL, 'b', NULL, NULL, NULL, NULL, NULL, NULL)"
            )
            cur.execute("INSERT INTO public.interactions VALUES (1, 20, 0.8, 1735689600), (2, 10, 0.1, 1735689660)")
    finally:
        conn.close()
    return pg_dsn


def _assert_same(a: Dataset, b: Dataset) -> None:
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)


def test_load_with_table_names(db: str, small: Dataset) -> None:
    tables = {"users": "app.users", "items": "app.items", "interactions": "app.interactions"}
    ds = load_postgres(db, tables=tables)
    assert ds.sources == {t: f"postgres:app.{t}" for t in ("users", "items", "interactions")}
    assert ds.items["tags"].tolist() == small.items["tags"].tolist()
    assert ds.items["price"].tolist() == pytest.approx(small.items["price"].tolist())
    _assert_same(small, Dataset(
        users=ds.users,
        items=ds.items.assign(price=small.items["price"]),
        interactions=ds.interactions.drop(columns=["id"]),
    ))


def test_load_with_queries(db: str, small: Dataset) -> None:
    queries = {
        "users": "SELECT user_id, age, country FROM app.users ORDER BY user_id",
        "items": "SELECT item_id, title, description, tags, genre, maker, price::float8 AS price, "
        "duration_s, released_at FROM app.items ORDER BY item_id",
        "interactions": 'SELECT user_id, item_id, decision, "timestamp" FROM app.interactions',
    }
    ds = load_dataset(db, queries=queries)
    assert ds.sources["users"].startswith("postgres:SELECT user_id")
    _assert_same(small, ds)


def test_default_tables_with_int_ids_and_epoch(db: str) -> None:
    ds = load_postgres(db)
    assert ds.users["user_id"].tolist() == ["1", "2"]
    assert ds.interactions["item_id"].tolist() == ["20", "10"]
    assert ds.interactions["label"].tolist() == [1, 0]
    assert ds.interactions["timestamp"].iloc[0] == pd.Timestamp("2025-01-01T00:00:00")
    assert ds.items["tags"].tolist() == [["x", "y"], []]
    assert ds.items["released_at"].iloc[0] == pd.Timestamp("2023-12-31T22:00:00")
    assert ds.items["title"].tolist() == ["A", ""]


def test_missing_table_is_clear(pg_dsn: str) -> None:
    with pytest.raises(DataValidationError, match="postgres:users"):
        load_postgres(pg_dsn)


def test_validation_problems_name_the_table(db: str) -> None:
    queries = {"interactions": "SELECT user_id, item_id, 'maybe' AS decision, \"timestamp\" FROM app.interactions"}
    tables = {"users": "app.users", "items": "app.items"}
    with pytest.raises(DataValidationError) as info:
        load_postgres(db, tables=tables, queries=queries)
    text = str(info.value)
    assert "postgres:SELECT user_id" in text and "column 'decision'" in text and "rows 1, 2, 3, 4, 5" in text


def test_bad_dsn_never_shows_password(pg_dsn: str) -> None:
    parts = urlsplit(pg_dsn)
    bad = urlunsplit(parts._replace(netloc="postgres:Sup3rSecret@127.0.0.1:1", path="/nodb"))
    with pytest.raises(DatabaseConnectionError) as info:
        load_postgres(bad, connect_timeout=3)
    text = str(info.value)
    assert "Sup3rSecret" not in text and "Sup3rSecret" not in repr(info.value)
    assert "127.0.0.1" in text and "nodb" in text
    assert isinstance(info.value, ConnectionError)
    assert info.value.__cause__ is None  # the psycopg2 error (which may echo the DSN) is not chained


def test_wrong_password_and_db_is_clear(pg_dsn: str) -> None:
    parts = urlsplit(pg_dsn)
    bad = urlunsplit(parts._replace(netloc=f"nobody:Sup3rSecret@{parts.hostname}:{parts.port or 5432}", path="/missing_db"))
    with pytest.raises(DatabaseConnectionError) as info:
        load_postgres(bad, connect_timeout=3)
    assert "Sup3rSecret" not in str(info.value) and "missing_db" in str(info.value)


def test_malformed_dsn() -> None:
    for dsn in ("postgresql://u:Sup3rSecret@host:notaport/db", "host=h password=Sup3rSecret dbname"):
        with pytest.raises((ValueError, ConnectionError)) as info:
            load_postgres(dsn, connect_timeout=1)
        assert "Sup3rSecret" not in str(info.value)


def test_load_items_reads_only_the_items_table(db: str) -> None:
    """Items alone (as a catalog refresh reads them), normalised like load_postgres'."""
    from ml.data.loaders import load_items

    conn = psycopg2.connect(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DROP TABLE public.interactions; DROP TABLE public.users")
    finally:
        conn.close()
    items = load_items(db)
    assert items["item_id"].tolist() == ["10", "20"]
    assert items["tags"].tolist() == [["x", "y"], []]
    assert items["released_at"].iloc[0] == pd.Timestamp("2023-12-31T22:00:00")


def test_load_items_without_an_items_table_is_clear(pg_dsn: str) -> None:
    from ml.data.loaders import load_items

    with pytest.raises(DataValidationError, match="items"):
        load_items(pg_dsn)
