"""Fault injection, write failures, concurrency, corrupt files and numerical failure."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from helpers import KILL_PREAMBLE, count, remount, sampled, small_config
from zgdyn.cli import main
from zgdyn.core.config import ConfigError
from zgdyn.store.runner import resume_run, train_run
from zgdyn.store.journal import RunFileError
from zgdyn.store.reader import open_run, verify_run
from zgdyn.core.train import Callback, Diverged

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

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
    _resumes_to(path, final)
    return True


def _resumes_to(path, final):
    """zgdyn train --resume completes the run bitwise at `final`'s parameters."""
    res = _cli("train", "--resume", "--out", path)
    assert res.returncode == 0, res.stderr
    with open_run(path) as run:
        assert run.summary()["status"] == "complete"
        for k, v in run.params_at(EPOCHS).items():
            assert torch.equal(v, final[k])


KILL_POINTS = [("fsync", n) for n in (1, 2, 3, 8, 21, 40)] + \
    [("pwrite", n) for n in (1, 5, 30, 77)] + [("ftruncate", n) for n in (2, 9)]


# the default suite kills at 5 of the 12 points (the first and a later fsync, an early and a
# late page write, a truncate); -m slow at the other 7
@pytest.mark.parametrize("where,n", sampled(
    KILL_POINTS, [f"{w}-{n}" for w, n in KILL_POINTS],
    {"fsync-1", "fsync-8", "pwrite-5", "pwrite-77", "ftruncate-2"}))
def test_sigkill_inside_commits(tmp_path, reference, where, n):
    path = tmp_path / "r.h5"
    env = {**os.environ, "ZGDYN_TEST_KILL": f"{where}:{n}"}
    res = _cli("train", *FLAGS, "--epochs", EPOCHS, "--out", path, env=env)
    killed = res.returncode == -signal.SIGKILL
    if killed:
        count("SIGKILL inside a commit, survived")
    assert _check_survivor(path, reference) or killed


@pytest.mark.parametrize("batch", sampled([7, 8], ["a", "b"], {"a"}))  # 4 kills, 4 more slow
def test_sigkill_at_random_moments(tmp_path, reference, batch):
    rng = np.random.default_rng(batch)
    survived = 0
    for i, delay in enumerate(rng.uniform(0.0, 0.6, size=4)):
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
    assert survived == 4


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


# -- a real full disk -----------------------------------------------------------------------

DENSE = [*FLAGS[:FLAGS.index("--ckpt-every")], "--ckpt-every", "1", "--keyframe-every", "60",
         "--no-progress"]


@pytest.fixture(scope="module")
def dense_reference(tmp_path_factory):
    """The run that fills the small disks, trained where there is room."""
    path = tmp_path_factory.mktemp("dense") / "ref.h5"
    res = _cli("train", *DENSE, "--epochs", EPOCHS, "--out", path)
    assert res.returncode == 0, res.stderr
    with open_run(path) as run:
        return path, run.params_at(EPOCHS), run.metrics


@pytest.mark.parametrize("size", ["1m", "2m", "3m"])
def test_a_full_disk_stops_the_run_and_keeps_its_last_commit(tmpfs, dense_reference, size):
    """On a real small file system: the run stops with one line when the disk fills (the
    journal's write comes back short), the file keeps its last commit, and once there is
    room again --resume ends bitwise on the uninterrupted run."""
    disk = tmpfs("disk", size)
    path = disk / "r.h5"
    ref_path, final, ref_metrics = dense_reference
    res = _cli("train", *DENSE, "--epochs", EPOCHS, "--out", path, "--force")  # past the estimate
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1 and "No space left on device" in res.stderr
    assert "keeps everything up to its last commit" in res.stderr
    journal_left = (disk / "r.h5-journal").exists()
    r = verify_run(path)
    assert r["ok"] and not r["rolled_back"] and not journal_left, r
    with open_run(path) as run:
        done = run.summary()["epochs_done"]
        n = len(run.metrics["epoch"])
        assert 0 < done < EPOCHS and run.keyframe_epochs[-1] == done
        np.testing.assert_array_equal(run.metrics["test_loss"], ref_metrics["test_loss"][:n])
    remount(disk, "size=64m")
    _resumes_to(path, final)
    count("full disks (tmpfs), run kept and resumed")


