import errno
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from zgdyn.core.config import ConfigError
from zgdyn.store.runner import resume_run, train_run
from zgdyn.store.journal import RunFileError, recover
from zgdyn.store.pagefile import JournaledFile
from zgdyn.store.reader import open_run
from zgdyn.store.writer import RunWriter
from zgdyn.core.train import MetricsLog, Trainer


def test_round_trip(tmp_path, small):
    cfg = small(epochs=120, zipf_s=1.5)
    seen = {}

    class Keep(MetricsLog):
        def on_checkpoint(self, trainer):
            seen[trainer.epoch] = {k: v.clone() for k, v in trainer.params.items()}

    keep = Keep()
    tr = train_run(cfg, tmp_path / "r.h5", callbacks=[keep])
    with open_run(tmp_path / "r.h5") as run:
        assert run.config == cfg
        np.testing.assert_array_equal(run.checkpoint_epochs, sorted(seen))
        for epoch, params in run.checkpoints():
            for k in params:
                assert torch.equal(params[k], seen[epoch][k])
        for name in ("epoch", "train_loss", "test_acc", "zipf_s", "train_acc_weighted"):
            np.testing.assert_array_equal(run.metrics[name], keep.array(name))
        snap = run.snapshot_at(120)
        order = list(tr.params)  # layer order, as nn.Linear names them
        assert list(snap.params) == list(snap.exp_avg) == list(snap.exp_avg_sq) == order
        assert snap.step == 120 and torch.equal(snap.params["out.bias"], tr.params["out.bias"])
        live = tr.snapshot()
        for k in live.exp_avg_sq:
            assert torch.equal(snap.exp_avg_sq[k], live.exp_avg_sq[k])
        model = run.model_at(120)
        a = torch.arange(13)
        torch.testing.assert_close(model(a, a), tr.step.logits(a, a), rtol=0, atol=0)
        s = run.summary()
        assert s["status"] == "complete" and s["epochs_done"] == 120
        assert s["n_checkpoints"] == 7 and s["n_keyframes"] == 3
        np.testing.assert_array_equal(run.split.train_idx, tr.split.train_idx)
        with pytest.raises(RunFileError, match="no checkpoint at epoch 7; nearest"):
            run.params_at(7)


def test_resume_is_bitwise(tmp_path, small):
    cfg = small(epochs=230, zipf_s=1.0)
    train_run(cfg, tmp_path / "full.h5")
    train_run(cfg.replace(epochs=100), tmp_path / "part.h5")
    resume_run(tmp_path / "part.h5", changes={"epochs": 230})
    with open_run(tmp_path / "full.h5") as f, open_run(tmp_path / "part.h5") as g:
        assert f.config == g.config
        np.testing.assert_array_equal(f.checkpoint_epochs, g.checkpoint_epochs)
        for k, v in f.params_at(230).items():
            assert torch.equal(v, g.params_at(230)[k])
        for k, v in f.metrics.items():
            np.testing.assert_array_equal(v, g.metrics[k])


def test_resume_refuses_science_changes(tmp_path, small):
    train_run(small(epochs=20), tmp_path / "r.h5")
    before = (tmp_path / "r.h5").read_bytes()
    with pytest.raises(ConfigError, match="zipf_s: cannot change"):
        resume_run(tmp_path / "r.h5", changes={"zipf_s": 1.0})
    assert (tmp_path / "r.h5").read_bytes() == before


def test_existing_file_is_never_clobbered(tmp_path, small):
    path = tmp_path / "r.h5"
    path.write_bytes(b"precious")
    with pytest.raises(RunFileError, match="already exists"):
        train_run(small(epochs=10), path)
    assert path.read_bytes() == b"precious"
    train_run(small(epochs=10), path, force=True)
    with open_run(path) as run:
        assert run.summary()["epochs_done"] == 10


