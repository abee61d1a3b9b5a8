"""The optimizers and the StableMax loss against their references: torch.optim, or the
paper's formula written densely here; their keyframes resume bitwise; ensembles; the
two-phase switch of optimizer; the optimizer diagnostics."""

import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import KILL_PREAMBLE, sampled, small_config
from zgdyn.cli import main
from zgdyn.core.config import Config, ConfigError, OptimConfig
from zgdyn.core.data import make_split, zipf_weights
from zgdyn.core.ensemble import Ensemble
from zgdyn.analysis.hessian import dense_hessian, weighted_loss_fn
from zgdyn.core.model import build_model, functional_logits, log_probs
from zgdyn.core.optim import decay_segments, update_direction
from zgdyn.store.runner import resume_run, train_run
from zgdyn.core.step import FusedStep
from zgdyn.store.reader import open_run
from zgdyn.core.train import MetricsLog, Trainer

P, HIDDEN = 13, (24, 16)


def _setup(optim, *, s=1.5, dtype="float64", loss="softmax"):
    split = make_split(P, 0.5, seed=7)
    a, b, y = (torch.as_tensor(t) for t in split.tokens(split.train_idx))
    w = torch.as_tensor(zipf_weights(split, s))
    model = build_model(P, HIDDEN, init="torch", seed=0, dtype=dtype)
    step = FusedStep(P, HIDDEN, a, b, optim=optim, dtype=dtype, loss=loss)
    step.load_params(dict(model.named_parameters()))
    step.set_weights(w)
    return step, model, (a, b, y, w, torch.as_tensor(zipf_weights(split, 3.0)))


def _loss(params, a, b, y, w, loss="softmax"):
    logits = functional_logits(params, a, b, p=P)
    ce = -log_probs(logits, loss).gather(1, y[:, None]).squeeze(1)
    return (ce * w.to(logits.dtype)).sum()


def _grads(model, a, b, y, w, loss="softmax"):
    """{name: (param, grad)} by autograd at the model's parameters, float64 numpy."""
    model.zero_grad()
    _loss(dict(model.named_parameters()), a, b, y, w, loss).backward()
    return {k: (t.detach().numpy().copy(), t.grad.numpy().copy())
            for k, t in model.named_parameters()}


def _run_both(optim, reference_step, *, steps=100, switch_weights_at=50):
    """`steps` fused steps and `steps` of the reference from the same init; the loss
    weights jump from s = 1.5 to s = 3 at `switch_weights_at`, so gradients change scale
    (update clipping, AMSGrad's maximum and the √v̂ floor all see it)."""
    step, model, (a, b, y, w, w3) = _setup(optim)
    state = {}
    for i in range(steps):
        if i == switch_weights_at:
            step.set_weights(w3)
            w = w3
        step.step()
        reference_step(model, _grads(model, a, b, y, w), state, i + 1)
    return step, model, state


def _torch_reference(make_optimizer, *, decoupled_decay=0.0):
    """A `_run_both` reference step by a torch.optim optimizer (made on the model at the
    first step, kept in state["opt"]), on the gradients `_grads` left on the parameters;
    decoupled_decay = lr·wd multiplies θ by (1 − lr·wd) first, for SGD."""
    def ref(model, grads, state, t):
        if "opt" not in state:
            state["opt"] = make_optimizer(model.parameters())
        opt = state["opt"]
        if decoupled_decay:
            with torch.no_grad():  # the gradient is still the one at the undecayed θ
                for p in model.parameters():
                    p.mul_(1 - decoupled_decay)
        opt.step()
    return ref


def _assert_params_equal(step, model, tol=1e-10):
    for name, t in model.named_parameters():
        torch.testing.assert_close(step.params[name], t.detach(), rtol=tol, atol=tol)


def _set(model, name, value):
    with torch.no_grad():
        dict(model.named_parameters())[name].copy_(torch.from_numpy(value))


