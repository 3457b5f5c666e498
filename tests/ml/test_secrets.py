"""ml.secrets: `env:VAR` references resolved at use time, DSN passwords masked, URL tokens
dropped, secrets scrubbed from log records; and the CLI-level consumers that take `env:VAR`."""

from __future__ import annotations

import logging

import pytest

from ml.secrets import (
    RedactingFilter,
    SecretRefError,
    describe_secret,
    mask_dsn,
    redact,
    redact_url,
    redact_urls,
    resolve_secret_ref,
)


def test_env_reference_is_read_from_the_environment_at_use_time(monkeypatch) -> None:
    monkeypatch.setenv("LEAK_TEST_DSN", "postgresql://u:first@h/db")
    assert resolve_secret_ref("env:LEAK_TEST_DSN") == "postgresql://u:first@h/db"
    monkeypatch.setenv("LEAK_TEST_DSN", "postgresql://u:second@h/db")  # read again: not cached
    assert resolve_secret_ref("env:LEAK_TEST_DSN") == "postgresql://u:second@h/db"
    assert resolve_secret_ref("data/synthetic") == "data/synthetic"
    assert resolve_secret_ref(None) is None


@pytest.mark.parametrize("ref, message", [
    ("env:LEAK_TEST_UNSET", "env:LEAK_TEST_UNSET names the environment variable LEAK_TEST_UNSET, which is not set: "
                            "export LEAK_TEST_UNSET="),
    ("env:", "is not a valid reference: write env:NAME"),
    ("env:9LIVES", "is not a valid reference"),
    ("env:LEAK_TEST_EMPTY", "which is empty"),
    ("env:LEAK_TEST_NESTED", "holds another reference"),
])
def test_unresolvable_references_name_the_variable_and_the_fix(monkeypatch, ref, message) -> None:
    monkeypatch.delenv("LEAK_TEST_UNSET", raising=False)
    monkeypatch.setenv("LEAK_TEST_EMPTY", "")
    monkeypatch.setenv("LEAK_TEST_NESTED", "env:OTHER")
    with pytest.raises(SecretRefError, match=message):
        resolve_secret_ref(ref, "--data")


@pytest.mark.parametrize("text, want", [
    ("postgresql://user:pa%3Ass@db:5432/app", "postgresql://user:***@db:5432/app"),
    ("postgres://user:pw-1234@db/app", "postgres://user:***@db/app"),
    ("postgresql+psycopg2://user:pw-1234@db/app", "postgresql+psycopg2://user:***@db/app"),
    ("host=db user=u password=s3cr3t dbname=app", "host=db user=u password=*** dbname=app"),
    ("host=db password='a b c' dbname=app", "host=db password=*** dbname=app"),
    ("postgresql://user@db:5432/app", "postgresql://user@db:5432/app"),
    ("could not connect to postgresql://u:topsecret@h/d: refused", "could not connect to postgresql://u:***@h/d: refused"),
])
def test_mask_dsn(text, want) -> None:
    assert mask_dsn(text) == want


def test_describe_keeps_references_and_masks_literals() -> None:
    assert describe_secret("env:TOWEROPS_DATA_DSN") == "env:TOWEROPS_DATA_DSN"
    assert describe_secret("postgresql://u:pw-1234@h/db") == "postgresql://u:***@h/db"
    assert describe_secret("data/folder") == "data/folder"


def test_urls_lose_path_query_and_userinfo() -> None:
    url = "https://hooks.example.com/services/T0/B0/TOKEN-abcdef?sig=QUERY-abcdef"
    assert redact_url(url) == "https://hooks.example.com/***"
    assert redact_url("http://user:pw@127.0.0.1:8080/") == "http://127.0.0.1:8080"
    message = ("HTTPSConnectionPool(host='hooks.example.com', port=443): Max retries exceeded with url: "
               "/services/T0/B0/TOKEN-abcdef?sig=QUERY-abcdef (Caused by ConnectTimeoutError)")
    safe = redact_urls(f"{message}; also {url}", [url])
    assert "TOKEN-abcdef" not in safe and "QUERY-abcdef" not in safe and "hooks.example.com" in safe


def test_resolved_values_and_secret_env_vars_are_scrubbed_from_log_records(monkeypatch) -> None:
    monkeypatch.setenv("LEAK_TEST_DSN2", "postgresql://u:resolved-pw-77@h/db")
    resolve_secret_ref("env:LEAK_TEST_DSN2")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "eyJ-storage-key-123456")
    assert redact("password resolved-pw-77 and key eyJ-storage-key-123456") == "password *** and key ***"

    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("towerops.test-secrets")
    logger.propagate = False
    logger.addFilter(RedactingFilter())
    handler = _Keep()
    logger.addHandler(handler)
    try:
        logger.warning("connecting to %s", "postgresql://u:resolved-pw-77@h/db")
        try:
            raise ConnectionError("refused for key eyJ-storage-key-123456")
        except ConnectionError:
            logger.exception("upload failed")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "resolved-pw-77" not in text and "eyJ-storage-key-123456" not in text
    assert "postgresql://u:***@h/db" in text and "refused for key ***" in text


def test_load_dataset_takes_env_reference_to_a_folder(tiny_data_dir, monkeypatch) -> None:
    from ml.data.loaders import load_dataset

    monkeypatch.setenv("LEAK_TEST_DATA", str(tiny_data_dir))
    ds = load_dataset("env:LEAK_TEST_DATA")
    assert ds.row_counts() == load_dataset(str(tiny_data_dir)).row_counts()


def test_mistyped_dsn_is_not_shown_with_its_password() -> None:
    from ml.data.loaders import load_dataset
    from ml.data.validation import DataValidationError

    with pytest.raises(DataValidationError) as info:
        load_dataset("postgresql+psycopg2://u:typo-pw-4242@h/db")
    assert "typo-pw-4242" not in str(info.value) and "postgresql+psycopg2://u:***@h/db" in str(info.value)


def test_monitoring_config_webhook_url_must_be_a_reference() -> None:
    from monitoring.alerts import webhook_env_name
    from monitoring.config import parse_config

    cfg = parse_config({"webhook": {"url": "env:MY_ALERT_URL"}})
    assert webhook_env_name(cfg) == "MY_ALERT_URL"
    with pytest.raises(ValueError, match="webhook.url must be a reference env:NAME") as info:
        parse_config({"webhook": {"url": "https://hooks.example.com/T/B/literal-token"}}, "m.yaml")
    assert "literal-token" not in str(info.value)
