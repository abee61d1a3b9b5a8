"""The intervention leaderboard: its rows are the scorecards' numbers over seeds, ranked,
its conclusion follows them, its curves are the runs' own, and its command is one line."""

import json

import numpy as np
import pytest

from helpers import planted
from zgdyn.batch.leaderboard import (LeaderRow, Leaderboard, Stat, board_conclusion,
                                     leaderboard, phase2_curves)
from zgdyn.batch.scorecard import scorecard
from zgdyn.batch.suite import run_suite, suite_from_dict
from zgdyn.cli import main

pytestmark = pytest.mark.heavy  # trains a small suite

SUITE = {"name": "lb", "seeds": [1, 2],
         "base": {"p": 13, "train_frac": 0.5, "hidden": [24], "lr": 3e-3, "eval_every": 10,
                  "ckpt_every": 100, "keyframe_every": 200},
         "variants": {"baseline": {}, "grokfast": {"hook": "grokfast", "hook_strength": 2.0},
                      "eps-1e-6": {"eps": 1e-6}},
         "single": {"zipf_s": [1.5], "epochs": 300},
         "two_phase": {"switch_s": [1.5, 3], "switch_at_epoch": 200, "phase2_epochs": 200}}


@pytest.fixture(scope="module")
def board_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lb")
    suite = suite_from_dict(SUITE)
    result = run_suite(suite, out, jobs=1, threads=1, analyze=False)
    assert not result.errors
    return suite, out


def test_rows_are_the_scorecards_over_seeds_ranked_at_rank_s(board_dir):
    suite, out = board_dir
    board = leaderboard(suite, out, rank_s=3.0)
    assert [r.rank for r in board.rows] == [1, 2, 3] and not board.missing
    assert board.two_phase_s == (1.5, 3.0) and board.single_s == (1.5,)
    means = [r.phase2_mean["3"].mean for r in board.rows]
    assert means == sorted(means, reverse=True)
    for r in board.rows:
        for s in (1.5, 3.0):
            cards = [scorecard(sp.path) for sp in suite.runs(out)
                     if sp.variant == r.variant and sp.table == "two_phase" and sp.s == s]
            vals = [c.phase2_mean_test for c in cards]
            assert r.phase2_mean[f"{s:g}"].mean == pytest.approx(np.mean(vals), rel=1e-12)
            assert r.phase2_mean[f"{s:g}"].std == pytest.approx(np.std(vals, ddof=1), rel=1e-9)
            if s == 3.0:
                assert r.phase2_min.mean == pytest.approx(
                    np.mean([c.phase2_min_test for c in cards]), rel=1e-12)
        singles = [scorecard(sp.path) for sp in suite.runs(out)
                   if sp.variant == r.variant and sp.table == "single"]
        assert r.collapses_per_100k.runs == 2
        assert r.collapses_per_100k.mean == pytest.approx(
            np.mean([c.collapses_per_100k for c in singles]), rel=1e-12)
        assert r.overrides == SUITE["variants"][r.variant]
        assert r.cost is not None and r.cost > 0
    base = next(r for r in board.rows if r.variant == "baseline")
    assert base.cost == 1.0
    assert board.rows[0].variant in board.conclusion
    assert Leaderboard.from_dict(json.loads(json.dumps(board.to_dict()))) == board
    partial = leaderboard(suite_from_dict({**SUITE, "variants": {**SUITE["variants"],
                                                                 "later": {"lr": 1e-3}}}),
                          out, rank_s=3.0, cost=False)
    assert partial.rows[-1].variant == "later" and partial.rows[-1].rank is None
    assert partial.rows[-1].phase2_mean["3"] == Stat(mean=None, std=None, n=0, runs=0)
    assert len(partial.missing) == 6  # its runs were never trained
    with pytest.raises(Exception, match="rank_s: must be one of the suite's two-phase"):
        leaderboard(suite, out, rank_s=2.0, cost=False)


