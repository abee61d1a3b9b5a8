import math

import numpy as np
import pytest
import torch

from zgdyn.analysis.fourier import (all_logits, checkpoint_measures, detect_key_freqs,
                                    diagonal_fraction, energy_map, fourier_basis, fourier_energy,
                                    frequency_norms, gini, key_projector, memorization_projector,
                                    progress_measures, spectrum, split_logits,
                                    weight_decomposition)
from zgdyn.core.model import build_model


def planted_logits(p, freqs, amps=None, phases=None):
    """L[a, b, c] = Σ_k A_k cos(2πk(a + b − c)/p + φ_k)."""
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :])  # a + b − c
    amps = amps or [1.0] * len(freqs)
    phases = phases or [0.0] * len(freqs)
    return sum(A * torch.cos(2 * math.pi * k * s / p + ph) for k, A, ph in zip(freqs, amps, phases))


@pytest.mark.parametrize("p", [23, 24])
def test_basis_is_orthonormal(p):
    basis, labels = fourier_basis(p)
    torch.testing.assert_close(basis @ basis.t(), torch.eye(p, dtype=torch.float64))
    assert labels[0] == (0, "const") and len(labels) == p


def test_planted_logits_have_energy_one_and_their_key_freqs():
    p, freqs = 23, [3, 7, 10]
    L = planted_logits(p, freqs, amps=[3.0, 2.0, 1.0], phases=[0.1, 0.7, 2.0])
    spec = spectrum(L)
    key = detect_key_freqs(spec.diagonal)
    assert key.freqs == freqs  # sorted by energy: amplitudes 3 > 2 > 1
    assert fourier_energy(spec, freqs) == pytest.approx(1.0, abs=1e-6)
    assert diagonal_fraction(spec) == pytest.approx(1.0, abs=1e-6)
    const, keyp, rest = split_logits(spec, freqs)
    assert rest.abs().max() < 1e-9
    torch.testing.assert_close(const + keyp, L - L.mean(-1, keepdim=True))


def test_diagonal_spectrum_agrees_with_full_2d_fft():
    torch.manual_seed(0)
    p = 13
    L = torch.randn(p, p, p, dtype=torch.float64)
    spec = spectrum(L)
    emap = energy_map(L)
    k = torch.arange(p)
    torch.testing.assert_close(spec.diag_energy, emap[k, k])
    assert spec.total == pytest.approx(float(emap.sum() - emap[0, 0]))
    # Parseval on the c-centered logits
    lc = L - L.mean(-1, keepdim=True)
    assert float(emap.sum()) == pytest.approx(float((lc**2).sum()))


def test_random_logits_energy_matches_expectation():
    """White logits spread energy evenly over the p² − 1 non-constant bins."""
    p, key = 31, [1, 2, 3]
    g = torch.Generator().manual_seed(0)
    vals = [fourier_energy(spectrum(torch.randn(p, p, p, generator=g, dtype=torch.float64)), key)
            for _ in range(20)]
    expected = 2 * len(key) / (p * p - 1)
    assert np.mean(vals) == pytest.approx(expected, rel=0.1)


