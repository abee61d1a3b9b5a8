"""Step hooks: a registered regularizer changes the step exactly as its definition says,
is recorded in the run file, and an unknown one is a one-line error."""

import sys
import textwrap

import pytest
import torch

from test_step import _autograd_loss, _setup
from zgdyn.cli import main
from zgdyn.core.config import OptimConfig
from zgdyn.core.hooks import HOOKS, Hook, make_hook, register
from zgdyn.store.reader import open_run


def test_coupled_l2_equals_torch_adam_with_l2():
    """torch.optim.Adam's weight_decay adds wd * theta to the gradient: coupled L2."""
    optim = OptimConfig(lr=1e-2, weight_decay=0.0, hook="coupled_l2", hook_strength=0.3)
    step, model, (a, b, y, w) = _setup(optim=optim, use_onednn=False)
    from zgdyn import Config
    step.hook = make_hook(Config(optim=optim))
    opt = torch.optim.Adam(model.parameters(), lr=optim.lr, weight_decay=0.3,
                           betas=(optim.beta1, optim.beta2), eps=optim.eps)
    for _ in range(40):
        step.step()
        opt.zero_grad()
        _autograd_loss(dict(model.named_parameters()), a, b, y, w, 13).backward()
        opt.step()
    for name, t in model.named_parameters():
        torch.testing.assert_close(step.params[name], t.detach(), rtol=1e-10, atol=1e-12)


def test_a_hook_that_replaces_the_update():
    @register("test_sgd")
    class SGD(Hook):
        def update(self, step):
            step.theta.add_(step.grad, alpha=-self.strength)
            return True

    try:
        optim = OptimConfig(hook="test_sgd", hook_strength=0.5)
        step, _, _ = _setup(optim=optim)
        from zgdyn import Config
        step.hook = make_hook(Config(optim=optim))
        before = step.theta.clone()
        step.step()
        torch.testing.assert_close(step.theta, before - 0.5 * step.grad, rtol=0, atol=0)
        assert step.t == 0  # AdamW never ran
    finally:
        HOOKS.pop("test_sgd")


