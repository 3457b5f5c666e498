"""Semantic versions of registered models: pure functions, no registry or server needed.

major = a new embedding space (any retrain, a changed dimension or feature schema); minor = the
same towers with a refreshed catalog; patch = metadata only."""

from __future__ import annotations

import pytest

from registry.semver import SemVer, next_semver, same_space

PREV = {"embedding_dim": "32", "feature_schema_hash": "abc", "towers_fingerprint": "t1", "catalog_hash": "c1",
        "run_id": "r1"}


def test_first_version_is_1_0_0() -> None:
    assert next_semver(None, None, PREV) == (SemVer(1, 0, 0), "initial", "first registered version")


def test_major_bump_when_embedding_space_changes() -> None:
    version, bump, why = next_semver(SemVer(1, 3, 2), PREV, {**PREV, "embedding_dim": "64", "run_id": "r2"})
    assert (version, bump) == (SemVer(2, 0, 0), "major") and "embedding_dim changed from 32 to 64" in why
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "feature_schema_hash": "x", "run_id": "r2"})[:2] == (
        SemVer(2, 0, 0), "major")


def test_any_retrain_is_a_major_a_catalog_refresh_a_minor() -> None:
    retrain = {**PREV, "towers_fingerprint": "t2", "catalog_hash": "c2", "run_id": "r2"}
    version, bump, why = next_semver(SemVer(1, 3, 2), PREV, retrain)
    assert (version, bump) == (SemVer(2, 0, 0), "major") and "towers retrained" in why
    refresh = {**PREV, "catalog_hash": "c2", "run_id": "r3"}
    version, bump, why = next_semver(SemVer(1, 3, 2), PREV, refresh)
    assert (version, bump) == (SemVer(1, 4, 0), "minor") and "refreshed catalog" in why
    # a run without a fingerprint (trained before towerops recorded one) cannot prove the same towers
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "towers_fingerprint": None, "run_id": "r4"})[:2] == (
        SemVer(2, 0, 0), "major")


def test_patch_for_the_same_run_or_the_same_towers_and_catalog() -> None:
    assert next_semver(SemVer(1, 3, 2), PREV, PREV)[:2] == (SemVer(1, 3, 3), "patch")
    # a run registered before (not the latest version's) is also metadata only
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "run_id": "r0"}, {"r0", "r1"})[:2] == (SemVer(1, 3, 3), "patch")
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "run_id": "r5"})[:2] == (SemVer(1, 3, 3), "patch")


def test_numbers_never_collide_with_versions_already_taken() -> None:
    taken = [SemVer(1, 0, 0), SemVer(1, 1, 0), SemVer(2, 0, 0), SemVer(1, 3, 3)]
    # production is 1.1.0 while an unpromoted 2.0.0 exists: a refresh of 1.1.0 is 1.4.0, a retrain 3.0.0
    prod = SemVer(1, 1, 0)
    assert next_semver(prod, PREV, {**PREV, "catalog_hash": "c9", "run_id": "r9"}, taken=taken)[0] == SemVer(1, 4, 0)
    assert next_semver(prod, PREV, {**PREV, "towers_fingerprint": "t9", "run_id": "r9"}, taken=taken)[0] == \
        SemVer(3, 0, 0)
    assert next_semver(None, None, PREV, taken=taken)[0] == SemVer(3, 0, 0)


def test_same_space_needs_every_key_known_and_equal() -> None:
    assert same_space(PREV, {**PREV, "catalog_hash": "other", "run_id": "x"})
    assert not same_space(PREV, {**PREV, "towers_fingerprint": "t2"})
    assert not same_space({**PREV, "towers_fingerprint": ""}, {**PREV, "towers_fingerprint": ""})


@pytest.mark.parametrize("text, parsed", [("1.2.0", SemVer(1, 2, 0)), ("v10.0.3", SemVer(10, 0, 3)), (" 0.0.1 ", SemVer(0, 0, 1))])
def test_parse_and_order(text, parsed) -> None:
    assert SemVer.parse(text) == parsed
    assert str(parsed) == text.strip().lstrip("v") and parsed.tag == "v" + str(parsed)
    assert SemVer(1, 10, 0) > SemVer(1, 9, 9) > SemVer(0, 99, 99)


@pytest.mark.parametrize("text", ["1.2", "v1.2.x", "latest", ""])
def test_parse_rejects_non_versions(text) -> None:
    with pytest.raises(ValueError, match="is not a semantic version: use MAJOR.MINOR.PATCH"):
        SemVer.parse(text)
