"""The mechanism records, the laws' predictions and the verdicts, on planted cycles; the
curvature at an onset against a dense computation."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import small_config
from zgdyn.core.config import Config
from zgdyn.analysis.hessian import dense_hessian, weighted_loss_fn
from zgdyn.analysis.mechanism import (EOS_BAND, RunRecord, mechanism_record, onset_curvature,
                                      period_predictions, run_record, stability_threshold,
                                      verdicts)
from zgdyn.store.runner import train_run
from zgdyn.store.reader import open_run


def planted_cycle(period: float, *, beta2: float = 0.999, eps: float = 1e-8,
                  onset: float = 2e-8, after: float = 1e-2, epochs: int = 150_000,
                  collapse: bool = True, clock_noise: float = 0.0,
                  seed: int = 0, reach: bool = True) -> dict[str, np.ndarray]:
    """Evaluations every 100 epochs of a sawtooth cycle: the train loss sits at 1e-6 and
    spikes ×1e5 at each collapse; adam_scale decays at (1 − β2)/2 per epoch from `after`
    and is thrown back up at each collapse. With `period` None the clock sets the
    period: ln(after/onset)/((1 − β2)/2)."""
    rng = np.random.default_rng(seed)
    e = np.arange(0, epochs + 1, 100, dtype=np.float64)
    loss = np.full(len(e), 1e-6)
    rate = (1 - beta2) / 2
    a = np.full(len(e), after)
    test = np.full(len(e), 0.99 if reach else 0.5)  # (reach: the run gets to the solution)
    if collapse:
        t0 = 20_000.0
        starts = list(np.arange(t0, epochs, period))
        for k, c in enumerate(starts):
            i = int(np.searchsorted(e, c))
            loss[i:i + 3] = 0.1
            test[i:i + 20] = 0.5
            nxt = starts[k + 1] if k + 1 < len(starts) else epochs + 1
            seg = (e > c) & (e < nxt)
            jitter = 1 + clock_noise * rng.standard_normal()
            a[seg] = after * np.exp(-rate * jitter * (e[seg] - c))
            a[i] = after
        a[e < t0] = after * np.exp(-rate * (e[e < t0]))
    return {"epoch": e, "train_loss": loss, "test_acc": test, "adam_scale": a,
            "sqrt_v_median": a / 3}


def _rec(variant, period, seed=42, reach=True, **cfg_changes):
    cfg = Config().replace(zipf_s=1.5, seed=seed, **cfg_changes)
    o = cfg.optim
    collapse = period is not None or cfg.optim.name != "sgd"
    if period is None:  # the clock's own period
        period = math.log(1e-2 / 2e-8) / ((1 - o.beta2) / 2)
    m = planted_cycle(period, beta2=o.beta2, eps=o.eps, collapse=collapse and period > 0,
                      reach=reach)
    return run_record(cfg, m, label=f"{variant}-{seed}", variant=variant, epochs_done=150_000,
                      status="complete")


def test_run_record_reads_the_planted_cycle():
    rec = _rec("baseline", 30_000)
    assert rec.collapses == 5 and rec.intervals == [30_000.0] * 4
    assert rec.period_mean == 30_000
    assert rec.first_95 == 0
    assert rec.onsets[0].adam_scale == pytest.approx(1e-2 * math.exp(-5e-4 * 19_900))
    for o in rec.onsets[1:]:
        assert o.adam_scale == pytest.approx(1e-2 * math.exp(-5e-4 * 29_900), rel=1e-12)
    assert all(o.adam_scale_after == pytest.approx(1e-2) for o in rec.onsets)
    # the clock's prediction ln(after/onset)/rate equals the interval (sampled 100 before)
    for obs, pred in zip(rec.intervals, rec.clock):
        assert pred == pytest.approx(29_900, rel=1e-9)
    assert rec.clock_eps[0] == pytest.approx(math.log(1e-2 / 1e-8) / 5e-4)
    assert rec.threshold == pytest.approx(38 / 1e-3)
    back = RunRecord.from_dict(rec.to_dict())
    assert back == rec


def test_stability_thresholds():
    assert stability_threshold(Config()) == pytest.approx(38_000)
    sgd = Config().replace(optimizer="sgd", lr=0.3, weight_decay=0.001, momentum=0.9)
    assert stability_threshold(sgd) == pytest.approx(3.8 / 0.3)


def test_verdicts_follow_the_planted_mechanism():
    """A world where Adam's clock sets the period (it depends on β2 and ε, not on λ):
    the clock holds and the saddle fails; a world where λ sets it: the reverse."""
    clock_world = [_rec("baseline", None), _rec("beta2-0.99", None, beta2=0.99),
                   _rec("wd-2", None, weight_decay=2.0), _rec("lr-2e-3", None, lr=2e-3),
                   _rec("sgd", 0, optimizer="sgd", lr=0.3, weight_decay=1 / 300,
                        momentum=0.9),
                   _rec("float64", None, dtype="float64")]
    v = {x.mechanism: x for x in verdicts(clock_world)}
    clock = v["Adam's clock"].predictions
    assert all(p.held for p in clock), v["Adam's clock"].to_dict()
    assert clock[0].median_error < 0.05  # measured onset: exact up to the 100-epoch grid
    # (the grid is 4% of the 2,620-epoch period at beta2 = 0.99)
    assert 0.01 < clock[1].median_error < 0.1  # onset at ε: the planted onset is 2ε
    saddle = v["saddle"].predictions
    assert saddle[0].held is False and "beta2-0.99" in saddle[0].broke
    assert "wd-2" in saddle[0].broke  # λ doubled, the period did not halve
    assert saddle[1].held is False and saddle[1].broke == ["sgd"]
    assert v["numerics"].predictions[0].held is False  # float64 still collapses
    assert v["Adam's clock"].summary == "held" and v["saddle"].summary == "failed"

    lam_world = [_rec("baseline", 30_000), _rec("beta2-0.99", 30_000, beta2=0.99),
                 _rec("wd-2", 15_000, weight_decay=2.0), _rec("lr-2e-3", 15_000, lr=2e-3),
                 _rec("sgd", 30_000, optimizer="sgd", lr=0.3, weight_decay=1 / 300,
                      momentum=0.9),
                 _rec("float64", 0, dtype="float64"), _rec("stablemax", 0, loss="stablemax")]
    v = {x.mechanism: x for x in verdicts(lam_world)}
    assert v["saddle"].predictions[0].held and v["saddle"].predictions[0].median_error < 1e-9
    clock = v["Adam's clock"].predictions
    assert clock[0].held  # v-hat still decays freely between collapses here ...
    assert clock[1].held is False and "beta2-0.99" in clock[1].broke  # ... but ε is no clock
    assert any(p.claim.startswith("SGD") and p.held is False for p in clock)
    assert [p.held for p in v["numerics"].predictions] == [True, True]
    assert v["saddle"].predictions[1].held is False  # the float64 run stopped collapsing
    assert v["saddle"].predictions[1].broke == ["float64"]


def test_a_run_that_never_reached_the_solution_is_no_evidence_of_stability():
    """No collapse in a run that never got to 95% test says nothing: such runs leave the
    'no collapses' predictions untested and are named as not counted."""
    world = [_rec("baseline", 30_000), _rec("eps-1e-6", 0, eps=1e-6),
             _rec("sgd", 0, reach=False, optimizer="sgd", lr=0.3, weight_decay=1 / 300,
                  momentum=0.9),
             _rec("float64", 0, reach=False, dtype="float64"),
             _rec("stablemax", 0, loss="stablemax")]
    v = {x.mechanism: x for x in verdicts(world)}
    f64, sm = v["numerics"].predictions
    assert f64.held is None and "not counted" in f64.detail and "float64" in f64.detail
    assert sm.held is True and sm.n == 1  # this one got there and stayed
    sgd = next(p for p in v["Adam's clock"].predictions if p.claim.startswith("SGD"))
    assert sgd.held is None and "never reached 95.0% test: sgd" in sgd.detail
    persist = v["saddle"].predictions[1]
    assert persist.broke == ["eps-1e-6"] and persist.n == 1
    assert "float64, sgd" in persist.detail
    # reached, then collapse-free: the same world with float64 getting there
    world[3] = _rec("float64", 0, dtype="float64")
    f64 = {x.mechanism: x for x in verdicts(world)}["numerics"].predictions[0]
    assert f64.held is True and f64.n == 1


def test_period_predictions_pair_each_run_with_its_seeds_baseline():
    recs = [_rec("baseline", 30_000, seed=1), _rec("baseline", 20_000, seed=2),
            _rec("wd-2", 15_000, seed=1, weight_decay=2.0),
            _rec("wd-2", 10_000, seed=2, weight_decay=2.0)]
    laws = period_predictions(recs, "baseline")
    assert sorted((m, p) for m, p, _ in laws["saddle"]) == [(10_000, 10_000), (15_000, 15_000)]


def test_edge_of_stability_verdict_reads_the_onset_curvature():
    cfg = Config().replace(zipf_s=1.5)
    m = planted_cycle(30_000)
    events = run_record(cfg, m, label="x", variant="baseline", epochs_done=150_000,
                        status="complete").onsets
    at = {o.epoch: {"epoch": o.epoch - 10, "lambda_max": 38_000 * 1.1, "lambda_min": -3.0,
                    "lambda_grad": 100.0, "converged": True} for o in events}
    rec = run_record(cfg, m, label="x", variant="baseline", epochs_done=150_000,
                     status="complete", curvature=at)
    v = {x.mechanism: x for x in verdicts([rec])}
    eos = v["edge of stability"].predictions[0]
    assert eos.held and "median 1.1" in eos.detail
    far = {k: {**c, "lambda_max": 38_000 * EOS_BAND[1] * 3} for k, c in at.items()}
    rec = run_record(cfg, m, label="x", variant="baseline", epochs_done=150_000,
                     status="complete", curvature=far)
    assert not {x.mechanism: x for x in verdicts([rec])}["edge of stability"].predictions[0].held


def test_onset_curvature_replays_bitwise_and_matches_the_dense_spectrum(tmp_path):
    """(The run stops after its 4th collapse, as the mechanism suite's do: the replay, which
    needs no detector, must still accept its config.)"""
    cfg = small_config(300, p=7, hidden=(8,), zipf_s=1.5, ckpt_every=10, keyframe_every=100,
                       stop_after_collapses=4)
    path = tmp_path / "r.h5"
    train_run(cfg, path)
    with open_run(path) as run:
        c = onset_curvature(run, 250, steps=400)
        recorded = run.params_at(250)
    # the replay reproduced epoch 250 exactly: the measurement is at the recorded point
    from zgdyn.core.train import Trainer
    with open_run(path) as run:
        t = Trainer(cfg.replace(window=0, stop_after_collapses=None), run.snapshot_at(200))
    t.advance_to(250)
    assert all(torch.equal(t.params[k], recorded[k]) for k in recorded)
    st = t.step
    theta = st.theta.double()
    a, b, y = (torch.as_tensor(x) for x in t.split.tokens(t.split.train_idx))
    loss_fn = weighted_loss_fn(7, a, b, y, t.phase_weights[0], like=st.shapes)
    h = dense_hessian(loss_fn, theta).numpy()
    d = (np.sqrt(st.exp_avg_sq.double().numpy() / (1 - 0.999 ** st.t)) + 1e-8)
    ph = h / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    ev = np.linalg.eigvalsh(ph)
    assert c["lambda_max"] == pytest.approx(ev[-1], rel=1e-6)
    assert c["lambda_min"] == pytest.approx(ev[0], rel=1e-4, abs=1e-6 * ev[-1])
    g = torch.func.grad(loss_fn)(theta).numpy()
    u = g / d
    assert c["lambda_grad"] == pytest.approx(u @ h @ u / (g @ u), rel=1e-9)
    assert c["converged"]


def test_mechanism_record_stores_and_reuses_its_curvature(tmp_path, monkeypatch):
    """A run with a (planted) collapse: its curvature is computed once, then read back."""
    cfg = small_config(400, p=7, hidden=(8,), zipf_s=1.5, ckpt_every=10, keyframe_every=100,
                       window=0)
    path = tmp_path / "r.h5"
    train_run(cfg, path)
    import zgdyn.analysis.mechanism as mech
    real = mech.run_record

    def with_event(config, metrics, **kw):  # a spike at epoch 300 in the stored metrics
        m = {k: v.copy() for k, v in metrics.items()}
        m["train_loss"][m["epoch"] == 300] = m["train_loss"].min() * 1e4
        return real(config, m, **kw)

    monkeypatch.setattr(mech, "run_record", with_event)
    calls = []
    first = mechanism_record(path, progress=lambda i, n: calls.append((i, n)))
    assert first.collapses == 1 and calls == [(1, 1)]
    assert first.onsets[0].curvature_epoch == 290
    assert first.onsets[0].lambda_max > 0
    again = mechanism_record(path, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 1)] and again.onsets == first.onsets


@pytest.mark.heavy
def test_a_mechanism_suite_reports_its_table_and_verdicts(tmp_path):
    """A tiny suite whose collapses are planted (a kick every 2,300 epochs) in a
    baseline and a control with twice the decay rate: the period does not follow λ, so
    the saddle's period law fails, and the report says so with its numbers."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import _register_kick
    from zgdyn.present.report import reproduce
    from zgdyn.batch.suite import suite_from_dict

    _register_kick()
    suite = suite_from_dict({
        "name": "mech", "seeds": [1],
        "base": {"p": 13, "train_frac": 0.5, "hidden": [24, 24], "eval_every": 20,
                 "ckpt_every": 500, "keyframe_every": 500, "window": 5, "hook": "test_kick",
                 "hook_strength": 2.0},
        "variants": {"baseline": {}, "wd-2": {"weight_decay": 2.0}},
        "single": {"zipf_s": [1.5], "epochs": 5200},
        "mechanism": {"baseline": "baseline", "onset_sharpness": False}})
    result = reproduce(suite, tmp_path, analyze=True, threads=1)
    mech = result.mechanism
    assert [r.collapses for r in mech.records] == [3, 3]
    assert [r.intervals for r in mech.records] == [[2300.0, 2300.0]] * 2
    saddle = next(v for v in mech.verdicts if v.mechanism == "saddle")
    law = saddle.predictions[0]
    assert law.held is False and law.median_error == pytest.approx(1.0)
    assert all(o.lambda_max is None for r in mech.records for o in r.onsets)
    text = Path(result.report).read_text()
    assert "## Why the Fourier solution falls: the mechanism table" in text
    assert "| wd-2 | 1 | 3 | 2,300 |" in text
    assert "median error 100.0% over 1 runs; beyond 15.0%: wd-2" in text
    assert "**Conclusion.** From 2 runs of 2 controls: " in text
    assert text.count("**Conclusion.**") >= 3  # every section ends with one
    assert (tmp_path / "figures" / "mechanism.png").exists()


