import numpy as np
import pytest

from zgdyn.core.data import distribution_stats, make_split, stats_table, zipf_weights

# REFERENCE.md, p = 97, 30% split: (s, ratio, ess, top-10% mass %, top-1 %, top-2 %), digits as shown
TABLE = [
    (0.0, "1", "2822", "9.99", "0.035", "0.035"),
    (1.0, "2822", "44.2", "73.0", "11.7", "5.9"),
    (1.5, "149912", "5.51", "96.8", "38.8", "13.7"),
    (2.0, "7963684", "2.50", "99.8", "60.8", "15.2"),
    (3.0, "2.25e10", "1.42", "100.0", "83.2", "10.4"),
]


def _matches(value: float, shown: str) -> bool:
    """value rounded to the digits of `shown` equals it."""
    if "e" in shown:
        mant, exp = shown.split("e")
        decimals = len(mant.split(".")[1]) if "." in mant else 0
        return round(value / 10 ** int(exp), decimals) == float(mant)
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return round(value, decimals) == float(shown)


@pytest.mark.parametrize("row", TABLE, ids=[f"s={r[0]}" for r in TABLE])
def test_stats_match_reference_table(row):
    s, ratio, ess, top10, top1, top2 = row
    (r,) = stats_table(97, 0.3, [s])
    assert r["n"] == 2822
    assert _matches(r["ratio"], ratio)
    assert _matches(r["ess"], ess)
    assert _matches(100 * r["top10_mass"], top10)
    assert _matches(100 * r["top1"], top1)
    assert _matches(100 * r["top2"], top2)


def test_matches_rejects_wrong_digits():
    assert not _matches(44.26, "44.2")
    assert not _matches(2.26e10, "2.25e10")


def test_split_is_reference_shuffle_of_pair_list():
    p = 17
    pairs = np.array([(a, b) for a in range(p) for b in range(p)])
    np.random.RandomState(42).shuffle(pairs)
    split = make_split(p, 0.3, seed=42)
    a, b, c = split.tokens(split.train_idx)
    n = int(p * p * 0.3)
    assert split.n_train == n and len(split.test_idx) == p * p - n
    np.testing.assert_array_equal(a, pairs[:n, 0])
    np.testing.assert_array_equal(b, pairs[:n, 1])
    np.testing.assert_array_equal(c, (pairs[:n, 0] + pairs[:n, 1]) % p)
    everything = np.sort(np.concatenate([split.train_idx, split.test_idx]))
    np.testing.assert_array_equal(everything, np.arange(p * p))


def test_weight_modes_follow_their_definitions():
    split = make_split(11, 0.5, seed=3)
    a, b, c = split.tokens(split.train_idx)
    s = 1.3
    w = zipf_weights(split, s, "rank")
    np.testing.assert_allclose(w[0] / w[4], 5**s)
    w = zipf_weights(split, s, "independent")
    expect = ((a + 1.0) * (b + 1.0)) ** -s
    np.testing.assert_allclose(w, expect / expect.sum())
    w = zipf_weights(split, s, "output_freq")
    expect = (c + 1.0) ** -s
    np.testing.assert_allclose(w, expect / expect.sum())
    for mode in ("rank", "independent", "output_freq"):
        np.testing.assert_allclose(zipf_weights(split, 0.0, mode), 1 / split.n_train)
        assert zipf_weights(split, 2.0, mode).sum() == pytest.approx(1.0)


def test_distribution_stats_closed_form():
    w = np.array([0.5, 0.25, 0.125, 0.125])
    st = distribution_stats(w)
    assert st["ratio"] == 4.0
    assert st["ess"] == pytest.approx(1 / (0.25 + 0.0625 + 2 * 0.015625))
    assert st["top1"] == 0.5 and st["top2"] == 0.25
    assert st["top10_mass"] == 0.5  # n // 10 = 0 -> at least the heaviest one


def test_default_rng_split_is_the_two_phase_scripts_permutation():
    # the reference's two-phase script, densely: an a-major pair list, indices by
    # default_rng(seed).permutation, the first int(n * frac) of them train
    p, frac, seed = 97, 0.3, 42
    pairs = [(a, b) for a in range(p) for b in range(p)]
    indices = np.random.default_rng(seed).permutation(len(pairs))
    n_train = int(len(pairs) * frac)
    split = make_split(p, frac, seed, "default_rng")
    a, b, y = split.tokens(split.train_idx)
    assert [(int(i), int(j)) for i, j in zip(a, b)] == [pairs[i] for i in indices[:n_train]]
    assert split.test_idx.tolist() == indices[n_train:].tolist()
    assert split.train_idx.dtype == np.int64
    # other pairs get the top Zipf ranks than under RandomState's shuffle
    other = make_split(p, frac, seed)
    assert split.train_idx[0] != other.train_idx[0]
    assert len(set(split.train_idx[:10]) & set(other.train_idx[:10])) < 10
    with pytest.raises(ValueError, match="rng: must be random_state | default_rng"):
        make_split(p, frac, seed, "mt19937")