def test_phase2_curves_are_the_runs_metrics_after_the_switch(board_dir):
    from zgdyn.store.reader import open_run

    suite, out = board_dir
    curves = phase2_curves(suite, out, 3.0)
    assert set(curves) == {"baseline", "grokfast", "eps-1e-6"}
    c = curves["baseline"]
    assert int(c["n"]) == 2 and c["epoch"][0] == 0 and c["epoch"][-1] == 200
    assert np.all(c["lo"] <= c["mean"] + 1e-15) and np.all(c["mean"] <= c["hi"] + 1e-15)
    accs = []
    for sp in suite.runs(out):
        if sp.variant == "baseline" and sp.table == "two_phase" and sp.s == 3.0:
            with open_run(sp.path) as run:
                m = run.metrics
            accs.append(m["test_acc"][m["epoch"] >= 200])
    np.testing.assert_allclose(c["mean"], np.mean(accs, axis=0), rtol=1e-12)


def test_the_command_prints_the_table_draws_the_figure_and_refuses_bad_input(board_dir,
                                                                           tmp_path, capsys):
    suite, out = board_dir
    toml = tmp_path / "suite_lb.toml"
    toml.write_text(
        'name = "lb"\nseeds = [1, 2]\n[base]\np = 13\ntrain_frac = 0.5\nhidden = [24]\n'
        'lr = 3e-3\neval_every = 10\nckpt_every = 100\nkeyframe_every = 200\n[variants]\n'
        'baseline = {}\ngrokfast = { hook = "grokfast", hook_strength = 2.0 }\n'
        '"eps-1e-6" = { eps = 1e-6 }\n[single]\nzipf_s = [1.5]\nepochs = 300\n'
        '[two_phase]\nswitch_s = [1.5, 3]\nswitch_at_epoch = 200\nphase2_epochs = 200\n')
    fig = tmp_path / "lb.png"
    assert main(["leaderboard", str(out), "--suite", str(toml), "--rank-s", "3", "--no-cost",
                 "--figure", str(fig), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    board = leaderboard(suite, out, rank_s=3.0, cost=False)
    assert {k: v for k, v in got.items() if k != "figures"} == board.to_dict()
    assert fig.stat().st_size > 10_000 and fig.with_suffix(".pdf").exists()
    assert main(["leaderboard", str(out), "--suite", str(toml), "--rank-s", "3", "--no-cost",
                 "--figure", str(fig)]) == 0
    text = capsys.readouterr().out
    assert "ph2 mean s=1.5" in text and board.conclusion in text and "cost" in text
    for argv, word in ((["--rank-s", "2"], "rank_s: must be one of"),
                       ([], "rank_s: must be one of"),  # the default, 2, is not in this suite
                       (["--suite", "nosuch"], "no such suite file")):
        assert main(["leaderboard", str(out), "--suite", str(toml), "--no-cost", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err
    assert main(["leaderboard", str(tmp_path), "--no-cost"]) == 2
    assert "holds 0 suites' runs" in capsys.readouterr().err


def test_conclusion_states_a_method_that_holds_the_solution():
    stat = lambda m, n=3: Stat(mean=m, std=0.01, n=n, runs=3)
    row = lambda rank, v, m: planted(LeaderRow, rank=rank, variant=v,
                                     phase2_mean={"2": stat(m)}, holds=m > 0.95)
    rows = (row(1, "grokfast", 0.97), row(2, "baseline", 0.57), row(3, "perp-grad", 0.40))
    text = board_conclusion(rows, "baseline", 2.0)
    assert text == ("At s = 2, grokfast ranks first with a phase-2 mean test accuracy of 97.0% "
                    "(3 seeds), against 57.0% for baseline (3 seeds). grokfast holds the "
                    "solution there (phase-2 mean above 95%).")
    rows = (row(1, "baseline", 0.57), row(2, "perp-grad", 0.40))
    assert board_conclusion(rows, "baseline", 2.0) == (
        "At s = 2, no method beats baseline (57.0%, 3 seeds). No method holds the solution "
        "there (phase-2 mean above 95%).")
    assert board_conclusion((), "baseline", 2.0).startswith("Nothing to rank yet")
    stuck = planted(LeaderRow, rank=None, variant="fixed-norm-1", holds=False,
                    phase2_mean={"2": Stat(mean=None, std=None, n=0, runs=1)})
    assert board_conclusion((*rows, stuck), "baseline", 2.0).endswith(
        "fixed-norm-1 never reached the switch: phase 1 did not end, so there is no phase 2 "
        "to rank.")
