"""A/B assignment (stable, close to the configured split) and outcome analysis."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support.helpers import REPO_ROOT
from typer.testing import CliRunner

from ml.evaluation.abtest import (
    analyze_outcomes,
    assign_arm,
    assign_users,
    hash_unit,
    normalise_outcomes,
    parse_arms,
    read_outcomes,
    required_sample_per_arm,
    two_proportion_test,
)

USERS = [f"u{i:05d}" for i in range(20000)]


def test_assignment_is_stable_across_calls_and_processes():
    table = assign_users(USERS[:200], "control=50,treatment=50", salt="exp-1")
    again = assign_users(USERS[:200], {"control": 1, "treatment": 1}, salt="exp-1")
    pd.testing.assert_frame_equal(table, again)
    assert [assign_arm(u, "control=50,treatment=50", "exp-1") for u in USERS[:200]] == table["arm"].tolist()
    # a fresh interpreter (a "restart") gives the same arms: no dependence on PYTHONHASHSEED or process state
    code = ("from ml.evaluation.abtest import assign_users; import sys; "
            "print(','.join(assign_users([f'u{i:05d}' for i in range(200)], 'control=50,treatment=50', 'exp-1')['arm']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().split(",") == table["arm"].tolist()


def test_assignment_matches_configured_split_and_salt_reshuffles():
    table = assign_users(USERS, "control=90,treatment=10", salt="exp-2")
    share = (table["arm"] == "treatment").mean()
    assert abs(share - 0.10) < 0.01  # 20,000 users: sd of the share is 0.002
    three = assign_users(USERS, "a=1,b=1,c=2", salt="exp-3")["arm"].value_counts(normalize=True)
    assert three["c"] == pytest.approx(0.5, abs=0.015) and three["a"] == pytest.approx(0.25, abs=0.015)
    other = assign_users(USERS, "control=90,treatment=10", salt="exp-other")
    moved = (table["arm"] != other["arm"]).mean()
    assert 0.1 < moved < 0.3  # independent draws: 2 * 0.9 * 0.1 = 0.18 of users change arm
    assert 0.0 <= hash_unit("x", "s") < 1.0


def test_parse_arms_rejects_bad_specs():
    assert parse_arms("control=3,treatment=1") == {"control": 0.75, "treatment": 0.25}
    for bad in ("control=50", "control=50,treatment=-1", "control=50,treatment=abc", "control,treatment",
                "a=1,a=2"):
        with pytest.raises(ValueError):
            parse_arms(bad)


def test_two_proportion_test_matches_hand_computation():
    # control 100/1000 likes, treatment 130/1000
    diff, lo, hi, z, p = two_proportion_test(100, 1000, 130, 1000)
    pooled = 230 / 2000
    z_hand = 0.03 / math.sqrt(pooled * (1 - pooled) * (2 / 1000))
    se = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert diff == pytest.approx(0.03)
    assert z == pytest.approx(z_hand)
    assert p == pytest.approx(math.erfc(abs(z_hand) / math.sqrt(2)))
    assert (lo, hi) == (pytest.approx(0.03 - 1.959964 * se, rel=1e-5), pytest.approx(0.03 + 1.959964 * se, rel=1e-5))


def test_required_sample_grows_as_the_effect_shrinks():
    n10 = required_sample_per_arm(0.4, 0.10)
    n05 = required_sample_per_arm(0.4, 0.05)
    assert 2000 < n10 < 3000      # textbook value for 40% -> 44%: about 2,400 per arm
    assert 3.5 < n05 / n10 < 4.5  # halving the effect needs about four times the sample


def _outcomes(rates: dict[str, float], swipes_per_arm: int, users_per_arm: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for arm, rate in rates.items():
        users = rng.integers(0, users_per_arm, swipes_per_arm)
        liked = rng.random(swipes_per_arm) < rate
        rows.append(pd.DataFrame({"user_id": [f"{arm}-{u}" for u in users], "arm": arm,
                                  "item_id": [f"i{j}" for j in rng.integers(0, 500, swipes_per_arm)],
                                  "decision": np.where(liked, "like", "nope")}))
    return pd.concat(rows, ignore_index=True)


def test_analysis_detects_a_real_lift():
    frame = normalise_outcomes(_outcomes({"control": 0.40, "treatment": 0.46}, 8000, 2000))
    result = analyze_outcomes(frame)
    arms = {a.arm: a for a in result.arms}
    assert arms["control"].like_rate == pytest.approx(0.40, abs=0.015)
    cmp = result.comparisons[0]
    assert cmp.treatment == "treatment" and cmp.significant and cmp.p_value < 1e-6
    assert cmp.ci_low < cmp.difference < cmp.ci_high and cmp.ci_low > 0
    assert cmp.relative_lift == pytest.approx(cmp.difference / arms["control"].like_rate)
    assert cmp.decision == "treatment is better" and not result.warnings
    clustered = analyze_outcomes(frame, unit="user")
    assert clustered.comparisons[0].significant


def test_analysis_warns_when_the_sample_is_too_small():
    frame = normalise_outcomes(_outcomes({"control": 0.40, "treatment": 0.42}, 150, 40))
    result = analyze_outcomes(frame, mde=0.05)
    cmp = result.comparisons[0]
    assert not cmp.significant
    assert cmp.decision == "inconclusive: sample too small"
    assert any("sample too small to decide" in w for w in result.warnings)
    assert cmp.required_per_arm > 150


def test_sample_ratio_mismatch_is_flagged():
    frame = normalise_outcomes(_outcomes({"control": 0.4, "treatment": 0.4}, 4000, 2000))
    result = analyze_outcomes(frame, arms="control=90,treatment=10")
    assert result.srm_p_value is not None and result.srm_p_value < 1e-6
    assert any("sample ratio mismatch" in w for w in result.warnings)


def test_bad_outcomes_are_rejected_with_the_column_and_row(tmp_path):
    good = _outcomes({"control": 0.4, "treatment": 0.4}, 20, 5)
    with pytest.raises(ValueError, match="missing column.*arm"):
        normalise_outcomes(good.drop(columns=["arm"]), source="o.csv")
    bad = good.copy()
    bad.loc[3, "decision"] = "maybe"
    with pytest.raises(ValueError, match=r"'decision'.*row 4.*'maybe'"):
        normalise_outcomes(bad)
    crossed = good.copy()
    crossed.loc[0, "arm"] = "treatment"
    crossed.loc[0, "user_id"] = crossed.loc[len(crossed) - 1, "user_id"]
    crossed.loc[1, "user_id"] = crossed.loc[len(crossed) - 1, "user_id"]
    with pytest.raises(ValueError, match="more than one arm"):
        normalise_outcomes(crossed)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_outcomes(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="control arm 'ctl' has no outcomes"):
        analyze_outcomes(normalise_outcomes(good), control="ctl")


def test_cli_ab_analyze_and_assign(tmp_path):
    from pipelines.cli import app

    runner = CliRunner()
    path = tmp_path / "outcomes.csv"
    _outcomes({"control": 0.40, "treatment": 0.46}, 8000, 2000).to_csv(path, index=False)
    res = runner.invoke(app, ["ab", "analyze", "--outcomes", str(path), "--json-out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "treatment vs control" in res.output and "p-value" in res.output and "treatment is better" in res.output
    assert (tmp_path / "r.json").is_file()

    broken = tmp_path / "broken.csv"
    broken.write_text("user_id,arm,item_id\nu1,control,i1\n")
    res = runner.invoke(app, ["ab", "analyze", "--outcomes", str(broken)])
    assert res.exit_code == 2 and "error:" in res.output and "decision" in res.output

    res = runner.invoke(app, ["ab", "assign", "--user", "u1", "--user", "u2", "--salt", "exp-1",
                              "--arms", "control=50,treatment=50"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "user_id,arm,bucket"
    assert res.output.splitlines()[1].startswith(f"u1,{assign_arm('u1', 'control=50,treatment=50', 'exp-1')},")


# ---------------------------------------------------------------- outcomes from the serving log
def _log(path, lines) -> str:
    import json

    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    return str(path)


def _line(user, arm, version="1", ts="2026-12-01T10:00:00.000Z", **extra) -> dict:
    return {"ts": ts, "user_id": user, "top_k": 2, "items": ["i1", "i2"], "scores": [0.5, 0.4], "latency_ms": 1.0,
            "model_version": version, "status": "ok", "arm": arm, "shadow": False, **extra}


def test_outcomes_from_log_take_the_arm_from_the_log_and_skip_shadow_error_and_early_swipes(tmp_path):
    from ml.evaluation.abtest import outcomes_from_log

    log = _log(tmp_path / "p.jsonl", [
        _line("a", "control"), _line("b", "treatment", "2"), _line("b", "treatment", "2"),
        _line("a", "treatment", "2", shadow=True),              # never shown: not an assignment
        _line("c", "treatment", "2", status="error"),           # refused: not served
        _line(None, "control"),                                 # anonymous
    ])
    swipes = tmp_path / "swipes.csv"
    pd.DataFrame({"user_id": ["a", "a", "b", "c", "z", "b"], "item_id": ["i1", "i2", "i1", "i1", "i1", "i2"],
                  "decision": ["like", "nope", "like", "like", "like", "nope"],
                  "ts": ["2026-12-01T11:00:00Z"] * 5 + ["2026-11-30T09:00:00Z"]}).to_csv(swipes, index=False)
    frame, logged, notes = outcomes_from_log(log, swipes)
    assert sorted(zip(frame["user_id"], frame["arm"], frame["liked"])) == [
        ("a", "control", 0), ("a", "control", 1), ("b", "treatment", 1)]
    assert logged.versions == {"control": ["1"], "treatment": ["2"]} and logged.lines == 3
    assert any("2 of 6 swipe(s)" in n for n in notes) and any("before the user's first" in n for n in notes)


@pytest.mark.parametrize(("lines", "message"), [
    ([_line("a", "control"), _line("a", "treatment")], "user 'a' was served arm 'treatment' here and 'control'"),
    ([_line("a", None)], "no answered A/B lines"),
])
def test_a_log_that_cannot_be_analysed_is_refused(tmp_path, lines, message):
    from ml.evaluation.abtest import outcomes_from_log

    swipes = tmp_path / "s.csv"
    pd.DataFrame({"user_id": ["a"], "item_id": ["i1"], "decision": ["like"]}).to_csv(swipes, index=False)
    with pytest.raises(ValueError, match=message):
        outcomes_from_log(_log(tmp_path / "p.jsonl", lines), swipes)
