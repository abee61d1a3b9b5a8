"""The report's conclusions follow the numbers planted under them."""

import numpy as np
import pytest

from zgdyn.present.conclusions import (cycle_conclusion, full_cycle, grokking_conclusion,
                                       late_rate_agreement, perturb_conclusion, saddle_conclusion,
                                       table1_conclusion, table2_conclusion, table3_conclusion)
from dataclasses import replace

from zgdyn.analysis.perturb import PerturbPrediction, PerturbResult, PerturbRow
from zgdyn.analysis.stability import SaddleResult, SaddleRow
from zgdyn.batch.results import SuiteInfo, SuiteResult, TaskEntry
from zgdyn.batch.scorecard import Scorecard
from zgdyn.present.report_sections import ESSAY_SINGLE, ESSAY_TWO_PHASE, _reads_as

from helpers import planted


def _metrics(test):
    return {"epoch": np.arange(len(test)) * 100, "test_acc": np.asarray(test, float)}


def test_full_cycle_needs_a_climb_a_collapse_and_a_recovery():
    up, down = [0.2] * 5 + [0.92] * 5, [0.4] * 3
    m = _metrics(up + down + [0.96] * 4)
    c = full_cycle(m, [1000])
    assert c == {"climb": 500, "collapse": 1000, "recover": 1300, "trough": 0.4,
                 "complete": True}
    assert "completes a cycle" in cycle_conclusion("r.h5", c, 1600)
    # a collapse before the climb (the demo's old s = 1.5 run) is not a cycle
    c = full_cycle(_metrics([0.2, 0.28, 0.18, 0.3]), [200])
    assert not c["complete"] and "never reached 90.0%" in cycle_conclusion("r", c, 400)
    c = full_cycle(_metrics(up + down), [1000])
    assert not c["complete"] and "did not recover" in cycle_conclusion("r", c, 1300)
    c = full_cycle(_metrics(up), [])
    assert "did not collapse" in cycle_conclusion("r", c, 1000)


def test_grokking_and_table_conclusions_follow_the_numbers():
    assert "agrees with the essay's 14,000 (-1%" in grokking_conclusion(13_900, 14_000)
    assert "differs from" in grokking_conclusion(20_000, 14_000)
    assert "never reached" in grokking_conclusion(None, 14_000)
    rows = [{"s": 0.0, "first_95": 14_100}, {"s": 1.0, "first_95": 17_800},
            {"s": 1.5, "first_95": 42_500}, {"s": 2.0, "first_95": 60_300}]
    text = table2_conclusion(rows, ESSAY_SINGLE)
    assert text.startswith("The first epoch with ≥ 95% test accuracy comes later as s grows")
    assert "at s = 0, s = 1 and s = 2" in text and "not at s = 1.5 (42,500 against 25,000)" in text
    rows[1]["first_95"] = 10_000
    assert "does not grow with s everywhere" in table2_conclusion(rows, ESSAY_SINGLE)
    t3 = table3_conclusion([(1.0, 0.9999), (1.5, 0.901), (2.0, 0.709), (3.0, 0.0052)],
                           ESSAY_TWO_PHASE)
    assert "falls monotonically" in t3 and "holds (phase-2 mean ≥ 85.0%) at s = 1 and s = 1.5" in t3
    assert "falls (below 10.0%) at s = 3" in t3
    assert "s = 1.5 by +16.9 pts and s = 2 by +26.5 pts" in t3
    t3 = table3_conclusion([(1.0, 0.95), (1.5, 0.70), (2.0, 0.45), (3.0, 0.003)],
                           ESSAY_TWO_PHASE)
    assert "Every phase-2 mean is within 10 points" in t3


def test_table1_reads_the_essays_digits():
    assert _reads_as(149_912.3, "149,912x") and _reads_as(5.51, "5.5")
    assert _reads_as(0.388, "38%") and _reads_as(0.0999, "10%") and not _reads_as(0.75, "73%")
    assert table1_conclusion([("a", True), ("b", True)]).startswith("All 2 statistics")
    assert "b do not" in table1_conclusion([("a", True), ("b", False)])


SADDLE = planted(SaddleResult, rows=(
    planted(SaddleRow, zipf_s=0.0, grad_norm=1.3e-6, lambda_min=-4.3e-8, growth_rate=0.00145,
            converged=False),
    planted(SaddleRow, zipf_s=1.5, grad_norm=9.2e-6, lambda_min=-1.69e-6, growth_rate=0.116,
            converged=True)))


def test_saddle_conclusion_marks_convergence_and_the_control():
    text = saddle_conclusion(SADDLE, 1.0)
    assert "not converged (‖∇L_0‖" not in text  # the point is converged
    assert "-1.7e-06 (s = 1.5), 1.7e-06 of wd = 1, so with the decay counted (H + wd·I) " \
        "the point is a minimum" in text
    assert "unstable at s = 1.5" in text and "uniform control" not in text
    assert "did not converge at s = 0" in text
    moving = replace(SADDLE, rows=(replace(SADDLE.rows[0], grad_norm=0.0018, converged=True),
                                   SADDLE.rows[1]))
    text = saddle_conclusion(moving, 1.0)
    assert text.startswith("The point is not converged (‖∇L_0‖ = 0.0018 ≥ 0.0001)")
    assert "the uniform control included" in text