def test_amsgrad_equals_torch_optim_adamw_amsgrad():
    optim = OptimConfig(name="amsgrad", lr=1e-2, weight_decay=0.5, beta1=0.8, beta2=0.99,
                        eps=1e-7)
    step, model, state = _run_both(optim, _torch_reference(lambda params: torch.optim.AdamW(
        params, lr=optim.lr, weight_decay=optim.weight_decay, betas=(optim.beta1, optim.beta2),
        eps=optim.eps, amsgrad=True)))
    opt = state["opt"]
    _assert_params_equal(step, model)
    for name, t in model.named_parameters():
        torch.testing.assert_close(step.views(step.max_exp_avg_sq)[name],
                                   opt.state[t]["max_exp_avg_sq"], rtol=1e-10, atol=1e-14)
    # the maximum held: below it v fell after the weights changed
    assert bool((step.max_exp_avg_sq > step.exp_avg_sq * (1 + 1e-9)).any())


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd_equals_torch_optim_sgd_with_decoupled_decay(momentum, nesterov):
    optim = OptimConfig(name="sgd", lr=0.05, weight_decay=0.3, momentum=momentum,
                        nesterov=nesterov)
    step, model, _ = _run_both(optim, _torch_reference(
        lambda params: torch.optim.SGD(params, lr=optim.lr, momentum=momentum,
                                       nesterov=nesterov),
        decoupled_decay=optim.lr * optim.weight_decay))
    _assert_params_equal(step, model)
    assert float(step.exp_avg_sq.abs().max()) == 0.0  # sgd keeps no second moment


def _adam_reference(o, *, atan2=False, floor=0.0, clip=False):
    """Adam's update written densely in numpy float64, one tensor at a time (the layers
    of o.no_decay without decay)."""
    def ref(model, grads, state, t):
        for name, (th, g) in grads.items():
            wd = 0.0 if name.split(".")[0] in o.no_decay else o.weight_decay
            m, v = state.get(name, (np.zeros_like(th), np.zeros_like(th)))
            m = o.beta1 * m + (1 - o.beta1) * g
            v = o.beta2 * v + (1 - o.beta2) * g * g
            state[name] = (m, v)
            m_hat, v_hat = m / (1 - o.beta1 ** t), v / (1 - o.beta2 ** t)
            lr = o.lr
            if clip:  # StableAdamW: lr / max(1, RMS(g^2 / max(v_hat, eps^2)))
                rms = math.sqrt(np.mean(g * g / np.maximum(v_hat, o.eps ** 2)))
                state.setdefault("rms", []).append(rms)
                lr = o.lr / max(1.0, rms)
            if atan2:
                u = np.arctan2(m_hat, np.sqrt(v_hat))
            else:
                u = m_hat / (np.maximum(np.sqrt(v_hat), floor) + o.eps)
                if floor:
                    state.setdefault("floored", []).append(float(np.mean(np.sqrt(v_hat) < floor)))
            _set(model, name, th * (1 - lr * wd) - lr * u)
    return ref


def test_flush_subnormals_zeroes_exactly_the_subnormals_after_each_update():
    """Planted: a dead unit (bias -1) whose input weights are 1e-39, a float32 subnormal, as
    weight decay leaves a dead unit's weights, and a third of fc1's other entries at 1e-39 too.
    With flush_subnormals, 100 steps equal bitwise the same steps
    without it, each followed by the rule written densely in numpy (every |x| below float32's
    smallest normal number set to zero in θ, m and v); without it, subnormals persist."""
    tiny = np.finfo(np.float32).tiny
    subnormals = lambda x: int(((x != 0) & (x.abs() < tiny)).sum())
    runs = []
    for flush in (True, False, False):
        step, _, _ = _setup(OptimConfig(lr=1e-2, weight_decay=0.5, flush_subnormals=flush),
                            dtype="float32")
        w = step.params["fc1.weight"]
        with torch.no_grad():
            w[:, ::3] = 1e-39
            w[0] = 1e-39
            step.params["fc1.bias"][0] = -1.0
        runs.append(step)
    flushed, ruled, plain = runs
    left = []
    for _ in range(100):
        for step in runs:
            step.step()
        for name in ("theta", "exp_avg", "exp_avg_sq"):
            x = getattr(ruled, name).numpy()
            x[np.abs(x) < tiny] = 0  # the rule, on the unflushed step's buffers in place
            assert torch.equal(getattr(flushed, name), getattr(ruled, name)), name
            assert subnormals(getattr(flushed, name)) == 0
        left.append(sum(subnormals(getattr(plain, n)) for n in ("theta", "exp_avg_sq")))
    assert min(left) >= 2 * P  # unflushed, the dead unit's weights stay subnormal