def test_analyze_on_a_nearly_full_disk_keeps_the_run(tmpfs, dense_reference):
    """`zgdyn analyze` of a finished run on a nearly full disk: one line, and the run file
    still verifies and holds every record it had."""
    ref_path, final, ref_metrics = dense_reference
    disk = tmpfs("disk", f"{ref_path.stat().st_size // 1024 + 96}k")
    path = disk / "r.h5"
    path.write_bytes(ref_path.read_bytes())
    res = _cli("analyze", path, "--no-progress")
    assert res.returncode == 2 and "No space left on device" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1
    journal_left = (disk / "r.h5-journal").exists()
    r = verify_run(path)
    assert r["ok"] and not r["rolled_back"] and not journal_left, r
    with open_run(path) as run:
        np.testing.assert_array_equal(run.metrics["test_loss"], ref_metrics["test_loss"])
        for k, v in run.params_at(EPOCHS).items():
            assert torch.equal(v, final[k])
    count("full disks (tmpfs), run kept and resumed")


# -- commits that shrink the file, and tampered journals ------------------------------------

# rewrite an analysis group with a smaller one: HDF5 gives the freed tail back (a truncate)
SHRINK = KILL_PREAMBLE + """
import numpy as np
from zgdyn.store.writer import AnalysisWriter
w = AnalysisWriter(sys.argv[1], "saddle/x")
w.reset({"n": 1})
w.put("bottom_direction", np.zeros((1, 4000)))
w.close(commit=True)
"""


def _analysed(tmp_path, good_run):
    """A run with a large analysis group, the last one in the file (its tail)."""
    from zgdyn.store.writer import AnalysisWriter
    big = np.random.default_rng(0).normal(size=(5, 4000))
    w = AnalysisWriter(good_run, "saddle/x")
    w.reset({"n": 5})
    w.put("bottom_direction", big)
    w.close(commit=True)
    return big


@pytest.mark.parametrize("kill", ["ftruncate+:1", "unlink:1"])  # after the truncate
def test_sigkill_in_a_commit_that_shrinks_the_file(tmp_path, good_run, kill):
    """The pages a truncate cuts off are journaled too: rolled back, the file is byte for byte
    what it was, and the analysis it held reads back whole."""
    big = _analysed(tmp_path, good_run)
    before = good_run.read_bytes()
    res = subprocess.run([sys.executable, "-c", SHRINK, str(good_run)], capture_output=True,
                         env={**os.environ, "ZGDYN_TEST_KILL": kill})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert (tmp_path / "r.h5-journal").exists()
    assert good_run.stat().st_size < len(before)  # killed with the file cut short
    r = verify_run(good_run)
    assert r["ok"] and r["rolled_back"], r
    assert good_run.read_bytes() == before
    with open_run(good_run) as run:
        np.testing.assert_array_equal(run.analysis("saddle/x")["bottom_direction"], big)
    count("SIGKILL inside a commit that shrinks the file, rolled back")


def _torn_commit(tmp_path, good_run):
    """A run file left mid-commit (pages cut off) with its complete journal."""
    _analysed(tmp_path, good_run)
    res = subprocess.run([sys.executable, "-c", SHRINK, str(good_run)], capture_output=True,
                         env={**os.environ, "ZGDYN_TEST_KILL": "ftruncate+:1"})
    assert res.returncode == -signal.SIGKILL
    return tmp_path / "r.h5-journal"


