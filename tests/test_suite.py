"""Suites, the two-phase table, the scorecard and the report, on a small task (p = 23)
that shows the essay's two-phase split in seconds: after grokking, a switch to s = 1
holds (phase-2 test accuracy near 100%) and a switch to s = 3 collapses (near 5%)."""

import json
from pathlib import Path
import os

import numpy as np
import pytest
import torch

from helpers import StopAt, count, small_config
from zgdyn.cli import main
from zgdyn.core.config import ConfigError, ZgdynError
from zgdyn.present.report import MARKER, write_report
from zgdyn.store.runner import train_run
from zgdyn.batch.scorecard import Scorecard, aggregate, scorecard
from zgdyn.store.reader import open_run
from zgdyn.batch.execute import execute
from zgdyn.batch.suite import plan, run_suite, suite_from_dict
from zgdyn.core.train import MetricsLog, Trainer

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

BASE = {"p": 23, "train_frac": 0.8, "hidden": [48, 48], "lr": 3e-3, "eval_every": 50,
        "ckpt_every": 50, "keyframe_every": 500}
TINY = {"name": "tiny", "seeds": [1, 2], "base": BASE,
        "single": {"zipf_s": [0], "epochs": 5000},
        "two_phase": {"switch_s": [1, 3], "switch_at_test_acc": 0.99, "epochs": 6000,
                      "phase2_epochs": 1500},
        "saddle": {"exponents": [0, 3]},
        "perturb": {"zipf_s": [3], "eps": [1e-6], "epochs": 12}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    suite = suite_from_dict(TINY)
    result = run_suite(suite, out, jobs=1, threads=1)
    return suite, out, result


def test_two_phase_split_as_in_the_essay(tiny):
    _, _, result = tiny
    assert not result.errors
    rows = {(r["table"], r["s"]): r for r in result.tables}
    assert rows[("two_phase", 1.0)]["n_runs"] == 2
    # the essay: 94.8% at s = 1 and 0.3% at s = 3
    assert rows[("two_phase", 1.0)]["phase2_mean_test"]["mean"] > 0.85
    assert rows[("two_phase", 3.0)]["phase2_mean_test"]["mean"] < 0.10
    assert rows[("two_phase", 3.0)]["phase2_first_below_50"]["n"] == 2
    assert rows[("two_phase", 1.0)]["phase2_first_below_50"]["never"] == 2
    assert rows[("single", 0.0)]["first_95"]["n"] == 2  # both seeds grok


def test_scorecard_against_the_in_memory_run(tiny):
    """The card read from the file equals what the trainer saw, computed independently."""
    suite, out, result = tiny
    spec = next(r for r in suite.runs(out) if r.table == "two_phase" and r.s == 3)
    log = MetricsLog()
    trainer = Trainer(spec.config)
    trainer.run([log])
    e, te = log.array("epoch"), log.array("test_acc")
    card = scorecard(spec.path)
    assert card.switch_epoch == trainer.switch_epoch
    after = te[e > trainer.switch_epoch]
    assert card.phase2_mean_test == pytest.approx(after.mean(), rel=1e-12)
    assert card.phase2_std_test == pytest.approx(after.std(), rel=1e-12)
    assert card.phase2_frac_below_50 == pytest.approx(np.mean(after < 0.5), rel=1e-12)
    assert card.phase2_epochs == spec.config.schedule.phase2_epochs
    assert card.first_95 == int(e[np.argmax(te >= 0.95)])


def test_scorecards_round_trip_through_their_json_form(tiny):
    _, out, result = tiny
    paths = sorted(Path(out).rglob("*.h5"))
    assert len(paths) == len(result.cards) >= 2
    for path in paths:
        card = scorecard(path)
        d = json.loads(json.dumps(card.to_dict()))
        assert Scorecard.from_dict(d) == card
        assert ("phase2_epochs" in d) == (card.switch_epoch is not None)
        assert list(d)[:3] == ["path", "status", "seed"]


def test_suite_result_round_trips_through_its_json_form(tiny):
    """The suite's typed result, its saddle table and perturbations included, read back
    from its JSON form equals itself; the JSON keeps the keys `--json` always printed."""
    from zgdyn.batch.results import SuiteResult

    _, _, result = tiny
    d = json.loads(json.dumps(result.to_dict()))
    back = SuiteResult.from_dict(d)
    assert back == result
    assert back.saddle.rows[0] == result.saddle.rows[0] and back.cards == result.cards
    assert list(d) == ["suite", "out", "tasks", "results", "errors", "cards", "tables",
                       "anchor", "anchor_epoch", "saddle", "perturb", "anchor_weight_decay",
                       "stats", "seconds", "jobs", "threads", "mechanism"]
    assert "lambda" in d["perturb"] and "stored" not in d["saddle"]
    with pytest.raises(KeyError, match="unknown fields"):
        SuiteResult.from_dict({**d, "tabels": []})


def test_aggregate_planted():
    base = dict(path="x.h5", status="complete", zipf_s=1.5, switch_s=None, dtype="float32",
                hook=None, epochs_done=1000, n_evals=10, frac_above_95=None, collapses=0,
                collapse_epochs=(), collapses_per_100k=None, period_mean=None,
                final_test_acc=None, switch_epoch=None)
    cards = [Scorecard(**base, seed=1, first_95=100, phase2_mean_test=0.5),
             Scorecard(**base, seed=2, first_95=300, phase2_mean_test=None),
             Scorecard(**base, seed=3, first_95=None, phase2_mean_test=0.7)]
    a = aggregate(cards)
    assert a["first_95"] == {"mean": 200.0, "std": pytest.approx(141.4213562373), "n": 2,
                             "never": 1}
    assert a["phase2_mean_test"]["mean"] == pytest.approx(0.6)
    assert a["collapses_per_100k"] == {"mean": None, "std": None, "n": 0, "never": 3}


def test_saddle_and_perturbation_ran_at_the_grokked_point(tiny):
    _, _, result = tiny
    sd, pt = result.saddle, result.perturb
    assert [r.zipf_s for r in sd.rows] == [0.0, 3.0]
    assert sd.rows[1].growth_rate > sd.rows[0].growth_rate
    assert {r.direction for r in pt.rows} == {"theta_m", "hessian", "random"}
    theta = pt.predictions[0].theta_norm
    for r in pt.rows:  # every direction starts at the same distance, eps * |theta|
        assert r.start == pytest.approx(1e-6 * theta, rel=1e-9)


def test_report_lists_the_essays_numbers_beside_ours(tiny):
    _, out, result = tiny
    path = write_report(result, out)
    text = path.read_text()
    assert text.startswith(MARKER)
    for essay in ("94.8%", "0.3%", "14,000", "2,822", "149,912"):  # tables 3, 2 and 1
        assert essay in text
    for fig in ("grokking", "two-phase", "perturb"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 10_000
        assert f"figures/{fig}.png" in text
    from zgdyn.present.report_sections import _ms
    row = next(r for r in result.tables if r["table"] == "two_phase" and r["s"] == 3.0)
    assert f"| {_ms(row['phase2_frac_below_50'], pct=True)} |" in text  # over both seeds


def test_a_finished_suite_is_skipped_and_reports_again(tiny):
    suite, out, result = tiny
    tasks = plan(suite.runs(out))
    assert {t.action for t in tasks} == {"done"}
    again = run_suite(suite, out, jobs=1, threads=1)
    assert {(r["action"], r["seconds"]) for r in again.results} == {("done", 0.0)}
    assert again.tables == result.tables
    assert again.saddle.stored  # read back, not recomputed
    assert [r.converged for r in again.saddle.rows] == \
        [r.converged for r in result.saddle.rows]
    from zgdyn.cli.text import format_saddle
    assert format_saddle(again.saddle) == format_saddle(result.saddle)
    assert [r.growth_rate for r in again.saddle.rows] == \
        [r.growth_rate for r in result.saddle.rows]
    assert again.perturb.rows == result.perturb.rows


def test_an_interrupted_run_is_resumed_bitwise(tmp_path, tiny):
    suite, out, _ = tiny
    spec = next(r for r in suite.runs(tmp_path) if r.table == "two_phase" and r.s == 3)
    spec.path.parent.mkdir(parents=True)
    torch.set_num_threads(1)
    train_run(spec.config, spec.path, callbacks=[StopAt(2600)])  # after the switch
    tasks = [t for t in plan(suite.runs(tmp_path)) if t.spec.path == spec.path]
    assert tasks[0].action == "resume" and "interrupted" in tasks[0].note
    res = execute(tasks, jobs=1, threads=1)
    assert res[0]["ok"], res
    reference = next(r for r in suite.runs(out) if r.path.name == spec.path.name).path
    with open_run(spec.path) as a, open_run(reference) as b:
        assert a.attrs["status"] == "complete"
        e = int(b.checkpoint_epochs[-1])
        for k, v in b.params_at(e).items():
            assert torch.equal(a.params_at(e)[k], v)
        np.testing.assert_array_equal(a.metrics["test_acc"], b.metrics["test_acc"])
    count("suite runs resumed bitwise")


def test_a_file_with_another_config_is_refused_untouched(tmp_path):
    suite = suite_from_dict(TINY)
    spec = suite.runs(tmp_path)[0]
    spec.path.parent.mkdir(parents=True)
    train_run(spec.config.replace(lr=1e-3, epochs=20), spec.path)
    before = spec.path.read_bytes()
    with pytest.raises(ZgdynError, match="another config .lr = 0.001"):
        run_suite(suite, tmp_path)
    assert spec.path.read_bytes() == before


def test_a_suite_that_says_analyze_false_scores_its_runs_without_analyzing_them(tmp_path):
    suite = suite_from_dict({"name": "plain", "seeds": [1], "analyze": False,
                             "base": {"p": 7, "hidden": [8], "eval_every": 10,
                                      "ckpt_every": 50, "keyframe_every": 50},
                             "single": {"zipf_s": [0, 1.5], "epochs": 100},
                             "saddle": {"exponents": [0]}})
    result = run_suite(suite, tmp_path)
    assert not result.errors and len(result.cards) == 2 and result.saddle is None
    for spec in suite.runs(tmp_path):
        with open_run(spec.path) as run:
            assert run.analysis("trajectory") is None
        assert result.card(str(spec.path)) == scorecard(spec.path)


def test_longer_epochs_extend_a_finished_run(tmp_path):
    d = {**TINY, "two_phase": None, "saddle": None, "perturb": None, "seeds": [1]}
    d = {k: v for k, v in d.items() if v is not None}
    short = suite_from_dict({**d, "single": {"zipf_s": [0], "epochs": 200}})
    run_suite(short, tmp_path, analyze=False, threads=1)
    longer = suite_from_dict({**d, "single": {"zipf_s": [0], "epochs": 400}})
    (task,) = plan(longer.runs(tmp_path))
    assert task.action == "resume" and task.changes == {"epochs": 400}
    run_suite(longer, tmp_path, analyze=False, threads=1)
    with open_run(task.spec.path) as run:
        assert int(run.attrs["epochs_done"]) == 400


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path):
    d = {"name": "mixed", "seeds": [1], "base": {**BASE, "epochs": 100},
         "variants": {"ok": {}, "bad": {"hook": "not_registered"}},
         "single": {"zipf_s": [0, 1]}}
    result = run_suite(suite_from_dict(d), tmp_path, analyze=False, threads=1)
    failed = {os.path.basename(p) for p in result.errors}
    assert failed == {"bad-single-s0-seed1.h5", "bad-single-s1-seed1.h5"}
    assert all("not registered" in e for e in result.errors.values())
    assert len(result.cards) == 2 and all(c.status == "complete"
                                             for c in result.cards)


def test_process_pool_equals_in_process(tmp_path):
    """jobs = 2 (spawned workers, 1 thread each) gives the same bits as jobs = 1."""
    d = {"name": "pool", "seeds": [1], "base": {**BASE, "epochs": 300},
         "single": {"zipf_s": [0, 2]}}
    a = run_suite(suite_from_dict(d), tmp_path / "a", jobs=1, threads=1, analyze=False)
    b = run_suite(suite_from_dict(d), tmp_path / "b", jobs=2, threads=1, analyze=False)
    assert not a.errors and not b.errors
    for ca, cb in zip(a.cards, b.cards):
        with open_run(ca.path) as ra, open_run(cb.path) as rb:
            for k, v in ra.params_at(300).items():
                assert torch.equal(rb.params_at(300)[k], v)


@pytest.mark.parametrize("change,message", [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"seeds": [1, 1]}, "distinct"),
    ({"name": "../x"}, "name"),
    ({"single": {"epochs": 10}}, r"\[single\] must be a table with zipf_s"),
    ({"single": {"zipf_s": [0], "lr": -1}}, r"\[single\]: lr"),
    ({"single": {"zipf_s": [2]}}, "add 0 to"),
    ({"perturb": {"eps": [1e-3], "typo": 1}}, "unknown key 'typo'"),
    ({"perturb": {"eps": [2.0]}}, r"\[perturb\] eps"),
    ({"perturb": {"epochs": 2}}, r"\[perturb\] epochs"),
    ({"perturb": {"directions": ["up"]}}, r"\[perturb\] directions"),
    ({"saddle": {"exponents": ["a"]}}, "exponents"),
    ({"analyze": "yes"}, "analyze: must be true or false, got 'yes'"),
    ({"mechanism": {}}, r"\[mechanism\] compares controls of one single-phase run: give "
     r"\[single\] one zipf_s and no \[two_phase\] \(got zipf_s \['0'\] and a "
     r"\[two_phase\] table\)"),
])
def test_bad_suites_are_one_line_config_errors(change, message):
    with pytest.raises(ConfigError, match=message) as e:
        suite_from_dict({**TINY, **change})
    assert "\n" not in str(e.value)