def test_a_flushing_step_computes_in_flush_to_zero_mode_and_restores_it():
    """Inside a step with flush_subnormals, a subnormal computes as zero; outside, and in a
    step without it, it stays itself (torch's default)."""
    from zgdyn.core.runtime import flush_to_zero

    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode")
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    seen = {}
    for flush in (True, False):
        step, _, _ = _setup(OptimConfig(flush_subnormals=flush), dtype="float32")
        inner = step.loss_and_grad

        def probe(inner=inner, flush=flush):
            seen[flush] = float((tiny * 1.0)[0])
            return inner()
        step.loss_and_grad = probe
        step.step()
    assert seen == {True: 0.0, False: pytest.approx(1e-39, rel=1e-3)}
    assert float((tiny * 1.0)[0]) > 0  # restored after the step
    with flush_to_zero(True):
        assert float((tiny * 1.0)[0]) == 0.0
    assert float((tiny * 1.0)[0]) > 0


def test_adam_atan2_equals_its_formula():
    o = OptimConfig(name="adam_atan2", lr=1e-2, weight_decay=0.5, beta1=0.8, beta2=0.99)
    step, model, _ = _run_both(o, _adam_reference(o, atan2=True))
    _assert_params_equal(step, model)


def test_sqrt_v_floor_equals_its_formula_and_binds():
    o = OptimConfig(lr=1e-2, weight_decay=0.5, beta1=0.8, beta2=0.99, eps=1e-7,
                    sqrt_v_floor=3e-4)
    step, model, state = _run_both(o, _adam_reference(o, floor=o.sqrt_v_floor))
    _assert_params_equal(step, model)
    assert max(state["floored"]) > 0.05  # the floor was in force for many coordinates


def test_update_clip_equals_stableadamw_and_clips():
    o = OptimConfig(lr=1e-2, weight_decay=0.5, beta1=0.8, beta2=0.99, eps=1e-7,
                    update_clip=True)
    step, model, state = _run_both(o, _adam_reference(o, clip=True))
    _assert_params_equal(step, model)
    assert max(state["rms"]) > 1.5  # the jump in the weights made it clip


def _param_groups(params, exempt):
    """torch.optim parameter groups of the model's parameters (in layout order): the
    layers named in `exempt` with weight_decay 0."""
    pairs = list(zip(model_names(), params))
    return [{"params": [t for n, t in pairs if n.split(".")[0] in exempt], "weight_decay": 0.0},
            {"params": [t for n, t in pairs if n.split(".")[0] not in exempt]}]


def model_names():
    return [n for n, _ in build_model(P, HIDDEN, init="torch", seed=0).named_parameters()]


def test_no_decay_equals_torch_optim_adamw_with_an_undecayed_param_group():
    kw = dict(lr=1e-2, weight_decay=0.5, beta1=0.8, beta2=0.99, eps=1e-7)
    optim = OptimConfig(**kw, no_decay=("fc1", "out"))
    step, model, _ = _run_both(optim, _torch_reference(lambda params: torch.optim.AdamW(
        _param_groups(params, optim.no_decay), lr=optim.lr, weight_decay=optim.weight_decay,
        betas=(optim.beta1, optim.beta2), eps=optim.eps)))
    _assert_params_equal(step, model)
    decayed, _, _ = _run_both(OptimConfig(**kw), lambda *args: None)
    assert not torch.equal(step.params["out.weight"], decayed.params["out.weight"])


