"""The Hessian rows of `zgdyn bench` (its speed figures are measured, not tested)."""

import pytest

from zgdyn.present.bench import format_hessian, run_hessian_bench
from zgdyn.cli import main


@pytest.mark.heavy
def test_hessian_rows_compare_like_with_like(tmp_path, capsys):
    r = run_hessian_bench(p=11, k=3, repeats=1)
    for dt in ("float32", "float64"):
        row = r["hvp"][dt]
        assert {"torch_func", "hand", "hand_block", "hand_vs_torch_func"} <= set(row)
        assert row["hand_vs_torch_func"] == row["hand"] / row["torch_func"]
    assert r["hvp"]["float64"]["rel_diff"] < 1e-10 and r["hvp"]["float32"]["rel_diff"] < 1e-4
    e = r["extremes"]
    assert e["arpack_torch_func"]["converged"] and e["block_hand"]["converged"]
    assert e["max_eigenvalue_diff_over_scale"] < 1e-8
    text = format_hessian(r)
    assert "ARPACK on torch.func's HVP" in text and "block Krylov on the hand HVP" in text
    out = tmp_path / "h.json"
    from helpers import small_config
    from zgdyn.store.runner import train_run
    train_run(small_config(epochs=100), tmp_path / "r.h5")
    assert main(["bench", "--hessian-run", str(tmp_path / "r.h5"), "--hessian-epoch", "60",
                 "--out", str(out)]) == 0
    assert "r.h5 at epoch 60, s = 0" in capsys.readouterr().out and out.exists()


def test_subnormal_bench_plants_subnormals_that_only_the_flush_removes():
    """The planted state keeps subnormals through training without flush_subnormals and
    none with it; both variants train the same number of epochs."""
    from zgdyn.core.config import Config, DataConfig, ModelConfig, RecordConfig, ScheduleConfig
    from zgdyn.present.bench import bench_subnormals

    cfg = Config(data=DataConfig(p=11), model=ModelConfig(hidden=(16, 16)),
                 schedule=ScheduleConfig(epochs=20),
                 record=RecordConfig(eval_every=10, ckpt_every=10, keyframe_every=20))
    r = bench_subnormals(cfg, dead=0.25, epochs=20, repeats=2)
    assert r["subnormal_fraction"]["plain"] > 0.01
    assert r["subnormal_fraction"]["flushed"] == 0.0
    assert all(len(v) == 2 and min(v) > 0 for v in r["raw_seconds"].values())
    assert r["speedup"] == r["epochs_per_s"]["flushed"] / r["epochs_per_s"]["plain"]
