"""Ensembles: K independent runs trained as one batched computation.

Members share the shapes (p, train_frac, hidden, dtype, device) and may differ in seed (so
in init and split), Zipf exponent, weighting, schedule and optimizer settings. Their
parameters, gradients and Adam moments are the rows of (K, N) buffers, and one step
computes every member's loss and gradient with batched kernels, then one element-wise
AdamW. Each member stays an ordinary `Trainer` whose `FusedStep` works on its rows, so its
evaluations, collapse windows, keyframes and run file are those of a solo run.

Two ways to compute the gradients (`mode`):

- "batched": the whole forward and backward as batched kernels over the member axis
  (`bmm`, one softmax, one scatter). On a GPU K members cost little more than one; on a
  CPU it pays where a step is dominated by per-op overhead (small p).
- "members": each member's own fused step (`FusedStep.loss_and_grad`) in turn, so each
  member's trajectory is bitwise its solo run's. On a CPU at the essay's size the step is
  GEMM-bound and oneDNN's linear runs about twice as fast as MKL's batched sgemm on these
  shapes, so this is the faster way there.

"auto" takes "batched" on a GPU, and on a CPU "members" unless a member's step is below
`SMALL_STEP_FLOP` of matmul work. AdamW is always one batched update. A member that
finishes (or fails) leaves, and the others go on in smaller buffers.

    >>> ens = Ensemble([cfg.replace(zipf_s=s) for s in (0, 1, 1.5, 2)])
    >>> logs = [[MetricsLog()] for _ in range(4)]
    >>> ens.run(logs)                             # {member index: error} for failed ones
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import Config, ConfigError
from .evaluate import batched_losses
from .model import matmul_flops
from .optim import has_second_moment, update
from .runtime import flush_to_zero
from .step import FusedStep, column_backprop, dense_layers, padded_rows, param_views
from .train import Callback, Trainer, adam_scale_of

SHARED = ("p", "train_frac", "hidden", "dtype", "loss", "device",
          "flush_subnormals")  # what members share
MODES = ("auto", "batched", "members")
SMALL_STEP_FLOP = 50e6  # below this much matmul work per member-epoch, batch on a CPU


def resolve_mode(mode: str, device: torch.device, step_flop: float) -> str:
    """The mode "auto" stands for on `device` for members of `step_flop` each."""
    if mode not in MODES:
        raise ConfigError(f"mode: must be {' | '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        return "batched" if device.type != "cpu" or step_flop < SMALL_STEP_FLOP else "members"
    return mode


def _rows(k: int, n: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeroed (K, n) whose rows start 64-byte aligned, as a solo run's buffers do: BLAS
    kernels may round differently on differently aligned data."""
    per_line = 64 // torch.empty(0, dtype=dtype).element_size()
    stride = -(-n // per_line) * per_line
    return torch.zeros(k, stride, dtype=dtype, device=device)[:, :n]


def step_flop(step: FusedStep) -> float:
    """Matmul FLOPs of one full-batch epoch of `step`."""
    return matmul_flops(step.p, step.hidden, step.a.numel())


def _shared(cfg: Config) -> tuple:
    return (cfg.data.p, cfg.data.train_frac, cfg.model.hidden, cfg.model.dtype,
            cfg.model.loss, cfg.device, cfg.optim.flush_subnormals)


def check_members(configs: list[Config]) -> None:
    """Raise ConfigError unless `configs` can train as one ensemble."""
    if not configs:
        raise ConfigError("ensemble: needs at least one member")
    first = _shared(configs[0])
    for cfg in configs[1:]:
        other = _shared(cfg)
        for name, a, b in zip(SHARED, first, other):
            if a != b:
                raise ConfigError(f"{name}: ensemble members must share {', '.join(SHARED)}; "
                                  f"got {a!r} and {b!r} (train them as separate ensembles)")
    for cfg in configs:
        if cfg.optim.hook:
            raise ConfigError(f"hook: an ensemble trains its members' optimizers alone, got "
                              f"hook {cfg.optim.hook!r}; train hooked runs one by one")


class EnsembleStep:
    """The members' state as rows of (K, N) buffers, and one batched full-batch step.

    Binding moves each member's `FusedStep` onto its rows (`FusedStep.bind`), so a member's
    own views, evaluation and snapshots read the ensemble's buffers.
    """

    def __init__(self, steps: list[FusedStep], *, mode: str = "auto") -> None:
        first = steps[0]
        self.steps = steps
        self.mode = resolve_mode(mode, first.device, step_flop(first))
        self.K = k = len(steps)
        self.p, self.layers, self.shapes = first.p, first.layers, first.shapes
        self.device, self.dtype = first.device, first.dtype
        self.use_onednn = first.use_onednn
        kw = {"dtype": self.dtype, "device": self.device}
        n_params, n = first.theta.numel(), first.a.numel()
        self.n = n
        self.theta = _rows(k, n_params, **kw)
        self.grad = _rows(k, n_params, **kw)
        self.exp_avg = _rows(k, n_params, **kw)
        self.exp_avg_sq = _rows(k, n_params, **kw)
        self.w = _rows(k, n, **kw)
        self.neg_w = _rows(k, n, **kw)
        self.max_exp_avg_sq = (_rows(k, n_params, **kw) if any(
            st.max_exp_avg_sq is not None for st in steps) else None)
        for i, st in enumerate(steps):
            st.bind(self.theta[i], self.grad[i], self.exp_avg[i], self.exp_avg_sq[i],
                    self.w[i], self.neg_w[i],
                    None if self.max_exp_avg_sq is None else self.max_exp_avg_sq[i])
        self.params, self.grads = self.views(self.theta), self.views(self.grad)
        rows = torch.arange(k, device=self.device)[:, None]
        two_p = 2 * self.p
        self.a = (torch.stack([st.a for st in steps]) + rows * two_p).view(-1)  # (K n,)
        self.pb = (torch.stack([st.pb for st in steps]) + rows * two_p).view(-1)
        self.pairs = torch.stack([self.a, self.pb], 1)  # (K n, 2)
        self.flat_yt = (torch.stack([st._flat_yt for st in steps])
                        + rows * self.p * n).view(-1)  # the targets in the logits (K, p, n)
        self.dh1 = padded_rows((k, n, first.hidden[0]), **kw)
        self.onehot = None
        if first._onehot is not None:  # no atomics on a GPU: the first layer's grad by bmm
            self.onehot = torch.stack([st._onehot for st in steps])  # (K, n, 2p)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """{name: (K, *shape) view of flat (K, N)}."""
        return param_views(flat, self.shapes)

    def _linear(self, x: Tensor, w: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        """x @ w^T (+ bias, relu) member by member: x (K, m, d), w (K, o, d) -> (K, m, o)."""
        if self.use_onednn:
            act = "relu" if relu else "none"
            return torch.stack([torch.ops.mkldnn._linear_pointwise(
                x[i], w[i], None if bias is None else bias[i], act, [], "")
                for i in range(self.K)])
        wt = w.transpose(1, 2)
        y = torch.bmm(x, wt) if bias is None else torch.baddbmm(bias[:, None, :], x, wt)
        return y.relu_() if relu else y

    @torch.no_grad()
    def loss_and_grad(self) -> Tensor:
        """Every member's weighted CE (K,) at its theta; fills the gradient rows."""
        if self.mode == "members":
            return self._members_loss_and_grad()
        return self._batched_loss_and_grad()

    def _members_loss_and_grad(self) -> Tensor:
        return torch.stack([st.loss_and_grad() for st in self.steps])

    def _first_layer(self, pairs: Tensor) -> Tensor:
        """h1 (K, m, h1) for token pairs (K m, 2) given as indices into the members' stacked
        first-layer rows (K 2p, h1), as `FusedStep._first_layer`."""
        k, p = self.K, self.p
        pr = self.params
        rows = pr["fc1.weight"].transpose(1, 2).contiguous()  # (K, 2p, h1)
        rows[:, :p].add_(pr["fc1.bias"][:, None, :])
        h = torch.nn.functional.embedding_bag(pairs, rows.view(k * 2 * p, -1), mode="sum")
        return h.view(k, pairs.shape[0] // k, -1).relu_()

    def forward(self, a: Tensor, pb: Tensor) -> list[Tensor]:
        """Activations [h1, ..., logits], each (K, m, d), for pairs (a, p + b) as in
        `_first_layer`."""
        return dense_layers(self._first_layer(torch.stack([a, pb], 1)), self.params,
                            self.layers, self._linear)

    @torch.no_grad()
    def logits(self, a: Tensor, b: Tensor) -> Tensor:
        """Every member's logits (K, m, p) for the same pairs (a, b), each (m,)."""
        rows = torch.arange(self.K, device=self.device)[:, None] * (2 * self.p)
        a = a.to(self.device, torch.int64)[None, :] + rows
        pb = b.to(self.device, torch.int64)[None, :] + self.p + rows
        return self.forward(a.view(-1), pb.view(-1))[-1]

    def adam_scales(self) -> list[float]:
        """Every member's Adam scale, as `Trainer.adam_scale` (one sync for all)."""
        sums = self.exp_avg_sq.sum(1, dtype=torch.float64).tolist()
        for i, st in enumerate(self.steps):  # AMSGrad divides by its running maximum
            if st.max_exp_avg_sq is not None:
                sums[i] = float(st.max_exp_avg_sq.sum(dtype=torch.float64))
        n = self.exp_avg_sq.shape[1]
        return [adam_scale_of(v, n, st.optim.beta2, st.t) if has_second_moment(st.optim.name)
                else math.nan for st, v in zip(self.steps, sums)]

    def _batched_loss_and_grad(self) -> Tensor:
        k, p = self.K, self.p
        h1 = self._first_layer(self.pairs)
        loss, dz = column_backprop(h1, self.params, self.grads, self.layers, self._linear,
                                   self.w, self.neg_w, self.flat_yt, self.dh1,
                                   self.steps[0].loss)
        if self.onehot is None:
            g1t = torch.zeros(k * 2 * p, dz.shape[2], dtype=self.dtype, device=self.device)
            flat = dz.view(-1, dz.shape[2])
            g1t.index_add_(0, self.a, flat).index_add_(0, self.pb, flat)  # (K 2p, h1)
            self.grads["fc1.weight"].copy_(g1t.view(k, 2 * p, -1).transpose(1, 2))
        else:
            self.grads["fc1.weight"].copy_(torch.bmm(dz.transpose(1, 2), self.onehot))
        return loss

    @torch.no_grad()
    def optimizer_step(self) -> None:
        """One update of every member, each by its own optimizer, settings and step count
        (`zgdyn.core.optim.update` groups the members that agree)."""
        for st in self.steps:
            st.t += 1
        steps = self.steps
        update([st.theta for st in steps], [st.grad for st in steps],
               [st.exp_avg for st in steps], [st.exp_avg_sq for st in steps],
               [st.max_exp_avg_sq for st in steps], [st.optim for st in steps],
               [st.t for st in steps], self.shapes)

    def step(self) -> Tensor:
        """One epoch of every member. Returns the losses (K,) before the update. Members
        share flush_subnormals (`SHARED`), so they share the CPU's flush-to-zero mode."""
        with flush_to_zero(self.steps[0].optim.flush_subnormals):
            loss = self.loss_and_grad()
            self.optimizer_step()
        return loss


class Ensemble:
    """K member Trainers stepped together; each emits its own events to its own callbacks."""

    def __init__(self, configs: list[Config] | None = None, *,
                 trainers: list[Trainer] | None = None, mode: str = "auto") -> None:
        if trainers is None:
            check_members(list(configs or []))
            trainers = [Trainer(cfg) for cfg in configs]
        else:
            check_members([t.config for t in trainers])
        self.members = trainers
        self.mode = resolve_mode(mode, trainers[0].step.device, step_flop(trainers[0].step))
        self.step: EnsembleStep | None = None

    def request_stop(self) -> None:
        """Every member stops at its next epoch (after any open collapse window)."""
        for m in self.members:
            m.stop_requested = True

    def run(self, callbacks: list[list[Callback]] | None = None) -> dict[int, BaseException]:
        """Train every member to its end, emitting each member's events to its callbacks.

        A member whose step or callbacks raise an `Exception` (a divergence, a full disk)
        leaves the ensemble and the others go on; returns {member index: exception}.
        """
        cbs = callbacks if callbacks is not None else [[] for _ in self.members]
        if len(cbs) != len(self.members):
            raise ConfigError(f"callbacks: need one list per member ({len(self.members)}), "
                              f"got {len(cbs)}")
        errors: dict[int, BaseException] = {}
        active = []
        for i, m in enumerate(self.members):
            try:
                m.begin(cbs[i])
                if m.finished:
                    m.end(cbs[i])
                else:
                    active.append(i)
            except Exception as e:
                errors[i] = e
        self._loop(active, cbs, errors)
        return errors

    def _loop(self, active: list[int], cbs: list[list[Callback]],
              errors: dict[int, BaseException]) -> None:
        while active:
            if self.step is None:
                self.step = EnsembleStep([self.members[i].step for i in active],
                                         mode=self.mode)
            losses = self.step.step()
            check = any(self.members[i].check_each_step for i in active)
            values = losses.tolist() if check else list(losses)
            batched = self.step.mode == "batched"
            watched = batched and any(self.members[i].watch is not None for i in active)
            scales = self.step.adam_scales() if watched else [None] * len(active)
            if batched:
                self._evaluate_due([self.members[i] for i in active])
            leaving = []
            for i, loss, scale in zip(active, values, scales):
                m = self.members[i]
                try:
                    m.after_step(loss, check=m.check_each_step, adam_scale=scale)
                    m.at_epoch(cbs[i])
                    if m.finished:
                        m.end(cbs[i])
                        leaving.append(i)
                except Exception as e:
                    errors[i] = e
                    leaving.append(i)
            if leaving:
                active = [i for i in active if i not in leaving]
                self.step = None  # the rest go on in smaller buffers

    def _evaluate_due(self, members: list[Trainer]) -> None:
        """The evaluations due at the members' next epochs, as one batched forward; each
        member's `evaluate` then returns its own (`Trainer.provide_eval`)."""
        due = [m.epoch + 1 for m in members]  # the step is taken, the epoch not yet counted
        if not all(m.eval_due(e) for m, e in zip(members, due)):
            return  # the others evaluate one by one
        evaluators = [m.evaluator for m in members]
        logits = self.step.logits(*evaluators[0].grid[:2])  # (K, p^2, p)
        rows = batched_losses(evaluators, logits, loss=self.step.steps[0].loss,
                              phases=[m.phase for m in members])
        for m, e, losses, scale in zip(members, due, rows, self.step.adam_scales()):
            m.provide_eval(m.evaluator.record(e, m.phase, losses, scale,
                                              m.optimizer_diagnostics()))


__all__ = ["Ensemble", "EnsembleStep", "check_members", "resolve_mode", "MODES"]