def test_progress_measures_on_planted_logits():
    p, freqs = 17, [2, 5]
    L = 8.0 * planted_logits(p, freqs)  # confident and correct everywhere
    spec = spectrum(L)
    train = torch.arange(0, p * p, 3)
    w = torch.full((len(train),), 1 / len(train), dtype=torch.float64)
    pm = progress_measures(spec, freqs, train, w)
    assert pm.m_f < 1e-8 and pm.m_f_train < 1e-8
    y = (train // p + train % p) % p
    direct = torch.nn.functional.cross_entropy(L.reshape(p * p, p)[train], y)
    assert pm.restricted_loss == pytest.approx(float(direct), rel=1e-9)  # key part = all of it
    assert pm.restricted_loss < 0.05
    assert pm.excluded_loss == pytest.approx(math.log(p), rel=1e-6)  # nothing left: uniform
    assert pm.restricted_loss_weighted == pytest.approx(pm.restricted_loss)
    # adding a known non-key part shows up as exactly its norm
    x = torch.arange(p, dtype=torch.float64)
    noise = torch.cos(2 * math.pi * 3 * x / p)[:, None, None] \
        * torch.cos(2 * math.pi * x / p)[None, None, :]  # depends on a only: bin (3, 0)
    noise = noise.expand(p, p, p)
    pm2 = progress_measures(spectrum(L + noise), freqs, train, w)
    lc = noise - noise.mean(-1, keepdim=True)
    assert pm2.m_f == pytest.approx(float(lc.norm()), rel=1e-9)


def test_detect_key_freqs_top_k_and_gap():
    diag = torch.tensor([1.0, 50.0, 2.0, 40.0, 45.0, 0.5], dtype=torch.float64)
    auto = detect_key_freqs(diag)
    assert auto.freqs == [2, 5, 4] and auto.gap == pytest.approx(20.0)
    assert detect_key_freqs(diag, top_k=2).freqs == [2, 5]


def test_gini():
    assert gini(np.ones(10)) == pytest.approx(0.0)
    assert gini(np.r_[np.zeros(9), 1.0]) == pytest.approx(0.9)
    assert gini(np.array([1.0, 3.0])) == pytest.approx(0.25)


def _planted_params(p, hidden, key, seed=0):
    """Token weights that live only in the key frequencies' cos/sin directions."""
    g = torch.Generator().manual_seed(seed)
    model = build_model(p, hidden, init="lecun", seed=seed, dtype="float64")
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    pk = key_projector(p, key)
    h1 = hidden[0]
    params["fc1.weight"] = torch.cat([torch.randn(h1, p, generator=g, dtype=torch.float64) @ pk,
                                      torch.randn(h1, p, generator=g, dtype=torch.float64) @ pk], 1)
    params["out.weight"] = pk @ torch.randn(p, hidden[-1], generator=g, dtype=torch.float64)
    return params


def test_planted_weights_have_no_memorization_and_known_additions_show_exactly():
    p, hidden, key = 13, (10, 8), [2, 5]
    params = _planted_params(p, hidden, key)
    dec = weight_decomposition(params, p, key)
    assert dec.m_w < 1e-12 and dec.const_w < 1e-12 and dec.f_w > 1
    # a non-key, zero-mean component of known norm in the a-half of the embedding
    basis, labels = fourier_basis(p)
    row = basis[[j for j, (k, kind) in enumerate(labels) if (k, kind) == (4, "sin")][0]]
    bump = torch.zeros(10, p, dtype=torch.float64)
    bump[3] = 2.5 * row
    params["fc1.weight"][:, :p] += bump
    dec2 = weight_decomposition(params, p, key)
    assert dec2.m_w == pytest.approx(2.5, rel=1e-12)
    assert dec2.f_w == pytest.approx(dec.f_w, rel=1e-12)
    # a constant (token-mean) shift is not memorization
    params["out.weight"] += 1.0
    assert weight_decomposition(params, p, key).m_w == pytest.approx(2.5, rel=1e-12)


def test_memorization_projector_is_a_projector_consistent_with_m_w():
    p, hidden, key = 11, (8, 6), [1, 3]
    model = build_model(p, hidden, init="torch", seed=2, dtype="float64")
    params = {k: v.detach() for k, v in model.named_parameters()}
    proj = memorization_projector(p, key)
    once = proj(params)
    twice = proj(once)
    for k in params:
        torch.testing.assert_close(once[k], twice[k])
    norm = math.sqrt(sum(float(t.norm() ** 2) for t in once.values()))
    assert norm == pytest.approx(weight_decomposition(params, p, key).m_w, rel=1e-12)


def test_frequency_norms_of_planted_embedding():
    p, hidden, key = 13, (10, 8), [2, 5]
    norms = frequency_norms(_planted_params(p, hidden, key), p)
    assert set(torch.nonzero(norms > 1e-9).flatten().add(1).tolist()) == set(key)


def test_all_logits_matches_the_model():
    p = 7
    model = build_model(p, (6,), init="torch", seed=0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    L = all_logits(params, p)
    a, b = torch.tensor([3, 6]), torch.tensor([5, 0])
    torch.testing.assert_close(L[a, b], model(a, b))


def test_checkpoint_measures_keys():
    p = 11
    model = build_model(p, (8,), init="torch", seed=0)
    params = {k: v.detach() for k, v in model.named_parameters()}
    train = torch.arange(0, p * p, 2)
    w = torch.full((len(train),), 1 / len(train), dtype=torch.float64)
    row, diag = checkpoint_measures(params, p, [1, 2], train, w)
    assert 0 <= row["fourier_energy"] <= row["diagonal_fraction"] <= 1
    assert diag.shape == (p // 2,) and float(diag.sum()) == pytest.approx(row["diagonal_fraction"])
