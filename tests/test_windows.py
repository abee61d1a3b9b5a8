"""Collapse windows: the online detector, the ring buffer, and the windows/ records.

The detector is checked on planted loss sequences; the records on a real collapse of a
small run (p = 23, s = 2), which memorizes, then spikes near epoch 25,700.
"""

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import KILL_PREAMBLE, count, sampled
from zgdyn import Config
from zgdyn.analysis.events import detect_events
from zgdyn.store.runner import replay_run, resume_run, train_run
from zgdyn.store.reader import open_run, verify_run
from zgdyn.core.watch import CollapseWatch

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

# -- the detector on planted sequences ------------------------------------------------------


def _feed(losses, k=5, threshold=100.0):
    """Run a CollapseWatch over losses (index = epoch); theta at epoch e is the vector [e]."""
    watch = CollapseWatch(k, threshold, 1, dtype=torch.float64, device=torch.device("cpu"))
    watch.remember(0, torch.tensor([0.0]))
    windows = []
    for t, loss in enumerate(losses):
        watch.observe(t, float(loss), torch.tensor([t + 1.0]))
        if watch.due(t + 1):
            windows.append(watch.take())
    return windows


def _planted(n, spikes, seed=0):
    """A slowly decaying noisy loss with spikes of 1e4x at the given epochs."""
    rng = np.random.default_rng(seed)
    loss = 1e-2 * np.exp(-np.arange(n) / 3000) * np.exp(rng.normal(0, 0.3, n))
    for s in spikes:
        loss[s:s + 30] *= 1e4 * np.exp(-np.arange(30) / 10)
    return loss


def test_planted_spikes_are_found_at_their_exact_epochs():
    spikes = [4_000, 9_500, 12_345]
    loss = _planted(16_000, spikes)
    windows = _feed(loss, k=5)
    assert [w.trigger for w in windows] == spikes
    for w in windows:
        assert w.epochs == list(range(w.trigger - 5, w.trigger + 6))  # complete, in order
        assert [float(th[0]) for th in w.thetas] == [float(e) for e in w.epochs]
    # the offline rule over the same losses agrees
    offline = detect_events(np.arange(len(loss)), loss)
    assert [e.epoch for e in offline] == spikes


def test_no_event_on_a_smooth_or_noisy_trajectory():
    assert _feed(_planted(20_000, [])) == []
    assert _feed(np.exp(-np.linspace(0, 20, 20_000))) == []


def test_a_spike_inside_the_refractory_period_is_not_a_second_event():
    windows = _feed(_planted(10_000, [3_000, 4_000]))
    assert [w.trigger for w in windows] == [3_000]


def test_a_spike_in_the_first_epochs_has_a_short_window():
    windows = _feed(_planted(3_000, [3]), k=10)
    assert windows[0].epochs == list(range(0, 14))


# -- a real collapse, recorded ----------------------------------------------------------------

# an evaluation every 20 epochs falls inside any 41-epoch window, wherever the collapse is
FLAGS = dict(p=23, train_frac=0.5, hidden=(48, 48), zipf_s=2.0, eval_every=20, ckpt_every=500,
             keyframe_every=1000, window=20)
