"""The full-batch training loop. It emits events to callbacks and never opens a file.

Epoch e means "after e AdamW steps"; epoch 0 is the initialization. At each epoch the loop
may emit, in this order: `on_eval` (every eval_every, at a switch epoch and at the end),
`on_switch` (the two-phase protocol's change of Zipf exponent), `on_window` (a collapse
window closes, see `CollapseWatch`), `on_checkpoint` (every ckpt_every, at keyframes) and
`on_keyframe` (every keyframe_every, at the switch, at the end, when a window closes, and
when a stop was requested). A keyframe holds everything needed to continue bitwise: see
`Snapshot`. No keyframe falls inside an open window: a periodic one waits for the window
to close, and a stop request waits too (at most `window` epochs).

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
from .data import Split, loss_weights, make_split
from .evaluate import Evaluator
from .hooks import make_hook
from .model import build_model
from .optim import has_second_moment, needs_max_moment
from .step import FusedStep
from .watch import CollapseWatch, Window

METRICS = ("epoch", "phase", "zipf_s", "train_loss", "train_loss_unweighted", "train_acc",
           "train_acc_weighted", "test_loss", "test_acc", "adam_scale", "sqrt_v_median",
           "sqrt_v_p10", "saturated_mass", "lambda_grad")
# metrics that files written by earlier zgdyn versions may lack
OPTIONAL_METRICS = ("adam_scale", "sqrt_v_median", "sqrt_v_p10", "saturated_mass",
                    "lambda_grad")


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
    max_exp_avg_sq: dict[str, Tensor] | None = None  # AMSGrad's running maximum of v
    hook_state: dict[str, dict[str, Tensor]] | None = None  # the step hook's buffers, by name


class Callback:
    """Base class: override the events you need. `trainer` exposes the live state."""

    def on_start(self, trainer: Trainer) -> None: ...
    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_switch(self, trainer: Trainer) -> None: ...
    def on_window(self, trainer: Trainer, window: Window) -> None: ...
    def on_checkpoint(self, trainer: Trainer) -> None: ...
    def on_keyframe(self, trainer: Trainer) -> None: ...
    def on_end(self, trainer: Trainer) -> None: ...


def adam_scale_of(sum_v: float, n: int, beta2: float, t: int) -> float:
    """sqrt(mean v_hat) from the sum of Adam's n second moments after t steps (0 at t = 0)."""
    return 0.0 if t == 0 else math.sqrt(sum_v / n / (1.0 - beta2 ** t))


