"""pass@k against brute force, pass@1 and cons@k conventions, majority voting with math equality."""

import itertools
from math import comb

import pytest

from nanoseek.eval.metrics import majority, pass_at_k
from nanoseek.tasks.answers import is_correct


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (8, 1, 4),
                                   (10, 0, 5), (6, 6, 2), (7, 3, 5)])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(brute)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_1_is_the_share_correct_and_large_n_is_stable():
    assert pass_at_k(16, 4, 1) == pytest.approx(0.25)
    assert 0 < pass_at_k(1000, 1, 10) == pytest.approx(10 / 1000)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_majority_votes_answers_equal_as_math_together():
    # 3 votes for one half
    assert majority(["0.5", "3", "1/2", "\\frac{1}{2}", "3"], is_correct) == "0.5"
    assert majority(["7", "8", "8", "7"], is_correct) == "7"  # a tie goes to the first seen
    assert majority([None, None, "2"], is_correct) == "2"  # no answer casts no vote
    assert majority([None, None], is_correct) is None
