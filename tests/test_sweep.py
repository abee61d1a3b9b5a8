"""Sweeps on tiny runs (p = 11): the local pool, a Ray cluster started here, resuming after
a SIGKILL, failing runs, the report and its phase grid."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import KILL_PREAMBLE, count, refusals
from zgdyn.cli import main
from zgdyn.core.config import ConfigError, ZgdynError, flatten
from zgdyn.store.runner import train_run
from zgdyn.batch.scorecard import scorecard
from zgdyn.store.reader import open_run
from zgdyn.batch.sweep import phase_grid, run_label, run_sweep, sweep_from_dict, sweep_report

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

BASE = {"p": 11, "train_frac": 0.5, "hidden": [16, 16], "lr": 3e-3, "epochs": 300,
        "eval_every": 10, "ckpt_every": 20, "keyframe_every": 100}
TINY = {"name": "tiny", "description": "four tiny runs", "base": BASE,
        "grid": {"zipf_s": [0, 1.5], "weight_decay": [0.3, 1]}}
LABELS = ["zipf_s=0-weight_decay=0.3", "zipf_s=0-weight_decay=1",
          "zipf_s=1.5-weight_decay=0.3", "zipf_s=1.5-weight_decay=1"]


def _toml(path, d):
    """Write a sweep table as TOML (flat values and one level of tables suffice here)."""
    def val(v):
        return json.dumps(v) if not isinstance(v, str) else f'"{v}"'
    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, (dict, list))
             or (isinstance(v, list) and not any(isinstance(x, dict) for x in v))]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += [f"[{k}]"] + [f"{a} = {val(b)}" for a, b in v.items()]
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            for x in v:
                lines += [f"[[{k}]]"] + [f"{a} = {val(b)}" for a, b in x.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _same_runs(dir_a, dir_b, labels=LABELS):
    """Every run of one sweep ends bitwise where the other's does, with equal metrics."""
    for label in labels:
        with open_run(dir_a / "runs" / f"{label}.h5") as a, \
                open_run(dir_b / "runs" / f"{label}.h5") as b:
            assert a.attrs["status"] == b.attrs["status"] == "complete"
            assert a.config == b.config
            np.testing.assert_array_equal(a.checkpoint_epochs, b.checkpoint_epochs)
            for e in a.checkpoint_epochs:
                for k, v in a.params_at(int(e)).items():
                    assert torch.equal(b.params_at(int(e))[k], v), (label, e, k)
            for k in ("train_loss", "test_acc", "adam_scale"):
                np.testing.assert_array_equal(a.metrics[k], b.metrics[k])


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "tiny"
    result = run_sweep(sweep_from_dict(TINY), out, jobs=1)
    return out, result


def test_a_local_sweep_runs_every_grid_point_as_an_ordinary_run(local, tmp_path):
    out, result = local
    assert [r["label"] for r in result["runs"]] == LABELS
    assert not result["failed"] and {r["planned"] for r in result["runs"]} == {"train"}
    assert sorted(p.stem for p in (out / "runs").glob("*.h5")) == LABELS
    for r in result["runs"]:
        with open_run(out / r["path"]) as run:
            flat = flatten(run.config)
        assert {k: flat[k] for k in BASE if k != "hidden"} == \
            {k: v for k, v in BASE.items() if k != "hidden"}
        assert flat["hidden"] == (16, 16)
        assert {k: flat[k] for k in r["fields"]} == r["fields"]
        assert run_label(r["fields"]) == r["label"]
    # the sweep's run is the run `zgdyn train` makes of the same config, bitwise
    with open_run(out / "runs" / f"{LABELS[3]}.h5") as run:
        cfg = run.config
    (tmp_path / "runs").mkdir()
    train_run(cfg, tmp_path / "runs" / f"{LABELS[3]}.h5")
    _same_runs(out, tmp_path, LABELS[3:])
    desc = json.loads((out / "sweep.json").read_text())
    assert desc["format"] == "zgdyn.batch.sweep" and desc["axes"] == ["zipf_s", "weight_decay"]
    assert [r["ok"] for r in desc["runs"]] == [True] * 4


