import numpy as np
import pytest
import torch

from zgdyn.core.data import zipf_weights
from zgdyn.core.model import functional_logits
from zgdyn.core.train import Callback, MetricsLog, Trainer


class Events(Callback):
    def __init__(self):
        self.log = []

    def on_eval(self, trainer, metrics):
        self.log.append(("eval", trainer.epoch))

    def on_switch(self, trainer):
        self.log.append(("switch", trainer.epoch))

    def on_checkpoint(self, trainer):
        self.log.append(("ckpt", trainer.epoch))

    def on_keyframe(self, trainer):
        self.log.append(("key", trainer.epoch))

    def epochs(self, kind):
        return [e for k, e in self.log if k == kind]


def test_event_schedule(small):
    cfg = small(epochs=250)  # eval 10, ckpt 20, keyframe 100
    ev = Events()
    Trainer(cfg).run([ev])
    assert ev.epochs("eval") == list(range(0, 251, 10))
    assert ev.epochs("ckpt") == list(range(0, 241, 20)) + [250]
    assert ev.epochs("key") == [0, 100, 200, 250]


def test_same_seed_same_trajectory_bitwise(small):
    cfg = small(epochs=200, zipf_s=1.5)
    t1, t2 = Trainer(cfg), Trainer(cfg)
    t1.run(), t2.run()
    assert torch.equal(t1.step.theta, t2.step.theta)
    t3 = Trainer(cfg.replace(seed=43))
    t3.run()
    assert not torch.equal(t1.step.theta, t3.step.theta)


def test_metrics_equal_direct_recomputation(small):
    cfg = small(epochs=60, zipf_s=1.0)
    log = MetricsLog()
    tr = Trainer(cfg)
    tr.run([log])
    m = log.rows[-1]
    split = tr.split
    params = {k: v.double() for k, v in tr.params.items()}
    a, b, y = (torch.as_tensor(t) for t in split.tokens(split.train_idx))
    logits = functional_logits(params, a, b, p=13)
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy()
    w = zipf_weights(split, 1.0)
    correct = (logits.argmax(1) == y).numpy()
    assert m["epoch"] == 60
    assert m["train_loss"] == pytest.approx(np.dot(w, ce), rel=1e-5)
    assert m["train_loss_unweighted"] == pytest.approx(ce.mean(), rel=1e-5)
    assert m["train_acc"] == pytest.approx(correct.mean())
    assert m["train_acc_weighted"] == pytest.approx(np.dot(w, correct))
    a, b, y = (torch.as_tensor(t) for t in split.tokens(split.test_idx))
    logits = functional_logits(params, a, b, p=13)
    assert m["test_acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item())


def test_switch_at_epoch_changes_weights_and_continues(small):
    cfg = small(epochs=300, switch_s=2.0, switch_at_epoch=50, phase2_epochs=70)
    ev, log = Events(), MetricsLog()
    tr = Trainer(cfg)
    tr.run([ev, log])
    assert ev.epochs("switch") == [50]
    assert tr.epoch == 120 and tr.end_epoch == 120
    assert 50 in ev.epochs("key") and 120 in ev.epochs("key")
    phase, s = log.array("phase"), log.array("zipf_s")
    epochs = log.array("epoch")
    assert set(s[epochs < 50]) == {0.0} and set(s[epochs > 50]) == {2.0}
    assert set(phase[epochs > 50]) == {1}
    torch.testing.assert_close(tr.step.w.double(),
                               torch.as_tensor(zipf_weights(tr.split, 2.0)), rtol=1e-6, atol=0)


def test_switch_on_test_accuracy(small):
    cfg = small(epochs=300, switch_s=1.0, switch_at_test_acc=1e-9, phase2_epochs=30)
    ev = Events()
    tr = Trainer(cfg)
    tr.run([ev])
    # the threshold is met at the first evaluation after epoch 0, where the switch is allowed
    assert ev.epochs("switch") == [0]
    assert tr.epoch == 30


def test_switch_never_reached_stops_at_epochs(small):
    cfg = small(epochs=40, switch_s=1.0, switch_at_test_acc=1.0, phase2_epochs=30)
    tr = Trainer(cfg)
    tr.run()
    assert tr.phase == 0 and tr.epoch == 40


def test_snapshot_restore_continues_bitwise(small):
    cfg = small(epochs=200, zipf_s=1.5)
    full = Trainer(cfg)
    full.run()
    half = Trainer(cfg.replace(epochs=90))
    half.run()
    resumed = Trainer(cfg, half.snapshot())
    resumed.run()
    assert resumed.epoch == 200
    assert torch.equal(full.step.theta, resumed.step.theta)
    assert torch.equal(full.step.exp_avg_sq, resumed.step.exp_avg_sq)


def test_stop_request_ends_with_a_keyframe(small):
    class StopAt(Callback):
        def on_eval(self, trainer, metrics):
            if trainer.epoch == 30:
                trainer.stop_requested = True

    ev = Events()
    tr = Trainer(small(epochs=300))
    tr.run([StopAt(), ev])
    assert tr.epoch == 30 and tr.stopped_early
    assert ev.epochs("key")[-1] == 30


def test_divergence_is_reported_with_its_epoch(small):
    from zgdyn.core.train import Diverged
    cfg = small(epochs=50).replace(lr=1e37, weight_decay=0.0)
    with pytest.raises(Diverged, match="epoch"):
        Trainer(cfg).run()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_trajectory_matches_cpu(small):
    cfg = small(epochs=100, zipf_s=1.0, dtype="float64")
    cpu, gpu = Trainer(cfg), Trainer(cfg.replace(device="cuda"))
    cpu.run(), gpu.run()
    torch.testing.assert_close(gpu.step.theta.cpu(), cpu.step.theta, rtol=1e-9, atol=1e-12)



KICKS = (300, 2_600, 4_900)  # epochs 2,300 apart: beyond the detector's 2,000-epoch rest


def _register_kick():
    """A step hook that throws the parameters off at the epochs in KICKS: planted
    collapses, each a spike of the train loss far above its recent minimum."""
    from zgdyn.core.hooks import HOOKS, Hook, register

    if "test_kick" in HOOKS:
        return

    @register("test_kick")
    class Kick(Hook):
        def update(self, step):
            if step.t + 1 in KICKS:
                g = torch.Generator().manual_seed(step.t)
                step.theta.add_(torch.randn(step.theta.shape, generator=g,
                                            dtype=step.theta.dtype), alpha=self.strength)
            return False


def test_stop_after_collapses_ends_a_run_complete_after_the_nth_window(tmp_path):
    """The detector's count survives a resume, and the run ends at the window's keyframe."""
    from zgdyn.store.runner import resume_run, train_run
    from zgdyn.store.reader import open_run

    from helpers import StopAt, small_config

    _register_kick()
    cfg = small_config(6_000, zipf_s=1.5, window=5, hook="test_kick", hook_strength=2.0,
                       stop_after_collapses=2)
    full = Trainer(cfg.replace(stop_after_collapses=None))
    full.run([])
    assert full.watch.fired == 3  # one per kick
    path = tmp_path / "r.h5"
    trainer = train_run(cfg, path, callbacks=[StopAt(1_000)])
    assert trainer.stopped_early and trainer.watch.fired == 1
    done = resume_run(path)
    assert done.watch.fired == 2 and not done.stopped_early
    assert done.epoch == KICKS[1] + 5  # the second window's last epoch
    with open_run(path) as run:
        assert run.attrs["status"] == "complete"
        assert len(run.windows["trigger"]) == 2
        assert run.keyframe_epochs[-1] == run.windows["end"][-1] == done.epoch