def _perturb(growth):
    rows = tuple(planted(PerturbRow, zipf_s=s, direction=d, eps=1e-6, growth_factor=g,
                         rate_late=0.01 if s else -0.01) for (s, d), g in growth.items())
    return planted(PerturbResult, rows=rows, epochs=200, predictions=(
        planted(PerturbPrediction, zipf_s=0.0, hessian_rate=0.0014),
        planted(PerturbPrediction, zipf_s=1.5, hessian_rate=0.4)))


def test_perturbation_conclusion_compares_with_the_control():
    same = _perturb({(0.0, "hessian"): 169, (0.0, "random"): 151, (1.5, "hessian"): 270,
                     (1.5, "random"): 97})
    text = perturb_conclusion(same)
    assert text.startswith("The perturbations do not single out the Zipf saddle")
    assert "at s = 1.5 perturbations grow as fast as in the s = 0 control (median ratio 1.1" in text
    assert "the Hessian direction outgrows a random one at s = 1.5 (2.8×)" in text
    planted = _perturb({(0.0, "hessian"): 2, (0.0, "random"): 2, (1.5, "hessian"): 300,
                        (1.5, "random"): 20})
    text = perturb_conclusion(planted)
    assert text.startswith("The perturbations single out the saddle direction")
    assert "grow faster than in the s = 0 control" in text
    assert late_rate_agreement(same) == ("The late rate has the sign of the Hessian's "
                                         "predicted rate in 2 of 4 rows.")


def _planted_variants():
    """Baseline 0.90 / 0.70 at s = 1.5 / 2 (the essay: 0.732 / 0.444); variant "a" on seed 1
    only, 0.75 / 0.50; variant "b" on both seeds, 0.88 / 0.72."""
    table = {("baseline", 1.5): 0.90, ("baseline", 2.0): 0.70, ("a", 1.5): 0.75,
             ("a", 2.0): 0.50, ("b", 1.5): 0.88, ("b", 2.0): 0.72}
    tasks, cards = [], []
    for (v, s), m in table.items():
        for seed in ((1,) if v == "a" else (1, 2)):
            path = f"{v}-s{s}-{seed}.h5"
            tasks.append(planted(TaskEntry, path=path, table="two_phase", variant=v, s=s,
                                 seed=seed))
            cards.append(planted(Scorecard, path=path, status="complete",
                                 phase2_mean_test=m))
    tasks.append(planted(TaskEntry, path="baseline-s3-1.h5", table="two_phase",
                         variant="baseline", s=3.0, seed=1))  # never finished: no card
    return planted(SuiteResult, suite=planted(SuiteInfo, variants={"baseline": {}, "a": {},
                                                                   "b": {}}),
                   tasks=tuple(tasks), cards=tuple(cards))


def test_variant_effects_are_paired_by_seed_and_share_the_gap():
    from zgdyn.present.conclusions import variant_conclusion
    from zgdyn.present.report_sections import variant_effects

    rows = {(r["variant"], r["s"]): r for r in variant_effects(_planted_variants())}
    assert set(rows) == {("a", 1.5), ("a", 2.0), ("b", 1.5), ("b", 2.0)}
    a = rows["a", 1.5]
    assert a["n"] == 1 and a["seeds"] == [1] and a["baseline"] == pytest.approx(0.90)
    assert a["change"] == pytest.approx(-0.15)
    assert a["share"] == pytest.approx(-0.15 / (0.732 - 0.90))  # 89% of the gap
    assert rows["b", 2.0]["share"] == pytest.approx(0.02 / (0.444 - 0.70))  # widens it
    text = variant_conclusion(list(rows.values()), "baseline")
    assert text.index("a moves") < text.index("The others: b")
    assert "s = 1.5 by -15.0 pts (89% of the gap, 1 seed)" in text
    assert "it explains most of the difference" in text
    near = [dict(r, gap=0.05) for r in rows.values()]
    assert "no gap for a variant to explain" in variant_conclusion(near, "baseline")
    weak = [dict(r, share=0.2) for r in rows.values()]
    assert "no variant explains most of the difference" in variant_conclusion(weak, "baseline")


def test_runs_that_never_switched_are_said_so():
    from zgdyn.present.report_sections import section_variants, table3_cells

    result = _planted_variants()
    cards = [replace(c, switch_epoch=1000) for c in result.cards]
    tasks = [*result.tasks, planted(TaskEntry, path="c-s1.5-1.h5", table="two_phase",
                                    variant="c", s=1.5, seed=1)]
    cards.append(planted(Scorecard, path="c-s1.5-1.h5", status="complete",
                         phase2_mean_test=None, switch_epoch=None))
    suite = replace(result.suite, variants={**result.suite.variants, "c": {}})
    empty = {"mean": None, "std": None, "n": 0, "never": 1}
    from zgdyn.batch.scorecard import NUMERIC
    tables = ({"table": "two_phase", "variant": "c", "s": 1.5, "n_runs": 1,
               **{k: empty for k in NUMERIC}},)
    result = replace(result, suite=suite, tasks=tuple(tasks), cards=tuple(cards),
                     tables=tables)
    rows = table3_cells(result)
    assert any(r[0] == "c s = 0 → 1.5" and r[3] == "did not switch" for r in rows)
    _, text = section_variants(result)
    assert "Runs of c never switched" in text
