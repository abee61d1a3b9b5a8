import json

import numpy as np
import pytest
import torch

from zgdyn.analysis.analyze import analyze_run
from zgdyn.cli import main
from zgdyn.core.config import ZgdynError
from zgdyn.core.data import zipf_weights
from zgdyn.analysis.fourier import checkpoint_measures, memorization_projector
from zgdyn.analysis.growth import adamw_direction
from zgdyn.core.model import functional_logits
from zgdyn.store.runner import train_run
from zgdyn.store.reader import open_run


@pytest.fixture
def run_file(tmp_path, small):
    path = tmp_path / "r.h5"
    train_run(small(epochs=300, zipf_s=1.5, switch_s=0.0, switch_at_epoch=100,
                    phase2_epochs=200), path)
    return path


def test_analyze_agrees_with_direct_recomputation(run_file):
    s = analyze_run(str(run_file), key_freqs="fixed", ref_epoch=200)
    with open_run(run_file) as run:
        a = run.analysis("trajectory")
        key = a["attrs"]["settings"]["key"]
        assert list(s.key) == key and s.n_checkpoints == len(run.checkpoint_epochs)
        np.testing.assert_array_equal(a["epoch"], run.checkpoint_epochs)
        split = run.split
        for e in (40, 200, 300):  # phase 0 (s = 1.5) and phase 1 (s = 0)
            w = zipf_weights(split, 1.5 if e <= 100 else 0.0)
            row, diag = checkpoint_measures(run.params_at(e), 13, key,
                                            torch.from_numpy(split.train_idx), torch.from_numpy(w))
            i = int(np.flatnonzero(a["epoch"] == e)[0])
            for name, value in row.items():
                assert a[name][i] == pytest.approx(value, rel=1e-9), name
            np.testing.assert_allclose(a["spectrum"][i], diag.numpy())
        # γ_inst at a keyframe, recomputed with autograd
        cfg = run.config
        snap = run.snapshot_at(100)  # the switch keyframe: the next step uses s = 0
        params = {k: v.double().requires_grad_() for k, v in snap.params.items()}
        a_, b_, y_ = (torch.as_tensor(t) for t in split.tokens(split.train_idx))
        w = torch.as_tensor(zipf_weights(split, 0.0))
        loss = (torch.nn.functional.cross_entropy(functional_logits(params, a_, b_, p=13), y_,
                                                  reduction="none") * w).sum()
        loss.backward()
        flat = lambda d: torch.cat([t.flatten().double() for t in d.values()])
        u = adamw_direction(flat({k: t.grad for k, t in params.items()}), flat(snap.exp_avg),
                            flat(snap.exp_avg_sq), snap.step, cfg.optim)
        proj = memorization_projector(13, key)
        shapes = {k: t.shape for k, t in snap.params.items()}
        unflat = lambda v: dict(zip(shapes, torch.split(v, [int(np.prod(s)) for s in shapes.values()])))
        u_m = flat(proj({k: t.view(shapes[k]) for k, t in unflat(u).items()}))
        th_m = flat(proj({k: t.double() for k, t in snap.params.items()}))
        expected = -cfg.optim.lr * float(u_m @ th_m) / float(th_m @ th_m)
        i = int(np.flatnonzero(a["gamma_inst/epoch"] == 100)[0])
        assert a["gamma_inst/gamma"][i] == pytest.approx(expected, rel=1e-4)
        assert a["gamma_inst/m_w"][i] == pytest.approx(float(th_m.norm()), rel=1e-6)


def test_analyze_resumes_and_guards_its_settings(run_file, monkeypatch):
    import zgdyn.analysis.analyze as an
    calls = {"n": 0}
    real = an.checkpoint_measures

    def counting(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # interrupted part way
        return real(*args, **kw)

    monkeypatch.setattr(an, "checkpoint_measures", counting)
    with pytest.raises(KeyboardInterrupt):
        analyze_run(str(run_file), commit_every=2)
    monkeypatch.setattr(an, "checkpoint_measures", real)
    with open_run(run_file) as run:
        assert len(run.analysis("trajectory")["epoch"]) == 4  # two commits of two
    s = analyze_run(str(run_file))
    assert s.newly_analyzed == s.n_checkpoints - 4
    assert analyze_run(str(run_file)).newly_analyzed == 0
    with pytest.raises(ZgdynError, match="other settings"):
        analyze_run(str(run_file), top_k=2)
    s = analyze_run(str(run_file), top_k=2, force=True)
    assert s.n_key == 2 and s.newly_analyzed == s.n_checkpoints


def test_analyze_auto_mode_and_cli(run_file, capsys):
    assert main(["analyze", str(run_file), "--key-freqs", "auto", "--json", "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["key"] is None and s["fourier_energy"]["end"] >= 0
    with open_run(run_file) as run:
        a = run.analysis("trajectory")
        np.testing.assert_array_equal(a["n_key"], a["n_key_auto"])
    assert main(["analyze", str(run_file), "--ref-epoch", "7"]) == 2
    assert "no checkpoint at epoch 7" in capsys.readouterr().err
    assert main(["analyze", str(run_file), "--key-freqs", "fixed", "--force",
                 "--no-progress"]) == 0
    assert "key freqs" in capsys.readouterr().out