def test_seed_agreement_names_the_controls_whose_seeds_disagree():
    """Planted over three seeds: the baseline collapses on each, eps-1e-6 on none, beta2
    on one; sgd never reaches the solution and never collapses, so it tests nothing."""
    from zgdyn.analysis.mechanism import seed_agreement
    from zgdyn.batch.results import MechanismSummary
    from zgdyn.present.report_sections import mechanism_conclusion

    recs = []
    for seed in (42, 43, 44):
        recs += [_rec("baseline", 30_000, seed=seed),
                 _rec("eps-1e-6", 0, seed=seed, eps=1e-6),
                 _rec("beta2-0.99", 4_000 if seed == 42 else 0, seed=seed, beta2=0.99),
                 _rec("sgd", 0, seed=seed, reach=False, optimizer="sgd", lr=0.3,
                      weight_decay=1 / 300, momentum=0.9)]
    assert seed_agreement(recs) == {"baseline": (3, 3), "eps-1e-6": (0, 3),
                                    "beta2-0.99": (1, 3)}
    summary = lambda rs: MechanismSummary(baseline="baseline", variants=(), records=tuple(rs),
                                          verdicts=tuple(verdicts(rs)), onset={})
    text = mechanism_conclusion(summary(recs))
    assert text.endswith(" The seeds disagree on whether beta2-0.99 (1 of 3 runs) collapses; "
                         "they agree on the other 2 of 3 controls run on several seeds.")
    agreed = [r for r in recs if r.variant != "beta2-0.99"]
    assert mechanism_conclusion(summary(agreed)).endswith(
        " The seeds agree on whether each of the 2 controls run on several seeds collapses.")
    one_seed = [r for r in recs if r.seed == 42]
    assert "seeds" not in mechanism_conclusion(summary(one_seed))


def test_the_median_at_onset_is_the_last_evaluations_not_a_windows():
    """Collapse windows record adam_scale at every epoch but not √v̂'s median: the onset's
    median is the last evaluation's, its adam_scale the last record's."""
    m = planted_cycle(30_000)
    first = 20_000
    w = np.arange(first - 50, first, dtype=np.float64)  # a window's epochs before the onset
    keep = ~np.isin(m["epoch"], w)
    merged = {k: np.concatenate([v[keep], np.full(len(w), 1e-6 if k == "train_loss" else
                                                  0.99 if k == "test_acc" else np.nan)])
              for k, v in m.items()}
    merged["epoch"][keep.sum():] = w
    merged["adam_scale"][keep.sum():] = 7e-8
    order = np.argsort(merged["epoch"])
    merged = {k: v[order] for k, v in merged.items()}
    rec = run_record(Config().replace(zipf_s=1.5), merged, label="w", variant="baseline",
                     epochs_done=150_000, status="complete")
    o = rec.onsets[0]
    assert o.epoch == first and o.adam_scale == 7e-8
    at = m["epoch"] == first - 100
    assert o.sqrt_v_median == pytest.approx(float(m["sqrt_v_median"][at][0]), rel=1e-12)