def test_not_hdf5_not_zgdyn_wrong_version(tmp_path, small):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        open_run(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(RunFileError, match="not a zgdyn run"):
        open_run(other)
    train_run(small(epochs=10), tmp_path / "r.h5")
    with h5py.File(tmp_path / "r.h5", "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(RunFileError, match="version 99"):
        open_run(tmp_path / "r.h5")
    with pytest.raises(RunFileError, match="no such run file"):
        open_run(tmp_path / "missing.h5")


def test_second_writer_is_refused(tmp_path, small):
    path = tmp_path / "r.h5"
    train_run(small(epochs=10), path)
    first = RunWriter.resume(path)
    try:
        with pytest.raises(RunFileError, match="being written by another process"):
            RunWriter.resume(path)
        with pytest.raises(RunFileError, match="being written by another process"):
            train_run(small(epochs=10), path, force=True)
    finally:
        first.close()
    with open_run(path) as run:
        assert run.summary()["epochs_done"] == 10


def test_interrupted_commit_rolls_back(tmp_path, small, monkeypatch):
    """Die after the journal is written and some pages are overwritten: the file reopens
    at its previous commit."""
    path = tmp_path / "r.h5"
    cfg = small(epochs=300)
    train_run(cfg.replace(epochs=100), path)
    committed = path.read_bytes()
    writer = RunWriter.resume(path)
    tr = Trainer(writer.config.replace(epochs=300), writer.last_snapshot())
    calls = {"n": 0}
    real_pwrite = os.pwrite

    def dying_pwrite(fd, data, offset):  # the process dies: nothing more reaches the file
        calls["n"] += 1
        if calls["n"] == 2:  # torn as the kernel tears a write: between 4 KiB pages
            real_pwrite(fd, data[: max(4096, len(data) // 2 // 4096 * 4096)], offset)
            raise SystemExit("killed mid-commit")
        if calls["n"] > 2:
            raise OSError(errno.EIO, "the process is gone")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", dying_pwrite)
    with pytest.raises(SystemExit):
        tr.run([writer])
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    writer.jfile.close()  # the process is gone: no clean close
    assert (tmp_path / "r.h5-journal").exists()
    assert path.read_bytes() != committed
    assert recover(path)
    assert path.read_bytes() == committed
    with open_run(path) as run:
        assert run.summary()["epochs_done"] == 100


def test_torn_journal_is_discarded(tmp_path, small):
    """A journal whose header was never written: its commit died before touching the file."""
    path = tmp_path / "r.h5"
    train_run(small(epochs=20), path)
    committed = path.read_bytes()
    (tmp_path / "r.h5-journal").write_bytes(b"\0" * 64 + b"part of a body")
    with open_run(path) as run:
        assert run.summary()["epochs_done"] == 20
    assert not (tmp_path / "r.h5-journal").exists()
    assert path.read_bytes() == committed


def test_journaled_file_reads_its_own_writes(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    jf = JournaledFile(path)
    jf.seek(4090)
    jf.write(b"x" * 20)  # straddles a page boundary
    jf.seek(10230)
    jf.write(b"y" * 30)  # grows the file
    jf.seek(4080)
    assert jf.read(40) == bytes(range(256))[4080 % 256:][:10] + b"x" * 20 + bytes(range(256))[
        (4110) % 256:][:10]
    assert path.stat().st_size == 10240  # nothing on disk yet
    jf.commit()
    data = path.read_bytes()
    assert len(data) == 10260 and data[4090:4110] == b"x" * 20 and data[-30:] == b"y" * 30
    jf.truncate(5000)
    jf.commit()
    jf.close()
    assert path.read_bytes() == data[:5000]


CHILD = """
import sys, torch
torch.set_num_threads(1)
from zgdyn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args):
    return [sys.executable, "-c", CHILD, *map(str, args)]


SMALL_FLAGS = ["--p", "13", "--train-frac", "0.5", "--hidden", "24", "24", "--zipf-s", "1.5",
               "--eval-every", "10", "--ckpt-every", "20", "--keyframe-every", "100",
               "--no-progress"]


@pytest.mark.heavy
def test_sigkill_then_resume_is_bitwise(tmp_path):
    """Kill the trainer at several moments; each time the file opens, holds its keyframes
    and resumes to the same final parameters as an uninterrupted run."""
    epochs = 4000
    ref = tmp_path / "ref.h5"
    subprocess.run(_cli("train", *SMALL_FLAGS, "--epochs", epochs, "--out", ref), check=True,
                   capture_output=True)
    with open_run(ref) as run:
        final = run.params_at(epochs)
    rng = np.random.default_rng(0)
    survived = 0
    for i, delay in enumerate(rng.uniform(0.0, 1.0, size=3)):
        path = tmp_path / f"killed{i}.h5"
        proc = subprocess.Popen(_cli("train", *SMALL_FLAGS, "--epochs", epochs, "--out", path),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
        with open_run(path) as run:
            done = run.summary()["epochs_done"]
            if done < 0:  # killed before its first keyframe: the file holds nothing yet
                assert len(run.keyframe_epochs) == 0 and len(run.metrics["epoch"]) == 0
            else:
                assert run.keyframe_epochs[-1] == done
                assert run.metrics["epoch"][-1] == done
        subprocess.run(_cli("train", "--resume", "--out", path, "--no-progress"), check=True,
                       capture_output=True)
        with open_run(path) as run:
            assert run.summary()["status"] == "complete"
            for k, v in run.params_at(epochs).items():
                assert torch.equal(v, final[k])
        survived += 1
    assert survived == 3


def test_run_weights_are_the_loss_weights_of_each_phase(tmp_path):
    from helpers import small_config
    from zgdyn.core.data import zipf_weights
    from zgdyn.store.runner import train_run

    cfg = small_config(200, zipf_s=0.0, switch_s=1.5, switch_at_epoch=100, phase2_epochs=50)
    path = tmp_path / "two.h5"
    train_run(cfg, path)
    with open_run(path) as run:
        np.testing.assert_array_equal(run.weights(0), zipf_weights(run.split, 0.0))
        np.testing.assert_array_equal(run.weights(1), zipf_weights(run.split, 1.5))
        with pytest.raises(ValueError, match="no loss weights of phase 2"):
            run.weights(2)
