"""The commands: each parses nothing, calls one library function, and prints or saves."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.config import Config, ZgdynError, fields_by_section, flatten, from_flat, load_toml
from .common import device_arg, figure_paths, print_json, save_figure
from .flags import ENSEMBLE_FIELDS
from .text import (fmt_ratio, fmt_sig, format_info, format_leaderboard, format_scorecards,
                   format_summary, format_sweep_report, format_two_phase, pct)

if TYPE_CHECKING:
    from ..batch.results import SuiteResult

RUNS_DIR = Path("data/runs")


def fail(message: str) -> int:
    sys.stderr.write(f"zgdyn: error: {message}\n")
    return 2


def _threads(n: int | None) -> None:
    """Set torch's CPU threads from --threads (None: leave them)."""
    if n is None:
        return
    if n < 1:
        raise ZgdynError(f"--threads: must be an integer >= 1, got {n}")
    import torch
    torch.set_num_threads(n)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: (tuple(v) if isinstance(v, list) else v)
            for k, v in vars(args).items() if k.startswith("cfg_")}


# how a field is named in a default file name; fields not listed keep their own name
NAME_ALIASES = {"train_frac": "frac", "hidden": "h", "weight_decay": "wd",
                "switch_at_test_acc": "at-acc", "switch_at_epoch": "at-epoch"}


MAX_NAME = 200


def _name_text(v: Any) -> str:
    from ..batch.sweep import number_text

    if isinstance(v, (list, tuple)):
        return "x".join(map(_name_text, v))
    if isinstance(v, float):
        return number_text(v)
    return str(v) if isinstance(v, int) else f"-{v}"


def _default_out(cfg: Config) -> Path:
    """data/runs/p<p>-<weighting>-s<s>[-to-s<s2>][-<field><value>...]-seed<seed>.h5: every
    field that shapes the trajectory and differs from the default is in the name (floats
    exactly: 0.1234567 and 0.1234568 differ), so two different runs never share a name.
    Left out: how long a run goes and where (epochs, phase2_epochs, device, flush_subnormals:
    a resume may change them) and what it records ([record]), which leave the trajectory
    as it is."""
    from ..store.runner import RESUMABLE_CHANGES

    d, sch = cfg.data, cfg.schedule
    name = f"p{d.p}-{d.weighting}-s{_name_text(float(d.zipf_s))}"
    if sch.switch_s is not None:
        name += f"-to-s{_name_text(float(sch.switch_s))}"
    skip = {"p", "weighting", "zipf_s", "switch_s", "seed", *RESUMABLE_CHANGES,
            *(f.name for f in fields_by_section()["record"])}
    defaults = flatten(Config())
    for k, v in flatten(cfg).items():
        if k not in skip and v != defaults[k]:
            name += f"-{NAME_ALIASES.get(k, k)}{_name_text(v)}"
    name += f"-seed{cfg.seed}.h5"
    if len(name) > MAX_NAME:
        raise ZgdynError(f"the default file name of this run would have {len(name)} "
                         f"characters, more than {MAX_NAME}; give --out")
    return RUNS_DIR / name


def _members(base: Config, given: dict[str, Any],
             seeds: list[int] | None) -> tuple[list[Config], tuple[str, ...]]:
    """The configs of `zgdyn train`: one, or the product of the listed values (an ensemble);
    and the names of the fields that vary."""
    lists = {k: list(dict.fromkeys(given.pop(k))) for k in ENSEMBLE_FIELDS if k in given}
    if seeds is not None:
        lists["seed"] = list(dict.fromkeys(seeds))
    combos: list[dict[str, Any]] = [{}]
    for name, values in lists.items():
        combos = [{**c, name: v} for c in combos for v in values]
    # every flag at once: a field is checked against the others' final values
    configs = [from_flat({**flatten(base), **given, **c}) for c in combos]
    return configs, tuple(k for k, v in lists.items() if len(v) > 1)


