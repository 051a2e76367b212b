"""Plans: the recovery threshold, the Case 1 / Case 2 presets for any r, and actionable refusals."""

import pytest

from cpml.protocol import Plan, largest_k, recovery_threshold


def test_threshold_formula():
    assert recovery_threshold(k=10, t=7, r=1) == 49
    assert recovery_threshold(k=3, t=1, r=2) == 16


@pytest.mark.parametrize("n", range(4, 101))
def test_case1_matches_the_paper_for_r1(n):
    plan = Plan.case1(n)
    assert (plan.t, plan.k) == (1, (n - 1) // 3)
    assert plan.threshold <= n


@pytest.mark.parametrize("n", range(9, 101))
def test_case2_matches_the_paper_for_r1(n):
    plan = Plan.case2(n)
    assert plan.t == (n - 3) // 6
    assert plan.k == (n + 2) // 3 - plan.t
    assert plan.threshold <= n


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("n", [20, 50, 100])
def test_presets_take_the_largest_k_for_any_r(n, r):
    for plan in (Plan.case1(n, r=r), Plan.case2(n, r=r)):
        assert plan.threshold <= n < recovery_threshold(plan.k + 1, plan.t, r)
        assert largest_k(n, plan.t, r) == plan.k


def test_too_few_workers_names_what_to_change():
    with pytest.raises(ValueError) as info:
        Plan(n_workers=20, k=5, t=4, r=2)
    message = str(info.value)
    assert message.startswith("Argument 'n_workers' must be at least (2r+1)(K+T-1)+1 = 41 for K=5, T=4, r=2, not 20")
    assert "lower K to" not in message or "add workers (N >= 41)" in message
    assert "lower r" not in message  # even r=1 needs 25 > 20


def test_refusal_suggests_a_smaller_k_when_one_fits():
    with pytest.raises(ValueError, match="lower K to 2"):
        Plan(n_workers=10, k=4, t=2, r=1)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"p": 2**25 - 37}, "Argument 'p' must be prime, not 33554395."),
        ({"lx": -1}, "Argument 'lx' must be an integer between 0 and 24, not -1."),
        ({"model": "svm"}, "Argument 'model' must be one of logistic, linear, not 'svm'."),
        ({"learning_rate": float("nan")}, "Argument 'learning_rate' must be a positive finite number"),
        ({"iterations": 0}, "Argument 'iterations' must be a positive integer, not 0."),
    ],
)
def test_bad_arguments_use_the_one_template(change, pattern):
    with pytest.raises(ValueError) as info:
        Plan(n_workers=10, k=3, t=1, **change)
    assert str(info.value).startswith(pattern)