def test_cap_weights_water_fills_to_its_closed_form():
    from zgdyn.core.data import cap_weights

    # 0.7 is capped at 1.5/3 = 0.5; 0.3 of mass left for (0.2, 0.1) scaled by 0.5/0.3
    np.testing.assert_allclose(cap_weights(np.array([0.2, 0.7, 0.1]), 1.5),
                               [1 / 3, 0.5, 1 / 6], rtol=1e-15)
    w = np.array([0.25, 0.25, 0.25, 0.25])
    np.testing.assert_array_equal(cap_weights(w, 2.0), w)  # nothing above the cap


@pytest.mark.parametrize("s,cap", [(1.5, 10.0), (2.0, 3.0), (3.0, 1.01), (1.0, 500.0)])
def test_capped_zipf_weights_keep_their_order_and_bound_the_sample_size(s, cap):
    from zgdyn.core.data import cap_weights

    w = zipf_weights(make_split(97, 0.3, 42), s)
    c = cap_weights(w, cap)
    n = len(w)
    assert c.sum() == pytest.approx(1.0, abs=1e-12)
    assert c.max() <= cap / n * (1 + 1e-12)
    assert np.all(np.diff(c) <= 1e-18)  # rank order kept (ranks are already sorted)
    assert 1.0 / np.sum(c * c) >= n / cap * (1 - 1e-9)
    free = c < cap / n * (1 - 1e-12)  # the uncapped pairs: scaled by one factor
    ratio = c[free] / w[free]
    assert free.any() and np.ptp(ratio) <= 1e-12 * ratio.max()


def test_a_run_trains_on_capped_weights_and_stores_them(tmp_path):
    from helpers import small_config
    from zgdyn.core.data import cap_weights
    from zgdyn.core.train import Trainer
    from zgdyn.store.reader import open_run
    from zgdyn.store.runner import train_run

    cfg = small_config(40, zipf_s=2.0, weight_cap=4.0)
    trainer = Trainer(cfg)
    w = trainer.phase_weights[0].numpy()
    np.testing.assert_array_equal(w, cap_weights(zipf_weights(trainer.split, 2.0), 4.0))
    assert w.max() == pytest.approx(4.0 / len(w))
    train_run(cfg, tmp_path / "c.h5")
    with open_run(tmp_path / "c.h5") as run:
        np.testing.assert_array_equal(run.weights(0), w)
    from zgdyn.core.config import ConfigError
    with pytest.raises(ConfigError, match="weight_cap: must be a number > 1"):
        small_config(10, weight_cap=1.0)


@pytest.mark.parametrize("s,t", [(1.5, 0.5), (2.0, 0.25), (3.0, 0.9)])
def test_tempered_zipf_weights_are_the_zipf_law_at_s_times_t(s, t):
    """(1/k^s)^t renormalized is the Zipf law of exponent s·t, in closed form: rank mode
    gives pair k of the ranking the weight k^(-s t) / Σ_j j^(-s t); the effective sample size
    grows as t falls."""
    from zgdyn.core.data import temper_weights

    split = make_split(97, 0.3, 42)
    w = zipf_weights(split, s)
    tempered = temper_weights(w, t)
    k = np.arange(1, len(w) + 1, dtype=np.float64)
    closed = k ** (-s * t) / np.sum(k ** (-s * t))
    np.testing.assert_allclose(tempered, closed, rtol=1e-12)
    ess = lambda x: 1.0 / np.sum(x * x)
    assert ess(w) < ess(tempered) < ess(temper_weights(w, t / 2)) < len(w)


def test_a_run_trains_on_tempered_then_capped_weights(tmp_path):
    from helpers import small_config
    from zgdyn.core.config import ConfigError
    from zgdyn.core.data import cap_weights, temper_weights
    from zgdyn.core.train import Trainer

    trainer = Trainer(small_config(10, zipf_s=3.0, weight_power=0.5, weight_cap=3.0))
    want = cap_weights(temper_weights(zipf_weights(trainer.split, 3.0), 0.5), 3.0)
    np.testing.assert_array_equal(trainer.phase_weights[0].numpy(), want)
    for bad in (1.0, 0.0, -0.5):
        with pytest.raises(ConfigError, match=r"weight_power: must be a number in \(0, 1\)"):
            small_config(10, weight_power=bad)
