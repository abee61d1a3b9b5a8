import numpy as np
import pytest
import torch

from helpers import StopAt, small_config
from zgdyn import ConfigError, open_run
from zgdyn.cli import main
from zgdyn.core.ensemble import SMALL_STEP_FLOP, Ensemble, EnsembleStep, resolve_mode, step_flop
from zgdyn.store.runner import train_ensemble, train_run
from zgdyn.core.train import MetricsLog, Trainer

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

# members that differ in everything an ensemble allows: seed (so init and split), Zipf
# exponent, weighting, learning rate and weight decay
VARIED = [dict(seed=1), dict(seed=2, zipf_s=1.5), dict(seed=3, zipf_s=1.0, weighting="independent"),
          dict(seed=4, lr=3e-3, weight_decay=0.5), dict(seed=5, zipf_s=2.0, weighting="output_freq")]


def _configs(dtype="float32", epochs=300, **extra):
    return [small_config(epochs, dtype=dtype, **v, **extra) for v in VARIED]


def _solo(cfg):
    trainer = Trainer(cfg)
    log = MetricsLog()
    trainer.run([log])
    return trainer, log


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_members_mode_is_bitwise_the_solo_runs(dtype):
    configs = _configs(dtype)
    ens = Ensemble(configs, mode="members")
    logs = [[MetricsLog()] for _ in configs]
    assert ens.run(logs) == {}
    for cfg, member, (log,) in zip(configs, ens.members, logs):
        solo, solo_log = _solo(cfg)
        assert member.epoch == solo.epoch == 300
        assert torch.equal(member.step.theta, solo.step.theta)
        assert torch.equal(member.step.exp_avg_sq, solo.step.exp_avg_sq)
        assert log.rows == solo_log.rows  # every evaluation, to the bit


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-6), ("float32", 1e-4)])
def test_batched_mode_matches_the_solo_runs_after_1000_epochs(dtype, rtol):
    """bmm kernels sum in another order than the solo step: close, not bitwise."""
    configs = _configs(dtype, epochs=1000)
    ens = Ensemble(configs, mode="batched")
    assert ens.run() == {}
    worst = 0.0
    for cfg, member in zip(configs, ens.members):
        solo, _ = _solo(cfg)
        diff = (member.step.theta - solo.step.theta).norm() / solo.step.theta.norm()
        worst = max(worst, float(diff))
    assert worst < rtol, worst


def test_batched_gradients_equal_each_members_own():
    configs = _configs("float64")
    members = [Trainer(c) for c in configs]
    solo = [Trainer(c) for c in configs]
    es = EnsembleStep([m.step for m in members], mode="batched")
    losses = es.loss_and_grad()
    for k, s in enumerate(solo):
        loss = s.step.loss_and_grad()
        assert float(losses[k]) == pytest.approx(float(loss), rel=1e-12)
        torch.testing.assert_close(es.grad[k], s.step.grad, rtol=1e-10, atol=1e-14)


def test_auto_mode_batches_on_a_gpu_and_for_small_models():
    small = Trainer(small_config(10)).step
    big = Trainer(small_config(10, p=97, train_frac=0.3, hidden=(128, 128))).step
    assert step_flop(small) < SMALL_STEP_FLOP < step_flop(big)
    assert step_flop(big) == pytest.approx(0.488e9, rel=1e-3)  # 0.49 GFLOP at p = 97
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_mode("auto", cpu, step_flop(small)) == "batched"
    assert resolve_mode("auto", cpu, step_flop(big)) == "members"
    assert resolve_mode("auto", gpu, step_flop(big)) == "batched"


def test_members_with_different_lengths_and_a_switch_leave_when_done():
    configs = [small_config(200, seed=1), small_config(350, seed=2),
               small_config(100, seed=3, switch_s=2.0, switch_at_epoch=60, phase2_epochs=90)]
    ens = Ensemble(configs, mode="members")
    assert ens.run() == {}
    assert [m.epoch for m in ens.members] == [200, 350, 150]
    assert ens.members[2].switch_epoch == 60
    for cfg, m in zip(configs, ens.members):
        assert torch.equal(m.step.theta, _solo(cfg)[0].step.theta)


def test_a_diverging_member_leaves_and_the_others_finish(tmp_path):
    configs = [small_config(300, seed=1), small_config(300, seed=2, lr=1e36, weight_decay=0.0),
               small_config(300, seed=3)]
    paths = [tmp_path / f"m{k}.h5" for k in range(3)]
    results = train_ensemble(configs, paths, mode="members")
    assert results[0].error is None and results[2].error is None
    assert "diverged" in results[1].error
    with open_run(paths[1]) as run:
        assert run.attrs["status"] == "diverged"
    for k in (0, 2):
        with open_run(paths[k]) as run:
            assert run.attrs["status"] == "complete"
            assert int(run.attrs["epochs_done"]) == 300
        solo = tmp_path / f"solo{k}.h5"
        train_run(configs[k], solo)
        _assert_same_records(paths[k], solo)