def cmd_train(args: argparse.Namespace) -> int:
    from ..store.runner import resume_run, train_run
    from ..store.reader import open_run

    _threads(args.threads)
    _load_plugins(args)
    given = _given(args)
    base = load_toml(args.config) if args.config and not args.resume else Config()
    configs, _ = _members(base, given, args.seeds)
    if len(configs) > 1 or args.seeds is not None:
        return _train_ensemble(args, configs, given)
    given.update({k: v for k, v in flatten(configs[0]).items() if k in ENSEMBLE_FIELDS
                  and k in _given(args)})
    if args.resume:
        if args.out is None:
            return fail("--resume needs --out RUN.h5, the run to continue")
        if args.config is not None:
            return fail("--resume takes the config stored in the run; drop --config")
        resume_run(args.out, changes=given, force_disk=args.force,
                   progress=not args.no_progress)
        out = args.out
    else:
        cfg = configs[0]
        out = args.out or _default_out(cfg)
        train_run(cfg, out, force=args.force, force_disk=args.force,
                  progress=not args.no_progress)
    with open_run(out) as run:
        summary = run.summary()
    if args.json:
        print_json(summary)
    else:
        sys.stdout.write(f"{_run_line(summary, out)} (details: zgdyn info {out})\n")
    return 0


def _train_ensemble(args: argparse.Namespace, configs: list[Config],
                    given: dict[str, Any]) -> int:
    """zgdyn train with lists of values: the members as ensembles of --ensemble-size."""
    from ..store.runner import train_ensemble
    from ..store.reader import open_run

    if args.ensemble_size is not None and args.ensemble_size < 1:
        return fail(f"--ensemble-size: must be an integer >= 1, got {args.ensemble_size}")
    if args.out is not None and args.out.suffix == ".h5":
        return fail(f"--out: an ensemble writes one file per member into a folder, got "
                     f"the file name {args.out}")
    if args.resume and args.force:
        return fail("--resume and --force exclude each other")
    if args.resume and args.config is not None:
        return fail("--resume takes the configs stored in the runs; drop --config")
    folder = args.out or RUNS_DIR
    paths = [folder / _default_out(cfg).name for cfg in configs]
    size = args.ensemble_size or len(configs)
    if args.resume:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            return fail(f"--resume: no run file {missing[0]} to continue"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    results = []
    for i in range(0, len(configs), size):
        results += train_ensemble(configs[i:i + size], paths[i:i + size], force=args.force,
                                  progress=not args.no_progress, mode=args.ensemble_mode,
                                  resume=args.resume, changes=given if args.resume else None)
    rows = []
    for r in results:
        row: dict[str, Any] = {"path": str(r.path), "error": r.error}
        with open_run(r.path) as run:
            row.update(run.summary())
        rows.append(row)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            sys.stdout.write(_run_line(row, row["path"])
                             + (f"; error: {row['error']}" if row["error"] else "") + "\n")
    return 1 if any(r.error for r in results) else 0


def _epochs(n: int) -> str:
    return f"{n:,} epoch" + ("" if n == 1 else "s")


def _run_line(summary: dict[str, Any], path: Any) -> str:
    """One line on a trained run: status, length, grokking, final test accuracy."""
    first = summary["first_epoch_test_acc_95"]
    grok = (f"first >= 95% test at epoch {first:,}" if first is not None
            else "never >= 95% test")
    return (f"{summary['status']}: {path}, {_epochs(summary['epochs_done'])}, {grok}, final "
            f"test acc {pct(summary['final']['test_acc'])}")


def _load_plugins(args: argparse.Namespace) -> None:
    from ..core.hooks import load_plugins
    load_plugins(args.plugin or [])


def cmd_info(args: argparse.Namespace) -> int:
    from ..store.reader import open_run

    with open_run(args.run) as run:
        summary = run.summary()
    if args.json:
        print_json(summary)
    else:
        sys.stdout.write(format_info(summary))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..core.config import DataConfig
    from ..core.data import stats_table

    DataConfig(p=args.p, train_frac=args.train_frac, weighting=args.weighting)  # validates
    Config(seed=args.seed)  # validates
    for s in args.zipf_s:
        DataConfig(zipf_s=s)  # validates
    rows = stats_table(args.p, args.train_frac, args.zipf_s, seed=args.seed,
                       mode=args.weighting)
    if args.json:
        print_json({"p": args.p, "train_frac": args.train_frac, "weighting": args.weighting,
                     "n_train": rows[0]["n"], "rows": rows})
        return 0
    head = f"{'s':>5}  {'max/min':>14}  {'ESS 1/Σw²':>10}  {'top-10% mass':>12}  " \
           f"{'top-1':>8}  {'top-2':>8}"
    out = [f"p = {args.p}, train fraction {args.train_frac}: {rows[0]['n']:,} training pairs, "
           f"{args.weighting} weighting", head]
    for r in rows:
        out.append(f"{r['s']:>5g}  {fmt_ratio(r['ratio']):>14}  {fmt_sig(r['ess']):>10}  "
                   f"{100 * r['top10_mass']:>11.3g}%  {100 * r['top1']:>7.3g}%  "
                   f"{100 * r['top2']:>7.3g}%")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..store.reader import verify_run

    r = verify_run(args.run)
    if args.json:
        print_json(r)
    else:
        ck = r["checked"]
        head = (f"{r['path']}: {'ok' if r['ok'] else 'DAMAGED'} ({ck['checkpoints']} checkpoints "
                f"and {ck['keyframes']} keyframes read, checksums verified"
                + ("; an interrupted commit was rolled back" if r["rolled_back"] else "") + ")")
        sys.stdout.write("\n".join([head] + [f"  - {p}" for p in r["problems"]]) + "\n")
    return 0 if r["ok"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from ..present.bench import format_bench, format_hessian, run_bench, run_hessian_bench, save_bench

    if args.hessian_only or args.hessian_run:
        result = run_hessian_bench(p=args.p, run=args.hessian_run and str(args.hessian_run),
                                   epoch=args.hessian_epoch)
        path = save_bench(result, args.out or "data/bench/hessian.json")
        if args.json:
            print_json(result)
        else:
            sys.stdout.write(format_hessian(result) + f"\nsaved {path}\n")
        return 0
    result = run_bench(epochs=args.epochs, repeats=args.repeats, p=args.p,
                       device=device_arg(args.device), ensemble_sizes=tuple(args.ensemble_sizes),
                       ensemble_model_epochs=args.ensemble_model_epochs,
                       analysis=not args.no_analysis, window=args.window)
    path = save_bench(result, args.out)
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(format_bench(result) + f"\nsaved {path}\n")
    return 0


def cmd_scorecard(args: argparse.Namespace) -> int:
    from ..batch.scorecard import scorecard

    cards = [scorecard(path, threshold=args.threshold).to_dict() for path in args.runs]
    if args.json:
        print_json(cards)
    else:
        sys.stdout.write(format_scorecards(cards))
    return 0


def _run_suite_cli(args: argparse.Namespace, suite: Any, *, analyze: bool = True,
                   report_only: bool = False, only: tuple[str, ...] | None = None,
                   seeds: list[int] | None = None,
                   digests: Path | None = None) -> SuiteResult:
    """A suite's runs from the command line: with a report (`suite` a name or a file),
    or without (`suite` a Suite, for two-phase)."""
    from ..present.report import reproduce
    from ..batch.suite import run_suite

    _load_plugins(args)
    if args.jobs is not None and args.jobs < 1:
        raise ZgdynError(f"--jobs: must be an integer >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ZgdynError(f"--threads: must be an integer >= 1, got {args.threads}")
    import os
    jobs = args.jobs if args.jobs is not None else max(1, os.cpu_count() or 1)
    stage = (lambda name: sys.stderr.write(f"zgdyn: {name} ...\n")) \
        if not args.no_progress and not args.json else (lambda name: None)
    if args.ensemble is not None and args.ensemble < 0:
        raise ZgdynError(f"--ensemble: must be an integer >= 1, got {args.ensemble}")
    kw = dict(jobs=jobs, threads=args.threads, plugins=tuple(args.plugin or ()),
              progress=not args.no_progress, report_only=report_only, only=only,
              on_stage=stage, ensemble=args.ensemble, digests=digests,
              device=device_arg(args.device) if getattr(args, "device", None) else None)
    if isinstance(suite, str):
        return reproduce(suite, args.out, seeds=seeds, **kw)
    return run_suite(suite, args.out, analyze=analyze, **kw)


def cmd_two_phase(args: argparse.Namespace) -> int:
    from ..batch.suite import suite_from_dict

    base = flatten(load_toml(args.config)) if args.config else {}
    given = _given(args)
    section = {k: v for k, v in {**base, **given}.items()
               if k not in ("seed", "switch_s") and v != flatten(Config())[k]}
    section.setdefault("switch_at_test_acc", 0.99) if "switch_at_epoch" not in section \
        else None
    section["switch_s"] = args.switch_s
    suite = suite_from_dict({"name": args.name, "seeds": args.seeds, "two_phase": section},
                            source="(two-phase flags)")
    result = _run_suite_cli(args, suite, analyze=False)
    if args.json:
        d = result.to_dict()
        print_json({k: d[k] for k in ("suite", "out", "tables", "cards", "errors", "seconds")})
    else:
        sys.stdout.write(format_two_phase(result))
    return 1 if result.errors else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    only = tuple(t.replace("-", "_") for t in args.only) if args.only else None
    result = _run_suite_cli(args, args.suite, report_only=args.report_only, only=only,
                            seeds=args.seeds, digests=args.digests)
    if args.json:
        print_json({k: v for k, v in result.to_dict().items() if k != "perturb"})
    else:
        sys.stdout.write(format_summary(result) + f"report: {result.report}\n")
    return 1 if result.errors else 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.suite, args.seeds, args.report_only, args.only = "quick", None, False, None
    args.digests = None
    return cmd_reproduce(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..batch.sweep import MAX_RUNS, SWEEPS_DIR, load_sweep, run_sweep

    _load_plugins(args)
    sweep = load_sweep(args.sweep, max_runs=None if args.force else MAX_RUNS)
    result = run_sweep(sweep, args.out or SWEEPS_DIR / sweep.name, executor=args.executor,
                       address=args.address, jobs=args.jobs, threads=args.threads,
                       plugins=tuple(args.plugin or ()), progress=not args.no_progress,
                       force_disk=args.force)
    if args.json:
        print_json(result)
    else:
        ran = [r for r in result["runs"] if r["planned"] in ("train", "resume")]
        lines = [f"sweep {result['name']}: {len(result['runs'])} runs in {result['out']} "
                 f"({len(ran)} run now, {len(result['failed'])} failed; "
                 f"{result['seconds'] / 60:.1f} min, {result['executor']})"]
        lines += [f"failed: {label}: {e}" for label, e in result["failed"].items()]
        lines.append(f"report: zgdyn sweep-report {result['out']}")
        sys.stdout.write("\n".join(lines) + "\n")
    return 1 if result["failed"] else 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from ..batch.sweep import sweep_report

    r = sweep_report(args.sweep_dir, x=args.x, y=args.y)
    figure = args.figure or args.sweep_dir / "phase_diagram.png"
    outs = []
    if r["phase"] is not None and any(x["card"] for x in r["rows"]):
        from ..present.suite_plots import plot_phase_diagram
        outs = figure_paths(figure, force=True)
        save_figure(plot_phase_diagram(r["phase"], title=f"sweep {r['name']}: mean over "
                                        "runs at each point"), outs)
    if args.json:
        print_json({**r, "figures": [str(o) for o in outs]})
    else:
        sys.stdout.write(format_sweep_report(r) + (f"wrote {', '.join(map(str, outs))}\n"
                                                   if outs else ""))
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ..batch.leaderboard import leaderboard, phase2_curves
    from ..batch.suite import load_suite

    name = args.suite
    if name is None:
        runs = sorted(d.name for d in (args.suite_dir / "runs").glob("*") if d.is_dir())
        if len(runs) != 1:
            raise ZgdynError(f"{args.suite_dir}: holds {len(runs)} suites' runs under runs/ "
                             f"({', '.join(runs) or 'none'}); name one with --suite")
        name = runs[0]
    suite = load_suite(name)
    if not (args.suite_dir / "runs" / suite.name).is_dir() and args.digests is None:
        raise ZgdynError(f"{args.suite_dir}: has no runs of suite {suite.name!r} "
                         f"(no {args.suite_dir / 'runs' / suite.name}); give zgdyn reproduce's "
                         "--out folder, or --digests")
    _threads(args.threads)
    from ..batch.leaderboard import COST_ROUNDS
    from ..core.runtime import progress_bar

    bar = progress_bar(not args.no_cost and not args.no_progress, total=COST_ROUNDS,
                       desc="timing the methods' epochs", unit="round")
    try:
        board = leaderboard(suite, args.suite_dir, rank_s=args.rank_s, cost=not args.no_cost,
                            digests=args.digests,
                            on_round=lambda i: bar.update(1) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    curves = phase2_curves(suite, args.suite_dir, args.rank_s, digests=args.digests)
    outs = []
    if curves:
        from ..present.suite_plots import plot_leaderboard
        outs = figure_paths(args.figure or args.suite_dir / "leaderboard.png", force=True)
        save_figure(plot_leaderboard(curves, args.rank_s), outs)
    if args.json:
        print_json({**board.to_dict(), "figures": [str(o) for o in outs]})
    else:
        sys.stdout.write(format_leaderboard(board) + (f"wrote {', '.join(map(str, outs))}\n"
                                                      if outs else ""))
    return 0


__all__ = ["RUNS_DIR", "fail", "NAME_ALIASES", "MAX_NAME", "cmd_train", "cmd_info", "cmd_stats",
           "cmd_verify", "cmd_bench", "cmd_scorecard", "cmd_two_phase", "cmd_reproduce",
           "cmd_demo", "cmd_sweep", "cmd_sweep_report", "cmd_leaderboard"]
