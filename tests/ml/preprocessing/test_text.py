"""The TF-IDF fast path must give sklearn's matrix exactly; the encoder must pickle without its caches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from ml.preprocessing.text import TfidfSvdEncoder

FIT = [
    "Red fox jumps over the lazy dog",
    "A quick brown fox",
    "Lazy afternoon with the dog",
    "supercalifragilisticexpialidocious words are long",
    "Straße und Café",
    "snake_case tokens and digits 42",
]


@pytest.fixture(scope="module")
def encoder() -> TfidfSvdEncoder:
    return TfidfSvdEncoder(dim=3, seed=0).fit(FIT)


def test_fast_tfidf_equals_sklearn_on_mixed_text(encoder: TfidfSvdEncoder) -> None:
    texts = [
        "RED Fox, red fox!! the DOG.",                    # case, punctuation, repeats (sublinear tf)
        "",                                               # empty: an all-zero row
        "nothing here is known",                          # only out-of-vocabulary words
        "supercalifragilisticexpialidocious fox",         # a token longer than 16 bytes
        "supercalifragilisticexpialidociousness fox",     # same 16-byte prefix, not in the vocabulary
        "straße café fox",                                # non-ASCII: the regex path
        "snake_case-tokens\tdigits\n42 lazy_dog",         # underscores are word characters, '-' is not
        "fox\x00dog",                                     # a NUL inside a text must not split documents
    ]
    fast = encoder._tfidf_matrix(texts)
    reference = encoder._tfidf.transform(texts)
    assert fast.shape == reference.shape
    assert abs(fast - reference).max() == 0.0
    # hand check on row 0: 'red' x2, 'fox' x2, 'the', 'dog' -> four nonzero terms, unit length
    assert fast[0].nnz == 4
    assert np.isclose(np.linalg.norm(fast[0].toarray()), 1.0)
    assert fast[1].nnz == 0 and fast[2].nnz == 0
    assert fast[4].nnz == 1  # only 'fox': the long non-word is not mistaken for its vocabulary prefix


def test_transform_rows_are_unit_or_zero_and_match_sklearn_svd(encoder: TfidfSvdEncoder) -> None:
    texts = ["quick brown dog", "", "fox over the lazy dog"]
    out = encoder.transform(texts)
    expected = encoder._svd.transform(encoder._tfidf.transform(texts))
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    expected = np.where(norms > 0, expected / np.maximum(norms, 1e-12), 0.0)
    np.testing.assert_allclose(out[:, :expected.shape[1]], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), [1.0, 0.0, 1.0], atol=1e-6)


def test_pickled_encoder_drops_caches_and_gives_the_same_vectors(encoder: TfidfSvdEncoder) -> None:
    texts = ["red fox", "lazy dog"]
    before = encoder.transform(texts)          # fills the caches
    assert "_lookup" in encoder.__dict__
    clone = pickle.loads(pickle.dumps(encoder))
    assert "_lookup" not in clone.__dict__ and "_comp_t" not in clone.__dict__
    np.testing.assert_array_equal(clone.transform(texts), before)
