import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medfm_compress import metrics as M
from medfm_compress.runtime.tasks import get_task


def test_binary_auc_known_values():
    assert M.binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert M.binary_auc(np.array([1, 2, 3]), np.array([0, 1, 1])) == 1.0
    assert M.binary_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5  # ties count half
    assert np.isnan(M.binary_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_macro_auc_multiclass_and_multilabel():
    logits = np.array([[3.0, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0]])
    assert get_task("multiclass").macro_auc(logits, np.array([0, 1, 2, 0])) == 1.0
    ml = np.array([[2.0, -2], [-2, 2], [2, 2], [-2, -2]])
    assert get_task("multilabel").macro_auc(ml, np.array([[1, 0], [0, 1], [1, 1], [0, 0]])) == 1.0
    assert get_task("multiclass").accuracy(logits, np.array([0, 1, 2, 1])) == 0.75


def test_sqnr_and_cosine():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert M.sqnr_db(a, a) == float("inf")
    assert M.sqnr_db(a, a * 1.1) == pytest.approx(20.0, abs=1e-6)
    assert M.cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert M.max_abs_error(a, a + 0.5) == 0.5


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 30), st.integers(2, 5)), elements=st.floats(-20, 20)))
def test_metric_of_model_against_itself_is_exact(logits):
    assert M.top1_agreement(logits, logits) == 1.0
    assert M.max_abs_error(logits, logits) == 0.0
    assert M.sqnr_db(logits, logits) == float("inf")
    assert M.cosine_similarity(logits, logits) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=4, max_size=40), st.randoms())
def test_auc_is_rank_based(scores, rnd):
    scores = np.array(scores, dtype=np.float64)
    labels = np.array([rnd.random() < 0.5 for _ in scores])
    labels[0], labels[1] = True, False
    a = M.binary_auc(scores, labels)
    assert 0.0 <= a <= 1.0
    assert M.binary_auc(3 * scores + 7, labels) == pytest.approx(a)  # a monotone transform keeps AUC
    assert M.binary_auc(-scores, labels) == pytest.approx(1 - a)