@pytest.mark.parametrize("where", ["header", "body", "last byte"])
def test_a_flipped_bit_in_a_complete_journal_stops_without_deleting(tmp_path, good_run,
                                                                     capsys, where):
    journal = _torn_commit(tmp_path, good_run)
    blob = bytearray(journal.read_bytes())
    at = {"header": 20, "body": len(blob) // 2, "last byte": len(blob) - 1}[where]
    blob[at] ^= 0x10
    journal.write_bytes(bytes(blob))
    torn = good_run.read_bytes()
    for cmd in (["info", good_run], ["verify", good_run], ["train", "--resume", "--out",
                                                           good_run]):
        code = main([str(a) for a in cmd])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert str(journal) in err and f"of {good_run}" in err and "damaged" in err
    assert journal.read_bytes() == bytes(blob) and good_run.read_bytes() == torn
    count("tampered journals refused, nothing deleted")


def test_a_crafted_journal_outside_the_file_is_refused(tmp_path, good_run, capsys):
    """Journals with valid checksums whose sizes or offsets lie outside the file they would
    roll back: truncating it to nothing, growing it to a sparse terabyte, writing past it."""
    from zgdyn.store.journal import Journal
    size = good_run.stat().st_size
    page = good_run.read_bytes()[:4096]
    crafted = {
        "to nothing": Journal(0, size, [], []),
        "to a terabyte": Journal(1 << 40, size, [], []),
        "a record past the old size": Journal(size, size, [(size + 4096, page)], []),
        "a page that is neither old nor new": Journal(size, size, [(0, b"x" * 4096)],
                                                      [(0, 4096, 12345)]),
    }
    before = good_run.read_bytes()
    for what, j in crafted.items():
        head, body = j.encode()
        journal = tmp_path / "r.h5-journal"
        journal.write_bytes(head + body)
        for cmd in (["info", good_run], ["verify", good_run]):
            code = main([str(a) for a in cmd])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and "does not describe" in err, (what, err)
        assert good_run.read_bytes() == before and journal.exists(), what
        count("tampered journals refused, nothing deleted")


def test_a_journal_path_that_is_not_a_file_is_never_followed(tmp_path, good_run, capsys):
    """A symlink planted at RUN.h5-journal, before training and while it trains: refused in one
    line, its target untouched, the run file at its last commit."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    link = tmp_path / "r.h5-journal"
    link.symlink_to(target)
    code = main(["train", "--resume", "--out", str(good_run), "--epochs", "200"])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err and err.count("\n") == 1
    assert target.read_bytes() == b"keep me" and link.is_symlink()
    link.unlink()
    path = tmp_path / "t.h5"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", *FLAGS, "--epochs", "20000",
                             "--out", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (path.exists() and verify_run(path)["checked"]["keyframes"] >= 2) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    while True:  # between two commits (during one, the journal itself is there)
        try:
            (tmp_path / "t.h5-journal").symlink_to(target)
            break
        except FileExistsError:
            time.sleep(0.001)
    assert proc.wait(timeout=60) == 2
    err = proc.stderr.read()
    assert ("symbolic link" in err or "using the journal's name" in err) \
        and err.count("\n") == 1, err
    assert target.read_bytes() == b"keep me"
    (tmp_path / "t.h5-journal").unlink()
    r = verify_run(path)
    assert r["ok"] and not r["rolled_back"]
    count("journal paths planted as symlinks, refused")


# -- racing creators, and resuming before the first periodic keyframe ------------------------

# a racer: for each trial folder, says it is ready, waits for "go", then trains into
# FOLDER/r.h5 and leaves its exit code and its stderr there
RACER = """
import contextlib, io, os, sys, time, torch
torch.set_num_threads(1)
from zgdyn.cli import main
seed, folders, args = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
for d in folders:
    open(os.path.join(d, "ready" + seed), "w").close()
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.0005)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args + ["--seed", seed, "--out", os.path.join(d, "r.h5")])
    result = os.path.join(d, "result" + seed)
    with open(result + ".tmp", "w") as fh:  # whole or absent for the reader
        fh.write(f"{rc}\\n{err.getvalue()}")
    os.replace(result + ".tmp", result)