def _assert_same_records(path_a, path_b):
    with open_run(path_a) as a, open_run(path_b) as b:
        for name in ("test_acc", "train_loss", "epoch", "adam_scale"):
            np.testing.assert_array_equal(a.metrics[name], b.metrics[name])
        ea, eb = a.keyframe_epochs, b.keyframe_epochs
        assert set(eb) <= set(ea)  # a stop and resume adds a keyframe
        for e in eb:
            pa, pb = a.snapshot_at(int(e)), b.snapshot_at(int(e))
            for name in pa.params:
                assert torch.equal(pa.params[name], pb.params[name])
                assert torch.equal(pa.exp_avg_sq[name], pb.exp_avg_sq[name])


def test_interrupted_ensemble_resumes_bitwise(tmp_path):
    configs = _configs(epochs=400)[:3]
    paths = [tmp_path / f"m{k}.h5" for k in range(3)]
    trainers = [Trainer(c) for c in configs]
    from zgdyn.store.writer import RunWriter
    writers = [RunWriter.create(p, c, t) for p, c, t in zip(paths, configs, trainers)]
    ens = Ensemble(trainers=trainers, mode="members")
    assert ens.run([[w, StopAt(150)] for w in writers]) == {}
    for w in writers:
        w.close(commit=True)
    for p in paths:
        with open_run(p) as run:
            assert run.attrs["status"] == "interrupted"
            assert int(run.attrs["epochs_done"]) == 150
    results = train_ensemble([], paths, resume=True, mode="members")
    assert all(r.error is None for r in results)
    for k, cfg in enumerate(configs):
        ref = tmp_path / f"ref{k}.h5"
        train_run(cfg, ref)
        _assert_same_records(paths[k], ref)


def test_members_must_share_shapes_and_run_no_hook():
    with pytest.raises(ConfigError, match="hidden: ensemble members must share"):
        Ensemble([small_config(10), small_config(10, hidden=(16, 16))])
    with pytest.raises(ConfigError, match="p: ensemble members must share"):
        Ensemble([small_config(10), small_config(10, p=11)])
    with pytest.raises(ConfigError, match="hook: an ensemble trains its members. optimizers alone"):
        Ensemble([small_config(10), small_config(10, hook="anything")])
    with pytest.raises(ConfigError, match="mode: must be"):
        Ensemble([small_config(10)], mode="fast")


def _cli_args(out, *extra):
    return ["train", "--p", "13", "--train-frac", "0.5", "--hidden", "24", "24", "--epochs",
            "200", "--eval-every", "10", "--ckpt-every", "20", "--keyframe-every", "100",
            "--out", str(out), "--no-progress", *extra]


def test_cli_trains_the_product_as_ensembles_of_a_given_size(tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(_cli_args(out, "--zipf-s", "0", "1.5", "--seeds", "1", "2", "3",
                        "--wd", "1", "0.5", "--ensemble-size", "5", "--ensemble-mode",
                        "members"))
    assert rc == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 12
    assert "p13-rank-s1.5-frac0.5-h24x24-wd0.5-seed3.h5" in files
    with open_run(out / "p13-rank-s1.5-frac0.5-h24x24-wd0.5-seed3.h5") as run:
        cfg = run.config
        assert (cfg.data.zipf_s, cfg.optim.weight_decay, cfg.seed) == (1.5, 0.5, 3)
        assert run.attrs["status"] == "complete"
    # the same member trained alone, bitwise
    solo = tmp_path / "solo.h5"
    train_run(cfg, solo)
    _assert_same_records(out / "p13-rank-s1.5-frac0.5-h24x24-wd0.5-seed3.h5", solo)
    assert capsys.readouterr().out.count("complete:") == 12


@pytest.mark.parametrize("extra,message", [
    (["--seeds", "1", "2", "--ensemble-size", "0"], "--ensemble-size: must be an integer >= 1"),
    (["--zipf-s", "0", "1", "--resume"], "--resume: no run file"),
    (["--zipf-s", "0", "-1"], "zipf_s: must be a number >= 0"),
])
def test_cli_ensemble_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "runs"
    assert main(_cli_args(out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


def test_cli_ensemble_refuses_existing_files_before_writing_any(tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    taken = out / "p13-rank-s1.5-frac0.5-h24x24-seed1.h5"
    taken.write_bytes(b"precious")
    assert main(_cli_args(out, "--zipf-s", "0", "1.5", "--seeds", "1")) == 2
    assert "already exists" in capsys.readouterr().err
    assert taken.read_bytes() == b"precious"
    assert sorted(p.name for p in out.iterdir()) == ["p13-rank-s1.5-frac0.5-h24x24-seed1.h5"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batched_ensemble_matches_cpu_solo_runs():
    configs = _configs("float64", epochs=300)
    ens = Ensemble([c.replace(device="cuda") for c in configs])
    assert ens.run() == {}
    for cfg, member in zip(configs, ens.members):
        solo, _ = _solo(cfg)
        diff = (member.step.theta.cpu() - solo.step.theta).norm() / solo.step.theta.norm()
        assert float(diff) < 1e-8


def test_batched_evaluations_equal_each_members_own():
    configs = _configs("float64", epochs=120)
    logs = [[MetricsLog()] for _ in configs]
    ens = Ensemble(configs, mode="batched")
    assert ens.run(logs) == {}
    for m, (log,) in zip(ens.members, logs):
        assert [r["epoch"] for r in log.rows] == list(range(0, 121, 10))
        own = m.evaluate()  # at the final parameters, one member alone
        for name, value in log.rows[-1].items():
            assert value == pytest.approx(own[name], rel=1e-9, abs=1e-12, nan_ok=True), name