@pytest.mark.parametrize("name", ["sgd", "clip"])
def test_no_decay_with_sgd_and_update_clipping_equals_the_formula(name):
    if name == "sgd":
        optim = OptimConfig(name="sgd", lr=0.05, weight_decay=0.3, momentum=0.9,
                            no_decay=("out",))
        exempt = [n for n in model_names() if n.startswith("out")]

        def ref(model, grads, state, t):
            for n, (th, g) in grads.items():
                buf = g if t == 1 else 0.9 * state[n] + g
                state[n] = buf
                wd = 0.0 if n in exempt else optim.weight_decay
                _set(model, n, th * (1 - optim.lr * wd) - optim.lr * buf)
    else:
        optim = OptimConfig(lr=1e-2, weight_decay=0.5, update_clip=True, no_decay=("fc2",))
        ref = _adam_reference(optim, clip=True)
    step, model, _ = _run_both(optim, ref)
    _assert_params_equal(step, model)


def test_floor_zero_and_amsgrad_general_path_equal_the_fused_kernel():
    """The vector-op Adam (taken for a floor or clipping) agrees with torch's fused kernel
    when neither binds: a floor far below every sqrt(v-hat)."""
    fused, _, _ = _setup(OptimConfig(lr=1e-2, eps=1e-7))
    general, _, _ = _setup(OptimConfig(lr=1e-2, eps=1e-7, sqrt_v_floor=1e-300))
    for _ in range(100):
        fused.step()
        general.step()
    torch.testing.assert_close(general.theta, fused.theta, rtol=1e-12, atol=1e-15)


def test_stablemax_loss_and_gradient_equal_autograd():
    step, model, (a, b, y, w, _) = _setup(OptimConfig(), loss="stablemax")
    with torch.no_grad():  # logits of both signs and large ones, where s differs from exp
        for t in model.parameters():
            t.mul_(4.0)
    step.load_params(dict(model.named_parameters()))
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    loss = _loss(params, a, b, y, w, "stablemax")
    loss.backward()
    fused = step.loss_and_grad()
    assert fused.item() == pytest.approx(loss.item(), rel=1e-13)
    for name, t in params.items():
        torch.testing.assert_close(step.grads[name], t.grad, rtol=1e-11, atol=1e-14)
    logits = functional_logits(params, a, b, p=P)
    assert bool((logits < 0).any()) and bool((logits > 1).any())


def test_stablemax_training_equals_autograd_with_torch_adamw():
    o = OptimConfig(lr=1e-2, weight_decay=0.5)
    step, model, (a, b, y, w, _) = _setup(o, loss="stablemax")
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    for _ in range(100):
        step.step()
        opt.zero_grad()
        _loss(dict(model.named_parameters()), a, b, y, w, "stablemax").backward()
        opt.step()
    _assert_params_equal(step, model)


def test_stablemax_never_saturates_where_softmax_does():
    """Logits 40 apart: softmax's log p(y) rounds to exactly 0 in float32, StableMax's not."""
    z = torch.zeros(1, 5, dtype=torch.float32)
    z[0, 2] = 40.0
    assert float(log_probs(z, "softmax")[0, 2]) == 0.0
    assert float(log_probs(z, "stablemax")[0, 2]) < 0.0


# -- diagnostics ------------------------------------------------------------------------


