"""The full-batch training loop. It emits events to callbacks and never opens a file.

Epoch e means "after e AdamW steps"; epoch 0 is the initialization. At each epoch the loop
may emit, in this order: `on_eval` (every eval_every, at a switch epoch and at the end),
`on_switch` (the two-phase protocol's change of Zipf exponent), `on_checkpoint` (every
ckpt_every, at keyframes) and `on_keyframe` (every keyframe_every, at the switch, at the
end, and when a stop was requested). A keyframe holds everything needed to continue
bitwise: see `Snapshot`.

    >>> trainer = Trainer(Config(schedule=ScheduleConfig(epochs=2000)))
    >>> trainer.run([MetricsLog()])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import Config, ZgdynError
from .data import Split, make_split, zipf_weights
from .model import build_model
from .step import FusedStep

METRICS = ("epoch", "phase", "zipf_s", "train_loss", "train_loss_unweighted", "train_acc",
           "train_acc_weighted", "test_loss", "test_acc")


class Diverged(ZgdynError):
    """The loss or the parameters became NaN or infinite, at `epoch`."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def _diverged(epoch: int, what: str, value: float) -> Diverged:
    return Diverged(f"training diverged at epoch {epoch}: {what} is {value}; the file keeps "
                    "its last keyframe, and zgdyn train --resume may change the optimizer's "
                    "settings (--lr, --weight-decay, ...) to go on from there", epoch)


@dataclass
class Snapshot:
    """Everything needed to continue a run exactly from `epoch`."""

    epoch: int
    params: dict[str, Tensor]
    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]
    step: int  # Adam step count
    phase: int  # 0 before the switch, 1 after
    switch_epoch: int  # -1 if no switch has happened


class Callback:
    """Base class: override the events you need. `trainer` exposes the live state."""

    def on_start(self, trainer: Trainer) -> None: ...
    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_switch(self, trainer: Trainer) -> None: ...
    def on_checkpoint(self, trainer: Trainer) -> None: ...
    def on_keyframe(self, trainer: Trainer) -> None: ...
    def on_end(self, trainer: Trainer) -> None: ...


def _weighted_mean(values: Tensor, w: Tensor) -> float:
    return float(torch.dot(values.double(), w.double()))