def test_cli_two_phase_table_and_errors(tmp_path, capsys):
    args = ["two-phase", "--switch-s", "1", "3", "--seeds", "1", "--p", "23",
            "--train-frac", "0.8", "--hidden", "48", "48", "--lr", "3e-3", "--epochs", "6000",
            "--phase2-epochs", "600", "--eval-every", "50", "--ckpt-every", "50",
            "--keyframe-every", "500", "--out", str(tmp_path), "--jobs", "1",
            "--threads", "1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "to test < 50%" in out and "94.80%" in out  # the essay's value beside ours
    assert main(args + ["--json"]) == 0  # now all skipped
    got = json.loads(capsys.readouterr().out)
    s3 = next(r for r in got["tables"] if r["s"] == 3.0)
    assert s3["phase2_mean_test"]["mean"] < 0.5
    assert main(["two-phase", "--switch-s", "-1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "switch_s" in err
    assert not (tmp_path / "x").exists()


def test_cli_reproduce_errors(tmp_path, capsys):
    assert main(["reproduce", "--suite", "no_such_suite", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "known suites" in err and "quick" in err
    (tmp_path / "REPORT.md").write_text("my notes\n")
    suite = tmp_path / "s.toml"
    suite.write_text('name = "t"\n[single]\nzipf_s = [0]\nepochs = 10\n')
    assert main(["reproduce", "--suite", str(suite), "--out", str(tmp_path)]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert (tmp_path / "REPORT.md").read_text() == "my notes\n"
    assert not (tmp_path / "runs").exists()


def test_the_shipped_suites_are_valid():
    from zgdyn.batch.suite import load_suite
    for name in ("quick", "essay", "float64"):
        suite = load_suite(name)
        assert suite.runs("x")
    quick = load_suite("quick")
    assert quick.saddle is not None and {r.s for r in quick.runs("x")
                                         if r.table == "two_phase"} == {1.0, 3.0}


def test_only_one_table_runs_and_the_report_says_what_is_missing(tmp_path):
    d = {"name": "part", "seeds": [1], "base": {**BASE, "epochs": 200},
         "single": {"zipf_s": [0]},
         "two_phase": {"switch_s": [3], "switch_at_epoch": 100, "phase2_epochs": 100}}
    suite = suite_from_dict(d)
    result = run_suite(suite, tmp_path, only=("two_phase",), analyze=False, threads=1)
    actions = {os.path.basename(r["path"]): r["action"] for r in result.results}
    assert actions == {"single-s0-seed1.h5": "skipped", "two-phase-s3-seed1.h5": "train"}
    assert not result.errors and len(result.cards) == 1
    assert not (tmp_path / "runs" / "part" / "single-s0-seed1.h5").exists()
    text = write_report(result, tmp_path).read_text()
    assert "not run this time (1)" in text and "`single-s0-seed1.h5`" in text
    later = run_suite(suite, tmp_path, report_only=True, analyze=False)
    assert {r["action"] for r in later.results} == {"skipped", "done"}


@pytest.mark.slow
def test_demo_shows_the_phenomenon(tmp_path, capsys):
    """The main job at full size (about 9 minutes on 2 cores): grokking, a full s = 1.5
    cycle and no collapse with eps = 1e-6, the two-phase split the essay reports, and a
    saddle whose predicted growth rises with s."""
    from zgdyn.present.conclusions import full_cycle
    from zgdyn.store.reader import open_run

    assert main(["demo", "--out", str(tmp_path), "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {(r["table"], r["variant"], r["s"]): r for r in result["tables"]}
    assert 7_000 <= rows[("single", "default", 0.0)]["first_95"]["mean"] <= 28_000  # 14,000
    assert rows[("two_phase", "default", 1.0)]["phase2_mean_test"]["mean"] > 0.85  # 94.8%
    assert rows[("two_phase", "default", 3.0)]["phase2_mean_test"]["mean"] < 0.10  # 0.3%
    cards = {Path(c["path"]).name: c for c in result["cards"]}
    cycle_run = cards["single-s1.5-seed42.h5"]
    with open_run(cycle_run["path"]) as run:
        cycle = full_cycle(run.metrics, cycle_run["collapse_epochs"])
    assert cycle["complete"], cycle  # >= 90%, a collapse, back to >= 95%
    assert cards["eps-1e-6-single-s1.5-seed42.h5"]["collapses"] == 0
    growth = [r["growth_rate"] for r in result["saddle"]["rows"]]
    assert growth == sorted(growth) and growth[-1] > 0.1
    assert (tmp_path / "REPORT.md").exists() and (tmp_path / "figures" / "portrait.png").exists()


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_every_run_at_a_keyframe_and_the_suite_resumes(tmp_path, jobs):
    import signal
    import subprocess
    import sys
    import time

    suite = tmp_path / "s.toml"
    suite.write_text('name = "int"\nseeds = [1]\n[base]\np = 23\ntrain_frac = 0.8\n'
                     'hidden = [48, 48]\nlr = 3e-3\neval_every = 50\nckpt_every = 50\n'
                     'keyframe_every = 500\n[single]\nzipf_s = [0, 2]\nepochs = 200000\n')
    cmd = [sys.executable, "-m", "zgdyn", "reproduce", "--suite", str(suite), "--out",
           str(tmp_path), "--jobs", str(jobs), "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    runs = tmp_path / "runs" / "int"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(runs.glob("*.h5"))) < jobs:
        time.sleep(0.2)
    time.sleep(2.0)  # some epochs into training
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    files = sorted(runs.glob("*.h5"))
    assert len(files) >= jobs
    for f in files:
        with open_run(f) as run:
            assert run.attrs["status"] == "interrupted"
            assert int(run.attrs["epochs_done"]) > 0
    tasks = plan(suite_from_dict({"name": "int", "seeds": [1], "base": {
        **BASE, "lr": 3e-3}, "single": {"zipf_s": [0, 2], "epochs": 200000}}).runs(tmp_path))
    assert {t.action for t in tasks if t.spec.path in files} == {"resume"}
    count("suites interrupted with Ctrl-C")


def test_a_suite_trained_as_one_ensemble_shows_the_same_split(tiny, tmp_path):
    """--ensemble: the runs as batched ensemble members in this process; the same split
    as the process pool's runs, the same first grokking epochs within one evaluation."""
    suite, _, pooled = tiny
    result = run_suite(suite, tmp_path, analyze=False, ensemble=0)
    assert not result.errors
    assert {c.status for c in result.cards} == {"complete"}
    rows = {(r["table"], r["s"]): r for r in result.tables}
    assert rows[("two_phase", 1.0)]["phase2_mean_test"]["mean"] > 0.85
    assert rows[("two_phase", 3.0)]["phase2_mean_test"]["mean"] < 0.10
    first = {c.path.split("/")[-1]: c.first_95 for c in result.cards}
    for card in pooled.cards:
        name = card.path.split("/")[-1]
        assert abs(first[name] - card.first_95) <= 50, name
    again = run_suite(suite, tmp_path, analyze=False, ensemble=2)
    assert {r["action"] for r in again.results} == {"done"}


def test_suite_ensemble_flag_bad_values_are_one_line(tmp_path, capsys):
    assert main(["two-phase", "--switch-s", "1", "--ensemble", "-1", "--out",
                 str(tmp_path)]) == 2
    assert "--ensemble: must be" in capsys.readouterr().err


def test_plan_resumes_a_run_whose_stop_after_collapses_changed(tmp_path):
    """When a run stops is a schedule change, like its length: the file is resumed."""
    from zgdyn.store.runner import train_run
    from zgdyn.batch.suite import RunSpec, plan

    cfg = small_config(60)
    path = tmp_path / "r.h5"
    train_run(cfg, path)
    later = cfg.replace(stop_after_collapses=4, epochs=80)
    task, = plan([RunSpec("single", "default", 0.0, cfg.seed, later, path)])
    assert task.action == "resume"
    assert task.changes == {"epochs": 80, "stop_after_collapses": 4}
    with pytest.raises(ZgdynError, match="holds a run with another config"):
        plan([RunSpec("single", "default", 0.0, cfg.seed, cfg.replace(lr=2e-3), path)])


def test_plan_flushes_subnormals_from_where_an_unfinished_run_goes_on(tmp_path):
    """flush_subnormals changes how a run computes, not what it is: a suite that turns it on
    resumes a run that goes on with it (the change kept in the file's history) and leaves a
    complete run done, as it was trained."""
    from zgdyn.store.runner import resume_run, train_run
    from zgdyn.batch.suite import RunSpec, plan

    cfg = small_config(60)
    done, unfinished = tmp_path / "done.h5", tmp_path / "unfinished.h5"
    train_run(cfg, done)
    train_run(cfg.replace(epochs=40), unfinished)  # complete at 40, the suite wants 60
    on = cfg.replace(flush_subnormals=True)
    first, second = plan([RunSpec("single", "default", 0.0, cfg.seed, on, done),
                          RunSpec("single", "default", 0.0, cfg.seed, on, unfinished)])
    assert (first.action, first.changes) == ("done", {})
    assert second.action == "resume"
    assert second.changes == {"epochs": 60, "flush_subnormals": True}
    resume_run(unfinished, changes=second.changes)
    with open_run(unfinished) as run:
        assert run.config.optim.flush_subnormals and run.summary()["epochs_done"] == 60
        assert [h["epoch"] for h in json.loads(run.attrs["history"])] == [40]
    with pytest.raises(ZgdynError, match="holds a run with another config"):
        plan([RunSpec("single", "default", 0.0, cfg.seed, on.replace(lr=2e-3), done)])


def test_table_entries_each_with_their_own_length_and_variants(tmp_path):
    """[[single]] entries: s = 0 runs shorter than s = 1.5, and a variant runs only where an
    entry names it."""
    from zgdyn.batch.suite import suite_from_dict

    suite = suite_from_dict({
        "name": "t", "seeds": [1], "base": {"p": 7, "hidden": [8]},
        "variants": {"default": {}, "eps-1e-6": {"eps": 1e-6}},
        "single": [{"zipf_s": [0], "epochs": 20, "variants": ["default"]},
                   {"zipf_s": [1.5], "epochs": 70}],
        "two_phase": {"switch_s": [3], "switch_at_test_acc": 0.99, "epochs": 50,
                      "phase2_epochs": 10, "variants": ["default"]}})
    runs = {sp.path.name: sp.config for sp in suite.runs(tmp_path)}
    assert sorted(runs) == ["eps-1e-6-single-s1.5-seed1.h5", "single-s0-seed1.h5",
                            "single-s1.5-seed1.h5", "two-phase-s3-seed1.h5"]
    assert runs["single-s0-seed1.h5"].schedule.epochs == 20
    assert runs["eps-1e-6-single-s1.5-seed1.h5"].schedule.epochs == 70
    assert runs["eps-1e-6-single-s1.5-seed1.h5"].optim.eps == 1e-6
    with pytest.raises(ConfigError, match="variants: 'nope' is not a variant"):
        suite_from_dict({"single": {"zipf_s": [0], "variants": ["nope"]}})
    with pytest.raises(ConfigError, match="two entries ask for the same run single-s0-seed42"):
        suite_from_dict({"single": [{"zipf_s": [0]}, {"zipf_s": [0, 1]}]})


def test_table_entries_with_their_own_seeds_and_the_seeds_override(tmp_path):
    """An entry's seeds run it on those seeds alone; --seeds keeps those it names."""
    from zgdyn.batch.suite import suite_from_dict, with_seeds

    d = {"name": "t", "seeds": [1, 2, 3], "base": {"p": 7, "hidden": [8]},
         "variants": {"default": {}, "wd": {"weight_decay": 0.5}},
         "two_phase": [{"switch_s": [3], "switch_at_test_acc": 0.99, "epochs": 50,
                        "phase2_epochs": 10, "variants": ["default"]},
                       {"switch_s": [3], "switch_at_test_acc": 0.99, "epochs": 50,
                        "phase2_epochs": 10, "variants": ["wd"], "seeds": [2]}]}
    names = lambda suite: sorted(sp.path.name for sp in suite.runs(tmp_path))
    assert names(suite_from_dict(d)) == ["two-phase-s3-seed1.h5", "two-phase-s3-seed2.h5",
                                         "two-phase-s3-seed3.h5", "wd-two-phase-s3-seed2.h5"]
    assert names(suite_from_dict(with_seeds(d, [2, 3]))) == [
        "two-phase-s3-seed2.h5", "two-phase-s3-seed3.h5", "wd-two-phase-s3-seed2.h5"]
    assert names(suite_from_dict(with_seeds(d, [3]))) == ["two-phase-s3-seed3.h5"]
    bad = {**d, "two_phase": [{**d["two_phase"][1], "seeds": [2, 2]}]}
    with pytest.raises(ConfigError, match=r"\[two_phase\] seeds: must be distinct"):
        suite_from_dict(bad)


@pytest.mark.parametrize("name", ["../../../../ESCAPED", "a/b", ".hidden", ""])
def test_variant_names_cannot_escape_the_output_directory(tmp_path, capsys, name):
    """A variant names run files: one that is a path is refused before anything is written."""
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "v"\n[variants]\n"{name}" = {{ lr = 3e-3 }}\n'
                     '[single]\nzipf_s = [0]\nepochs = 10\n')
    out = tmp_path / "a" / "b" / "c" / "d" / "out"
    assert main(["reproduce", "--suite", str(suite), "--out", str(out), "--jobs", "1",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[variants] name" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["s.toml"]
    count("bad sweeps and suites refused")


def test_shipped_suites_are_found_from_any_directory(tmp_path, monkeypatch):
    from zgdyn.batch.suite import find_suite

    monkeypatch.chdir(tmp_path)
    found = find_suite("quick")
    assert found.is_file() and found.name == "suite_quick.toml" and found.is_absolute()


@pytest.mark.heavy
@pytest.mark.parametrize("jobs", [1, 2])
def test_an_error_in_what_follows_a_run_does_not_stop_the_others(tmp_path, jobs):
    """execute's on_finished (a suite writes digests there) raising: every run still
    trains to its end, here and in a pool, and each task's note says what was raised."""
    suite = suite_from_dict({"name": "f", "seeds": [1, 2, 3],
                             "base": {"p": 7, "hidden": [8], "eval_every": 10,
                                      "ckpt_every": 50, "keyframe_every": 50},
                             "single": {"zipf_s": [1.5], "epochs": 100}})
    heard = []

    def boom(task):
        heard.append(task.spec.seed)
        raise ValueError("boom")

    results = execute(plan(suite.runs(tmp_path)), jobs=jobs, threads=1, on_finished=boom)
    assert sorted(heard) == [1, 2, 3]
    assert all(r["ok"] and r["note"] == "after the run: ValueError: boom" for r in results)
    assert all(scorecard(sp.path).status == "complete" for sp in suite.runs(tmp_path))
