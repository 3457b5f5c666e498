"""Semantic versions of registered models: pure functions, no registry or server needed."""

from __future__ import annotations

import pytest

from registry.semver import SemVer, next_semver

PREV = {"embedding_dim": "32", "feature_schema_hash": "abc", "run_id": "r1"}


def test_first_version_is_1_0_0() -> None:
    assert next_semver(None, None, PREV) == (SemVer(1, 0, 0), "initial", "first registered version")


def test_major_bump_when_embedding_space_changes() -> None:
    version, bump, why = next_semver(SemVer(1, 3, 2), PREV, {**PREV, "embedding_dim": "64", "run_id": "r2"})
    assert (version, bump) == (SemVer(2, 0, 0), "major") and "embedding_dim changed from 32 to 64" in why
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "feature_schema_hash": "x", "run_id": "r2"})[:2] == (
        SemVer(2, 0, 0), "major")


def test_minor_for_a_retrain_patch_for_the_same_run() -> None:
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "run_id": "r2"})[:2] == (SemVer(1, 4, 0), "minor")
    assert next_semver(SemVer(1, 3, 2), PREV, PREV)[:2] == (SemVer(1, 3, 3), "patch")
    # a run registered before (not the latest version's) is also metadata only
    assert next_semver(SemVer(1, 3, 2), PREV, {**PREV, "run_id": "r0"}, {"r0", "r1"})[:2] == (SemVer(1, 3, 3), "patch")


@pytest.mark.parametrize("text, parsed", [("1.2.0", SemVer(1, 2, 0)), ("v10.0.3", SemVer(10, 0, 3)), (" 0.0.1 ", SemVer(0, 0, 1))])
def test_parse_and_order(text, parsed) -> None:
    assert SemVer.parse(text) == parsed
    assert str(parsed) == text.strip().lstrip("v") and parsed.tag == "v" + str(parsed)
    assert SemVer(1, 10, 0) > SemVer(1, 9, 9) > SemVer(0, 99, 99)


@pytest.mark.parametrize("text", ["1.2", "v1.2.x", "latest", ""])
def test_parse_rejects_non_versions(text) -> None:
    with pytest.raises(ValueError, match="is not a semantic version: use MAJOR.MINOR.PATCH"):
        SemVer.parse(text)
