"""Digests: a complete run in brief, enough for a suite's tables once its file is gone.
A suite reported from digests alone must say what it said from the files."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import small_config
from zgdyn import train_run
from zgdyn.batch.digest import (Digest, digest_file, digest_run, read_digest, read_digests,
                                write_digest)
from zgdyn.batch.leaderboard import leaderboard, phase2_curves
from zgdyn.batch.scorecard import scorecard
from zgdyn.batch.suite import run_suite, suite_from_dict
from zgdyn.cli import main
from zgdyn.core.config import ZgdynError
from zgdyn.store.reader import open_run


def test_a_digest_holds_the_runs_card_and_metrics_and_round_trips(tmp_path):
    cfg = small_config(200, zipf_s=1.5)
    path = tmp_path / "r.h5"
    train_run(cfg, path)
    d = digest_run(path)
    assert d.card == scorecard(path) and d.run_config == cfg and d.status == "complete"
    with open_run(path) as run:
        m = run.metrics
    assert d.metrics["epoch"] == [int(e) for e in m["epoch"]]
    assert np.max(np.abs(np.array(d.metrics["test_acc"]) - m["test_acc"])) <= 5e-7
    assert np.allclose(d.metrics["train_loss"], m["train_loss"], rtol=1e-3)
    assert write_digest(tmp_path / "dig", d) is True
    assert write_digest(tmp_path / "dig", d) is False  # the same digest: nothing written
    back = read_digest(digest_file(tmp_path / "dig", "r"))
    assert back == d and read_digests(tmp_path / "dig") == {"r": d}
    assert read_digests(tmp_path / "none") == {}


def test_an_incomplete_run_has_no_digest_and_a_damaged_digest_is_one_line(tmp_path):
    from helpers import StopAt
    from zgdyn.store.runner import train_run as run_with

    path = tmp_path / "r.h5"
    run_with(small_config(300), path, callbacks=[StopAt(100)])
    with pytest.raises(ZgdynError, match="is interrupted, not complete"):
        digest_run(path)
    bad = tmp_path / "bad.json"
    good = json.loads(json.dumps(digest_run_of_a_small_run(tmp_path).to_dict()))
    for text, match in (("{", "not a readable digest"), ('{"format": "x"}', "not a zgdyn digest"),
                        ('{"format": "zgdyn.digest", "version": 9}', "digest version 9"),
                        ('{"format": "zgdyn.digest", "version": 1, "label": "x"}',
                         "a damaged digest"),
                        (json.dumps({**good, "metrics": []}), r"damaged digest \(metrics: list"),
                        (json.dumps({**good, "metrics": {"epoch": 1, "test_acc": 2,
                                                         "train_loss": 3}}),
                         "lists of one length"),
                        (json.dumps({**good, "card": []}), r"damaged digest \(card: list"),
                        (json.dumps({**good, "card": {"seed": 1}}), "a damaged digest"),
                        (json.dumps({**good, "config": {"p": -3}}), "a damaged digest")):
        bad.write_text(text)
        with pytest.raises(ZgdynError, match=match) as e:
            read_digest(bad)
        assert "\n" not in str(e.value)


def digest_run_of_a_small_run(tmp_path) -> Digest:
    path = tmp_path / "small.h5"
    if not path.exists():
        train_run(small_config(100, zipf_s=1.5), path)
    return digest_run(path)


def test_digests_are_strict_json_and_nan_comes_back_as_nan(tmp_path):
    """An onset measured where √v̂'s median was not recorded holds NaN: null in the file
    (strict JSON), NaN again when read."""
    import math

    from zgdyn.analysis.mechanism import Onset, RunRecord
    from test_mechanism import _rec

    rec = _rec("baseline", 30_000)
    rec = RunRecord.from_dict({**rec.to_dict(), "onsets": [
        {**o.to_dict(), "sqrt_v_median": math.nan} for o in rec.onsets]})
    d = digest_run_of_a_small_run(tmp_path)
    d = Digest.from_dict({**d.to_dict(), "mechanism": rec.to_dict()})
    write_digest(tmp_path / "dig", d)
    text = digest_file(tmp_path / "dig", d.label).read_text()

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    strict = json.loads(text, parse_constant=refuse)
    assert strict["mechanism"]["onsets"][0]["sqrt_v_median"] is None
    back = read_digest(digest_file(tmp_path / "dig", d.label))
    assert all(math.isnan(o.sqrt_v_median) for o in back.mechanism.onsets)
    assert [o.adam_scale for o in back.mechanism.onsets] == [o.adam_scale for o in rec.onsets]


MECH = {"name": "mech", "seeds": [1],
        "base": {"p": 13, "train_frac": 0.5, "hidden": [24, 24], "eval_every": 20,
                 "ckpt_every": 500, "keyframe_every": 500, "window": 5, "hook": "test_kick",
                 "hook_strength": 2.0},
        "variants": {"baseline": {}, "wd-2": {"weight_decay": 2.0}},
        "single": {"zipf_s": [1.5], "epochs": 5200},
        "mechanism": {"baseline": "baseline", "onset_sharpness": True}}


@pytest.mark.heavy
def test_a_suite_reported_from_its_digests_says_what_its_files_said(tmp_path):
    """A mechanism suite with planted collapses (a kick every 2,300 epochs), its onset
    curvature computed: reported again with its run files gone, from the digests alone,
    the mechanism table, the verdicts, the scorecards and the report's text are the same."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_train import _register_kick
    from zgdyn.present.report import reproduce

    _register_kick()
    suite = suite_from_dict(MECH)
    first = reproduce(suite, tmp_path / "a", threads=1, digests=tmp_path / "dig")
    assert not first.errors
    files = sorted((tmp_path / "dig" / "mech").glob("*.json"))
    assert [f.stem for f in files] == ["baseline-single-s1.5-seed1", "wd-2-single-s1.5-seed1"]
    assert all(r.onsets for r in first.mechanism.records)
    assert all(o.lambda_max is not None for r in first.mechanism.records for o in r.onsets)
    assert sum(f.stat().st_size for f in files) < 200_000
    # the same suite under another --out, whose runs were never made here
    again = reproduce(suite, tmp_path / "b", threads=1, digests=tmp_path / "dig")
    assert not (tmp_path / "b" / "runs").exists() or not any((tmp_path / "b" / "runs").rglob("*.h5"))
    assert [t.planned for t in again.tasks] == ["digest", "digest"]
    same = lambda x, y: json.dumps(x.to_dict()) == json.dumps(y.to_dict())  # NaN == NaN
    assert same(again.mechanism, first.mechanism)
    norm = lambda r: [{**c.to_dict(), "path": Path(c.path).name} for c in r.cards]
    assert norm(again) == norm(first)
    section = lambda r: Path(r.report).read_text().split("## Why the Fourier")[1].split("\n## ")[0]
    assert section(again) == section(first)
    cycle = lambda r: [line for line in Path(r.report).read_text().split(
        "## The s = 1.5 cycle")[1].split("\n## ")[0].splitlines()
        if line.startswith(("| ", "**Conclusion"))]
    assert len(cycle(first)) == 1 + 2 * 3 + 1 and cycle(again) == cycle(first)
    assert (tmp_path / "b" / "figures" / "single.png").exists()