"""


@pytest.mark.parametrize("force", [False, True], ids=["new", "--force"])
def test_racing_creators_on_one_out_exactly_one_wins(tmp_path, force):
    """Three trainings started at the same moment on one --out (with different seeds), four
    times over: each time exactly one trains into it, the others are refused in one line
    before they train, and the file holds the winner's run, whole."""
    seeds = ("1", "2", "3")
    folders = [tmp_path / f"t{trial}" for trial in range(4)]
    for d in folders:
        d.mkdir()
        if force:
            train_run(small_config(epochs=20), d / "r.h5")
    procs = [subprocess.Popen([sys.executable, "-c", RACER, seed, ",".join(map(str, folders)),
                               "train", *FLAGS, "--epochs", "200",
                               *(["--force"] if force else [])]) for seed in seeds]
    try:
        for d in folders:
            deadline = time.monotonic() + 60
            while not all((d / f"ready{s}").exists() for s in seeds) \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            (d / "go").touch()
            while not all((d / f"result{s}").exists() for s in seeds) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            results = {s: (d / f"result{s}").read_text().split("\n", 1) for s in seeds}
            winners = [s for s, (rc, _) in results.items() if rc == "0"]
            assert len(winners) == 1, (d, results)
            for rc, err in results.values():
                if rc != "0":
                    assert rc == "2" and err.count("\n") == 1, err
                    assert "already exists" in err or "being written by another" in err \
                        or "replaced by another process" in err, err
            r = verify_run(d / "r.h5")
            assert r["ok"], r
            with open_run(d / "r.h5") as run:
                assert str(run.config.seed) == winners[0]
                assert run.summary()["status"] == "complete"
                assert run.summary()["epochs_done"] == 200
            assert sorted(p.name for p in d.iterdir() if p.name.startswith((".", "r.h5"))) \
                == ["r.h5"]  # no temporary file, no journal left
            count("racing creators, exactly one won")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_force_waits_out_another_processes_probe_and_refuses_a_writer(tmp_path):
    """A --force replacement while another creator probes the old file (a shared flock held
    for an instant) replaces it, where a probe used to be taken for a writer so that racing
    replacers could all be refused; while a writer holds the file, it is refused in one line
    and the file is left as it was."""
    import fcntl
    import threading

    path = tmp_path / "r.h5"
    train_run(small_config(epochs=20), path)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # another process's probe, released 0.3 s later
    release = threading.Timer(0.3, os.close, (fd,))
    release.start()
    try:
        train_run(small_config(epochs=30, seed=7), path, force=True)
    finally:
        release.join()
    with open_run(path) as run:
        assert run.config.seed == 7 and run.summary()["epochs_done"] == 30

    before = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer
    try:
        with pytest.raises(RunFileError, match="being written by another process"):
            train_run(small_config(epochs=20), path, force=True)
    finally:
        os.close(fd)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]


