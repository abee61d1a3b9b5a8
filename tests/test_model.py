import math

import pytest
import torch
from torch import nn

from zgdyn.core.model import build_model, functional_logits, n_params, param_shapes


def test_parameter_count_at_p97():
    assert n_params(97, (128, 128)) == 53_985
    assert sum(t.numel() for t in build_model(97, (128, 128), init="lecun", seed=0).parameters()) == 53_985


def test_names_and_shapes_are_an_nn_linear_stack():
    model = build_model(7, (5, 6, 4), init="torch", seed=1)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight",
                     "fc3.bias", "out.weight", "out.bias"]
    assert dict((n, tuple(t.shape)) for n, t in model.named_parameters()) == \
        param_shapes(7, (5, 6, 4))
    assert model.state_dict()["fc1.weight"].shape == (5, 14)


@pytest.mark.parametrize("hidden", [(16,), (16, 12), (8, 8, 8)])
@pytest.mark.parametrize("init", ["lecun", "torch"])
def test_gather_model_equals_dense_one_hot_stack(hidden, init):
    p = 11
    model = build_model(p, hidden, init=init, seed=5)
    dims = [2 * p, *hidden, p]
    layers = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    dense = nn.Sequential(*layers[:-1])
    linears = [m for m in dense if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, (name, mod) in zip(linears, model.named_children()):
            lin.weight.copy_(mod.weight)
            lin.bias.copy_(mod.bias)
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.flatten(), b.flatten()
    x = torch.cat([nn.functional.one_hot(a, p), nn.functional.one_hot(b, p)], 1).float()
    torch.testing.assert_close(model(a, b), dense(x), atol=1e-6, rtol=1e-6)


def test_functional_form_works_with_torch_func():
    p = 7
    model = build_model(p, (9, 9), init="lecun", seed=0, dtype="float64")
    params = {k: v.detach() for k, v in model.named_parameters()}
    a, b = torch.arange(p), torch.arange(p).flip(0)
    y = (a + b) % p

    def loss(prm):
        return nn.functional.cross_entropy(functional_logits(prm, a, b, p=p), y)

    g = torch.func.grad(loss)(params)
    model.zero_grad()
    nn.functional.cross_entropy(model(a, b), y).backward()
    for name, t in model.named_parameters():
        torch.testing.assert_close(g[name], t.grad, rtol=1e-12, atol=1e-12)


def test_lecun_init_is_flax_truncated_normal():
    model = build_model(97, (512, 512), init="lecun", seed=0, dtype="float64")
    w = model.fc2.weight
    assert torch.all(model.fc2.bias == 0) and torch.all(model.out.bias == 0)
    # variance 1/fan_in after the truncation correction; support within 2 sigma_raw
    assert w.var().item() == pytest.approx(1 / 512, rel=0.02)
    sigma_raw = math.sqrt(1 / 512) / 0.87962566103423978
    assert w.abs().max().item() <= 2 * sigma_raw + 1e-12


def test_torch_init_is_nn_linear_default():
    model = build_model(97, (256, 256), init="torch", seed=0, dtype="float64")
    bound = 1 / math.sqrt(256)
    for t in (model.fc2.weight, model.fc2.bias):
        assert t.abs().max().item() <= bound
    assert model.fc2.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.03)


def test_init_is_seeded_and_dtype_independent():
    m1 = build_model(13, (8, 8), init="lecun", seed=3)
    m2 = build_model(13, (8, 8), init="lecun", seed=3, dtype="float64")
    m3 = build_model(13, (8, 8), init="lecun", seed=4)
    for (n, t1), t2, t3 in zip(m1.named_parameters(), m2.parameters(), m3.parameters()):
        torch.testing.assert_close(t1.double(), t2, atol=1e-7, rtol=1e-7)
        if n.endswith("weight"):
            assert not torch.equal(t1, t3)
