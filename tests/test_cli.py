import json
from pathlib import Path

import pytest

from helpers import count
from zgdyn.cli import main
from zgdyn.store.reader import open_run

SMALL = ["--p", "13", "--train-frac", "0.5", "--hidden", "16", "16", "--eval-every", "10",
         "--ckpt-every", "20", "--keyframe-every", "40", "--no-progress"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_json_reproduces_reference(capsys):
    code, out, _ = run_cli(capsys, "stats", "--p", 97, "--train-frac", 0.3, "--zipf-s", 0, 1,
                           1.5, 2, 3, "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [round(r["ess"], 2) for r in rows] == [2822.0, 44.17, 5.51, 2.5, 1.42]
    assert round(rows[2]["ratio"]) == 149912
    assert round(100 * rows[1]["top10_mass"], 1) == 73.0


def test_stats_table_text(capsys):
    code, out, _ = run_cli(capsys, "stats")
    assert code == 0
    assert "149,912" in out and "7,963,684" in out and "2.25e+10" in out
    assert "44.2" in out and "5.51" in out and "96.8%" in out and "38.8%" in out


def test_train_info_and_resume(tmp_path, capsys):
    out_path = tmp_path / "r.h5"
    code, out, _ = run_cli(capsys, "train", *SMALL, "--epochs", 60, "--zipf-s", 1.5,
                           "--out", out_path, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["epochs_done"] == 60 and summary["config"]["data"]["zipf_s"] == 1.5
    code, out, _ = run_cli(capsys, "train", "--resume", "--out", out_path, "--epochs", 100,
                           "--no-progress")
    assert code == 0 and "complete:" in out and "100 epochs" in out
    code, out, _ = run_cli(capsys, "info", out_path)
    assert code == 0 and "(a + b) mod 13" in out and "rank, s = 1.5" in out
    code, out, _ = run_cli(capsys, "info", out_path, "--json")
    assert json.loads(out)["n_checkpoints"] == 6


def test_train_from_toml_with_flag_override(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('seed = 5\n[data]\np = 11\nzipf_s = 1.0\n[schedule]\nepochs = 30\n'
                    '[model]\nhidden = [8]\n')
    out_path = tmp_path / "r.h5"
    code, _, _ = run_cli(capsys, "train", "--config", toml, "--zipf-s", 2.0, "--out", out_path,
                         "--no-progress")
    assert code == 0
    with open_run(out_path) as run:
        c = run.config
    assert (c.seed, c.data.p, c.data.zipf_s, c.model.hidden, c.schedule.epochs) == \
        (5, 11, 2.0, (8,), 30)


def test_two_phase_flags(tmp_path, capsys):
    out_path = tmp_path / "r.h5"
    code, out, _ = run_cli(capsys, "train", *SMALL, "--epochs", 100, "--switch-s", 3,
                           "--switch-at-epoch", 30, "--phase2-epochs", 20, "--out", out_path,
                           "--json")
    assert code == 0
    s = json.loads(out)
    assert s["switch_epoch"] == 30 and s["epochs_done"] == 50


BAD = [
    (["train", "--p", "1"], "p: must be an integer >= 2, got 1"),
    (["train", "--train-frac", "1.5"], "train_frac: must be a number in (0, 1)"),
    (["train", "--train-frac", "0"], "train_frac: must be a number in (0, 1)"),
    (["train", "--zipf-s", "-1"], "zipf_s: must be a number >= 0"),
    (["train", "--hidden", "0"], "hidden: must be one or more integers >= 1"),
    (["train", "--weighting", "bogus"], "invalid choice: 'bogus'"),
    (["train", "--init", "xavier"], "invalid choice: 'xavier'"),
    (["train", "--dtype", "float16"], "invalid choice: 'float16'"),
    (["train", "--device", "tpu"], "device: must be cpu | cuda | cuda:N"),
    (["train", "--lr", "-1"], "lr: must be a number > 0"),
    (["train", "--epochs", "0"], "epochs: must be an integer >= 1"),
    (["train", "--p", "seven"], "invalid int value: 'seven'"),
    (["train", "--ckpt-every", "30", "--keyframe-every", "100"], "keyframe_every: must be a multiple"),
    (["train", "--switch-s", "1"], "switch_s: must be given with exactly one of"),
    (["train", "--lr", "nan"], "lr: must be a number > 0"),
    (["stats", "--p", "1"], "p: must be an integer >= 2"),
    (["stats", "--zipf-s", "-2"], "zipf_s: must be a number >= 0"),
    (["info", "missing.h5"], "no such run file"),
    (["train", "--resume"], "--resume needs --out"),
    (["nonsense"], "invalid choice: 'nonsense'"),
]


def _exit_code(args):
    try:
        return main(args)
    except SystemExit as e:  # argparse's own errors
        return e.code


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_no_file(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code = _exit_code(args)
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing created, not even data/


def test_bad_toml_and_unknown_field(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\np = 3")
    code, _, err = run_cli(capsys, "train", "--config", bad)
    assert code == 2 and "not valid TOML" in err and err.count("\n") == 1
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[data]\nq = 3\n")
    code, _, err = run_cli(capsys, "train", "--config", unknown)
    assert code == 2 and "data.q: unknown field" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml", "unknown.toml"]


def test_refuses_to_clobber_and_non_runs(tmp_path, capsys):
    target = tmp_path / "r.h5"
    target.write_bytes(b"someone's data")
    code, _, err = run_cli(capsys, "train", *SMALL, "--epochs", 5, "--out", target)
    assert code == 2 and "already exists" in err
    assert target.read_bytes() == b"someone's data"
    code, _, err = run_cli(capsys, "info", target)
    assert code == 2 and "not an HDF5 file" in err
    code, _, err = run_cli(capsys, "train", "--resume", "--out", target)
    assert code == 2 and "not an HDF5 file" in err
    assert target.read_bytes() == b"someone's data"


def test_bench_rejects_zero_repeats(capsys):
    assert main(["bench", "--repeats", "0"]) == 2
    assert "repeats: must be an integer >= 1" in capsys.readouterr().err


def test_flags_are_checked_together_after_all_are_applied(tmp_path, capsys):
    """--lr 1 --wd 0.5 is valid (lr * wd < 1) though the default wd (1) is not with lr 1."""
    out = tmp_path / "v.h5"
    assert main(["train", "--lr", "1", "--wd", "0.5", "--p", "23", "--hidden", "8", "--epochs",
                 "1", "--out", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "1 epoch," in line and "never >= 95% test" in line and "at never" not in line
    assert main(["train", "--lr", "1", "--p", "23", "--hidden", "8", "--epochs", "1", "--out",
                 str(tmp_path / "w.h5"), "--no-progress"]) == 2
    assert "weight_decay: must be below 1 / lr" in capsys.readouterr().err
    # lists of values too: each member's lr meets its own wd
    assert main(["train", "--lr", "1", "0.5", "--wd", "0.5", "--p", "7", "--hidden", "4",
                 "--epochs", "1", "--out", str(tmp_path / "ens"), "--no-progress"]) == 0


def test_every_flag_of_every_command_has_help():
    import argparse

    from zgdyn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            if not a.help:
                missing.append(f"{name} {'/'.join(a.option_strings) or a.dest}")
    assert missing == []


def test_one_name_per_concept_with_the_old_spellings_kept(tmp_path, capsys):
    """--figure for a figure's path and --collapse-threshold for the detector everywhere;
    plot's --out and --epochs, perturb's --plot and --threshold still work, unlisted."""
    from zgdyn.cli import build_parser

    parser = build_parser()
    for argv in (["plot", "r.h5", "--figure", "f.png"], ["plot", "r.h5", "--out", "f.png"]):
        assert parser.parse_args(argv).figure == Path("f.png")
    assert parser.parse_args(["plot", "r.h5", "--figure", "f.png", "--epochs", "5"]).epochs \
        == parser.parse_args(["plot", "r.h5", "--figure", "f.png", "--checkpoints", "5"]).epochs
    for cmd in ("events", "fit", "scorecard"):
        new = parser.parse_args([cmd, "r.h5", "--collapse-threshold", "50"])
        old = parser.parse_args([cmd, "r.h5", "--threshold", "50"])
        assert new.threshold == old.threshold == 50.0
    assert parser.parse_args(["perturb", "r.h5", "--plot", "p.png"]).figure == Path("p.png")
    for cmd in ("plot", "perturb", "events"):
        text = parser._subparsers._group_actions[0].choices[cmd].format_help()
        assert "--threshold " not in text and "--plot " not in text and "--out " not in text


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "r.h5"
    assert main(["train", *SMALL, "--epochs", "40", "--out", str(path)]) == 0
    return path


HOSTILE = [
    (["train", "--threads", "0", "--epochs", "5"], "--threads: must be an integer >= 1, got 0"),
    (["train", "--threads", "-3", "--epochs", "5"], "--threads: must be an integer >= 1"),
    (["train", "--plugin", "", "--epochs", "5"], "--plugin '': must be a module's dotted name"),
    (["train", "--plugin", "..x", "--epochs", "5"], "--plugin '..x': must be a module's"),
    (["info", "/"], "/: is a directory, not a run file"),
    (["stats", "--seed", "-1"], "seed: must be an integer in [0, 2^32)"),
    (["analyze", "RUN", "--ref-epoch", "999999999999999999999", "--no-progress"],
     "no checkpoint at epoch 999999999999999999999"),
    (["hessian", "RUN", "--coupled-wd", "nan"], "--coupled-wd: must be a finite number"),
    (["hessian", "RUN", "--zipf-s", "inf"], "--zipf-s: must be a finite number"),
    (["saddle", "RUN", "--zipf-s", "0", "nan"], "--zipf-s: must be a finite number"),
    (["events", "RUN", "--threshold", "inf"], "threshold: must be a number > 1"),
    (["scorecard", "RUN", "--threshold", "nan"], "threshold: must be a number > 1"),
    (["perturb", "RUN", "--seed", "-1", "--epochs", "5"], "seed: must be an integer in"),
    (["plot", "RUN", "--from", "100", "--to", "5", "--out", "FIG"], "--from/--to: need from"),
    (["train", "--out", "DIR", "--force", "--epochs", "5"], "is a directory"),
]


@pytest.mark.parametrize("args,message", HOSTILE, ids=[" ".join(a) for a, _ in HOSTILE])
def test_hostile_input_is_one_line_and_changes_nothing(a_run, tmp_path, monkeypatch, capsys,
                                                       args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "DIR").mkdir()
    args = [str(a_run) if a == "RUN" else str(tmp_path / "f.png") if a == "FIG" else a
            for a in args]
    before = a_run.read_bytes()
    code = _exit_code(args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err
    assert a_run.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR"]
    assert not (a_run.parent / "r.h5-journal").exists()
    count("hostile command lines refused")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is here")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--device", "cuda", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device is available here" in err
    assert list(tmp_path.iterdir()) == []
    count("hostile command lines refused")


def test_deeply_nested_toml_is_one_line(tmp_path, capsys):
    toml = tmp_path / "deep.toml"
    toml.write_text("[data]\np = " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = run_cli(capsys, "train", "--config", toml, "--out", tmp_path / "r.h5")
    assert code == 2 and err.count("\n") == 1 and "nested too deeply" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.toml"]
    count("hostile command lines refused")


def test_a_250_byte_file_name_trains_and_resumes(tmp_path, capsys):
    """Its temporary file and its journal have names of their own, under 255 bytes."""
    path = tmp_path / ("n" * 247 + ".h5")
    assert run_cli(capsys, "train", *SMALL, "--epochs", 40, "--out", path)[0] == 0
    assert run_cli(capsys, "train", "--resume", "--out", path, "--epochs", 80)[0] == 0
    code, out, _ = run_cli(capsys, "verify", path)
    assert code == 0 and ": ok" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    count("hostile command lines refused")


def test_read_only_storage_is_one_line(a_run, tmp_path, capsys):
    """A run on a read-only file system: analyze, plot into it and train into it are refused
    in one line; info and verify still read it."""
    from helpers import mount_tmpfs, remount, umount
    ro = tmp_path / "ro"
    mount_tmpfs(ro, "4m")
    try:
        run = ro / "r.h5"
        run.write_bytes(a_run.read_bytes())
        remount(ro, "ro")
        for args, message in (
                (["analyze", run, "--no-progress"], "Read-only file system"),
                (["plot", run, "--out", ro / "f.png"], "Read-only file system"),
                (["train", *SMALL, "--epochs", 5, "--out", ro / "new.h5"], "Read-only file"),
                (["train", "--resume", "--out", run, "--epochs", 80], "Read-only file system")):
            code, _, err = run_cli(capsys, *args)
            assert code == 2 and err.count("\n") == 1 and message in err, (args, err)
        assert run.read_bytes() == a_run.read_bytes()
        assert sorted(p.name for p in ro.iterdir()) == ["r.h5"]
        assert run_cli(capsys, "info", run)[0] == 0
        assert run_cli(capsys, "verify", run)[0] == 0
        count("commands on read-only storage refused", 4)
    finally:
        umount(ro)


@pytest.mark.parametrize("argv,suite,digests", [
    (["demo"], "quick", None),
    (["reproduce", "--suite", "mechanism"], "mechanism", None),
    (["reproduce", "--suite", "mechanism", "--digests", "dig"], "mechanism", "dig")])
def test_demo_and_reproduce_hand_their_suite_and_digests_to_reproduce(tmp_path, monkeypatch,
                                                                     argv, suite, digests):
    """The command line up to the library call (which the slow demo test runs whole)."""
    import zgdyn.present.report as report

    class Called(Exception):
        pass

    def fake(name, out, *, seeds=None, **kw):
        raise Called(name, kw["digests"], kw["report_only"])

    monkeypatch.setattr(report, "reproduce", fake)
    with pytest.raises(Called) as e:
        main(argv + ["--out", str(tmp_path), "--no-progress"])
    name, dig, report_only = e.value.args
    assert name == suite and report_only is False
    assert (dig is None) if digests is None else (str(dig) == digests)
