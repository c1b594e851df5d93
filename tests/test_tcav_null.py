"""The TCAV test's null (issue 24 item 1): a random "concept" on a toy encoder is rejected at the nominal rate by
the pseudo-concept rank test, far above it by the earlier permutation test of K concept CAVs (sharing one positive
set) against K independent random-vs-random CAVs (the negative control)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cinevox.analysis.concepts import (
    directional_derivatives,
    permutation_pvalues,
    pseudo_concept_pvalues,
    train_cav,
)


class Toy(torch.nn.Module):
    """A toy encoder head: activations (n, D) -> voxels (n, V), nonlinear so that derivatives vary by clip."""

    def __init__(self, d: int, v: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.randn(d, 32, generator=g) / d**0.5
        self.w2 = torch.randn(32, v, generator=g) / 32**0.5

    def forward(self, a):
        return torch.tanh(a @ self.w1) @ self.w2


def _scores(head, test, cav):
    return (directional_derivatives(head, test, torch.as_tensor(cav, dtype=torch.float32)) > 0).double().mean(0)


def test_pseudo_concept_pvalues_restated():
    rng = np.random.default_rng(0)
    pseudo = rng.uniform(size=(39, 5))
    concept = np.array([0.5, 2.0, -1.0, pseudo[:, 3].mean(), 0.0])
    pseudo[:, 4] = 0.0  # every score tied with the concept's
    p_count = pseudo_concept_pvalues(concept, pseudo, ties="count")
    p = pseudo_concept_pvalues(concept, pseudo, seed=3)
    for j in range(5):  # restated: distance from the mean of all 40 scores
        allv = np.r_[concept[j], pseudo[:, j]]
        dist = np.abs(allv - allv.mean())
        farther, tied = (dist[1:] > dist[0] + 1e-12).sum(), (np.abs(dist[1:] - dist[0]) <= 1e-12).sum()
        assert p_count[j] == pytest.approx((farther + tied + 1) / 40)
        # random ties: the concept's rank among the tied scores, an integer in farther + 1 .. farther + tied + 1
        rank = p[j] * 40
        assert rank == pytest.approx(round(rank)) and farther + 1 <= round(rank) <= farther + tied + 1
    assert p_count[1] == p_count[2] == pytest.approx(1 / 40) and p_count[4] == 1.0 and p_count[3] > 0.5
    assert p[1] == p[2] == pytest.approx(1 / 40)  # no ties: the same p as before
    np.testing.assert_array_equal(p, pseudo_concept_pvalues(concept, pseudo, seed=3))  # seeded
    # all tied: the rank is uniform on 1..40 (restated: its mean 20.5 over many units)
    ranks = pseudo_concept_pvalues(np.zeros(20000), np.zeros((39, 20000)), seed=1) * 40
    assert set(np.round(ranks).astype(int)) == set(range(1, 41)) and abs(ranks.mean() - 20.5) < 0.3
    with pytest.raises(ValueError, match="ties"):
        pseudo_concept_pvalues(concept, pseudo, ties="mid")


def test_pseudo_concept_pvalues_exact_with_heavy_ties():
    """Under exchangeability with discrete scores (means of K = 2 CAV scores, each a count out of 10 clips: heavy
    ties), random tie-breaking rejects at exactly 5 / 101 at alpha 0.05, within binomial bounds over 30,000 tests,
    and its p is uniform on the grid; counting ties against the concept (the rule before) is conservative (the
    negative control); a planted effect is still found."""
    rng = np.random.default_rng(5)
    m, units = 100, 30_000
    scores = rng.binomial(10, 0.5, size=(m + 1, 2, units)).mean(1) / 10  # concept + M pseudo-concepts, exchangeable
    concept, pseudo = scores[0], scores[1:]
    p_new = pseudo_concept_pvalues(concept, pseudo, seed=0)
    p_old = pseudo_concept_pvalues(concept, pseudo, ties="count")
    nominal = 5 / (m + 1)  # P(p < 0.05) = P(rank <= 5)
    bound = 4 * np.sqrt(nominal * (1 - nominal) / units)  # 4 binomial SDs
    assert abs((p_new < 0.05).mean() - nominal) < bound, (p_new < 0.05).mean()
    assert (p_old < 0.05).mean() < nominal - bound, (p_old < 0.05).mean()  # conservative (0.040 here)
    # the whole distribution: each rank 1..101 equally likely (chi-square, 100 df)
    counts = np.bincount(np.round(p_new * (m + 1)).astype(int), minlength=m + 2)[1:]
    chi2 = ((counts - units / (m + 1)) ** 2 / (units / (m + 1))).sum()
    assert stats.chi2.sf(chi2, m) > 1e-3, chi2
    assert stats.chi2.sf(((np.bincount(np.round(p_old * (m + 1)).astype(int), minlength=m + 2)[1:]
                           - units / (m + 1)) ** 2 / (units / (m + 1))).sum(), m) < 1e-6  # the old p is not uniform
    # planted: the concept's CAVs score higher (counts out of 10 at 0.85 instead of 0.5)
    planted = rng.binomial(10, 0.85, size=(2, 2000)).mean(0) / 10
    assert (pseudo_concept_pvalues(planted, pseudo[:, :2000], seed=0) < 0.05).mean() > 0.8
    assert (p_new <= p_old + 1e-12).all()  # breaking ties never makes p larger than counting them against


def test_random_concept_rejected_at_the_nominal_rate():
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    d, v, n_pool, n_set, k, m = 24, 200, 600, 15, 5, 40
    head = Toy(d, v)
    mix = rng.normal(size=(d, d)) / d**0.5 + np.eye(d)  # correlated activation dimensions
    pool = rng.normal(size=(n_pool, d)) @ mix
    test = torch.as_tensor(rng.normal(size=(40, d)) @ mix, dtype=torch.float32)
    negs = [pool[rng.choice(n_pool, n_set, replace=False)] for _ in range(k)]
    def mean_score(pos):  # a positive set's K CAVs (against the K negatives), its mean score (V,)
        return np.stack([_scores(head, test, train_cav(pos, neg)) for neg in negs])

    pseudo = np.stack([mean_score(pool[rng.choice(n_pool, n_set, replace=False)]).mean(0) for _ in range(m)])
    rand = np.stack([_scores(head, test, train_cav(pool[rng.choice(n_pool, n_set, replace=False)],
                                                   pool[rng.choice(n_pool, n_set, replace=False)]))
                     for _ in range(k)])  # the old test's independent random-vs-random CAVs
    new, old = [], []
    for _ in range(10):  # random "concepts": another random set of the same pool
        pos = pool[rng.choice(n_pool, n_set, replace=False)]
        con = mean_score(pos)  # (k, V)
        new.append((pseudo_concept_pvalues(con.mean(0), pseudo) < 0.05).mean())
        old.append((permutation_pvalues(con, rand)[0] < 0.05).mean())
    assert 0.02 <= np.mean(new) <= 0.08, new
    # negative control (0.19 here, 0.04 for the new test): the earlier test rejects a meaningless concept
    assert np.mean(old) > 0.12, old


def test_pseudo_concept_pvalues_of_non_finite_scores_are_nan():
    """A unit whose concept or any pseudo-concept score is not finite has no p (before: the most significant one)."""
    from cinevox.analysis.concepts import pseudo_concept_pvalues

    pseudo = np.random.default_rng(0).random((19, 3))
    pseudo[4, 1] = np.nan
    for ties in ("random", "count"):
        p = pseudo_concept_pvalues(np.array([0.5, 0.5, np.nan]), pseudo, seed=1, ties=ties)
        assert np.isfinite(p[0]) and np.isnan(p[1]) and np.isnan(p[2])