def test_sqrt_v_quantiles_and_lambda_grad_against_dense_computations():
    cfg = small_config(120, hidden=(8,), p=7, zipf_s=1.0, lambda_grad=True, dtype="float64",
                       eval_every=40)
    trainer = Trainer(cfg)
    log = MetricsLog()
    trainer.run([log])
    st = trainer.step
    last = log.rows[-1]
    sqrt_v = np.sqrt(st.exp_avg_sq.numpy() / (1 - cfg.optim.beta2 ** st.t))
    assert last["sqrt_v_median"] == pytest.approx(np.median(sqrt_v), rel=1e-12)
    assert last["sqrt_v_p10"] == pytest.approx(np.quantile(sqrt_v, 0.1), rel=1e-12)
    # lambda_grad = g P^-1 H P^-1 g / g P^-1 g, with the dense Hessian
    a, b, y = (torch.as_tensor(t) for t in trainer.split.tokens(trainer.split.train_idx))
    loss_fn = weighted_loss_fn(7, a, b, y, trainer.phase_weights[0], like=st.shapes)
    theta = st.theta.clone()
    h = dense_hessian(loss_fn, theta).numpy()
    g = torch.func.grad(loss_fn)(theta).numpy()
    u = g / (sqrt_v + cfg.optim.eps)
    assert last["lambda_grad"] == pytest.approx(u @ h @ u / (g @ u), rel=1e-9)


def test_saturated_mass_counts_the_pairs_whose_float32_loss_is_zero():
    """Planted: a trained model's logits scaled up a thousandfold, until softmax rounds the
    probability of each correctly classified pair to exactly 1 in float32 (and the wrong
    ones' losses are huge)."""
    cfg = small_config(600, zipf_s=1.5)
    trainer = Trainer(cfg)
    trainer.run([])
    first = trainer.evaluate()
    assert first["saturated_mass"] < 0.5
    with torch.no_grad():
        trainer.step.params["out.weight"].mul_(1e3)
        trainer.step.params["out.bias"].mul_(1e3)
    m = trainer.evaluate()
    assert m["train_acc_weighted"] > 0.9
    assert m["saturated_mass"] == pytest.approx(m["train_acc_weighted"], abs=1e-12)


def test_diagnostics_are_nan_where_they_do_not_apply():
    log = MetricsLog()
    Trainer(small_config(40, optimizer="sgd", lr=0.1, weight_decay=0.01)).run([log])
    row = log.rows[-1]
    assert all(math.isnan(row[k]) for k in ("adam_scale", "sqrt_v_median", "sqrt_v_p10",
                                             "lambda_grad"))
    assert row["saturated_mass"] == 0.0


# -- keyframes, resume, ensembles, the switch -------------------------------------------

VARIANTS = {
    "sgd-nesterov": dict(optimizer="sgd", lr=0.05, weight_decay=0.02, momentum=0.9,
                         nesterov=True),
    "amsgrad": dict(optimizer="amsgrad"),
    "adam_atan2": dict(optimizer="adam_atan2"),
    "floor": dict(sqrt_v_floor=1e-4),
    "clip": dict(update_clip=True),
    "stablemax": dict(loss="stablemax"),
    "no-decay-out": dict(no_decay=("out",)),
    "flush": dict(flush_subnormals=True),
}

CHILD = KILL_PREAMBLE + """
from zgdyn.cli import main
sys.exit(main(sys.argv[1:]))
"""
FLAGS = ["--p", "11", "--train-frac", "0.5", "--hidden", "16", "--zipf-s", "1.5",
         "--eval-every", "20", "--ckpt-every", "20", "--keyframe-every", "60", "--epochs",
         "400", "--no-progress"]


def _flags(changes):
    out = []
    for k, v in changes.items():
        values = list(v) if isinstance(v, tuple) else [str(v).lower() if isinstance(v, bool)
                                                       else str(v)]
        out += ["--" + k.replace("_", "-"), *values]
    return out


@pytest.mark.heavy
# the default suite resumes the variants with state or a loss of their own (SGD's momentum,
# AMSGrad's running max, Adam-atan2, StableMax); -m slow the AdamW options as well
@pytest.mark.parametrize("name", sampled(list(VARIANTS), list(VARIANTS),
                                         {"sgd-nesterov", "amsgrad", "adam_atan2", "stablemax"}))