class _Crash(Callback):
    """Dies (the second Ctrl-C: stop at once, nothing since the last commit kept)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_eval(self, trainer, metrics):
        if trainer.epoch >= self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("how", ["in process", "SIGKILL"])
def test_resuming_from_the_epoch_0_keyframe_records_epoch_0_once(tmp_path, how):
    """A crash before the first periodic keyframe leaves the epoch-0 keyframe; the resumed
    run records every epoch once, exactly as an uninterrupted run does."""
    cfg = small_config(epochs=300)
    ref, path = tmp_path / "ref.h5", tmp_path / "r.h5"
    train_run(cfg, ref)
    if how == "in process":
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, path, callbacks=[_Crash(50)])
    else:
        flags = ["--p", "13", "--train-frac", "0.5", "--hidden", "24", "24", "--epochs", "300",
                 "--eval-every", "10", "--ckpt-every", "20", "--keyframe-every", "100",
                 "--no-progress", "--out", str(path)]
        res = _cli("train", *flags, env={**os.environ, "ZGDYN_TEST_KILL": "evaluate:6"})
        assert res.returncode == -signal.SIGKILL
    with open_run(path) as run:
        assert list(run.keyframe_epochs) == [0]
    resume_run(path)
    with open_run(ref) as a, open_run(path) as b:
        for attr in ("checkpoint_epochs", "keyframe_epochs"):
            np.testing.assert_array_equal(getattr(b, attr), getattr(a, attr))
        for k in a.metrics:
            np.testing.assert_array_equal(b.metrics[k], a.metrics[k])
        for k, v in a.params_at(300).items():
            assert torch.equal(b.params_at(300)[k], v)
    assert verify_run(path)["ok"]
    count("resumed before the first periodic keyframe, bitwise")


# -- an interrupted replay resumes as a replay ------------------------------------------------


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """A run of 300 epochs and its uninterrupted replay of epochs 100..200, every epoch."""
    d = tmp_path_factory.mktemp("replay")
    assert main(["train", *FLAGS, "--epochs", "300", "--out", str(d / "run.h5")]) == 0
    assert main([str(a) for a in ("replay", d / "run.h5", "--from", 100, "--to", 200,
                                  "--out", d / "w.h5", "--no-progress")]) == 0
    return d


@pytest.mark.parametrize("how", [["replay"], ["train", "--resume"]])
def test_an_interrupted_replay_resumes_as_a_replay(replayed, tmp_path, capsys, how):
    """SIGKILL a replay before its first keyframe after the start; asked again (the same
    replay, or train --resume), it goes on as the replay: the same window, bitwise."""
    d, out = replayed, tmp_path / "w.h5"
    args = ["replay", d / "run.h5", "--from", 100, "--to", 200, "--out", out, "--no-progress"]
    res = _cli(*args, env={**os.environ, "ZGDYN_TEST_KILL": "evaluate:60"})
    assert res.returncode == -signal.SIGKILL
    again = args if how == ["replay"] else [*how, "--out", out, "--no-progress"]
    assert main([str(a) for a in again]) == 0, capsys.readouterr().err
    with open_run(d / "w.h5") as ref, open_run(out) as run:
        np.testing.assert_array_equal(run.checkpoint_epochs, ref.checkpoint_epochs)
        assert run.checkpoint_epochs[0] == 60 and run.checkpoint_epochs[-1] == 200
        np.testing.assert_array_equal(run.metrics["epoch"], ref.metrics["epoch"])
        for e in (60, 150, 200):
            for k, v in ref.params_at(e).items():
                assert torch.equal(run.params_at(e)[k], v)
    assert verify_run(out)["ok"]
    assert main([str(a) for a in ("replay", d / "run.h5", "--from", 100, "--to", 300,
                                  "--out", out)]) == 2
    assert "not an interrupted replay" in capsys.readouterr().err
    count("interrupted replays resumed as replays")


# -- readers while a writer commits in a loop --------------------------------------------------


def test_readers_see_one_committed_state_while_it_trains(tmp_path):
    """verify and open_run, round after round while the writer commits (a keyframe every 10
    epochs, hundreds of commits a second): every verify finds the file intact, every summary
    agrees with the keyframes it lists."""
    path = tmp_path / "r.h5"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "train", "--p", "7", "--hidden", "8",
                             "--epochs", "1000000", "--eval-every", "10", "--ckpt-every", "10",
                             "--keyframe-every", "10", "--window", "0", "--no-progress",
                             "--out", str(path), "--force"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and verify_run(path)["checked"]["keyframes"]) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        rounds, seen, stop = 0, set(), time.monotonic() + 8
        while time.monotonic() < stop or rounds < 20:
            r = verify_run(path)
            assert r["ok"], (rounds, r["problems"])
            with open_run(path) as run:
                s = run.summary()
                assert s["epochs_done"] == run.keyframe_epochs[-1], rounds
                assert s["n_evals"] == s["n_checkpoints"] == s["epochs_done"] // 10 + 1
                run.params_at(int(run.keyframe_epochs[-1]))
            seen.add(s["epochs_done"])
            rounds += 1
        assert len(seen) > rounds // 2  # the writer went on committing meanwhile
        assert proc.poll() is None
        count("verify and open_run rounds while a writer commits", rounds)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert verify_run(path)["ok"]


# -- killed parents of process pools -----------------------------------------------------------

LONG_BASE = {"p": 7, "hidden": [8], "epochs": 300000, "eval_every": 50, "ckpt_every": 1000,
             "keyframe_every": 1000, "window": 0}


def _pool_workers(parent: int) -> list[int]:
    """The pids of `parent`'s multiprocessing workers (not its resource tracker)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat[1]) == parent and b"spawn_main" in cmd:
            pids.append(int(d))
    return pids


