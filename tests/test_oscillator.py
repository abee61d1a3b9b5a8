import numpy as np
import pytest

from zgdyn.analysis.events import cycle_statistics, detect_events


def planted(spikes, n=60_000, every=10, tau=1_000.0):
    """Loss decaying exponentially after each planted spike; test accuracy mirrors it."""
    t = np.arange(0, n + 1, every)
    loss = np.full(t.shape, 2.0)
    last = 0
    for i, e in enumerate(t):
        if e in spikes:
            last = e
        loss[i] = 2.0 * np.exp(-(e - last) / tau) + 1e-6
    acc = 1 - np.minimum(1, loss)
    return t, loss, acc


def test_detects_planted_spikes_at_their_epochs():
    spikes = [20_000, 45_000]
    t, loss, acc = planted(spikes)
    events = detect_events(t, loss, threshold=100, test_acc=acc)
    assert [e.epoch for e in events] == spikes
    for e in events:
        assert e.peak_epoch == e.epoch and e.loss_ratio > 100
        assert 0 < e.duration <= 10  # a one-step jump: within one evaluation interval
        assert e.test_acc_before > 0.99 and e.test_acc_after == pytest.approx(0.0, abs=1e-6)


def test_no_events_on_a_smooth_trajectory():
    t = np.arange(0, 100_000, 10)
    loss = 3.0 * np.exp(-t / 5_000) + 1e-6 + 1e-7 * np.sin(t / 300)
    assert detect_events(t, loss) == []


def test_duration_of_a_log_linear_ramp():
    """log loss rises linearly over 200 epochs: the 10%-90% rise takes 160."""
    t = np.arange(0, 10_000, 1.0)
    logl = np.where(t < 5_000, -12.0, np.where(t < 5_200, -12 + 12 * (t - 5_000) / 200, 0.0))
    (e,) = detect_events(t, np.exp(logl), threshold=10, refractory=1_000)
    assert e.duration == pytest.approx(160, abs=1.0)


def test_cycle_statistics_of_planted_cycles():
    spikes = [10_000, 30_000, 50_000]
    t, loss, acc = planted(spikes, n=60_000)
    st = cycle_statistics(detect_events(t, loss, test_acc=acc), t, acc)
    assert st.n_events == 3 and st.period_mean == 20_000 and st.period_std == 0
    assert st.recovery == [10.0, 10.0, 10.0]  # the trough is right after each spike
    assert len(st.build) == 2 and all(b + p == pytest.approx(20_000 - 10) for b, p in
                                      zip(st.build, st.peak))
    assert len(st.return_map) == 1


def test_threshold_must_exceed_one():
    with pytest.raises(ValueError, match="threshold"):
        detect_events(np.arange(3), np.ones(3), threshold=1)


def test_events_cli_on_a_run(tmp_path, capsys):
    import json

    from helpers import small_config
    from zgdyn.cli import main
    from zgdyn.store.runner import train_run
    train_run(small_config(epochs=200), tmp_path / "r.h5")
    assert main(["events", str(tmp_path / "r.h5"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["events"] == [] and r["eval_resolution"] == 10
    assert main(["events", str(tmp_path / "r.h5"), "--threshold", "0.5"]) == 2
    assert "threshold: must be a number > 1" in capsys.readouterr().err


def test_a_refiring_at_the_end_of_the_rest_is_the_same_collapse():
    """A spike whose loss rises again while the detector rests fires again at the first
    evaluation the rest allows; that is no second collapse, and no 2,000-epoch period
    (the demo's s = 0 run once scored "mean period 2,000")."""
    from zgdyn.analysis.events import drop_continuations

    e = np.arange(0, 40_001, 100, dtype=float)
    loss = np.full(len(e), 1e-6)
    loss[e == 23_600] = 1e-1  # the spike's peak, then back down ...
    loss[(e >= 25_000) & (e < 30_000)] = 1e-3  # ... and up again while the detector rests
    loss[(e >= 36_000) & (e < 36_300)] = 1.0  # a separate collapse later
    events = detect_events(e, loss)
    assert [ev.epoch for ev in events][:2] == [23_600, 25_600]
    kept = drop_continuations(events)
    assert [ev.epoch for ev in kept] == [23_600, 36_000]
    stats = cycle_statistics(kept, e, np.ones(len(e)))
    assert stats.period_mean == 12_400