def test_unknown_hook_is_a_one_line_error_and_no_file(tmp_path, capsys, small):
    out = tmp_path / "r.h5"
    assert main(["train", "--p", "13", "--epochs", "10", "--hook", "nope", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope' is not registered" in err and "coupled_l2" in err
    assert not out.exists()
    assert main(["train", "--plugin", "no_such_module_zz", "--out", str(out)]) == 2
    assert "cannot be imported" in capsys.readouterr().err


def test_plugin_module_registers_a_hook_for_the_cli(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_hooks_zz.py").write_text(textwrap.dedent("""
        from zgdyn.core.hooks import Hook, register

        @register("l1_zz")
        class L1(Hook):
            def grad(self, step):
                step.grad.add_(step.theta.sign(), alpha=self.strength)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r.h5"
    try:
        assert main(["train", "--plugin", "my_hooks_zz", "--hook", "l1_zz", "--hook-strength",
                     "1e-3", "--p", "13", "--train-frac", "0.5", "--hidden", "16",
                     "--epochs", "50", "--eval-every", "10", "--ckpt-every", "10",
                     "--keyframe-every", "50", "--out", str(out), "--no-progress"]) == 0
        with open_run(out) as run:
            assert run.config.optim.hook == "l1_zz" and run.config.optim.hook_strength == 1e-3
        capsys.readouterr()
        assert main(["info", str(out)]) == 0
        assert "hook l1_zz (strength 0.001)" in capsys.readouterr().out
    finally:
        HOOKS.pop("l1_zz", None)
        sys.modules.pop("my_hooks_zz", None)


@pytest.mark.parametrize("name", ["has space", "-x", "a" * 65])
def test_bad_hook_names_are_config_errors(name):
    from zgdyn.core.config import ConfigError
    with pytest.raises(ConfigError, match="hook"):
        OptimConfig(hook=name)


def test_perp_grad_projects_each_tensor_orthogonal_to_its_weights_at_its_norm():
    """⊥Grad's defining property, densely: per tensor, g⊥ = (g − (θ·g/θ·θ) θ) · |g|/|g − ...|,
    so θ·g⊥ = 0 and |g⊥| = |g|; then the optimizer steps on g⊥."""
    import numpy as np

    from zgdyn import Config

    optim = OptimConfig(lr=1e-2, weight_decay=0.5, hook="perp_grad")
    step, _, _ = _setup(optim=optim, use_onednn=False)
    step.hook = make_hook(Config(optim=optim))
    step.loss_and_grad()
    before = {k: v.numpy().copy() for k, v in step.views(step.grad).items()}
    thetas = {k: v.numpy().copy() for k, v in step.views(step.theta).items()}
    step.hook.grad(step)
    for name, g in step.views(step.grad).items():
        w, g0, g1 = thetas[name].ravel(), before[name].ravel(), g.numpy().ravel()
        perp = g0 - (w @ g0) / (w @ w) * w
        np.testing.assert_allclose(g1, perp * np.linalg.norm(g0) / np.linalg.norm(perp),
                                   rtol=1e-12, atol=1e-15)
        assert abs(w @ g1) <= 1e-12 * np.linalg.norm(w) * np.linalg.norm(g1)
        assert abs(w @ g0) > 1e-6 * np.linalg.norm(w) * np.linalg.norm(g0)  # it did project
    # a step with the hook is the optimizer's step on the projected gradient
    hooked, plain = _setup(optim=optim, use_onednn=False)[0], _setup(optim=optim)[0]
    hooked.hook = make_hook(Config(optim=optim))
    hooked.step()
    plain.loss_and_grad()
    make_hook(Config(optim=optim)).grad(plain)
    plain.optimizer_step()
    torch.testing.assert_close(hooked.theta, plain.theta, rtol=1e-12, atol=1e-15)


def test_fixed_norm_keeps_the_parameters_on_the_initial_sphere(small):
    """Omnigrok's constraint: after every step ‖θ‖ = strength · ‖θ_0‖, and the step is the
    optimizer's step followed by the radial rescale."""
    from zgdyn.core.train import Callback, Trainer

    cfg = small(120, dtype="float64", zipf_s=1.5, hook="fixed_norm", hook_strength=0.8)
    norms = []

    class Norms(Callback):
        def on_eval(self, trainer, metrics):
            norms.append(float(trainer.step.theta.norm()))

    trainer = Trainer(cfg)
    r0 = float(trainer.step.theta.norm())
    trainer.run([Norms()])
    assert len(norms) == 13
    assert norms[0] == pytest.approx(r0)  # epoch 0: the initialization, untouched
    assert all(n == pytest.approx(0.8 * r0, rel=1e-12) for n in norms[1:])
    st = trainer.step
    theta = st.theta.clone()
    st.loss_and_grad()
    st.t += 1
    expect = theta.clone()
    from zgdyn.core.optim import update
    m, v = st.exp_avg.clone(), st.exp_avg_sq.clone()
    update([expect], [st.grad.clone()], [m], [v], [None], [st.optim], [st.t], st.shapes)
    st.t -= 1
    expect *= 0.8 * r0 / float(expect.norm())
    st.hook.update(st)
    torch.testing.assert_close(st.theta, expect, rtol=1e-12, atol=1e-15)
    with pytest.raises(Exception, match="fixed_norm: --hook-strength is the norm"):
        Trainer(small(10, hook="fixed_norm", hook_strength=0.0))


def test_grokfast_is_adamw_on_the_gradient_plus_its_amplified_ema():
    """Grokfast-EMA as its paper's code writes it, densely beside torch.optim.AdamW: μ_1 = g_1,
    μ_t = α μ_{t-1} + (1 − α) g_t, and AdamW steps on g_t + λ μ_t; 40 steps in float64."""
    from zgdyn import Config
    from zgdyn.core.hooks import Grokfast

    optim = OptimConfig(lr=1e-2, weight_decay=0.5, hook="grokfast", hook_strength=2.0)
    step, model, (a, b, y, w) = _setup(optim=optim, use_onednn=False)
    step.hook = make_hook(Config(optim=optim))
    step.hook.init_state(step.theta)
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=0.5,
                            betas=(optim.beta1, optim.beta2), eps=optim.eps)
    alpha, mu = Grokfast.ALPHA, {}
    for _ in range(40):
        step.step()
        opt.zero_grad()
        _autograd_loss(dict(model.named_parameters()), a, b, y, w, 13).backward()
        for name, t in model.named_parameters():
            g = t.grad.detach().clone()
            mu[name] = g if name not in mu else alpha * mu[name] + (1 - alpha) * g
            t.grad.add_(mu[name], alpha=2.0)
        opt.step()
    for name, t in model.named_parameters():
        torch.testing.assert_close(step.params[name], t.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(step.views(step.hook.buffers["grad_ema"])[name], mu[name],
                                   rtol=1e-10, atol=1e-13)
    with pytest.raises(Exception, match="grokfast: --hook-strength is the amplification"):
        make_hook(Config(optim=OptimConfig(hook="grokfast", hook_strength=-1.0)))


def test_grokfast_keeps_its_ema_in_keyframes_and_resumes_bitwise(tmp_path):
    from helpers import StopAt, small_config
    from zgdyn.store.reader import verify_run
    from zgdyn.store.runner import resume_run, train_run

    cfg = small_config(300, zipf_s=1.5, hook="grokfast", hook_strength=2.0)
    whole, cut = tmp_path / "whole.h5", tmp_path / "cut.h5"
    done = train_run(cfg, whole)
    train_run(cfg, cut, callbacks=[StopAt(150)])
    with open_run(cut) as run:
        assert run.last_keyframe == 150  # a stop writes a keyframe where it stops
    resume_run(cut)
    with open_run(whole) as a, open_run(cut) as b:
        sa = a.snapshot_at(200)
        assert set(sa.hook_state) == {"grad_ema"}
        assert float(sum(v.abs().sum() for v in sa.hook_state["grad_ema"].values())) > 0
        sb = b.snapshot_at(200)
        assert all(torch.equal(sa.hook_state["grad_ema"][k], sb.hook_state["grad_ema"][k])
                   for k in sa.hook_state["grad_ema"])
        assert all(torch.equal(v, b.params_at(300)[k]) for k, v in a.params_at(300).items())
        last = a.snapshot_at(300).hook_state["grad_ema"]
    live = done.step.views(done.step.hook.buffers["grad_ema"])
    assert all(torch.equal(last[k].to(v), v) for k, v in live.items())
    assert verify_run(whole)["ok"] and verify_run(cut)["ok"]
