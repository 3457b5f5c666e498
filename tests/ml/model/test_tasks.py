"""The retrieval and rating tasks on 2x2 batches, against losses computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.model.tasks import RatingTask, RetrievalTask

EYE = np.eye(2, dtype="float32")


def _loss(task, *args, **kwargs) -> float:
    return float(np.asarray(task(*args, **kwargs)))


def test_in_batch_softmax_by_hand() -> None:
    # cosines [[1, 0], [0, 1]] / T=0.5 -> logits [[2, 0], [0, 2]]; both rows likes
    loss = _loss(RetrievalTask(temperature=0.5), EYE, EYE, np.array([1.0, 1.0], "float32"))
    assert loss == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_only_likes_are_queries() -> None:
    u = np.array([[1.0, 0.0], [0.6, 0.8]], "float32")
    i = np.array([[0.0, 1.0], [1.0, 0.0]], "float32")
    # row 0 (like): logits [0, 1], target column 0 -> -log(e^0 / (e^0 + e^1)); row 1 is a nope
    loss = _loss(RetrievalTask(temperature=1.0), u, i, np.array([1.0, 0.0], "float32"))
    assert loss == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_duplicate_item_is_not_a_negative() -> None:
    i = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")  # the same item in both rows
    y = np.array([1.0, 1.0], "float32")
    task = RetrievalTask(temperature=1.0)
    assert _loss(task, EYE, i, y) == pytest.approx(
        # row 0: logits [1, 1] -> log 2; row 1: logits [0, 0] -> log 2
        math.log(2), rel=1e-6)
    assert _loss(task, EYE, i, y, item_index=np.array([7, 7])) == pytest.approx(0.0, abs=1e-6)


def test_same_users_other_like_is_masked_but_not_its_nope() -> None:
    u = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    task = RetrievalTask(temperature=1.0)
    users = np.array([3, 3])
    both_likes = _loss(task, u, EYE, np.array([1.0, 1.0], "float32"), user_index=users)
    assert both_likes == pytest.approx((0.0 + 0.0) / 2, abs=1e-6)  # each row's only negative is masked
    # row 1 is a nope: it stays a negative of row 0 -> logits [1, 0]
    like_nope = _loss(task, u, EYE, np.array([1.0, 0.0], "float32"), user_index=users)
    assert like_nope == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


def test_log_q_correction_shifts_each_column() -> None:
    log_q = np.array([math.log(0.5), math.log(0.1)], "float32")
    loss = _loss(RetrievalTask(temperature=1.0), EYE, EYE, np.array([1.0, 0.0], "float32"), item_log_q=log_q)
    a, b = 1 - math.log(0.5), 0 - math.log(0.1)  # row 0: [1 - log .5, 0 - log .1], target column 0
    assert loss == pytest.approx(-(a - math.log(math.exp(a) + math.exp(b))), rel=1e-6)


@pytest.mark.parametrize("weight", [0.0, 1.5, 2.0])
def test_log_q_weight_scales_the_correction(weight: float) -> None:
    log_q = np.array([math.log(0.5), math.log(0.1)], "float32")
    task = RetrievalTask(temperature=1.0, logq_weight=weight)
    loss = _loss(task, EYE, EYE, np.array([1.0, 0.0], "float32"), item_log_q=log_q)
    a, b = 1 - weight * math.log(0.5), 0 - weight * math.log(0.1)
    assert loss == pytest.approx(-(a - math.log(math.exp(a) + math.exp(b))), rel=1e-6)
    assert RetrievalTask.from_config(task.get_config()).logq_weight == weight


def test_log_q_weight_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match=r"logq_weight=-1.0 must be >= 0 \(1 = the standard logQ correction"):
        RetrievalTask(logq_weight=-1.0)


def test_rating_task_by_hand() -> None:
    task = RatingTask(temperature=0.5)
    u = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    i = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    loss, logits = task(u, i, np.array([1.0, 0.0], "float32"))
    np.testing.assert_allclose(np.asarray(logits), [2.0, 0.0], atol=1e-6)  # cos / T + bias 0
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert float(np.asarray(loss)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("make, args, message", [
    (lambda: RetrievalTask(temperature=0.0), None, "temperature=0.0 must be > 0"),
    (lambda: RatingTask(temperature=-1), None, "temperature=-1 must be > 0"),
    (RetrievalTask, (EYE, np.ones((2, 3), "float32"), np.ones(2, "float32")),
     "query embeddings are 2-d but candidate embeddings 3-d"),
    (RetrievalTask, (EYE, np.ones((3, 2), "float32"), np.ones(2, "float32")), "2 query rows but 3 candidate rows"),
    (RetrievalTask, (EYE, EYE, np.ones(3, "float32")), r"labels has shape \(3,\); it needs one value per batch row"),
    (RatingTask, (EYE[0], EYE, np.ones(2, "float32")), r"shape \(2,\) and candidate embeddings \(2, 2\)"),
])
def test_bad_shapes_and_values_are_named(make, args, message) -> None:
    with pytest.raises(ValueError, match=message):
        task = make()
        task(*args)
