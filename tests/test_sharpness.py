"""`zgdyn sharpness`: curvature along a run against dense Hessians, Adam's replayed state
against recorded keyframes, resuming, the onset table, the figure and the CLI."""

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch

from helpers import small_config
from zgdyn.cli import main
from zgdyn.core.data import zipf_weights
from zgdyn.analysis.hessian import dense_hessian, flatten_params, weighted_loss_fn
from zgdyn.store.runner import replay_run, train_run
from zgdyn.analysis.sharpness import (adam_states, measure_epochs, onset_table, onset_verdicts,
                                      sharpness_onsets, sharpness_run, sorted_sharpness,
                                      thresholds)
from zgdyn.store.reader import open_run

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

# p = 7 under strong weight decay: the loss jumps 1.2x at epoch 2089, a recorded window
FLAGS = dict(p=7, hidden=(8,), train_frac=0.6, zipf_s=1.5, lr=0.01, weight_decay=5.0,
             window=5, collapse_threshold=1.2, eval_every=10, ckpt_every=50)
ONSET = 2089


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run (keyframes every 500) and its twin with a keyframe at every checkpoint."""
    d = tmp_path_factory.mktemp("sharp")
    sparse, dense = d / "run.h5", d / "twin.h5"
    train_run(small_config(epochs=2400).replace(keyframe_every=500, **FLAGS), sparse)
    train_run(small_config(epochs=2400).replace(keyframe_every=50, **FLAGS), dense)
    return sparse, dense


@pytest.fixture
def run(runs, tmp_path):
    path = tmp_path / "run.h5"
    shutil.copy(runs[0], path)
    return path


def test_the_window_is_there(runs):
    with open_run(runs[0]) as r:
        assert r.windows["trigger"].tolist() == [ONSET]
        assert 2090 not in r.keyframe_epochs and 2094 in r.keyframe_epochs


def test_replayed_adam_state_is_bitwise_the_recorded_one(runs, tmp_path):
    sparse, dense = runs
    epochs = [150, 500, 650, 2050, 2086]  # checkpoints, a keyframe, a window record
    with open_run(sparse) as r, open_run(dense) as twin:
        got = list(adam_states(r, epochs))
        assert [g[0] for g in got] == epochs
        assert [g[3] for g in got] == [True, False, True, True, True]
        for e, v, t, _ in got[:4]:
            snap = twin.snapshot_at(e)
            assert t == snap.step == e
            assert torch.equal(v, flatten_params(snap.exp_avg_sq, order=snap.params))
    # inside the window: replay_run ends its file with a keyframe at 2086
    out = tmp_path / "w.h5"
    replay_run(sparse, out, epoch_from=2084, epoch_to=2086)
    with open_run(out) as w:
        snap = w.snapshot_at(2086)
    assert torch.equal(got[4][1], flatten_params(snap.exp_avg_sq, order=snap.params))


def test_a_replay_that_misses_the_stored_parameters_is_an_error(run):
    with h5py.File(run, "r+") as f:  # corrupt the checkpoint at 650 (not a keyframe)
        row = int(np.flatnonzero(f["checkpoints/epoch"][:] == 650)[0])
        f["checkpoints/out.bias"][row] += 1e-3
    with pytest.raises(Exception, match="does not reproduce epoch 650 bitwise"):
        sharpness_run(str(run), every=650, epoch_from=600, epoch_to=700,
                      preconditioned=True, windows=False)


def _dense_curvature(run, e, twin_or_v):
    """λ_max, λ_min, λ_grad of H and of D^{-1/2} H D^{-1/2} from dense matrices."""
    cfg = run.config
    a, b, y = run.split.tokens(run.split.train_idx)
    like = {k: v.double() for k, v in run.params_at(e).items()}
    loss = weighted_loss_fn(cfg.data.p, a, b, y, zipf_weights(run.split, 1.5), like=like)
    theta = flatten_params(like)
    h = dense_hessian(loss, theta)
    g = torch.func.grad(loss)(theta)
    ev = torch.linalg.eigvalsh(h)
    out = {"lambda_max": ev[-1], "lambda_min": ev[0], "lambda_grad": g @ h @ g / (g @ g)}
    v, t = twin_or_v
    o = cfg.optim
    d = v.double().sqrt() / math.sqrt(1 - o.beta2 ** t) + o.eps
    m = h / d.sqrt()[:, None] / d.sqrt()[None, :]
    ev = torch.linalg.eigvalsh(m)
    u = g / d
    out.update({"pre_lambda_max": ev[-1], "pre_lambda_min": ev[0],
                "pre_lambda_grad": u @ h @ u / (g @ u)})
    return {k: float(x) for k, x in out.items()}


def test_sharpness_equals_dense_matrices(run, runs):
    s = sharpness_run(str(run), every=500, epoch_from=400, epoch_to=2087, tol=1e-10,
                      preconditioned=True)
    assert s["newly_measured"] == s["n_points"] == 4 + 4  # 500 .. 2000, 2084 .. 2087
    assert s["all_converged"] and "1e-10" in s["tolerance"]
    with open_run(run) as r, open_run(runs[1]) as twin:
        a = sorted_sharpness(r)
        assert a["epoch"].tolist() == [500, 1000, 1500, 2000, 2084, 2085, 2086, 2087]
        states = {e: (v, t) for e, v, t, _ in adam_states(r, [2084, 2085, 2086, 2087])}
        for i, e in enumerate(a["epoch"].tolist()):
            if e in states:
                state = states[e]
            else:
                snap = twin.snapshot_at(e)
                state = (flatten_params(snap.exp_avg_sq, order=snap.params), snap.step)
            ref = _dense_curvature(r, e, state)
            for col in ("lambda_max", "lambda_min", "pre_lambda_max", "pre_lambda_min"):
                scale = abs(ref[col.replace("min", "max")])
                assert a[col][i] == pytest.approx(ref[col], abs=1e-8 * scale), (e, col)
            for col in ("lambda_grad", "pre_lambda_grad"):
                assert a[col][i] == pytest.approx(ref[col], rel=1e-9), (e, col)
        assert a["window"].tolist() == [False] * 4 + [True] * 4
        assert a["keyframe"].tolist() == [True, True, True, True, False, False, False, False]
        assert a["replayed"].tolist() == [False] * 4 + [True] * 4


def test_it_resumes_and_guards_its_settings(run):
    first = sharpness_run(str(run), every=1000, epoch_to=1200, windows=False)
    assert first["n_asked"] == first["newly_measured"] == 3  # 0, 500, 1000
    with open_run(run) as r:
        before = sorted_sharpness(r)
    again = sharpness_run(str(run), every=1000, windows=False)
    assert again["newly_measured"] == 4 and again["n_points"] == 7  # 1500 .. 2400
    with open_run(run) as r:
        after = sorted_sharpness(r)
    keep = np.isin(after["epoch"], before["epoch"])
    np.testing.assert_array_equal(after["lambda_max"][keep], before["lambda_max"])
    with pytest.raises(Exception, match="other settings"):
        sharpness_run(str(run), every=500, windows=False, tol=1e-7)
    forced = sharpness_run(str(run), every=500, windows=False, tol=1e-7, force=True)
    assert forced["newly_measured"] == forced["n_points"] == 7


def test_measure_epochs(runs):
    with open_run(runs[0]) as r:
        assert measure_epochs(r, every=1000, windows=False) == [0, 500, 1000, 1500, 2000,
                                                                2094, 2400]
        e = measure_epochs(r, every=1000, epoch_from=2000, epoch_to=2100, window_every=2)
        assert e == [2000, 2084, 2086, 2088, 2090, 2092, 2094]


def test_onset_table_on_planted_numbers():
    epochs = np.array([0, 100, 200, 300, 400, 445, 450, 500, 600, 700, 745])
    values = {"pre_lambda_max": np.array([1, 5, 50, 60, 70, 80, 900, 5, 80, 90, 100.0]),
              "pre_lambda_min": np.array([-1, -3, -1, -3, -3, -3, -9, -1, -1, -1, -1.0])}
    limits = {"adam_edge": 40.0, "two_over_lr": 2.0, "minus_two_wd": -2.0, "minus_wd": -1.0}
    rows = onset_table(epochs, values, [450, 750, 2000], limits, approach=(250, 10),
                       max_gap=10, settle=100)
    assert [r["onset"] for r in rows] == [450, 750]  # nothing measured just before 2000
    r0, r1 = rows
    assert (r0["before_epoch"], r0["at_epoch"], r1["before_epoch"], r1["at_epoch"]) == \
        (445, 450, 745, None)
    assert r0["pre_lambda_max"] == 80 and r0["pre_lambda_max/adam_edge"] == 2.0
    assert r0["pre_lambda_max/adam_edge@onset"] == 900 / 40
    assert r0["pre_lambda_max/adam_edge@approach"] == [60 / 40, 50 / 40, 70 / 40]  # 200..400
    assert (r0["adam_edge_first"], r0["adam_edge_since"], r0["adam_edge_lead"]) == (200, 200, 250)
    # cycle 2 starts 100 epochs after the onset at 450: 600, 700, 745
    assert (r1["adam_edge_first"], r1["adam_edge_since"], r1["adam_edge_lead"]) == (600, 600, 150)
    assert r0["minus_two_wd_first"] == 100 and r0["minus_two_wd_since"] == 300
    assert r1["minus_two_wd_before_onset"] is False and r1["minus_two_wd_lead"] is None
    words = onset_verdicts(rows, limits, approach=(250, 10))
    assert words[0].startswith("λ_max(P⁻¹H) against 38/lr = 40: above it at the last point "
                               "before 2 of 2 onsets (value / threshold 2 to 2.5)")
    assert "at the onsets themselves 22.5 times" in words[0]
    assert "for the 150 to 250 epochs before" in words[0]
    assert "below it at the last point before 1 of 2 onsets" in words[1]


def test_onsets_and_figure_of_a_run(run):
    sharpness_run(str(run), every=500, epoch_from=1900, preconditioned=True)
    table = sharpness_onsets(str(run))
    assert table["onsets"] == [ONSET] and table["rows"][0]["at_epoch"] == ONSET
    assert table["rows"][0]["before_epoch"] == ONSET - 1 and table["unmeasured_onsets"] == []
    assert len(table["verdicts"]) == 4
    from zgdyn.present.plots import run_figure
    fig = run_figure(str(run), "sharpness")
    ax_l, ax_top, ax_min = fig.axes[:3]
    lim = thresholds(open_run(run).config)
    level = lambda ax: {round(float(line.get_ydata()[0]), 6) for line in ax.lines
                        if "=" in line.get_label()}  # the threshold lines
    assert level(ax_top) == {round(lim["adam_edge"], 6), round(lim["two_over_lr"], 6)}
    assert level(ax_min) == {2 * 5.0, 5.0}
    assert any(float(line.get_xdata()[0]) == ONSET for line in ax_l.lines[1:])


def test_cli(run, capsys):
    assert main(["sharpness", str(run), "--every", "1000", "--from", "1900", "--json",
                 "--preconditioned", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_points"] == 1 + 11 + 1 and out["onsets"]["onsets"] == [ONSET]
    assert main(["sharpness", str(run), "--every", "1000", "--from", "1900",
                 "--preconditioned", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "0 new of 13 asked" in text and "38/lr = 3800" in text and f"{ONSET}" in text
    for bad, msg in ((["--every", "0"], "every: must be"),
                     (["--from", "50", "--to", "10"], "from <= to"),
                     (["--zipf-s", "-1"], "zipf_s: must be"),
                     (["--zipf-s", "nan"], "zipf_s: must be"),
                     (["--tol", "2"], "tol: must be"),
                     (["--from", "2401"], "no checkpoint")):
        assert main(["sharpness", str(run), "--no-progress", *bad]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    assert main(["sharpness", str(run.with_name("missing.h5"))]) == 2
    assert "no such run file" in capsys.readouterr().err
    assert main(["plot", str(run), "--kind", "sharpness", "--out",
                 str(run.with_name("s.png"))]) == 0


def test_a_two_phase_run_is_measured_with_each_phase_s_loss(tmp_path):
    """The loss's exponent follows the switch, and Adam's state is replayed across it (the
    replay is checked against the stored parameters, so a wrong phase would be an error)."""
    path = tmp_path / "two.h5"
    train_run(small_config(epochs=400, switch_s=2.0, switch_at_epoch=130, phase2_epochs=200),
              path)
    s = sharpness_run(str(path), every=40, epoch_from=80, epoch_to=200, preconditioned=True)
    with open_run(path) as r:
        a = sorted_sharpness(r)
    assert a["epoch"].tolist() == [80, 100, 120, 130, 160, 200]  # 130: the switch's keyframe
    assert a["zipf_s"].tolist() == [0.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    assert a["replayed"].tolist() == [True, False, True, False, True, False]
    assert s["all_converged"]
    fixed = sharpness_run(str(path), every=40, epoch_from=80, epoch_to=120, zipf_s=2.0,
                          force=True)
    assert fixed["n_points"] == 3
    with open_run(path) as r:
        assert sorted_sharpness(r)["zipf_s"].tolist() == [2.0, 2.0, 2.0]


def test_runs_it_cannot_measure_are_refused_in_one_line(tmp_path):
    from zgdyn.core.config import ZgdynError
    for name, changes, message in (("sm.h5", dict(loss="stablemax"), "its loss is stablemax"),
                                   ("sgd.h5", dict(optimizer="sgd", lr=0.1),
                                    "this run trains with sgd")):
        path = tmp_path / name
        train_run(small_config(epochs=100).replace(p=7, hidden=(6,), **changes), path)
        with pytest.raises(ZgdynError, match=message):
            sharpness_run(str(path), every=50, preconditioned=True)