def _epochs_done(path) -> int:
    with open_run(path) as run:
        return run.summary()["epochs_done"]


def _reap(parent: subprocess.Popen, workers: list[int], err) -> None:
    """SIGKILL the parent and its workers wherever the test left them."""
    for pid in [parent.pid, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    parent.wait()
    err.close()


def _wait_gone(workers: list[int]) -> None:
    """Wait up to 30 s for the workers to exit; fail if any is left."""
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived their parent"


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_pool_suite(tmp_path, name: str, tables: str) -> tuple[subprocess.Popen, Path, Any]:
    """`zgdyn reproduce` of a suite of LONG_BASE runs with these [single] tables, on 2 jobs,
    in a child process of its own session: (the parent, its runs' folder, its stderr)."""
    spec = tmp_path / "suite.toml"
    spec.write_text(f'name = "{name}"\n[base]\n' + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in LONG_BASE.items() if k != "epochs") + tables)
    out = tmp_path / "out"
    err = open(tmp_path / "stderr", "w+")
    parent = subprocess.Popen([sys.executable, "-c", CHILD, "reproduce", "--suite", str(spec),
                               "--out", str(out), "--jobs", "2", "--no-progress"],
                              stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    return parent, out / "runs" / name, err


def _wait_for(parent: subprocess.Popen, workers: list[int], ready) -> list[int]:
    """Poll for up to 90 s until `ready()`; returns the parent's pool workers seen."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        workers = _pool_workers(parent.pid) or workers
        if ready():
            break
        time.sleep(0.1)
    return workers


def test_sigterm_stops_a_pool_whose_other_worker_is_idle(tmp_path):
    """SIGTERM when one worker is running and the other has no run left: the parent stops
    the running run at a keyframe and exits, instead of waiting for ever on a worker that
    blocked on the pool's queue lock (held by the idle worker the stop terminated)."""
    parent, runs, err = _start_pool_suite(
        tmp_path, "idle", "[[single]]\nzipf_s = [1.5]\nepochs = 300000\n"
        "[[single]]\nzipf_s = [0]\nepochs = 100\n")
    long_run, short_run = runs / "single-s1.5-seed42.h5", runs / "single-s0-seed42.h5"
    workers: list[int] = []
    try:
        workers = _wait_for(parent, workers, lambda: (
            long_run.exists() and _epochs_done(long_run) >= 2000 and short_run.exists()
            and _epochs_done(short_run) == 100))
        time.sleep(1.0)  # the short run's worker back in the pool's queue, idle
        os.kill(parent.pid, signal.SIGTERM)
        code = parent.wait(timeout=60)
        assert code == 130, (tmp_path / "stderr").read_text()
        _wait_gone(workers)
        with open_run(long_run) as run:
            s = run.summary()
            assert s["status"] == "interrupted" and 2000 <= s["epochs_done"] < 300000
        assert verify_run(long_run)["ok"]
        count("parents killed, their workers stopped at a keyframe")
    finally:
        _reap(parent, workers, err)


def test_sigterm_starts_no_run_the_pool_had_queued(tmp_path):
    """SIGTERM while two workers train and a third run waits in the pool's call queue
    (where a future can no longer be cancelled): each worker stops its run at a keyframe
    and starts nothing more, so the third run is never created and the parent exits at
    once, not after the stop's wait for workers (STOP_WAIT)."""
    from zgdyn.batch.execute import STOP_WAIT

    parent, folder, err = _start_pool_suite(tmp_path, "queued",
                                            "[single]\nzipf_s = [0, 1, 1.5]\nepochs = 300000\n")
    runs = {s: folder / f"single-s{s}-seed42.h5" for s in ("0", "1", "1.5")}
    workers: list[int] = []
    try:
        started = lambda: [p for p in runs.values() if p.exists()]
        workers = _wait_for(parent, workers, lambda: len(started()) == 2 and all(
            _epochs_done(p) >= 2000 for p in started()))
        (queued,) = [p for p in runs.values() if not p.exists()]
        t0 = time.monotonic()
        os.kill(parent.pid, signal.SIGTERM)
        code = parent.wait(timeout=STOP_WAIT)
        assert code == 130, (tmp_path / "stderr").read_text()
        assert time.monotonic() - t0 < STOP_WAIT / 4
        _wait_gone(workers)
        assert not queued.exists()
        for p in runs.values():
            if p != queued:
                assert _epochs_done(p) >= 2000 and verify_run(p)["ok"]
        count("parents killed, their workers stopped at a keyframe")
    finally:
        _reap(parent, workers, err)


@pytest.mark.parametrize("command,sig", [
    ("sweep", signal.SIGKILL), ("sweep", signal.SIGTERM),
    ("reproduce", signal.SIGKILL), ("reproduce", signal.SIGTERM)],
    ids=["sweep-SIGKILL", "sweep-SIGTERM", "reproduce-SIGKILL", "reproduce-SIGTERM"])
def test_workers_die_with_their_parent(tmp_path, command, sig):
    """Kill the parent of a 2-job pool: its workers stop at a keyframe (the run files marked
    interrupted), release their locks and exit, so that the next run can go on at once."""
    from zgdyn.store.locks import writer_active
    from zgdyn.store.writer import RunWriter
    out = tmp_path / "out"
    if command == "sweep":
        spec = tmp_path / "s.toml"
        spec.write_text('name = "orphans"\n[base]\n' + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in LONG_BASE.items())
            + "[grid]\nzipf_s = [0, 1.5]\n")
        args = ["sweep", spec, "--out", out]
        runs = [out / "runs" / f"zipf_s={s}.h5" for s in ("0", "1.5")]
    else:
        spec = tmp_path / "suite.toml"
        spec.write_text('name = "orphans"\n[base]\n' + "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in LONG_BASE.items() if k != "epochs")
            + "[single]\nzipf_s = [0, 1.5]\nepochs = 300000\n")
        args = ["reproduce", "--suite", spec, "--out", out]
        runs = [out / "runs" / "orphans" / f"single-s{s}-seed42.h5" for s in ("0", "1.5")]
    err = open(tmp_path / "stderr", "w+")  # not a pipe: orphaned workers would hold it open
    parent = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args), "--jobs", "2",
                               "--no-progress"], stdout=subprocess.DEVNULL, stderr=err,
                              start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            workers = _pool_workers(parent.pid)
            if len(workers) == 2 and all(p.exists() and _epochs_done(p) >= 1000 for p in runs):
                break
            time.sleep(0.1)
        assert len(workers) == 2, workers
        os.kill(parent.pid, sig)
        code = parent.wait(timeout=30)
        _wait_gone(workers)
        # SIGTERM is Ctrl-C: the parent waits for its workers' keyframes and exits 130
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), \
            (tmp_path / "stderr").read_text()
        for path in runs:
            assert not writer_active(path)
            with open_run(path) as run:
                s = run.summary()
                assert s["status"] == "interrupted" and 1000 <= s["epochs_done"] < 300000
            assert verify_run(path)["ok"]
            RunWriter.resume(path).close()  # the next run can take it at once
        count("parents killed, their workers stopped at a keyframe")
    finally:
        _reap(parent, workers, err)