def test_a_finished_sweep_is_skipped(local):
    out, _ = local
    again = run_sweep(sweep_from_dict(TINY), out, jobs=2)
    assert {(r["planned"], r["seconds"]) for r in again["runs"]} == {("done", 0.0)}


def test_the_progress_bar_counts_runs_and_model_epochs(tmp_path, capsys):
    run_sweep(sweep_from_dict(TINY), tmp_path, jobs=2, progress=True)
    err = capsys.readouterr().err
    assert "tiny: 4 runs" in err and "1.20k/1.20k" in err and "runs=4/4" in err


def test_a_ray_cluster_gives_identical_results(local, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    out, _ = local
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(sweep_from_dict(TINY), tmp_path, executor="ray", progress=True)
    finally:
        ray.shutdown()
    assert not result["failed"] and result["executor"] == "ray"
    _same_runs(out, tmp_path)
    err = capsys.readouterr().err
    assert "1.20k/1.20k" in err and "runs=4/4" in err  # progress came back from the tasks
    assert [r["card"] for r in sweep_report(tmp_path)["rows"]] != []


CHILD = KILL_PREAMBLE + """
from zgdyn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_sweep_killed_midway_resumes_to_the_same_bits(local, tmp_path):
    out, _ = local
    toml = _toml(tmp_path / "tiny.toml", TINY)
    sweep_dir = tmp_path / "sweep"
    # SIGKILL at the 27th fsync: inside a commit of the second run (a run of this sweep
    # makes 19 fsyncs: its new file, then three in each of six commits)
    env = {**os.environ, "ZGDYN_TEST_KILL": "fsync:27"}
    proc = subprocess.run([sys.executable, "-c", CHILD, "sweep", str(toml), "--out",
                           str(sweep_dir), "--jobs", "1", "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with open_run(sweep_dir / "runs" / f"{LABELS[0]}.h5") as run:
        assert run.attrs["status"] == "complete"
    with open_run(sweep_dir / "runs" / f"{LABELS[1]}.h5") as run:
        assert run.attrs["status"] == "running" and 0 <= int(run.attrs["epochs_done"]) < 300
    assert not (sweep_dir / "runs" / f"{LABELS[2]}.h5").exists()
    result = run_sweep(sweep_from_dict(TINY), sweep_dir, jobs=1)
    planned = [r["planned"] for r in result["runs"]]
    assert planned == ["done", "resume", "train", "train"] and not result["failed"]
    _same_runs(out, sweep_dir)


def test_a_failing_run_is_reported_while_the_others_finish(tmp_path, capsys):
    d = {"name": "mixed", "base": BASE,
         "grid": {"weight_decay": [1, 5000]},  # lr * wd >= 1: invalid settings
         "points": [{"hook": ""}, {"hook": "not_registered"}]}  # fails when it starts
    toml = _toml(tmp_path / "mixed.toml", d)
    assert main(["sweep", str(toml), "--out", str(tmp_path / "s"), "--jobs", "2",
                 "--no-progress"]) == 1
    out = capsys.readouterr().out
    result = {r["label"]: r for r in json.loads(
        (tmp_path / "s" / "sweep.json").read_text())["runs"]}
    assert list(result) == ["weight_decay=1-hook=", "weight_decay=5000-hook=",
                            "weight_decay=1-hook=not_registered",
                            "weight_decay=5000-hook=not_registered"]
    assert result["weight_decay=1-hook="]["ok"]
    assert "below 1 / lr" in result["weight_decay=5000-hook="]["error"]
    assert "not registered" in result["weight_decay=1-hook=not_registered"]["error"]
    assert out.count("failed: ") == 3 and "\n" not in result["weight_decay=1-hook=not_"
                                                            "registered"]["error"]
    with open_run(tmp_path / "s" / "runs" / "weight_decay=1-hook=.h5") as run:
        assert run.attrs["status"] == "complete"
    rows = {r["label"]: r["status"] for r in sweep_report(tmp_path / "s")["rows"]}
    assert rows == {"weight_decay=1-hook=": "complete", "weight_decay=5000-hook=": "invalid",
                    "weight_decay=1-hook=not_registered": "failed",
                    "weight_decay=5000-hook=not_registered": "invalid"}


def test_report_table_scorecards_and_figure(local, capsys):
    out, _ = local
    assert main(["sweep-report", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [x["label"] for x in r["rows"]] == LABELS
    for x in r["rows"]:
        assert x["status"] == "complete"
        assert x["card"] == json.loads(json.dumps(scorecard(x["path"]).to_dict(), default=str))
    phase = r["phase"]
    assert (phase["x"], phase["y"], phase["xs"], phase["ys"]) == \
        ("zipf_s", "weight_decay", [0, 1.5], [0.3, 1])
    cards = {(x["fields"]["zipf_s"], x["fields"]["weight_decay"]): x["card"] for x in r["rows"]}
    for i, wd in enumerate(phase["ys"]):
        for j, s in enumerate(phase["xs"]):
            assert phase["frac_above_95"][i][j] == cards[s, wd]["frac_above_95"]
            assert phase["collapses_per_100k"][i][j] == cards[s, wd]["collapses_per_100k"]
    assert (out / "phase_diagram.png").stat().st_size > 10_000
    assert (out / "phase_diagram.pdf").exists()
    assert main(["sweep-report", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("complete") == 4 and "first>=95%" in text and "period" in text
    assert main(["sweep-report", str(out), "--x", "lr"]) == 2
    assert "not a field the sweep varies" in capsys.readouterr().err


def test_phase_grid_averages_planted_cards():
    def row(s, wd, seed, coll, frac):
        return {"fields": {"zipf_s": s, "weight_decay": wd, "seed": seed},
                "card": {"collapses_per_100k": coll, "frac_above_95": frac}}
    rows = [row(1, 1, 1, 2.0, 0.5), row(1, 1, 2, 4.0, None), row(2, 1, 1, 6.0, 0.25),
            row(1, 3, 1, 1.0, 1.0), {"fields": {"zipf_s": 2, "weight_decay": 3, "seed": 1},
                                     "card": None}]
    g = phase_grid(rows, "zipf_s", "weight_decay")
    assert (g["xs"], g["ys"]) == ([1, 2], [1, 3])
    assert g["collapses_per_100k"] == [[3.0, 6.0], [1.0, None]]
    assert g["frac_above_95"] == [[0.5, 0.25], [1.0, None]]
    assert g["n"] == [[2, 1], [1, 0]]


def test_a_directory_holding_another_sweep_is_refused_untouched(local, tmp_path, capsys):
    out, _ = local
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    toml = _toml(tmp_path / "other.toml", {**TINY, "name": "other"})
    assert main(["sweep", str(toml), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds another sweep ('tiny'" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ZgdynError, match="not a sweep directory"):
        run_sweep(sweep_from_dict(TINY), tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("change,message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"grid": {"zipf": [1]}}, r"\[grid\] zipf: unknown config field"),
    ({"base": {"wd": 1}}, r"\[base\] wd: unknown config field"),
    ({"grid": {"zipf_s": []}}, "non-empty list"),
    ({"grid": {"zipf_s": 1}}, "non-empty list"),
    ({"grid": {"zipf_s": [1, 1]}}, "a value twice"),
    ({"points": [{"zipf_s": 1}]}, "set by both"),
    ({"points": [{}]}, r"\[\[points\]\]"),
    ({"resources": {"gpus": 1}}, "unknown key 'gpus'"),
    ({"resources": {"num_cpus": 0}}, "num_cpus: must be a number >= 1"),
    ({"name": "../up"}, "name"),
    ({"grid": {"lr": [-1, -2]}}, "every run is invalid, e.g. lr=-1: lr: must be"),
])
def test_bad_sweep_files_are_one_line_errors(change, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        sweep_from_dict({**TINY, **change})
    toml = _toml(tmp_path / "bad.toml", {**TINY, **change})
    assert main(["sweep", str(toml), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_ray_missing_or_unreachable_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    toml = _toml(tmp_path / "t.toml", TINY)
    assert main(["sweep", str(toml), "--out", str(tmp_path / "o"), "--executor",
                 "ray"]) == 2
    assert "pip install 'zgdyn[cluster]'" in capsys.readouterr().err
    assert main(["sweep", str(toml), "--out", str(tmp_path / "o"), "--address", "x:1"]) == 2
    assert "only with executor ray" in capsys.readouterr().err


def test_the_shipped_sweeps_are_valid():
    from pathlib import Path

    from zgdyn.batch.sweep import load_sweep
    files = sorted((Path(__file__).parent.parent / "experiments").glob("sweep_*.toml"))
    assert files
    for path in files:
        sweep = load_sweep(path)
        assert all(r.config is not None for r in sweep.runs())
    pd = load_sweep(files[0].parent / "sweep_phase_diagram.toml")
    assert pd.grid == {"zipf_s": [0, 0.5, 1, 1.25, 1.5, 2], "weight_decay": [0.3, 1, 3]}
    assert len(pd.runs()) == 18 and pd.runs()[0].config.data.p == 97


BAD_SWEEPS = [
    ({"name": "empty"}, "varies nothing"),
    ({"name": "e", "base": {"epochs": 10}}, "varies nothing"),
    ({"name": "e", "grid": {}}, "varies nothing"),
    ({"name": "m", "grid": {"zipf_s": list(range(100)), "lr": [i * 1e-4 for i in
                                                              range(1, 101)],
                            "seed": list(range(100))}},
     "1,000,000 runs (100 x 100 x 100 grid values x 1 points), more than 10,000; pass --force"),
    ({"name": "c", "grid": {"zipf_s": [0]}, "resources": {"num_cpus": 1e300}},
     "num_cpus: must be a number >= 1 and <= 1024"),
]


def test_sweeps_that_would_run_the_wrong_thing_are_refused(tmp_path):
    """An empty sweep (it would start one full default run), a million-run grid (planned
    without a word), an absurd resource request: one line each, nothing written."""
    cases = [["sweep", str(_toml(tmp_path / f"s{k}.toml", table)), "--out", "out", "--jobs",
              "1", "--no-progress"] for k, (table, _) in enumerate(BAD_SWEEPS)]
    for (table, message), (code, err, files) in zip(BAD_SWEEPS, refusals(cases, tmp_path / "r")):
        assert code == 2 and err.count("\n") == 1 and message in err, (table["name"], code, err)
        assert files == []
        count("bad sweeps and suites refused")


def test_labels_tell_every_float_apart():
    sweep = sweep_from_dict({**TINY, "grid": {"zipf_s": [0.1234567, 0.1234568, 1.5, 1e-5]}})
    assert [r.label for r in sweep.runs()] == ["zipf_s=0.1234567", "zipf_s=0.1234568",
                                               "zipf_s=1.5", "zipf_s=1e-05"]


@pytest.mark.parametrize("text", ['{"format": "zgdyn.batch.sweep", "name": "tiny"}',
                                  '{"format": "zgdyn.batch.sweep", "name": "tiny", "axes": [], '
                                  '"runs": [{"label": "x", "fields": {}, "path": "../../x"}]}',
                                  "[" * 100_000 + "]" * 100_000])
def test_a_malformed_sweep_json_is_one_line(tmp_path, capsys, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(text)
    for args in (["sweep-report", str(out)],
                 ["sweep", str(_toml(tmp_path / "s.toml", TINY)), "--out", str(out)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "sweep.json" in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json"]
    count("bad sweeps and suites refused")
