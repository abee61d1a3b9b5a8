import pytest
import torch

from zgdyn.analysis.analyze import analyze_run
from zgdyn.cli import main
from zgdyn.present.plots import KINDS, run_figure
from zgdyn.store.runner import replay_run, train_run
from zgdyn.store.journal import RunFileError
from zgdyn.store.reader import open_run


@pytest.fixture(scope="module")
def two_phase(tmp_path_factory):
    from helpers import small_config
    path = tmp_path_factory.mktemp("rp") / "r.h5"
    train_run(small_config(epochs=400, switch_s=2.0, switch_at_epoch=130,
                           phase2_epochs=200), path)
    return path


def test_replay_is_bitwise_at_every_epoch(two_phase, tmp_path):
    with open_run(two_phase) as run:
        switch = run.attrs["switch_epoch"]
        kf = run.keyframe_epochs
    assert switch > 0
    lo = int(kf[kf < switch][-1]) + 3  # a window across the switch
    hi = switch + 50
    replay_run(two_phase, tmp_path / "w.h5", epoch_from=lo, epoch_to=hi, every=1)
    with open_run(two_phase) as run, open_run(tmp_path / "w.h5") as win:
        assert win.attrs["switch_epoch"] == switch
        assert list(win.checkpoint_epochs) == list(range(lo - 3, hi + 1))
        common = sorted(set(run.checkpoint_epochs) & set(win.checkpoint_epochs))
        assert len(common) >= 2
        for e in common:
            for k, v in run.params_at(int(e)).items():
                assert torch.equal(v, win.params_at(int(e))[k])
        em = dict(zip(run.metrics["epoch"], run.metrics["test_loss"]))
        for e, v in zip(win.metrics["epoch"], win.metrics["test_loss"]):
            if e in em:
                assert v == em[e]


def test_replay_refusals(two_phase, tmp_path):
    with open_run(two_phase) as run:
        done = run.attrs["epochs_done"]
    with pytest.raises(RunFileError, match="past the last keyframe"):
        replay_run(two_phase, tmp_path / "w.h5", epoch_from=10, epoch_to=done + 10)
    assert not (tmp_path / "w.h5").exists()
    assert main(["replay", str(two_phase), "--from", "50", "--to", "20", "--out",
                 str(tmp_path / "w.h5")]) == 2


def test_a_run_that_stops_after_its_collapses_replays_bitwise(tmp_path):
    """A mechanism-suite run (stop_after_collapses) replays: the replay turns the detector
    off, and with it the stop that needs the detector."""
    from helpers import small_config
    src = tmp_path / "r.h5"
    train_run(small_config(300, p=7, hidden=(8,), zipf_s=1.5, ckpt_every=10,
                           keyframe_every=100, stop_after_collapses=4), src)
    replay_run(src, tmp_path / "w.h5", epoch_from=100, epoch_to=150, every=5)
    with open_run(src) as a, open_run(tmp_path / "w.h5") as b:
        assert b.config.record.window == 0 and b.config.schedule.stop_after_collapses is None
        for e in (110, 150):
            assert all(torch.equal(b.params_at(e)[k], v) for k, v in a.params_at(e).items())


@pytest.mark.parametrize("kind", KINDS)
def test_every_plot_kind_renders(two_phase, tmp_path, kind):
    analyze_run(str(two_phase))
    if kind == "sharpness":
        from zgdyn.analysis.sharpness import sharpness_run
        sharpness_run(str(two_phase), every=100, preconditioned=True)
    fig = run_figure(str(two_phase), kind)
    assert len(fig.axes) >= 1 and all(ax.has_data() for ax in fig.axes)
    out = tmp_path / f"{kind}.png"
    assert main(["plot", str(two_phase), "--kind", kind, "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.with_suffix(".pdf").exists()
    assert main(["plot", str(two_phase), "--kind", kind, "--out", str(out)]) == 2  # exists


def test_plot_needs_analysis(tmp_path):
    from helpers import small_config
    train_run(small_config(epochs=30), tmp_path / "r.h5")
    assert main(["plot", str(tmp_path / "r.h5"), "--kind", "gamma", "--out",
                 str(tmp_path / "g.png")]) == 2
    assert not (tmp_path / "g.png").exists()
