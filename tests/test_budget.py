"""The resource estimates against real files and processes, and the refusals they make."""

import pytest

from helpers import count, mount_tmpfs, refusals, small_config, umount
from zgdyn import Config
from zgdyn.cli import main
from zgdyn.core.config import ConfigError
from zgdyn.store.runner import train_run

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop


def budget():
    import zgdyn.store.budget
    return zgdyn.store.budget


@pytest.mark.parametrize("changes", [{}, {"ckpt_every": 10, "keyframe_every": 50},
                                     {"hidden": (64,), "dtype": "float64"}])
def test_the_disk_estimate_matches_real_files(tmp_path, changes):
    """The estimate from the documented recording costs, against the file a run writes."""
    cfg = small_config(epochs=600, window=0, **changes)
    path = tmp_path / "r.h5"
    train_run(cfg, path)
    real, estimate = path.stat().st_size, budget().disk_bytes(cfg)
    assert 0.9 * real <= estimate <= 1.15 * real, (real, estimate)


def test_the_disk_estimate_at_the_defaults_is_the_documented_size():
    """A 30,000-epoch run at the defaults writes 29.5 MB (README); 500k epochs about 0.48 GB."""
    disk_bytes = budget().disk_bytes
    assert abs(disk_bytes(Config()) / 29.5e6 - 1) < 0.05
    assert abs(disk_bytes(Config().replace(epochs=500_000)) / 0.48e9 - 1) < 0.05


def test_the_memory_estimate_covers_a_real_process(tmp_path):
    """The peak resident memory of a run's process stays below its estimate."""
    import subprocess
    import sys
    # VmHWM: the peak of this process's own memory (ru_maxrss would carry over the peak of
    # the pytest process it was forked from, across the exec)
    code = ("import sys; from zgdyn.cli import main; main(sys.argv[1:]); "
            "print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') "
            "if l.startswith('VmHWM:')))")
    args = ["train", "--p", "31", "--hidden", "64", "64", "--epochs", "100", "--window", "20",
            "--threads", "1",
            "--no-progress", "--json", "--out", str(tmp_path / "r.h5")]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    peak = int(res.stdout.strip().splitlines()[-1])
    cfg = Config().replace(p=31, hidden=(64, 64), epochs=100, window=20)
    b = budget()
    assert peak < b.memory_bytes(cfg), (b.fmt_bytes(peak), b.fmt_bytes(b.memory_bytes(cfg)))
    assert peak > 100e6  # it measured a process that imported torch, not an empty one


REFUSED = [
    (["--p", "100000"], "memory: this run needs about"),
    (["--p", "9" * 201], "p: must be below 2^31"),
    (["--hidden", "100000000"], "memory: this run needs about"),
    (["--window", "100000"], "memory: this run needs about"),
    (["--epochs", "10000000", "--ckpt-every", "1", "--keyframe-every", "5000"],
     "disk: this run would write about 2.16 TB"),
]
def test_runs_the_machine_cannot_hold_are_refused_before_anything(tmp_path):
    cases = [["train", *args, "--no-progress"] for args, _ in REFUSED]
    for (args, message), (code, err, files) in zip(REFUSED, refusals(cases, tmp_path)):
        assert code == 2 and err.count("\n") == 1 and message in err, (args, code, err)
        assert files == [], args
        count("configs refused by the resource estimate")


def test_toml_p_at_int64_max_is_refused(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text("[data]\np = 9223372036854775807\n")
    assert main(["train", "--config", str(toml), "--out", str(tmp_path / "r.h5")]) == 2
    assert "p: must be below 2^31" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_a_run_that_cannot_fit_on_a_small_disk_needs_force(tmp_path, capsys):
    """On a 1 MB file system: refused with the sizes, nothing written; --force starts it."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "1m")
    try:
        flags = ["train", "--p", "11", "--hidden", "16", "16", "--epochs", "3000",
                 "--ckpt-every", "1", "--keyframe-every", "100", "--no-progress",
                 "--out", str(disk / "r.h5")]
        assert main(flags) == 2
        err = capsys.readouterr().err
        assert "disk: this run would write about" in err and "free; raise --ckpt-every" in err
        assert list(disk.iterdir()) == []
        assert main([*flags[:-2], "--epochs", "10", "--out", str(disk / "r.h5")]) == 0
        capsys.readouterr()
    finally:
        umount(disk)
    count("configs refused by the resource estimate")


def test_force_overrides_the_disk_estimate_never_memory(tmp_path):
    check_runs, memory_bytes, machine_memory = (budget().check_runs, budget().memory_bytes,
                                                budget().machine_memory)
    huge = Config().replace(p=20000)
    with pytest.raises(ConfigError, match="memory"):
        check_runs([huge], tmp_path, force_disk=True)
    long = Config().replace(epochs=10_000_000, ckpt_every=1, keyframe_every=5000)
    with pytest.raises(ConfigError, match="disk"):
        check_runs([long], tmp_path)
    check_runs([long], tmp_path, force_disk=True)
    assert memory_bytes(huge) > machine_memory()