@pytest.mark.heavy
def test_a_digest_of_another_run_is_refused_and_left_as_it_is(tmp_path, capsys):
    suite = suite_from_dict({"name": "d", "seeds": [1],
                             "base": {"p": 7, "hidden": [8], "eval_every": 10,
                                      "ckpt_every": 50, "keyframe_every": 50},
                             "single": {"zipf_s": [1.5], "epochs": 100}})
    run_suite(suite, tmp_path / "a", threads=1, analyze=False, digests=tmp_path / "dig")
    (digest,) = (tmp_path / "dig" / "d").glob("*.json")
    before = digest.read_bytes()
    other = suite_from_dict({**{"name": "d", "seeds": [1]},
                             "base": {"p": 7, "hidden": [8], "eval_every": 10,
                                      "ckpt_every": 50, "keyframe_every": 50, "lr": 2e-3},
                             "single": {"zipf_s": [1.5], "epochs": 100}})
    with pytest.raises(ZgdynError, match=r"holds a run with another config \(lr = 0.001, the "
                       r"suite wants 0.002\); move it away or give another --digests"):
        run_suite(other, tmp_path / "b", threads=1, analyze=False, digests=tmp_path / "dig")
    assert digest.read_bytes() == before and not (tmp_path / "b" / "runs").exists()
    toml = tmp_path / "s.toml"
    toml.write_text('name = "d"\nseeds = [1]\n[base]\np = 7\nhidden = [8]\neval_every = 10\n'
                    'ckpt_every = 50\nkeyframe_every = 50\nlr = 2e-3\n[single]\n'
                    'zipf_s = [1.5]\nepochs = 100\n')
    code = main(["reproduce", "--suite", str(toml), "--out", str(tmp_path / "c"),
                 "--digests", str(tmp_path / "dig"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "another config (lr = 0.001" in err
    assert digest.read_bytes() == before


LB = {"name": "lb", "seeds": [1, 2],
      "base": {"p": 13, "train_frac": 0.5, "hidden": [24], "lr": 3e-3, "eval_every": 10,
               "ckpt_every": 100, "keyframe_every": 200},
      "variants": {"baseline": {}, "eps-1e-6": {"eps": 1e-6}},
      "single": {"zipf_s": [1.5], "epochs": 300},
      "two_phase": {"switch_s": [3], "switch_at_epoch": 200, "phase2_epochs": 200}}


@pytest.mark.heavy
def test_the_leaderboard_from_digests_is_the_leaderboard_from_files(tmp_path):
    suite = suite_from_dict(LB)
    run_suite(suite, tmp_path / "a", threads=1, analyze=False, digests=tmp_path / "dig")
    files = leaderboard(suite, tmp_path / "a", rank_s=3.0, cost=False)
    shutil.rmtree(tmp_path / "a" / "runs")
    gone = leaderboard(suite, tmp_path / "a", rank_s=3.0, cost=False)
    assert len(gone.missing) == 8 and all(r.rank is None for r in gone.rows)
    digested = leaderboard(suite, tmp_path / "a", rank_s=3.0, cost=False,
                           digests=tmp_path / "dig")
    assert digested.rows == files.rows and not digested.missing
    assert digested.conclusion == files.conclusion
    curves = phase2_curves(suite, tmp_path / "a", 3.0, digests=tmp_path / "dig")
    assert set(curves) == {"baseline", "eps-1e-6"} and int(curves["baseline"]["n"]) == 2
    assert curves["baseline"]["epoch"][0] == 0


@pytest.mark.heavy
def test_each_runs_digest_is_written_as_it_ends_not_only_at_the_suites_end(tmp_path,
                                                                           monkeypatch):
    """The suite dies after its runs stage (before its analysis stage): every run that
    ended has its digest already, with its mechanism record."""
    import zgdyn.batch.suite as suite_mod

    def killed(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(suite_mod, "_mechanism_records", killed)
    suite = suite_from_dict({"name": "d", "seeds": [1, 2],
                             "base": {"p": 7, "hidden": [8], "eval_every": 10,
                                      "ckpt_every": 50, "keyframe_every": 50},
                             "single": {"zipf_s": [1.5], "epochs": 100},
                             "mechanism": {"onset_sharpness": False}})
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, tmp_path / "a", threads=1, digests=tmp_path / "dig")
    got = read_digests(tmp_path / "dig" / "d")
    assert sorted(got) == ["single-s1.5-seed1", "single-s1.5-seed2"]
    for label, d in got.items():
        assert d.mechanism is not None and d.mechanism.label == label
        assert d.card == scorecard(tmp_path / "a" / "runs" / "d" / f"{label}.h5")


@pytest.fixture
def one_run_suite(tmp_path):
    """A one-run suite, trained with --digests: (its dict, the digest folder, the digest)."""
    d = {"name": "d", "seeds": [1],
         "base": {"p": 7, "hidden": [8], "eval_every": 10, "ckpt_every": 50,
                  "keyframe_every": 50},
         "single": {"zipf_s": [1.5], "epochs": 100}}
    run_suite(suite_from_dict(d), tmp_path / "a", threads=1, analyze=False,
              digests=tmp_path / "dig")
    (digest,) = (tmp_path / "dig" / "d").glob("*.json")
    return d, tmp_path / "dig", digest


@pytest.mark.heavy
def test_a_digest_of_another_run_is_never_replaced_by_a_run_trained_here(tmp_path,
                                                                        one_run_suite):
    """Another machine's digest of lr 1e-3, and a run of lr 2e-3 trained here under the same
    name: the run is trained and scored, its digest is refused, the other left as it was."""
    d, dig, digest = one_run_suite
    before = digest.read_bytes()
    other = suite_from_dict({**d, "base": {**d["base"], "lr": 2e-3}})
    spec = other.runs(tmp_path / "b")[0]
    spec.path.parent.mkdir(parents=True)
    train_run(spec.config, spec.path)  # the file exists: the planner takes it as done
    result = run_suite(other, tmp_path / "b", threads=1, analyze=False, digests=dig)
    assert result.card(str(spec.path)).status == "complete"
    assert "holds a run with another config (lr = 0.001, this run has 0.002)" in \
        result.errors[str(spec.path)]
    assert digest.read_bytes() == before


@pytest.mark.heavy
def test_a_longer_run_replaces_its_digest_and_a_shorter_one_does_not(tmp_path, one_run_suite):
    """The digest holds 100 epochs. A suite that wants 50 is refused (as a longer file
    would be); a 50-epoch file trained here keeps its digest out; a suite that wants 150
    makes the run again, here from scratch, and its digest replaces the shorter one."""
    d, dig, digest = one_run_suite
    before = digest.read_bytes()
    shorter = suite_from_dict({**d, "single": {"zipf_s": [1.5], "epochs": 50}})
    with pytest.raises(ZgdynError, match=r"another config \(epochs = 100, the suite wants 50"):
        run_suite(shorter, tmp_path / "s", threads=1, analyze=False, digests=dig)
    spec = shorter.runs(tmp_path / "s")[0]
    spec.path.parent.mkdir(parents=True)
    train_run(spec.config, spec.path)
    result = run_suite(shorter, tmp_path / "s", threads=1, analyze=False, digests=dig)
    (err,) = result.errors.values()
    assert "holds this run longer (100 epochs, this one 50)" in err
    assert digest.read_bytes() == before
    longer = suite_from_dict({**d, "single": {"zipf_s": [1.5], "epochs": 150}})
    result = run_suite(longer, tmp_path / "l", threads=1, analyze=False, digests=dig)
    assert [t.planned for t in result.tasks] == ["train"] and not result.errors
    assert read_digest(digest).epochs_done == 150


@pytest.mark.heavy
def test_a_complete_digest_stands_for_an_unfinished_file_which_is_left_alone(tmp_path,
                                                                            one_run_suite):
    from helpers import StopAt
    from zgdyn.store.runner import train_run as run_with

    d, dig, digest = one_run_suite
    suite = suite_from_dict(d)
    spec = suite.runs(tmp_path / "c")[0]
    spec.path.parent.mkdir(parents=True)
    run_with(spec.config, spec.path, callbacks=[StopAt(50)])
    before = spec.path.read_bytes()
    (dig / "d" / "notes.json").write_text('{"who": "me"}')  # not a digest: not read
    result = run_suite(suite, tmp_path / "c", threads=1, report_only=True, digests=dig)
    (task,) = result.tasks
    assert task.planned == "digest" and "its file here: interrupted at epoch 50" in task.note
    assert result.cards[0] == read_digest(digest).card.__class__.from_dict(
        {**read_digest(digest).card.to_dict(), "path": str(spec.path)})
    assert spec.path.read_bytes() == before and not result.errors
    board = leaderboard(suite_from_dict({**d, "two_phase": {"switch_s": [3],
                                                            "switch_at_epoch": 50,
                                                            "phase2_epochs": 50}}),
                        tmp_path / "c", rank_s=3.0, cost=False, digests=dig)
    assert board.rows[0].collapses_per_100k.runs == 1  # the single run, from its digest


@pytest.mark.heavy
def test_cards_keep_the_suites_order_when_some_come_from_digests(tmp_path):
    d = {"name": "o", "seeds": [1, 2],
         "base": {"p": 7, "hidden": [8], "eval_every": 10, "ckpt_every": 50,
                  "keyframe_every": 50},
         "single": {"zipf_s": [1.5], "epochs": 100}}
    suite = suite_from_dict(d)
    run_suite(suite, tmp_path / "a", threads=1, analyze=False, digests=tmp_path / "dig")
    first = suite.runs(tmp_path / "a")[0]
    first.path.unlink()  # seed 1 from its digest, seed 2 from its file
    result = run_suite(suite, tmp_path / "a", threads=1, analyze=False, report_only=True,
                       digests=tmp_path / "dig")
    assert [t.planned for t in result.tasks] == ["digest", "done"]
    assert [c.seed for c in result.cards] == [1, 2]


def test_digests_must_be_a_folder(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    f = str(tmp_path / "f")
    for argv in (["reproduce", "--suite", "quick", "--report-only", "--out", str(tmp_path / "o"),
                  "--digests", f],
                 ["leaderboard", str(tmp_path), "--suite", "interventions", "--no-cost",
                  "--digests", f]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "f: is not a folder" in err
    assert (tmp_path / "f").read_text() == "x" and not (tmp_path / "o").exists()
