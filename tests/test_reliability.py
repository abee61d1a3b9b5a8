"""Fault injection, write failures, concurrency, corrupt files and numerical failure."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from conftest import KILL_PREAMBLE, count, small_config
from zgdyn.cli import main
from zgdyn.config import ConfigError
from zgdyn.runner import resume_run, train_run
from zgdyn.store import RunFileError, open_run, verify_run
from zgdyn.train import Diverged

# A child process that runs the CLI, optionally killing itself (see KILL_PREAMBLE).
CHILD = KILL_PREAMBLE + """
from zgdyn.cli import main
sys.exit(main(sys.argv[1:]))
"""

FLAGS = ["--p", "11", "--train-frac", "0.5", "--hidden", "16", "16", "--zipf-s", "1.5",
         "--eval-every", "10", "--ckpt-every", "20", "--keyframe-every", "60", "--no-progress"]
EPOCHS = 1500


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    assert _cli("train", *FLAGS, "--epochs", EPOCHS, "--out", path).returncode == 0
    with open_run(path) as run:
        return run.params_at(EPOCHS), run.metrics


def _check_survivor(path, reference):
    """The file opens, info works, its records agree with the reference, and --resume ends
    bitwise at the reference's parameters."""
    if not path.exists():
        return False  # killed before the file's first (atomic) creation
    assert main(["info", str(path)]) == 0
    assert verify_run(path)["ok"]
    final, ref_metrics = reference
    with open_run(path) as run:
        done = run.summary()["epochs_done"]
        m = run.metrics
        assert done < 0 or run.keyframe_epochs[-1] == done
        n = len(m["epoch"])
        np.testing.assert_array_equal(m["test_loss"], ref_metrics["test_loss"][:n])
    res = _cli("train", "--resume", "--out", path)
    assert res.returncode == 0, res.stderr
    with open_run(path) as run:
        assert run.summary()["status"] == "complete"
        for k, v in run.params_at(EPOCHS).items():
            assert torch.equal(v, final[k])
    return True


KILL_POINTS = [("fsync", n) for n in (1, 2, 3, 8, 21, 40)] + \
    [("pwrite", n) for n in (1, 5, 30, 77)] + [("ftruncate", n) for n in (2, 9)]


@pytest.mark.parametrize("where,n", KILL_POINTS, ids=[f"{w}-{n}" for w, n in KILL_POINTS])
def test_sigkill_inside_commits(tmp_path, reference, where, n):
    path = tmp_path / "r.h5"
    env = {**os.environ, "ZGDYN_TEST_KILL": f"{where}:{n}"}
    res = _cli("train", *FLAGS, "--epochs", EPOCHS, "--out", path, env=env)
    killed = res.returncode == -signal.SIGKILL
    if killed:
        count("SIGKILL inside a commit, survived")
    assert _check_survivor(path, reference) or killed


def test_sigkill_at_random_moments(tmp_path, reference):
    rng = np.random.default_rng(7)
    survived = 0
    for i, delay in enumerate(rng.uniform(0.0, 0.6, size=8)):
        path = tmp_path / f"k{i}.h5"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", *FLAGS, "--epochs",
                                 str(EPOCHS), "--out", str(path)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if _check_survivor(path, reference):
            survived += 1
            count("SIGKILL at a random moment, survived")
    assert survived == 8


@pytest.mark.parametrize("fail_on", ["pwrite", "write", "fsync"])
def test_write_failure_stops_cleanly_and_keeps_the_last_commit(tmp_path, monkeypatch, fail_on):
    path = tmp_path / "r.h5"
    cfg = small_config(epochs=400)
    train_run(cfg.replace(epochs=200), path)
    with open_run(path) as run:
        before = run.metrics["epoch"].copy()
    real = getattr(os, fail_on)

    def full_disk(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, fail_on, full_disk)
    with pytest.raises(RunFileError, match="writing failed .No space left on device.*last "
                                           "commit"):
        resume_run(path, changes={"epochs": 400})
    monkeypatch.setattr(os, fail_on, real)
    with open_run(path) as run:  # rolls back any half-done commit
        np.testing.assert_array_equal(run.metrics["epoch"], before)
        assert run.summary()["epochs_done"] == 200
    assert verify_run(path)["ok"]
    resume_run(path, changes={"epochs": 400})  # the disk has room again
    with open_run(path) as run:
        assert run.summary()["epochs_done"] == 400
    count("write faults survived")