def test_each_optimizer_resumes_bitwise_after_sigkill(tmp_path, name):
    flags = FLAGS + _flags(VARIANTS[name])
    ref, killed = tmp_path / "ref.h5", tmp_path / "killed.h5"
    run = lambda *args, env=None: subprocess.run([sys.executable, "-c", CHILD, *args],
                                                 env=env, capture_output=True, text=True)
    assert run("train", *flags, "--out", str(ref)).returncode == 0
    env = {**os.environ, "ZGDYN_TEST_KILL": "fsync:9"}  # inside a commit, mid-run
    assert run("train", *flags, "--out", str(killed), env=env).returncode == -signal.SIGKILL
    res = run("train", "--resume", "--out", str(killed))
    assert res.returncode == 0, res.stderr
    with open_run(ref) as a, open_run(killed) as b:
        assert 0 < b.keyframe_epochs[len(b.keyframe_epochs) // 2] < 400
        np.testing.assert_array_equal(a.metrics["train_loss"], b.metrics["train_loss"])
        for k, v in a.params_at(400).items():
            assert torch.equal(v, b.params_at(400)[k])
        sa, sb = a.snapshot_at(400), b.snapshot_at(400)
        for moment in ("exp_avg", "exp_avg_sq"):
            for k in getattr(sa, moment):
                assert torch.equal(getattr(sa, moment)[k], getattr(sb, moment)[k])
        if name == "amsgrad":
            assert all(torch.equal(sa.max_exp_avg_sq[k], sb.max_exp_avg_sq[k])
                       for k in sa.max_exp_avg_sq)


@pytest.mark.parametrize("flush", [False, True])
def test_ensemble_members_with_different_optimizers_are_bitwise_their_solo_runs(flush):
    """Members share the loss and flush_subnormals (the step's mode), so the StableMax and
    flush variants are not among them; every other optimizer is, with and without flushing."""
    configs = [small_config(200, seed=i, zipf_s=1.5, flush_subnormals=flush, **ch)
               for i, ch in enumerate([{}, *[v for k, v in VARIANTS.items()
                                             if k not in ("stablemax", "flush")]])]
    ens = Ensemble(configs, mode="members")
    assert ens.run() == {}
    for cfg, member in zip(configs, ens.members):
        solo = Trainer(cfg)
        solo.run([])
        assert torch.equal(member.step.theta, solo.step.theta), cfg.optim
        assert torch.equal(member.step.exp_avg, solo.step.exp_avg)
    with pytest.raises(ConfigError, match="flush_subnormals: ensemble members must share"):
        Ensemble([configs[0], configs[1].replace(flush_subnormals=not flush)])


def test_switch_resets_or_changes_the_optimizer(tmp_path):
    base = dict(zipf_s=0.0, switch_s=1.5, switch_at_epoch=100, phase2_epochs=60)
    kept = Trainer(small_config(300, **base))
    kept.run([])
    assert kept.step.t == 160
    reset = Trainer(small_config(300, **base, reset_optimizer_at_switch=True))
    reset.run([])
    assert reset.step.t == 60
    switched = small_config(300, **base, switch_optimizer="sgd", switch_lr=0.05, momentum=0.9)
    path = tmp_path / "sw.h5"
    trainer = train_run(switched, path)
    assert trainer.step.optim.name == "sgd" and trainer.step.optim.lr == 0.05
    assert trainer.step.t == 60
    assert float(trainer.step.exp_avg_sq.abs().max()) == 0.0  # sgd's state started afresh
    with open_run(path) as run:
        snap = run.snapshot_at(160)
        m = run.metrics
    assert snap.step == 60 and snap.phase == 1
    after = m["epoch"] > 100
    assert np.isnan(m["adam_scale"][after]).all() and not np.isnan(m["adam_scale"][~after]).any()
    resumed = Trainer(switched, snap)
    assert resumed.step.optim.name == "sgd"


def test_switch_to_amsgrad_keeps_its_maximum_in_keyframes(tmp_path):
    cfg = small_config(300, zipf_s=0.0, switch_s=1.5, switch_at_epoch=100, phase2_epochs=100,
                       switch_optimizer="amsgrad")
    path = tmp_path / "ams.h5"
    train_run(cfg, path)
    resume_from = tmp_path / "ams2.h5"
    trainer = train_run(cfg.replace(phase2_epochs=50), resume_from)
    resume_run(resume_from, changes={"phase2_epochs": 100})
    with open_run(path) as a, open_run(resume_from) as b:
        assert a.snapshot_at(0).max_exp_avg_sq is None  # phase 0 is plain AdamW
        assert float(sum(v.abs().sum() for v in a.snapshot_at(200).max_exp_avg_sq.values())) > 0
        sa, sb = a.snapshot_at(200), b.snapshot_at(200)
        assert all(torch.equal(sa.max_exp_avg_sq[k], sb.max_exp_avg_sq[k])
                   for k in sa.max_exp_avg_sq)
        assert all(torch.equal(v, b.params_at(200)[k]) for k, v in a.params_at(200).items())
    assert trainer.step.max_exp_avg_sq is not None


def test_update_direction_is_the_next_update():
    """θ' = θ(1 − lr·wd) − lr·u for every optimizer (clipping off), from a live state; wd
    is 0 on the layers of no_decay."""
    for name, ch in VARIANTS.items():
        if name in ("clip", "stablemax"):
            continue
        cfg = small_config(50, dtype="float64", zipf_s=1.5, **ch)
        trainer = Trainer(cfg)
        trainer.run([])
        st, o = trainer.step, trainer.step.optim
        st.loss_and_grad()
        u = update_direction(st.grad, st.exp_avg, st.exp_avg_sq, st.max_exp_avg_sq, st.t, o,
                             st.shapes)
        wd = torch.empty_like(st.theta)
        for part, seg, _ in decay_segments(o, st.shapes):
            wd[part] = seg.weight_decay
        assert bool((wd == 0).any()) == bool(o.no_decay)
        before = st.theta.clone()
        st.optimizer_step()
        torch.testing.assert_close(st.theta, before * (1 - o.lr * wd) - o.lr * u,
                                   rtol=1e-12, atol=1e-15)


# -- bad settings -----------------------------------------------------------------------


@pytest.mark.parametrize("flags,expect", [
    (["--optimizer", "adam"], "argument --optimizer: invalid choice"),
    (["--momentum", "0.9"], "momentum: applies only to optimizer sgd, not adamw"),
    (["--optimizer", "sgd", "--eps", "1e-6"], "eps: applies only to optimizer adamw | amsgrad"),
    (["--optimizer", "adam_atan2", "--sqrt-v-floor", "1e-7"], "sqrt_v_floor: applies only"),
    (["--optimizer", "sgd", "--nesterov", "true"], "nesterov: needs momentum > 0"),
    (["--update-clip", "maybe"], "must be true or false"),
    (["--no-decay", "fc3"], "no_decay: must be layer names of this model (fc1, out), got 'fc3'"),
    (["--no-decay", "out", "out"], "no_decay: must be a list of distinct layer names"),
    (["--switch-optimizer", "sgd"], "switch_optimizer: must be unset unless switch_s is set"),
    (["--zipf-s", "0", "--switch-s", "1", "--switch-at-epoch", "1", "--switch-lr", "2",
      "--wd", "1"], "switch_lr: must be below 1 / weight_decay"),
])
def test_bad_optimizer_settings_get_one_line_errors(tmp_path, capsys, flags, expect):
    out = tmp_path / "x.h5"
    with pytest.raises(SystemExit) if "invalid choice" in expect or "true or false" in expect \
            else _no_raise():
        code = main(["train", "--p", "7", "--hidden", "4", "--epochs", "1", "--out", str(out),
                     "--no-progress", *flags])
        assert code == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_config_round_trips_the_optimizer_through_toml_names():
    cfg = Config().replace(optimizer="sgd", lr=0.1, weight_decay=0.01, momentum=0.9)
    from zgdyn.core.config import from_dict
    back = from_dict(cfg.to_dict())
    assert back == cfg and back.optim.name == "sgd"
    with pytest.raises(ConfigError, match="optim.optimizer: unknown field"):
        from_dict({"optim": {"optimizer": "sgd"}})
