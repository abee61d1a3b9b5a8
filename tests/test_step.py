import pytest
import torch
from torch import nn

from zgdyn.core.config import OptimConfig
from zgdyn.core.data import make_split, zipf_weights
from zgdyn.core.model import build_model, functional_logits
from zgdyn.core.step import FusedStep, _mkldnn_linear_available


def _setup(p=13, hidden=(24, 16), s=1.5, dtype="float64", seed=0, use_onednn=None,
           optim=OptimConfig(weight_decay=0.5, lr=3e-3)):
    split = make_split(p, 0.5, seed=7)
    a, b, y = (torch.as_tensor(t) for t in split.tokens(split.train_idx))
    w = torch.as_tensor(zipf_weights(split, s))
    model = build_model(p, hidden, init="torch", seed=seed, dtype=dtype)
    step = FusedStep(p, hidden, a, b, optim=optim, dtype=dtype, use_onednn=use_onednn)
    step.load_params(dict(model.named_parameters()))
    step.set_weights(w)
    return step, model, (a, b, y, w)


def _autograd_loss(params, a, b, y, w, p):
    logits = functional_logits(params, a, b, p=p)
    return (nn.functional.cross_entropy(logits, y, reduction="none") * w.to(logits.dtype)).sum()


@pytest.mark.parametrize("hidden", [(24,), (24, 16), (8, 12, 10)])
def test_loss_and_grad_equal_autograd_float64(hidden):
    step, model, (a, b, y, w) = _setup(hidden=hidden)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    loss = _autograd_loss(params, a, b, y, w, 13)
    loss.backward()
    fused = step.loss_and_grad()
    assert fused.item() == pytest.approx(loss.item(), rel=1e-13)
    for name, t in params.items():
        torch.testing.assert_close(step.grads[name], t.grad, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("hidden", [(24,), (24, 16), (8, 12, 10)])
@pytest.mark.parametrize("use_onednn", [False, True])
def test_loss_and_grad_float32_paths(use_onednn, hidden):
    """Every operand layout the column step hands to oneDNN (one, two and three hidden
    layers) against float64 autograd."""
    if use_onednn and not _mkldnn_linear_available():
        pytest.skip("oneDNN linear not in this torch build")
    step, model, (a, b, y, w) = _setup(dtype="float32", use_onednn=use_onednn, hidden=hidden)
    params = {k: v.detach().double().requires_grad_() for k, v in model.named_parameters()}
    _autograd_loss(params, a, b, y, w, 13).backward()
    step.loss_and_grad()
    for name, t in params.items():
        torch.testing.assert_close(step.grads[name].double(), t.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype,use_onednn", [("float64", False), ("float32", False),
                                              ("float32", None)])
def test_adamw_steps_equal_torch_optim_adamw(dtype, use_onednn):
    """100 fused steps from the same init against autograd + torch.optim.AdamW: 1e-10 in
    float64, 1e-4 in float32 (with the default GEMMs, oneDNN's where it is available)."""
    optim = OptimConfig(lr=1e-2, weight_decay=1.0, beta1=0.8, beta2=0.99, eps=1e-7)
    step, model, (a, b, y, w) = _setup(dtype=dtype, optim=optim, use_onednn=use_onednn)
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay,
                            betas=(optim.beta1, optim.beta2), eps=optim.eps)
    for _ in range(100):
        step.step()
        opt.zero_grad()
        _autograd_loss(dict(model.named_parameters()), a, b, y, w, 13).backward()
        opt.step()
    tol = 1e-10 if dtype == "float64" else 1e-4
    for name, t in model.named_parameters():
        torch.testing.assert_close(step.params[name], t.detach(), rtol=tol, atol=tol)
        state = opt.state[t]
        torch.testing.assert_close(step.views(step.exp_avg)[name], state["exp_avg"], rtol=tol, atol=tol)
        torch.testing.assert_close(step.views(step.exp_avg_sq)[name], state["exp_avg_sq"], rtol=tol, atol=1e-12)
    assert step.t == 100


def test_adamw_decays_every_parameter_including_biases():
    """With zero gradient, one step multiplies every parameter by exactly 1 - lr * wd."""
    optim = OptimConfig(lr=1e-2, weight_decay=2.0)
    step, _, _ = _setup(optim=optim)
    before = step.theta.clone()
    step.grad.zero_()
    step.adamw()
    torch.testing.assert_close(step.theta, before * (1 - 0.02), rtol=0, atol=0)