def test_reader_while_training_and_second_writer_refused(tmp_path):
    path = tmp_path / "r.h5"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", *FLAGS, "--epochs", "20000",
                             "--out", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists():
                with open_run(path) as run:
                    if run.summary()["epochs_done"] >= 120:
                        break
            time.sleep(0.05)
        reads = 0
        for _ in range(5):  # readers see a consistent committed state while it trains
            with open_run(path) as run:
                s = run.summary()
                assert s["status"] == "running" and s["epochs_done"] % 60 == 0
                run.params_at(int(run.keyframe_epochs[-1]))
                reads += 1
            time.sleep(0.05)
        second = _cli("train", "--resume", "--out", path)
        assert second.returncode == 2 and "being written by another process" in second.stderr
        assert second.stderr.count("\n") == 1
        assert proc.poll() is None  # the first writer is unharmed
        count("reads during training", reads)
    finally:
        proc.send_signal(signal.SIGTERM)  # stops at the next epoch with a keyframe
        assert proc.wait(timeout=60) == 0
    with open_run(path) as run:
        assert run.summary()["status"] == "interrupted"
    assert verify_run(path)["ok"]


@pytest.fixture
def good_run(tmp_path):
    path = tmp_path / "r.h5"
    train_run(small_config(epochs=100), path)
    return path


def _one_line_error(args, capsys, expect):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert expect in err
    count("hostile files handled")


def test_truncated_file(good_run, capsys):
    data = good_run.read_bytes()
    good_run.write_bytes(data[: len(data) // 2])
    _one_line_error(["info", good_run], capsys, "cannot be opened")
    r = verify_run(good_run)
    assert not r["ok"] and "cannot be opened" in r["problems"][0]


def test_flipped_bytes_in_a_checkpoint_are_caught_by_checksums(good_run, capsys):
    with h5py.File(good_run, "r") as f:
        info = f["checkpoints/fc2.weight"].id.get_chunk_info(2)  # the epoch-40 checkpoint
        epoch = int(f["checkpoints/epoch"][2])
    with open(good_run, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    r = verify_run(good_run)
    assert not r["ok"] and any("checkpoints/fc2.weight[2]" in p for p in r["problems"])
    with open_run(good_run) as run:
        with pytest.raises(RunFileError, match=f"checkpoint at epoch {epoch} is corrupt"):
            run.params_at(epoch)
        run.params_at(0)  # the rest stays readable
    assert main(["verify", str(good_run)]) == 1
    count("hostile files handled")


def test_wrong_version_missing_group_and_foreign_file(good_run, tmp_path, capsys):
    with h5py.File(good_run, "a") as f:
        del f["keyframes"]
    _one_line_error(["info", good_run], capsys, "group 'keyframes' is missing")
    with h5py.File(good_run, "a") as f:
        f.attrs["format_version"] = 7
    _one_line_error(["info", good_run], capsys, "run format version 7")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(10)
    _one_line_error(["info", foreign], capsys, "not a zgdyn run")
    _one_line_error(["train", "--resume", "--out", foreign], capsys, "not a zgdyn run")
    _one_line_error(["verify", tmp_path / "nothing.h5"], capsys, "no such run file")


def test_divergence_keeps_the_last_keyframe_and_resumes_with_changed_settings(tmp_path, capsys):
    path = tmp_path / "r.h5"
    cfg = small_config(epochs=400).replace(lr=1e36, weight_decay=0.0)
    with pytest.raises(Diverged, match=r"diverged at epoch \d+") as exc:
        train_run(cfg, path)
    with open_run(path) as run:
        s = run.summary()
        assert s["status"] == "diverged" and run.attrs["diverged_epoch"] == exc.value.epoch
        assert s["epochs_done"] <= exc.value.epoch
        for v in run.params_at(s["epochs_done"]).values():
            assert torch.isfinite(v).all()
    assert verify_run(path)["ok"]
    resume_run(path, changes={"lr": 1e-3, "weight_decay": 1.0})
    with open_run(path) as run:
        assert run.summary()["status"] == "complete" and run.config.optim.lr == 1e-3
        assert "history" in run.attrs
    with pytest.raises(ConfigError, match="lr: cannot change"):  # not diverged any more
        resume_run(path, changes={"lr": 1e-2, "epochs": 500})
    count("divergences survived")


def test_a_reader_held_open_across_commits_still_reads(tmp_path):
    """A handle opened before other commits reads the records it listed, even after the
    writer has rewritten the index pages that its HDF5 cache still holds."""
    path = tmp_path / "r.h5"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", *FLAGS, "--epochs", "20000",
                             "--out", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def last_keyframe():  # asked of another process: HDF5 shares one open file per process
        if not path.exists():
            return -1
        res = _cli("info", path, "--json")
        return json.loads(res.stdout)["epochs_done"] if res.returncode == 0 else -1

    try:
        deadline = time.monotonic() + 60
        while last_keyframe() < 60 and time.monotonic() < deadline:
            time.sleep(0.02)
        with open_run(path) as run:  # held open while the writer goes on committing
            listed = [int(e) for e in run.keyframe_epochs]
            while last_keyframe() < listed[-1] + 600 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert last_keyframe() >= listed[-1] + 600  # ten commits happened meanwhile
            for e in listed:
                snap = run.snapshot_at(e)
                assert snap.epoch == e and torch.isfinite(snap.params["out.weight"]).all()
        count("reads during training", len(listed))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