BASE, END = 25_000, 26_200


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The run up to epoch 25,000, before its collapse (about 8 s)."""
    path = tmp_path_factory.mktemp("windows") / "base.h5"
    train_run(Config().replace(epochs=BASE, **FLAGS), path)
    return path


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
    path = tmp_path_factory.mktemp("windows") / "ref.h5"
    shutil.copy(base, path)
    resume_run(path, changes={"epochs": END})
    with open_run(path) as run:
        return path, run.windows, run.window_epochs, _window_data(run)


def _window_data(run):
    g = run.h5["windows"]
    out = {}
    g.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "shape")
                 else None)
    return out


def test_the_collapse_is_recorded_at_every_epoch(reference):
    path, windows, epochs, data = reference
    assert len(windows["trigger"]) == 1
    t = int(windows["trigger"][0])
    assert BASE < t < END - 20
    np.testing.assert_array_equal(epochs, np.arange(t - 20, t + 21))
    assert data["metrics/train_loss"][20] > 100 * windows["base_loss"][0]
    assert verify_run(path)["ok"]
    with open_run(path) as run:
        m = run.metrics
        # where a window epoch is also an evaluation, both records agree exactly
        both = np.intersect1d(epochs, m["epoch"])
        assert len(both) >= 1
        for e in both:
            i, j = int(np.flatnonzero(epochs == e)[0]), int(np.flatnonzero(m["epoch"] == e)[0])
            for name in ("train_loss", "test_loss", "test_acc"):
                assert data[f"metrics/{name}"][i] == m[name][j]
        # a periodic keyframe waits for the window; the window closes with one
        assert t + 20 in run.keyframe_epochs
        dense = run.dense_metrics()
        assert set(epochs) <= set(dense["epoch"].tolist())
        assert np.all(np.diff(dense["epoch"]) > 0)


def test_window_records_equal_a_replay_bitwise(reference, tmp_path):
    path, windows, epochs, _ = reference
    out = tmp_path / "replay.h5"
    replay_run(path, out, epoch_from=int(epochs[0]), epoch_to=int(epochs[-1]))
    with open_run(path) as run, open_run(out) as rep:
        for e in epochs[::7]:
            a, b = run.params_at(int(e)), rep.params_at(int(e))
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_uninterrupted_run_records_the_same_window(reference, base, tmp_path):
    """The resume above rebuilt the detector's buffers from an earlier keyframe; a run that
    never stopped must agree with it bitwise."""
    _, _, _, data = reference
    path = tmp_path / "straight.h5"
    train_run(Config().replace(epochs=END, **FLAGS), path)
    with open_run(path) as run:
        got = _window_data(run)
    assert got.keys() == data.keys()
    for k in data:
        np.testing.assert_array_equal(got[k], data[k], err_msg=k)


def test_a_stop_request_waits_for_the_open_window(base, tmp_path):
    from zgdyn.core.train import Callback

    class StopInside(Callback):
        def on_eval(self, trainer, metrics):
            if trainer.window_open:
                trainer.stop_requested = True

    path = tmp_path / "stop.h5"
    shutil.copy(base, path)
    trainer = resume_run(path, changes={"epochs": END}, callbacks=[StopInside()])
    with open_run(path) as run:
        t = int(run.windows["trigger"][0])
        assert run.attrs["status"] == "interrupted"
        assert trainer.epoch == t + 20 == run.keyframe_epochs[-1]
        assert len(run.window_epochs) == 41


CHILD = KILL_PREAMBLE + """
from zgdyn.store.runner import resume_run
resume_run(sys.argv[1], changes={"epochs": int(sys.argv[2])})
"""


KILLS = ["fsync:3", "pwrite:20", "fsync:5", "after:2.5", "after:3.5"]


@pytest.mark.parametrize("kill", sampled(KILLS, KILLS, {"fsync:3", "pwrite:20", "after:2.5"}))
def test_windows_survive_sigkill(reference, base, tmp_path, kill):
    """Killed while training through the collapse, inside commits or at a moment in the
    window; resumed, the file holds the same complete window, bitwise."""
    import os
    _, _, _, data = reference
    path = tmp_path / "killed.h5"
    shutil.copy(base, path)
    env = {**os.environ, "ZGDYN_TEST_KILL": kill}
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(END)], env=env,
                         capture_output=True, text=True)
    assert res.returncode in (-signal.SIGKILL, 0), res.stderr
    count("window SIGKILLs" if res.returncode else "window kills after the end")
    assert verify_run(path)["ok"]
    with open_run(path) as run:
        if len(run.window_epochs):  # the window was committed whole, or not at all
            assert len(run.window_epochs) == 41
    resume_run(path, changes={"epochs": END})
    with open_run(path) as run:
        got = _window_data(run)
    for k in data:
        np.testing.assert_array_equal(got[k], data[k], err_msg=k)


def test_windows_off_records_nothing(tmp_path):
    path = tmp_path / "off.h5"
    train_run(Config().replace(epochs=300, **{**FLAGS, "window": 0}), path)
    with open_run(path) as run:
        assert run.summary()["n_windows"] == 0 and "windows" not in run.h5
        assert "watch_state" not in run.attrs


def test_analysis_fit_and_figures_see_the_window(reference, tmp_path, capsys):
    import json

    from zgdyn.analysis.analyze import analyze_run
    from zgdyn.cli import main
    from zgdyn.present.plots import run_figure

    path = tmp_path / "a.h5"
    shutil.copy(reference[0], path)
    t = int(reference[1]["trigger"][0])
    summary = analyze_run(str(path))
    with open_run(path) as run:  # the window's last epoch is also a keyframe's checkpoint
        only = np.setdiff1d(run.window_epochs, run.checkpoint_epochs)
    assert summary.n_window_records == len(only) == 40
    capsys.readouterr()
    assert main(["events", str(path), "--json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert [e["epoch"] for e in events] == [t]  # found at 1-epoch resolution in the window
    assert main(["fit", str(path), "--model", "1d", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["events"] == [t] and fit["rates"][0]["growth"] > 0
    assert fit["rates"][0]["growth_span"][0] >= t - 200
    assert len(fit["1d"]["between_events"]["params"]) == 2
    with open_run(path) as run:
        assert run.analysis("fit")["attrs"]["summary"]["events"] == [t]
    for kind in ("portrait", "rate", "gamma", "dynamics"):
        fig = run_figure(str(path), kind)
        assert all(ax.has_data() for ax in fig.axes)
    assert main(["fit", str(path), "--segment", "1000"]) == 2