class Trainer:
    """A run in memory: the split, the weights of each phase, the fused step, the epoch."""

    def __init__(self, config: Config, snapshot: Snapshot | None = None) -> None:
        self.config = config
        d, m = config.data, config.model
        self.split: Split = make_split(d.p, d.train_frac, config.seed)
        self.phase_s = [d.zipf_s]
        if config.schedule.switch_s is not None:
            self.phase_s.append(config.schedule.switch_s)
        self.phase_weights = [torch.as_tensor(zipf_weights(self.split, s, d.weighting))
                              for s in self.phase_s]  # (n_train,) float64 each
        a, b, _ = self.split.tokens(self.split.train_idx)
        self.step = FusedStep(d.p, m.hidden, torch.as_tensor(a), torch.as_tensor(b),
                              optim=config.optim, dtype=m.dtype, device=config.device)
        grid = np.arange(d.p * d.p)
        ga, gb, gy = self.split.tokens(grid)
        dev = self.step.device
        self._grid = (torch.as_tensor(ga, device=dev), torch.as_tensor(gb, device=dev),
                      torch.as_tensor(gy, device=dev))
        self._train_idx = torch.as_tensor(self.split.train_idx, device=dev)
        self._test_idx = torch.as_tensor(self.split.test_idx, device=dev)
        self.stop_requested = False
        self.stopped_early = False
        if snapshot is None:
            model = build_model(d.p, m.hidden, init=m.init, seed=config.seed, dtype=m.dtype)
            self.step.load_params(dict(model.named_parameters()))
            self.epoch, self.phase, self.switch_epoch = 0, 0, -1
        else:
            self.restore(snapshot)
        self.step.set_weights(self.phase_weights[self.phase])

    # -- state ---------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Tensor]:
        """Named views of the live parameters (copy them to keep them)."""
        return self.step.params

    @property
    def end_epoch(self) -> int:
        sch = self.config.schedule
        if self.phase == 1 and sch.phase2_epochs is not None:
            return self.switch_epoch + sch.phase2_epochs
        return sch.epochs

    def snapshot(self) -> Snapshot:
        st = self.step
        copy = lambda flat: {k: v.detach().clone() for k, v in st.views(flat).items()}
        return Snapshot(epoch=self.epoch, params=copy(st.theta), exp_avg=copy(st.exp_avg),
                        exp_avg_sq=copy(st.exp_avg_sq), step=st.t, phase=self.phase,
                        switch_epoch=self.switch_epoch)

    def restore(self, snap: Snapshot) -> None:
        st = self.step
        for flat, named in ((st.theta, snap.params), (st.exp_avg, snap.exp_avg),
                            (st.exp_avg_sq, snap.exp_avg_sq)):
            for k, view in st.views(flat).items():
                view.copy_(named[k])
        st.t, self.epoch = snap.step, snap.epoch
        self.phase, self.switch_epoch = snap.phase, snap.switch_epoch
        st.set_weights(self.phase_weights[self.phase])

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Metrics at the current parameters over the full p x p grid (test unweighted)."""
        a, b, y = self._grid
        logits = self.step.logits(a, b)  # (p*p, p)
        ce = -torch.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)  # (p*p,)
        correct = (logits.argmax(dim=1) == y).to(logits.dtype)
        tr, te = self._train_idx, self._test_idx
        w = self.phase_weights[self.phase].to(ce.device)
        return {
            "epoch": float(self.epoch),
            "phase": float(self.phase),
            "zipf_s": float(self.phase_s[self.phase]),
            "train_loss": _weighted_mean(ce[tr], w),
            "train_loss_unweighted": float(ce[tr].double().mean()),
            "train_acc": float(correct[tr].double().mean()),
            "train_acc_weighted": _weighted_mean(correct[tr], w),
            "test_loss": float(ce[te].double().mean()),
            "test_acc": float(correct[te].double().mean()),
        }

    def _should_switch(self, metrics: dict[str, float] | None) -> bool:
        sch = self.config.schedule
        if self.phase != 0 or sch.switch_s is None:
            return False
        if sch.switch_at_epoch is not None:
            return self.epoch >= sch.switch_at_epoch
        return metrics is not None and metrics["test_acc"] >= sch.switch_at_test_acc

    def _switch(self) -> None:
        self.phase, self.switch_epoch = 1, self.epoch
        self.step.set_weights(self.phase_weights[1])

    # -- the loop ------------------------------------------------------------------------

    def _emit(self, callbacks: list[Callback], event: str, *args) -> None:
        for cb in callbacks:
            getattr(cb, event)(self, *args)

    def _at_epoch(self, callbacks: list[Callback]) -> None:
        rec, sch, e = self.config.record, self.config.schedule, self.epoch
        switching_now = sch.switch_at_epoch == e and self.phase == 0
        metrics = None
        if e % rec.eval_every == 0 or e >= self.end_epoch or switching_now:
            metrics = self.evaluate()
            if not math.isfinite(metrics["train_loss"]):
                raise _diverged(e, "the train loss", metrics["train_loss"])
            self._emit(callbacks, "on_eval", metrics)
        switched = False
        if self._should_switch(metrics):
            self._switch()
            switched = True
            self._emit(callbacks, "on_switch")
        last = e >= self.end_epoch or self.stop_requested
        keyframe = e % rec.keyframe_every == 0 or switched or last
        if e % rec.ckpt_every == 0 or keyframe:
            self._emit(callbacks, "on_checkpoint")
        if keyframe:
            self._emit(callbacks, "on_keyframe")

    def run(self, callbacks: list[Callback] | tuple = ()) -> None:
        """Train to the end epoch (or until `stop_requested` is set), emitting events."""
        callbacks = list(callbacks)
        self._emit(callbacks, "on_start")
        if self.epoch == 0 and self.step.t == 0:
            self._at_epoch(callbacks)
        check_each_step = self.step.device.type == "cpu"  # a GPU would sync every step
        while self.epoch < self.end_epoch and not self.stop_requested:
            loss = self.step.step()
            if check_each_step and not math.isfinite(float(loss)):
                raise _diverged(self.epoch, "the train loss", float(loss))
            self.epoch += 1
            self._at_epoch(callbacks)
        self.stopped_early = self.epoch < self.end_epoch
        self._emit(callbacks, "on_end")


class MetricsLog(Callback):
    """Keeps every evaluation in memory: `.rows` and `.array(name)`."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.rows.append(metrics)

    def array(self, name: str) -> np.ndarray:
        return np.array([r[name] for r in self.rows])


class ProgressBar(Callback):
    """A tqdm bar on stderr: epoch, train/test accuracy, epochs/s."""

    def __init__(self, *, desc: str = "train", disable: bool | None = None) -> None:
        self.desc, self.disable, self.bar = desc, disable, None

    def on_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=trainer.end_epoch, initial=trainer.epoch, desc=self.desc,
                        unit="epoch", disable=self.disable)

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if self.bar.total != trainer.end_epoch:
            self.bar.total = trainer.end_epoch
        self.bar.update(trainer.epoch - self.bar.n)
        self.bar.set_postfix(s=metrics["zipf_s"], train=f"{metrics['train_acc']:.3f}",
                             test=f"{metrics['test_acc']:.3f}", refresh=False)

    def on_end(self, trainer: Trainer) -> None:
        self.bar.update(trainer.epoch - self.bar.n)
        self.bar.close()