class Trainer:
    """A run in memory: the split, the weights of each phase, the fused step, the epoch."""

    def __init__(self, config: Config, snapshot: Snapshot | None = None) -> None:
        self.config = config
        d, m = config.data, config.model
        self.split: Split = make_split(d.p, d.train_frac, config.seed, d.split_rng)
        self.phase_s = [d.zipf_s]
        if config.schedule.switch_s is not None:
            self.phase_s.append(config.schedule.switch_s)
        self.phase_weights = [torch.as_tensor(loss_weights(self.split, s, d))
                              for s in self.phase_s]  # (n_train,) float64 each
        a, b, _ = self.split.tokens(self.split.train_idx)
        self.step = FusedStep(d.p, m.hidden, torch.as_tensor(a), torch.as_tensor(b),
                              optim=config.optim, dtype=m.dtype, device=config.device,
                              loss=m.loss)
        self._train_ab = (torch.as_tensor(a), torch.as_tensor(b))
        self.step.hook = make_hook(config)
        if self.step.hook is not None:
            self.step.hook.init_state(self.step.theta)
        self.evaluator = Evaluator(self.split, self.phase_weights, self.phase_s,
                                   self.step.device)
        self.stop_requested = False
        self.stopped_early = False
        self._provided: dict[str, float] | None = None  # `provide_eval`
        rec = config.record
        self.watch = None if rec.window == 0 else CollapseWatch(
            rec.window, rec.collapse_threshold, self.step.theta.numel(),
            dtype=self.step.theta.dtype, device=self.step.device)
        self.resumed = snapshot is not None  # its epoch-0 records, if any, are recorded
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
                        switch_epoch=self.switch_epoch,
                        max_exp_avg_sq=None if st.max_exp_avg_sq is None
                        else copy(st.max_exp_avg_sq),
                        hook_state={k: copy(b) for k, b in st.hook.buffers.items()}
                        if st.hook is not None and st.hook.buffers else None)

    def restore(self, snap: Snapshot) -> None:
        st = self.step
        st.set_optim(self.config.phase_optim(snap.phase))
        pairs = [(st.theta, snap.params), (st.exp_avg, snap.exp_avg),
                 (st.exp_avg_sq, snap.exp_avg_sq)]
        if needs_max_moment(st.optim.name):
            if snap.max_exp_avg_sq is None:
                raise ZgdynError(f"the state at epoch {snap.epoch} lacks amsgrad's running "
                                 "maximum of v (max_exp_avg_sq), which this run's optimizer "
                                 "needs")
            pairs.append((st.max_exp_avg_sq, snap.max_exp_avg_sq))
        elif st.max_exp_avg_sq is not None:  # a later phase's; unused before it
            st.max_exp_avg_sq.zero_()
        if st.hook is not None and st.hook.buffers:
            missing = sorted(set(st.hook.buffers) - set(snap.hook_state or {}))
            if missing:
                raise ZgdynError(f"the state at epoch {snap.epoch} lacks the "
                                 f"{self.config.optim.hook} hook's {', '.join(missing)}, which "
                                 "it needs to go on")
            pairs += [(st.hook.buffers[k], snap.hook_state[k]) for k in st.hook.buffers]
        for flat, named in pairs:
            for k, view in st.views(flat).items():
                view.copy_(named[k])
        st.t, self.epoch = snap.step, snap.epoch
        self.phase, self.switch_epoch = snap.phase, snap.switch_epoch
        st.set_weights(self.phase_weights[self.phase])

    # -- evaluation ----------------------------------------------------------------------

    def evaluate(self, *, live_state: bool = True) -> dict[str, float]:
        """Metrics at the current parameters over the full p x p grid (test unweighted).
        Without `live_state` the optimizer's state is not that of these parameters, and its
        diagnostics are NaN."""
        provided, self._provided = self._provided, None
        if provided is not None and provided["epoch"] == self.epoch:
            return provided  # computed for this epoch by an ensemble, batched
        ev = self.evaluator
        losses = ev.losses(self.step.logits(*ev.grid[:2]), loss=self.step.loss,
                           phase=self.phase)
        return ev.record(self.epoch, self.phase, losses, self.adam_scale(),
                         self.optimizer_diagnostics() if live_state else dict.fromkeys(
                             ("sqrt_v_median", "sqrt_v_p10", "lambda_grad"), math.nan))

    def provide_eval(self, metrics: dict[str, float]) -> None:
        """Metrics of the coming epoch computed elsewhere (an ensemble's batched
        evaluation): `evaluate` at that epoch returns them instead of computing its own."""
        self._provided = metrics

    def _second_moment(self) -> Tensor | None:
        """The v the optimizer divides by (AMSGrad's maximum), or None (sgd)."""
        st = self.step
        if not has_second_moment(st.optim.name):
            return None
        return st.exp_avg_sq if st.max_exp_avg_sq is None else st.max_exp_avg_sq

    def adam_scale(self) -> float:
        """Adam's second-moment scale: sqrt(mean v_hat), the RMS gradient it divides by
        (NaN for an optimizer without one)."""
        v = self._second_moment()
        if v is None:
            return math.nan
        return adam_scale_of(float(v.sum(dtype=torch.float64)), v.numel(),
                             self.step.optim.beta2, self.step.t)

    def optimizer_diagnostics(self) -> dict[str, float]:
        """sqrt(v_hat)'s median and 10th percentile over the parameters, and, if
        `record.lambda_grad`, the preconditioned sharpness along the gradient (NaN where
        they do not apply)."""
        v, st = self._second_moment(), self.step
        out = {"sqrt_v_median": math.nan, "sqrt_v_p10": math.nan, "lambda_grad": math.nan}
        if v is not None:
            if st.t == 0:
                out.update(sqrt_v_median=0.0, sqrt_v_p10=0.0)
            else:
                sqrt_v = (v.double() / (1.0 - st.optim.beta2 ** st.t)).sqrt()
                q = torch.quantile(sqrt_v.cpu(), torch.tensor([0.5, 0.1], dtype=torch.float64))
                out.update(sqrt_v_median=float(q[0]), sqrt_v_p10=float(q[1]))
        if self.config.record.lambda_grad and st.t > 0:
            out["lambda_grad"] = self.lambda_grad()
        return out

    def lambda_grad(self) -> float:
        """λ_grad = gᵀP⁻¹HP⁻¹g / gᵀP⁻¹g at the live parameters: the curvature of the
        weighted train loss along the next step's direction P⁻¹g, in the metric of the
        optimizer's preconditioner P (`optim.denominator`; P = I for sgd). One gradient and
        one Hessian-vector product (torch.func), in the run's dtype."""
        from .flat import gradient, make_hvp, step_curvature, weighted_loss_fn
        from .optim import denominator

        st = self.step
        a, b = self._train_ab
        y = (a + b) % st.p
        theta = st.theta.detach().clone()
        loss_fn = weighted_loss_fn(st.p, a, b, y, st.w, like=st.shapes, loss=st.loss)
        d = denominator(st.exp_avg_sq, st.max_exp_avg_sq, st.t, st.optim)
        return step_curvature(make_hvp(loss_fn, theta), gradient(loss_fn, theta), d)

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
        sch, old = self.config.schedule, self.step.optim
        self.step.set_optim(self.config.phase_optim(1))
        if sch.reset_optimizer_at_switch or self.step.optim.name != old.name:
            self.step.reset_optimizer()
        if self.watch is not None:
            self.watch.reset_minimum()

    def evaluate_at(self, theta: Tensor, epoch: int, adam_scale: float) -> dict[str, float]:
        """`evaluate` at the flat parameter vector `theta` instead of the live one."""
        live = self.step.theta.clone()
        self._provided = None
        try:
            self.step.theta.copy_(theta)
            metrics = self.evaluate(live_state=False)
        finally:
            self.step.theta.copy_(live)
        metrics["epoch"], metrics["adam_scale"] = float(epoch), adam_scale
        return metrics

    @property
    def window_open(self) -> bool:
        return self.watch is not None and self.watch.open is not None

    def rebuild_watch(self, early: Snapshot, state: dict[str, float]) -> None:
        """Refill the collapse detector's buffers on resume, by recomputing from `early`.

        The trainer must hold the snapshot to resume from; it recomputes from the earlier
        keyframe `early` to that epoch (with no callbacks), then restores the snapshot and
        the detector's stored `state`.
        """
        if self.watch is None:
            return
        target = self.snapshot()
        self.restore(early)
        self.watch.filling = True
        try:
            self.watch.remember(self.epoch, self.step.theta, self.adam_scale())
            while self.epoch < target.epoch:
                self._advance(check=True)
                self.at_epoch([])
        finally:
            self.watch.filling = False
            self.restore(target)
        self.watch.load_state(state)

    def eval_due(self, epoch: int | None = None) -> bool:
        """Whether an evaluation falls at `epoch` (default: the current one)."""
        e, sch = self.epoch if epoch is None else epoch, self.config.schedule
        return (e % self.config.record.eval_every == 0 or e >= self.end_epoch
                or (sch.switch_at_epoch == e and self.phase == 0))

    # -- the loop ------------------------------------------------------------------------

    def _emit(self, callbacks: list[Callback], event: str, *args) -> None:
        for cb in callbacks:
            getattr(cb, event)(self, *args)

    def _advance(self, *, check: bool) -> None:
        """One step; with `check`, the loss is read (a GPU syncs) and must be finite."""
        self.after_step(self.step.step(), check=check)

    def after_step(self, loss: Tensor | float, *, check: bool,
                   adam_scale: float | None = None) -> None:
        """Account for one step taken (by `_advance`, or by an ensemble's batched step)
        whose loss before the update was `loss` (and Adam's scale after it, if known)."""
        if check:
            loss = float(loss)
            if not math.isfinite(loss):
                raise _diverged(self.epoch, "the train loss", loss)
        self.epoch += 1
        if self.watch is not None:
            self.watch.observe(self.epoch - 1, loss, self.step.theta,
                               self.adam_scale() if adam_scale is None else adam_scale)

    def _close_window(self, callbacks: list[Callback]) -> None:
        win = self.watch.take()
        win.metrics = [self.evaluate_at(th, e, sc)
                       for e, th, sc in zip(win.epochs, win.thetas, win.scales)]
        self._emit(callbacks, "on_window", win)

    def at_epoch(self, callbacks: list[Callback]) -> None:
        """Emit the events due at the current epoch (after a step)."""
        rec, e = self.config.record, self.epoch
        metrics = None
        if self.eval_due():
            metrics = self.evaluate()
            if not math.isfinite(metrics["train_loss"]):
                raise _diverged(e, "the train loss", metrics["train_loss"])
            self._emit(callbacks, "on_eval", metrics)
        switched = False
        if self._should_switch(metrics):
            self._switch()
            switched = True
            self._emit(callbacks, "on_switch")
        last = self.finished
        closed = self.window_open and (self.watch.due(e) or switched or last)
        if closed:  # a switch or the end cuts a window short
            self._close_window(callbacks)
        keyframe = (e % rec.keyframe_every == 0 and not self.window_open) or switched or last \
            or closed
        if e % rec.ckpt_every == 0 or keyframe:
            self._emit(callbacks, "on_checkpoint")
        if keyframe:
            self._emit(callbacks, "on_keyframe")

    def advance_to(self, epoch: int) -> None:
        """Train on to `epoch` emitting nothing (the switch still happens): a replay from a
        restored snapshot, bitwise the recorded run's on the same device and threads."""
        while self.epoch < epoch and not self.finished:
            self._advance(check=True)
            self.at_epoch([])

    def run(self, callbacks: list[Callback] | tuple = ()) -> None:
        """Train to the end epoch (or until `stop_requested` is set), emitting events."""
        callbacks = list(callbacks)
        self.begin(callbacks)
        while not self.finished:
            self._advance(check=self.check_each_step)
            self.at_epoch(callbacks)
        self.end(callbacks)

    def begin(self, callbacks: list[Callback]) -> None:
        """`on_start`, and the events of epoch 0 for a fresh run (a run resumed from its
        epoch-0 keyframe has them in its file already)."""
        self._emit(callbacks, "on_start")
        if self.epoch == 0 and self.step.t == 0:
            if self.watch is not None:
                self.watch.remember(0, self.step.theta, self.adam_scale())
            if not self.resumed:
                self.at_epoch(callbacks)

    def end(self, callbacks: list[Callback]) -> None:
        self.stopped_early = self.epoch < self.end_epoch and not self.collapses_done
        self._emit(callbacks, "on_end")

    @property
    def collapses_done(self) -> bool:
        """`schedule.stop_after_collapses` collapses seen and their windows closed."""
        n = self.config.schedule.stop_after_collapses
        return (n is not None and self.watch is not None and self.watch.fired >= n
                and not self.window_open)

    @property
    def check_each_step(self) -> bool:
        """Read every step's loss: always on a CPU, and for the collapse detector (a GPU
        then syncs every step)."""
        return self.step.device.type == "cpu" or self.watch is not None

    @property
    def finished(self) -> bool:
        """At the end epoch, past the collapses asked for, or stopped on request (once no
        collapse window is open)."""
        return (self.epoch >= self.end_epoch or self.collapses_done
                or (self.stop_requested and not self.window_open))


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


__all__ = ["METRICS", "OPTIONAL_METRICS", "Diverged", "Snapshot", "Callback", "adam_scale_of", "Trainer", "MetricsLog", "ProgressBar"]
