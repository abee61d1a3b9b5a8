"""The `zgdyn` command line: parse, call one library function, print or save.

    zgdyn train --zipf-s 1.5 --epochs 100000 --out data/runs/s1.5.h5
    zgdyn train --config experiments/two_phase_s1.5.toml
    zgdyn train --resume --out data/runs/s1.5.h5 [--epochs 200000]
    zgdyn train --zipf-s 0 1 1.5 2 --seeds 1 2 3 [--out DIR] [--ensemble-size K]
    zgdyn info data/runs/s1.5.h5 [--json]
    zgdyn verify data/runs/s1.5.h5 [--json]
    zgdyn analyze data/runs/s1.5.h5 [--key-freqs fixed|auto] [--ref-epoch E] [--json]
    zgdyn stats --p 97 --train-frac 0.3 --zipf-s 0 1 1.5 2 3 [--json]
    zgdyn plot data/runs/s1.5.h5 --kind dynamics|memorization|gamma|spectrum|sharpness --out fig.png
    zgdyn events data/runs/s1.5.h5 [--threshold 100] [--json]
    zgdyn replay data/runs/s1.5.h5 --from 56500 --to 57100 --every 5 --out window.h5
    zgdyn hessian data/runs/s0.h5 [--epoch E] [--zipf-s 1.5] [--k 10] [--preconditioned]
    zgdyn saddle data/runs/s0.h5 [--epoch E] [--zipf-s 0 1 1.5 2 3] [--json]
    zgdyn sharpness data/runs/s1.5.h5 --every 500 [--from E1 --to E2] [--preconditioned]
    zgdyn scorecard RUN.h5 ... [--json]
    zgdyn two-phase --switch-s 1 1.5 2 3 --seeds 1 2 3 [--phase2-epochs N] [--jobs N]
    zgdyn perturb data/runs/s0.h5 [--zipf-s 1.5 3] [--eps 1e-6 1e-4] [--plot fig.png]
    zgdyn reproduce --suite quick|essay|FILE [--out data/report] [--report-only]
    zgdyn sweep SWEEP.toml [--executor local|ray] [--address ADDR] [--jobs N] [--out DIR]
    zgdyn sweep-report SWEEP_DIR [--json] [--figure FIG.png]
    zgdyn demo                        # the quick suite, about 10 minutes on 2 cores
    zgdyn bench [--device cuda] [--ensemble-sizes 1 8 64] [--json]
    zgdyn bench --hessian-only [--hessian-run RUN.h5 --hessian-epoch E]

Bad input gets a one-line error on stderr and exit code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from .config import DTYPE_NAMES, INITS, LOOKBACK, LOSSES, OPTIMIZERS, REFRACTORY, WEIGHTINGS, \
    Config, ZgdynError, fields_by_section, flat_name, flatten, from_flat, load_toml

CHOICES = {"weighting": WEIGHTINGS, "init": INITS, "dtype": DTYPE_NAMES, "loss": LOSSES,
           "optimizer": OPTIMIZERS, "switch_optimizer": OPTIMIZERS}
RUNS_DIR = Path("data/runs")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _fail(message: str) -> int:
    sys.stderr.write(f"zgdyn: error: {message}\n")
    return 2


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


ENSEMBLE_FIELDS = ("zipf_s", "weighting", "lr", "weight_decay")  # zgdyn train takes lists


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                      multi: tuple[str, ...] = ()) -> None:
    """One flag per config field, from the dataclasses; only flags given appear in args.
    Fields named in `multi` take one or more values (a list in args)."""
    for section, fields in fields_by_section().items():
        group = parser.add_argument_group(f"[{section}]" if section else "run")
        for f in fields:
            name = flat_name(f)
            if name in skip:
                continue
            kw: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f"cfg_{name}",
                                  "help": f"{f.metadata['help']} (default: {_default(f)})"}
            typ = str(f.type)
            if typ.startswith("bool"):
                kw.update(type=_bool, metavar="true|false")
            elif typ.startswith("tuple[int"):
                kw.update(type=int, nargs="+", metavar="N")
            elif typ.startswith("tuple[str"):
                kw.update(nargs="*", metavar="LAYER")
            elif typ.startswith("int"):
                kw.update(type=int, metavar="N")
            elif typ.startswith("float"):
                kw.update(type=float, metavar="X")
            else:
                kw.update(choices=CHOICES.get(name), metavar=name.upper())
            if name in multi:
                kw.update(nargs="+", help=kw["help"] + "; several values train an ensemble")
            group.add_argument(_flag(name), **kw)
    parser.add_argument("--wd", dest="cfg_weight_decay", type=float, metavar="X",
                        default=argparse.SUPPRESS, help="alias of --weight-decay",
                        nargs="+" if "weight_decay" in multi else None)


def _bool(text: str) -> bool:
    """A flag's true/false value (also 1/0, yes/no)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return value[text.lower()]


def _add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help=f"{what}: cpu | cuda | cuda:N (default cpu)")


def _device(name: str) -> str:
    """A checked torch device name: one line and exit 2 for anything else or a missing GPU."""
    from .budget import check_device

    Config(device=name)  # the same rule as a run's device field
    check_device(name)
    return name


def _threads(n: int | None) -> None:
    """Set torch's CPU threads from --threads (None: leave them)."""
    if n is None:
        return
    if n < 1:
        raise ZgdynError(f"--threads: must be an integer >= 1, got {n}")
    import torch
    torch.set_num_threads(n)


def _finite(flag: str, values: Any, low: float = 0.0) -> None:
    """Refuse values of `flag` that are not finite numbers >= `low`."""
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if v is not None and not (math.isfinite(v) and v >= low):
            raise ZgdynError(f"{flag}: must be a finite number >= {low:g}, got {v}")


def _add_plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="MODULE",
                   help="import this Python module first; it registers step hooks "
                   "(--hook NAME), see zgdyn.hooks (repeatable)")


def _add_suite_flags(p: argparse.ArgumentParser, out: str, *, device: bool = True) -> None:
    p.add_argument("--out", type=Path, default=Path(out), metavar="DIR",
                   help=f"runs go to DIR/runs/<suite>, the report to DIR (default {out})")
    _add_pool_flags(p, "the cores", "the cores / jobs")
    if device:  # (two-phase has it among its config flags)
        p.add_argument("--device", metavar="DEVICE",
                       help="every run's device: cpu | cuda | cuda:N (default: the suite's)")
    p.add_argument("--ensemble", type=int, nargs="?", const=0, metavar="K",
                   help="train the runs in this process as ensembles of up to K members "
                   "(all at once without K) instead of a process pool: the way on a GPU")


def _json_flag(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or stage lines on stderr")


def _figure_flag(p: argparse.ArgumentParser, *, required: bool = False, what: str,
                 old: str | None = None) -> None:
    """--figure FIG.png (a .png gets a .pdf beside it); `old` is an earlier spelling, kept
    working but not shown (a required one is checked by the command, which sees both)."""
    p.add_argument("--figure", type=Path, metavar="FIG.png",
                   help=f"{what}{' (required)' if required else ''}; a .png also gets a "
                   ".pdf beside it")
    if old is not None:
        p.add_argument(old, dest="figure", type=Path, help=argparse.SUPPRESS)


def _threshold_flag(p: argparse.ArgumentParser) -> None:
    """--collapse-threshold, as train's config field; --threshold is its old spelling."""
    p.add_argument("--collapse-threshold", dest="threshold", type=float, default=100.0,
                   metavar="X", help="a collapse is an evaluation whose train loss exceeds X "
                   "times its recent minimum, as the trainer's detector (default 100)")
    p.add_argument("--threshold", dest="threshold", type=float, help=argparse.SUPPRESS)


def _add_pool_flags(p: argparse.ArgumentParser, jobs: str, threads: str) -> None:
    p.add_argument("--jobs", type=int, metavar="N",
                   help=f"runs at a time, each in its own process (default: {jobs})")
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"torch threads per run (default: {threads})")
    _progress_flag(p)
    _json_flag(p)
    _add_plugin_flag(p)


def _default(f: Any) -> Any:
    return f.default


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: (tuple(v) if isinstance(v, list) else v)
            for k, v in vars(args).items() if k.startswith("cfg_")}


# how a field is named in a default file name; fields not listed keep their own name
NAME_ALIASES = {"train_frac": "frac", "hidden": "h", "weight_decay": "wd",
                "switch_at_test_acc": "at-acc", "switch_at_epoch": "at-epoch"}
MAX_NAME = 200


def _name_text(v: Any) -> str:
    from .sweep import number_text

    if isinstance(v, (list, tuple)):
        return "x".join(map(_name_text, v))
    if isinstance(v, float):
        return number_text(v)
    return str(v) if isinstance(v, int) else f"-{v}"


def _default_out(cfg: Config) -> Path:
    """data/runs/p<p>-<weighting>-s<s>[-to-s<s2>][-<field><value>...]-seed<seed>.h5: every
    field that shapes the trajectory and differs from the default is in the name (floats
    exactly: 0.1234567 and 0.1234568 differ), so two different runs never share a name.
    Left out: how long a run goes and where (epochs, phase2_epochs, device: a resume may
    change them) and what it records ([record]), which leave the trajectory as it is."""
    from .runner import RESUMABLE_CHANGES

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


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


# -- commands -----------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .runner import resume_run, train_run
    from .store import open_run

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
            return _fail("--resume needs --out RUN.h5, the run to continue")
        if args.config is not None:
            return _fail("--resume takes the config stored in the run; drop --config")
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
        _print_json(summary)
    else:
        sys.stdout.write(f"{_run_line(summary, out)} (details: zgdyn info {out})\n")
    return 0


def _train_ensemble(args: argparse.Namespace, configs: list[Config],
                    given: dict[str, Any]) -> int:
    """zgdyn train with lists of values: the members as ensembles of --ensemble-size."""
    from .runner import train_ensemble
    from .store import open_run

    if args.ensemble_size is not None and args.ensemble_size < 1:
        return _fail(f"--ensemble-size: must be an integer >= 1, got {args.ensemble_size}")
    if args.out is not None and args.out.suffix == ".h5":
        return _fail(f"--out: an ensemble writes one file per member into a folder, got "
                     f"the file name {args.out}")
    if args.resume and args.force:
        return _fail("--resume and --force exclude each other")
    if args.resume and args.config is not None:
        return _fail("--resume takes the configs stored in the runs; drop --config")
    folder = args.out or RUNS_DIR
    paths = [folder / _default_out(cfg).name for cfg in configs]
    size = args.ensemble_size or len(configs)
    if args.resume:
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            return _fail(f"--resume: no run file {missing[0]} to continue"
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
        _print_json(rows)
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
            f"test acc {_pct(summary['final']['test_acc'])}")


def _load_plugins(args: argparse.Namespace) -> None:
    from .hooks import load_plugins
    load_plugins(args.plugin or [])


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _optimizer_text(o: dict[str, Any], sch: dict[str, Any]) -> str:
    """An optimizer's name and the settings it uses, from a config's optim section (files
    from before `name` existed are AdamW)."""
    name = o.get("name", "adamw")
    text = f"{name} lr {o['lr']:g}, weight decay {o['weight_decay']:g}"
    if name == "sgd":
        mu = o.get("momentum") or 0.0
        text += f", momentum {mu:g}" + (" (Nesterov)" if o.get("nesterov") else "")
    else:
        text += f", betas ({o['beta1']}, {o['beta2']})"
        if name != "adam_atan2":
            text += f", eps {o['eps']:g}"
        if o.get("sqrt_v_floor"):
            text += f", sqrt(v-hat) floor {o['sqrt_v_floor']:g}"
        if o.get("update_clip"):
            text += ", update clipping"
    if sch.get("switch_optimizer") or sch.get("switch_lr"):
        text += (f"; after the switch {sch.get('switch_optimizer') or name}"
                 + (f" lr {sch['switch_lr']:g}" if sch.get("switch_lr") else ""))
    if sch.get("reset_optimizer_at_switch"):
        text += "; its state reset at the switch"
    return text + (f", hook {o['hook']} (strength {o['hook_strength']:g})" if o.get("hook")
                   else "")


def _format_info(s: dict[str, Any]) -> str:
    c = s["config"]
    d, m, o, sch = c["data"], c["model"], c["optim"], c["schedule"]
    fin = s["final"]
    lines = [
        f"run            {s['path']}  ({s['status']}, format v{s['format_version']}, "
        f"{s['file_bytes'] / 1e6:.1f} MB)",
        f"task           (a + b) mod {d['p']}, train fraction {d['train_frac']}, seed {c['seed']}",
        f"weighting      {d['weighting']}, s = {d['zipf_s']}"
        + (f" -> s = {sch['switch_s']} at epoch {s['switch_epoch']}"
           if s["switch_epoch"] is not None else
           (f" -> s = {sch['switch_s']} (switch not reached)" if sch["switch_s"] is not None
            else "")),
        f"model          MLP 2p -> {' -> '.join(map(str, m['hidden']))} -> p, {s['n_params']:,} "
        f"parameters, {m['init']} init, {m['dtype']}"
        + (f", {m['loss']} loss" if m.get("loss", "softmax") != "softmax" else ""),
        f"optimizer      {_optimizer_text(o, sch)}",
        f"epochs done    {s['epochs_done']:,} of {sch['epochs']:,}"
        + (f" (+{sch['phase2_epochs']:,} after the switch)" if sch["phase2_epochs"] else ""),
        f"records        {s['n_evals']:,} evaluations, {s['n_checkpoints']:,} checkpoints, "
        f"{s['n_keyframes']:,} keyframes, {s['n_windows']} collapse window(s) of "
        f"{s['n_window_records']:,} per-epoch records",
        f"first >= 95%   {_opt(s['first_epoch_test_acc_95'], 'd').replace('-', 'never')} "
        "(test accuracy, on the evaluation grid)",
        f"time >= 95%    {_pct(s['frac_evals_test_acc_95'])} of evaluations",
        f"final          epoch {int(fin['epoch']) if fin['epoch'] is not None else '-'}: "
        f"train acc {_pct(fin['train_acc'])}, test acc {_pct(fin['test_acc'])}, "
        f"train loss {_opt(fin['train_loss'], '.3g')}, test loss {_opt(fin['test_loss'], '.3g')}",
    ]
    return "\n".join(lines) + "\n"


def cmd_info(args: argparse.Namespace) -> int:
    from .store import open_run

    with open_run(args.run) as run:
        summary = run.summary()
    if args.json:
        _print_json(summary)
    else:
        sys.stdout.write(_format_info(summary))
    return 0


def _opt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _fmt_ratio(x: float) -> str:
    return f"{x:,.0f}" if x < 1e9 else f"{x:.3g}"


def _fmt_sig(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}" if x < 100 else f"{x:.1f}"


def cmd_stats(args: argparse.Namespace) -> int:
    from .config import DataConfig
    from .data import stats_table

    DataConfig(p=args.p, train_frac=args.train_frac, weighting=args.weighting)  # validates
    Config(seed=args.seed)  # validates
    for s in args.zipf_s:
        DataConfig(zipf_s=s)  # validates
    rows = stats_table(args.p, args.train_frac, args.zipf_s, seed=args.seed,
                       mode=args.weighting)
    if args.json:
        _print_json({"p": args.p, "train_frac": args.train_frac, "weighting": args.weighting,
                     "n_train": rows[0]["n"], "rows": rows})
        return 0
    head = f"{'s':>5}  {'max/min':>14}  {'ESS 1/Σw²':>10}  {'top-10% mass':>12}  " \
           f"{'top-1':>8}  {'top-2':>8}"
    out = [f"p = {args.p}, train fraction {args.train_frac}: {rows[0]['n']:,} training pairs, "
           f"{args.weighting} weighting", head]
    for r in rows:
        out.append(f"{r['s']:>5g}  {_fmt_ratio(r['ratio']):>14}  {_fmt_sig(r['ess']):>10}  "
                   f"{100 * r['top10_mass']:>11.3g}%  {100 * r['top1']:>7.3g}%  "
                   f"{100 * r['top2']:>7.3g}%")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_run

    s = analyze_run(args.run, key_freqs=args.key_freqs, ref_epoch=args.ref_epoch,
                    top_k=args.top_k, force=args.force, progress=not args.no_progress)
    if args.json:
        _print_json(s)
        return 0
    fe, g = s["fourier_energy"], s["gamma_curve"]
    key = (f"{s['n_key']} fixed from epoch {s['ref_epoch']}: {s['key']}"
           if s["key"] is not None else f"chosen afresh at each checkpoint "
           f"({s['n_key_auto_final']} at the last)")
    m_star = "none (gamma stays on one side of lambda)" if g["m_star"] is None \
        else f"{g['m_star']:.3g}"
    gn = s["gamma_near_solution"]
    near = "-" if gn["gamma_fd_mean"] is None else \
        f"{gn['gamma_fd_mean']:.3g} ({'above' if gn['above_lambda'] else 'below'} lambda)"
    gi = s["gamma_inst"]
    lines = [
        f"analyzed       {s['n_checkpoints']} checkpoints + {s['n_window_records']} window "
        f"records ({s['newly_analyzed']} new) -> "
        f"{s['path']}:analysis/trajectory",
        f"key freqs      {key}",
        f"Fourier energy start {fe['start']:.3f}, peak {fe['peak']:.3f} (epoch "
        f"{fe['peak_epoch']}), end {fe['end']:.3f}; all-diagonal fraction at the end "
        f"{s['diagonal_fraction_end']:.3f}",
        f"m_w (weights)  {s['m_w']['min']:.3g} .. {s['m_w']['max']:.3g}, end {s['m_w']['end']:.3g}",
        f"m_f (logits)   {s['m_f']['min']:.3g} .. {s['m_f']['max']:.3g}, end {s['m_f']['end']:.3g}",
        f"gamma(m)       lambda_eff = lr*wd = {s['lambda_eff']:.3g}/epoch; crossing m* = {m_star}; "
        f"gamma_fd near the solution (energy >= 95% of peak, {gn['n']} checkpoints): {near}",
        f"gamma_inst     {gi['n']} keyframes, median {_opt(gi['median'], '.3g')}/epoch, "
        f"fraction above lambda {_opt(gi['frac_above_lambda'], '.2f')}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import run_figure

    if args.figure is None:
        raise ZgdynError("plot: --figure FIG.png is required (where the figure goes)")
    outs = _figure_paths(args.figure, args.force)
    fig = run_figure(str(args.run), args.kind, epoch_from=args.epoch_from,
                     epoch_to=args.epoch_to, epochs=args.epochs)
    _save_figure(fig, outs)
    sys.stdout.write(f"wrote {', '.join(str(o) for o in outs)}\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .store import verify_run

    r = verify_run(args.run)
    if args.json:
        _print_json(r)
    else:
        ck = r["checked"]
        head = (f"{r['path']}: {'ok' if r['ok'] else 'DAMAGED'} ({ck['checkpoints']} checkpoints "
                f"and {ck['keyframes']} keyframes read, checksums verified"
                + ("; an interrupted commit was rolled back" if r["rolled_back"] else "") + ")")
        sys.stdout.write("\n".join([head] + [f"  - {p}" for p in r["problems"]]) + "\n")
    return 0 if r["ok"] else 1


def cmd_events(args: argparse.Namespace) -> int:
    from .analyze import run_events

    r = run_events(str(args.run), threshold=args.threshold, lookback=args.lookback,
                   refractory=args.refractory)
    if args.json:
        _print_json(r)
        return 0
    lines = [f"{len(r['events'])} collapse(s) in {r['path']} (train loss > {r['threshold']:g}x "
             f"its minimum over the previous {r['lookback']} epochs; evaluations every "
             f"{_opt(r['eval_resolution'], 'g')} epochs, every epoch in "
             f"{len(r['windows']['trigger'])} collapse window(s))",
             f"{'epoch':>8} {'loss ratio':>11} {'rise (ep)':>9} {'test before':>11} "
             f"{'test after':>10} {'Fourier before':>14} {'after':>6}"]
    for e in r["events"]:
        lines.append(f"{e['epoch']:>8} {e['loss_ratio']:>11.3g} {e['duration']:>9.1f} "
                     f"{_pct(e['test_acc_before']):>11} {_pct(e['test_acc_after']):>10} "
                     f"{_opt(e['fourier_before'], '.3f'):>14} {_opt(e['fourier_after'], '.3f'):>6}")
    c = r["cycles"]
    if c["period_mean"] is not None:
        lines.append(f"period {c['period_mean']:,.0f} epochs"
                     + (f" ± {c['period_std']:,.0f}" if c["period_std"] is not None else "")
                     + f"; recovery to the test-accuracy trough {c['recovery']}; build "
                     f"{c['build']}; time at the peak {c['peak']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _pm(value: float | None, err: float | None, fmt: str = ".3g") -> str:
    if value is None:
        return "-"
    return f"{value:{fmt}}" + ("" if err is None else f" ± {err:{fmt}}")


def cmd_fit(args: argparse.Namespace) -> int:
    from .analyze import fit_run

    r = fit_run(str(args.run), model=args.model, slow=args.slow, m_name=args.m,
                segment=args.segment, threshold=args.threshold,
                progress=not args.no_progress)
    if args.json:
        _print_json(r)
        return 0
    lam, obs = r["lambda_eff"], r["observed"]
    lines = [f"fits of {r['m']} in {r['path']} (lambda = lr*wd = {lam:g}; shooting segments of "
             f"{r['segment_epochs']:,.0f} epochs; {len(r['events'])} collapse(s))"]
    if r["rates"]:
        lines.append("(a) per collapse: growth of m while it jumps, decay after (per epoch)")
        for x in r["rates"]:
            lines.append(f"  {x['epoch']:>8}  growth {_pm(x['growth'], x['growth_stderr'])} "
                         f"(= {_opt(x['growth_over_lambda'], '.3g')} lambda)   decay "
                         f"{_pm(x['decay'], x['decay_stderr'])} "
                         f"(= {_opt(x['decay_over_lambda'], '.3g')} lambda)")
    if "1d" in r:
        law = r["1d"]["between_events"] or r["1d"]["whole"]
        (g0, g1), (e0, e1) = law["params"], law["stderr"]
        lines.append(f"(b) 1-D law d ln m/dt = gamma(m) - lambda, gamma(m) = g0 + g1 ln(m / "
                     f"{law['scales']['m_ref']:.4g}): g0 {_pm(g0, e0)}, g1 {_pm(g1, e1)}; "
                     f"gamma = lambda at m* = {_opt(r['1d']['m_star'], '.4g')} (fitted "
                     f"{'between collapses' if r['1d']['between_events'] else 'on all data'})")
    if "2d" in r:
        for name, f in r["2d"]["fits"].items():
            chosen = " (chosen)" if name == r["2d"]["chosen"] else ""
            ps = ", ".join(f"{n} {_pm(v, e)}" for n, v, e in
                           zip(f["names"][:4], f["params"][:4], f["stderr"][:4]))
            lines.append(f"(c) 2-D slow-fast, slow = {name}{chosen}: {ps}; AIC {f['aic']:.1f}")
        sim = r["2d"]["fits"][r["2d"]["chosen"]]["simulated"] or {}
        lines.append(f"{'':4}{'':24}{'observed':>12}{'2-D model':>12}")
        for label, o, s in (("period (epochs)", obs["period"], sim.get("period")),
                            ("duty cycle (m high)", obs["duty"], sim.get("duty")),
                            ("rise of ln m (epochs)", obs["rise_ln_m"], sim.get("rise"))):
            lines.append(f"{'':4}{label:<24}{_opt(o, '.4g'):>12}{_opt(s, '.4g'):>12}")
        lines.append(f"{'':4}{'collapse, train loss':<24}"
                     f"{_opt(obs['collapse_duration'], '.4g'):>12}{'':>12}")
    if "adam_clock" in r:
        c = r["adam_clock"]
        mean_rate = sum(c["rate"]) / len(c["rate"]) if c["rate"] else float("nan")
        lines.append(f"Adam's clock: ln sqrt(v_hat) falls at {mean_rate:.3g}/epoch "
                     f"between collapses (each: {', '.join(f'{x:.3g}' for x in c['rate'])}; "
                     f"(1 - beta2)/2 = {c['rate_expected']:.3g}); sqrt(v_hat) at each collapse "
                     f"onset {', '.join(f'{x:.2g}' for x in c['a_onset'])} (eps = "
                     f"{c['eps']:g}); period predicted from it "
                     f"{', '.join(f'{x:,.0f}' for x in c['period_predicted'])} against observed "
                     f"{', '.join(f'{x:,.0f}' for x in c['period_observed'])}")
    if "aic" in r:
        a = r["aic"]
        lines.append(f"AIC on ln m: 1-D {a['1d']:.1f}, 2-D {a['2d']:.1f}; "
                     + (f"the {a['preferred']} model has the lower AIC (difference "
                        f"{a['delta_1d_minus_2d']:.1f}), but see the warnings" if r["warnings"]
                        else f"the data choose the {a['preferred']} model (difference "
                        f"{a['delta_1d_minus_2d']:.1f})"))
    lines += [f"warning: {w}" for w in r["warnings"]]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .runner import replay_run
    from .store import open_run

    replay_run(args.run, args.out, epoch_from=args.epoch_from, epoch_to=args.epoch_to,
               every=args.every, force=args.force, force_disk=args.force,
               progress=not args.no_progress)
    with open_run(args.out) as run:
        s = run.summary()
    if args.json:
        _print_json(s)
    else:
        sys.stdout.write(f"wrote {args.out}: epochs {int(run.checkpoint_epochs[0])}.."
                         f"{s['epochs_done']} every {args.every} ({s['n_checkpoints']} "
                         "checkpoints)\n")
    return 0


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def cmd_hessian(args: argparse.Namespace) -> int:
    from .stability import hessian_at

    _finite("--zipf-s", args.zipf_s)
    _finite("--coupled-wd", args.coupled_wd)
    if args.k < 1:
        raise ZgdynError(f"--k: must be an integer >= 1, got {args.k}")
    r = hessian_at(str(args.run), epoch=args.epoch, zipf_s=args.zipf_s, k=args.k,
                   device=_device(args.device),
                   which=args.which, preconditioned=args.preconditioned, dtype=args.dtype,
                   coupled_wd=args.coupled_wd, method=args.method,
                   progress=not args.no_progress)
    if args.json:
        _print_json(r)
        return 0
    kind = "D^-1/2 H D^-1/2 (Adam-preconditioned)" if r["preconditioned"] else "H"
    lines = [f"{kind} of L_s, s = {r['zipf_s']:g}, at epoch {r['epoch']} ({r['dtype']}; "
             f"{r['n_hvp']} HVPs, converged: {r['converged']})",
             f"tolerance: {r['tolerance']}",
             f"{'#':>3} {'eigenvalue':>12} {'residual':>10} {'overlap θ_M':>12} "
             f"{'max |cos| heavy-pair grads':>27}"
             + (f" {'growth/epoch':>13}" if r["preconditioned"] else "")]
    for i, lam in enumerate(r["eigenvalues"]):
        cos = max(abs(c) for c in r["cos_heavy_pair_grads"][i])
        row = (f"{i + 1:>3} {_fmt(lam):>12} {_fmt(r['residuals'][i]):>10} "
               f"{r['overlap_theta_m'][i]:>12.3f} {cos:>27.3f}")
        if r["preconditioned"]:
            row += f" {_fmt(r['growth_rates'][i]):>13}"
        lines.append(row)
    if r["preconditioned"]:
        lines.append(f"Adam stability threshold 38/lr = {r['adam_threshold']:.4g}; "
                     f"decay lr*wd = {r['lr_wd']:g}/epoch")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def format_saddle(r: dict[str, Any]) -> str:
    lines = [f"saddle test at epoch {r['epoch']} ({r['dtype']}, {r['n_key']} key frequencies); "
             f"decay rate lr*wd = {r['lr_wd']:g}/epoch, Adam threshold {r['adam_threshold']:.4g}",
             f"{'s':>4} {'|grad L_s|':>11} {'λ_min':>10} {'λ_max':>10} {'pre λ_min':>10} "
             f"{'pre λ_max':>10} {'overlap θ_M':>11} {'growth/epoch':>12}"]
    for row in r["rows"]:
        lines.append(f"{row['zipf_s']:>4g} {_fmt(row['grad_norm']):>11} "
                     f"{_fmt(row['lambda_min']):>10} {_fmt(row['lambda_max']):>10} "
                     f"{_fmt(row['pre_lambda_min']):>10} {_fmt(row['pre_lambda_max']):>10} "
                     f"{row['overlap_theta_m']:>11.3f} {_fmt(row['growth_rate']):>12}"
                     + ("" if row["converged"] else "  (not converged)"))
    lines.append("growth = -lr*(pre λ_min) - lr*wd: > 0 means the linearized AdamW update leaves "
                 "the point along that direction; monotone in s: "
                 f"{'yes' if r['monotone_growth'] else 'no'}")
    return "\n".join(lines) + "\n"


def cmd_saddle(args: argparse.Namespace) -> int:
    from .stability import saddle_table

    _finite("--zipf-s", args.zipf_s)
    r = saddle_table(str(args.run), epoch=args.epoch, exponents=tuple(args.zipf_s),
                     device=_device(args.device),
                     dtype=args.dtype, progress=not args.no_progress)
    if args.json:
        _print_json(r)
    else:
        sys.stdout.write(format_saddle(r))
    return 0


def format_sharpness(s: dict[str, Any], onsets: dict[str, Any]) -> str:
    th = s["thresholds"]
    lines = [f"measured      {s['n_points']} points ({s['newly_measured']} new of "
             f"{s['n_asked']} asked) -> {s['path']}:{s['group']}",
             f"tolerance     {s['tolerance']}; {s['hvps']} HVPs in all; converged: "
             f"{'all' if s['all_converged'] else 'not all'}",
             f"Adam's state  {s['adam_state']}",
             f"thresholds    38/lr = {th['adam_edge']:.4g}, 2/lr = {th['two_over_lr']:.4g}, "
             f"-wd = {th['minus_wd']:g}, -2*wd = {th['minus_two_wd']:g}"]
    rows = onsets["rows"]
    if rows and "pre_lambda_max" in rows[0]:
        lines.append("at each onset's last point before it (and over its 100 to 10 epochs "
                     "before, the median):")
        lines.append(f"{'onset':>8} {'before':>8} {'λmax(P⁻¹H)':>11} {'/ 38/lr':>8} "
                     f"{'(median)':>9} {'λgrad(P⁻¹H)':>12} {'/ 2/lr':>8} {'λmin(P⁻¹H)':>11} "
                     f"{'/ -2wd':>8}")
        for r in rows:
            near = r["pre_lambda_max/adam_edge@approach"]
            lines.append(f"{r['onset']:>8} {r['before_epoch']:>8} "
                         f"{_fmt(r['pre_lambda_max']):>11} "
                         f"{r['pre_lambda_max/adam_edge']:>8.3g} "
                         f"{'-' if near is None else f'{near[0]:.3g}':>9} "
                         f"{_fmt(r['pre_lambda_grad']):>12} "
                         f"{r['pre_lambda_grad/two_over_lr']:>8.3g} "
                         f"{_fmt(r['pre_lambda_min']):>11} "
                         f"{r['pre_lambda_min/minus_two_wd']:>8.3g}")
        lines += onsets["verdicts"]
    if onsets["unmeasured_onsets"]:
        lines.append("onsets with no measured point in the 10 epochs before: "
                     + ", ".join(str(e) for e in onsets["unmeasured_onsets"]))
    return "\n".join(lines) + "\n"


def cmd_sharpness(args: argparse.Namespace) -> int:
    from .sharpness import sharpness_onsets, sharpness_run

    s = sharpness_run(str(args.run), every=args.every, epoch_from=args.epoch_from,
                      epoch_to=args.epoch_to, zipf_s=args.zipf_s,
                      preconditioned=args.preconditioned, windows=not args.no_windows,
                      window_every=args.window_every, tol=args.tol, force=args.force,
                      progress=not args.no_progress)
    onsets = sharpness_onsets(str(args.run))
    if args.json:
        _print_json({**s, "onsets": onsets})
    else:
        sys.stdout.write(format_sharpness(s, onsets))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_bench, format_hessian, run_bench, run_hessian_bench, save_bench

    if args.hessian_only or args.hessian_run:
        result = run_hessian_bench(p=args.p, run=args.hessian_run and str(args.hessian_run),
                                   epoch=args.hessian_epoch)
        path = save_bench(result, args.out or "data/bench/hessian.json")
        if args.json:
            _print_json(result)
        else:
            sys.stdout.write(format_hessian(result) + f"\nsaved {path}\n")
        return 0
    result = run_bench(epochs=args.epochs, repeats=args.repeats, p=args.p,
                       device=_device(args.device), ensemble_sizes=tuple(args.ensemble_sizes),
                       ensemble_model_epochs=args.ensemble_model_epochs,
                       analysis=not args.no_analysis, window=args.window)
    path = save_bench(result, args.out)
    if args.json:
        _print_json(result)
    else:
        sys.stdout.write(format_bench(result) + f"\nsaved {path}\n")
    return 0


def format_scorecards(cards: list[dict[str, Any]]) -> str:
    lines = [f"{'run':<34} {'status':>9} {'epochs':>8} {'first>=95%':>10} {'>=95%':>6} "
             f"{'coll/100k':>9} {'period':>7} {'ph2 mean':>8} {'ph2 std':>7} {'ph2<50%':>7} "
             f"{'ph2 coll':>8} {'->coll':>7} {'-><50%':>7}"]
    for c in cards:
        lines.append(
            f"{Path(c['path']).name[-34:]:<34} {c['status']:>9} {c['epochs_done']:>8,} "
            f"{_opt(c['first_95'], ',d').replace('-', 'never'):>10} "
            f"{_pct(c['frac_above_95']):>6} {_opt(c['collapses_per_100k'], '.2f'):>9} "
            f"{_opt(c['period_mean'], ',.0f'):>7} {_pct(c['phase2_mean_test']):>8} "
            f"{_pct(c['phase2_std_test']):>7} {_pct(c['phase2_frac_below_50']):>7} "
            f"{_opt(c['phase2_collapses'], 'd'):>8} {_opt(c['phase2_first_collapse'], ',d'):>7} "
            f"{_opt(c['phase2_first_below_50'], ',d'):>7}")
    return "\n".join(lines) + "\n"


def cmd_scorecard(args: argparse.Namespace) -> int:
    from .scorecard import scorecard

    cards = [scorecard(path, threshold=args.threshold) for path in args.runs]
    if args.json:
        _print_json(cards)
    else:
        sys.stdout.write(format_scorecards(cards))
    return 0


def _cell(c: dict[str, Any], pct: bool = False) -> str:
    if c["n"] == 0:
        return "never" if c["never"] else "-"
    f = _pct if pct else (lambda x: f"{x:,.0f}")
    return f(c["mean"]) + ("" if c["std"] is None else f" ± {f(c['std'])}") + \
        (f" ({c['never']} never)" if c["never"] else "")


def format_two_phase(result: dict[str, Any]) -> str:
    from .report import ESSAY_TWO_PHASE

    rows = sorted((r for r in result["tables"] if r["table"] == "two_phase"),
                  key=lambda r: (r["variant"], r["s"]))
    lines = [f"two-phase runs under {result['out']}/runs/{result['suite']['name']} "
             f"(phase-2 statistics over evaluations; mean ± std over seeds)",
             f"{'s':>5} {'seeds':>5} {'mean test':>17} {'(essay)':>8} {'std':>15} "
             f"{'lowest':>15} {'< 50%':>15} {'(essay)':>8} {'collapses':>9} "
             f"{'to 1st collapse':>17} {'to test < 50%':>17}"]
    for r in rows:
        e = ESSAY_TWO_PHASE.get(r["s"], (None, None, None))
        lines.append(
            f"{r['s']:>5g} {r['n_runs']:>5} {_cell(r['phase2_mean_test'], True):>17} "
            f"{_pct(e[0]):>8} {_cell(r['phase2_std_test'], True):>15} "
            f"{_cell(r['phase2_min_test'], True):>15} "
            f"{_cell(r['phase2_frac_below_50'], True):>15} {_pct(e[2]):>8} "
            f"{_opt(r['phase2_collapses']['mean'], '.1f'):>9} "
            f"{_cell(r['phase2_first_collapse']):>17} {_cell(r['phase2_first_below_50']):>17}")
    lines += [f"failed: {p}: {e}" for p, e in result["errors"].items()]
    return "\n".join(lines) + "\n"


def _run_suite_cli(args: argparse.Namespace, suite: Any, *, analyze: bool = True,
                   report_only: bool = False, only: tuple[str, ...] | None = None,
                   seeds: list[int] | None = None) -> dict[str, Any]:
    """A suite's runs from the command line: with a report (`suite` a name or a file),
    or without (`suite` a Suite, for two-phase)."""
    from .report import reproduce
    from .suite import run_suite

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
              on_stage=stage, ensemble=args.ensemble,
              device=_device(args.device) if getattr(args, "device", None) else None)
    if isinstance(suite, str):
        return reproduce(suite, args.out, seeds=seeds, **kw)
    return run_suite(suite, args.out, analyze=analyze, **kw)


def cmd_two_phase(args: argparse.Namespace) -> int:
    from .suite import suite_from_dict

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
        _print_json({k: result[k] for k in ("suite", "out", "tables", "cards", "errors",
                                             "seconds")})
    else:
        sys.stdout.write(format_two_phase(result))
    return 1 if result["errors"] else 0


def format_perturb(r: dict[str, Any]) -> str:
    lines = [f"perturbations of {r['path']} at epoch {r['epoch']} ({r['dtype']}, {r['epochs']} "
             f"epochs; lambda = lr*wd = {r['lambda']:g}/epoch)"]
    for p in r["predictions"]:
        lines.append(f"s = {p['zipf_s']:g}: predicted growth/epoch: Hessian (preconditioned "
                     f"mu_min = {_opt(p['mu_min'], '.4g')}) {_opt(p['hessian_rate'], '.4g')}; "
                     f"1-D law gamma_inst - lambda = {p['law_rate']:.4g}")
    lines.append(f"{'s':>5} {'direction':>9} {'eps':>8} {'early rate':>11} {'late rate':>11} "
                 f"{'delta end/start':>15} {'test acc end':>12} {'(unperturbed)':>13}")
    for x in r["rows"]:
        lines.append(f"{x['zipf_s']:>5g} {x['direction']:>9} {x['eps']:>8.0e} "
                     f"{_opt(x['rate_early'], '.4g'):>11} {_opt(x['rate_late'], '.4g'):>11} "
                     f"{x['growth_factor']:>15.4g} {_pct(x['test_acc_end']):>12} "
                     f"{_pct(x['base_test_acc_end']):>13}")
    return "\n".join(lines) + "\n"


def cmd_perturb(args: argparse.Namespace) -> int:
    from .perturb import perturb_run

    outs = []
    if args.figure is not None:
        outs = _figure_paths(args.figure, args.force)
    r = perturb_run(str(args.run), epoch=args.epoch, zipf_s=tuple(args.zipf_s),
                    eps=tuple(args.eps), epochs=args.epochs, directions=tuple(args.directions),
                    seed=args.seed, dtype=args.dtype, early=args.early,
                    progress=not args.no_progress and not args.json)
    if outs:
        from .plots import plot_perturb
        _save_figure(plot_perturb(r), outs)
    if args.json:
        _print_json({k: v for k, v in r.items() if k != "curves"})
    else:
        sys.stdout.write(format_perturb(r) + (f"wrote {', '.join(map(str, outs))}\n"
                                              if outs else ""))
    return 0


def _save_figure(fig: Any, outs: list[Path]) -> None:
    """Write a figure to each of `outs` (their folder made); one line if that fails."""
    from .plots import save

    target = outs[0].parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        for target in outs:
            save(fig, str(target))
    except OSError as e:
        raise ZgdynError(f"{target}: the figure cannot be written ({e.strerror or e})") \
            from None


def _figure_paths(out: Path, force: bool) -> list[Path]:
    """The files a figure goes to (a .png gets a .pdf beside it); refuses to overwrite."""
    if out.suffix not in (".png", ".pdf", ".svg"):
        raise ZgdynError(f"--figure {out.name!r}: must end in .png, .pdf or .svg")
    outs = [out] + ([out.with_suffix(".pdf")] if out.suffix == ".png" else [])
    existing = [str(o) for o in outs if o.exists()]
    if existing and not force:
        raise ZgdynError(f"{', '.join(existing)}: already exists; pass --force to replace it")
    return outs


def cmd_reproduce(args: argparse.Namespace) -> int:
    only = tuple(t.replace("-", "_") for t in args.only) if args.only else None
    result = _run_suite_cli(args, args.suite, report_only=args.report_only, only=only,
                            seeds=args.seeds)
    if args.json:
        _print_json({k: v for k, v in result.items() if k != "perturb"})
    else:
        sys.stdout.write(format_summary(result) + f"report: {result['report']}\n")
    return 1 if result["errors"] else 0


def format_summary(result: dict[str, Any]) -> str:
    """The demo's terminal summary: grokking, the two-phase table, the saddle table."""
    lines = []
    anchor = next((c for c in result["cards"] if c["path"] == result["anchor"]), None)
    if anchor is not None:
        lines.append(f"grokking at s = 0: first >= 95% test at epoch "
                     f"{_opt(anchor['first_95'], ',d')} (essay: 14,000); final test "
                     f"{_pct(anchor['final_test_acc'])}")
    if any(r["table"] == "two_phase" for r in result["tables"]):
        lines.append(format_two_phase(result).rstrip("\n"))
    if result["saddle"] is not None:
        lines.append(format_saddle(result["saddle"]).rstrip("\n"))
    if result["perturb"] is not None:
        lines.append(format_perturb(result["perturb"]).rstrip("\n"))
    lines.append(f"took {result['seconds']['total'] / 60:.1f} min "
                 f"(runs {result['seconds']['runs'] / 60:.1f} min)")
    return "\n".join(lines) + "\n"


def cmd_demo(args: argparse.Namespace) -> int:
    args.suite, args.seeds, args.report_only, args.only = "quick", None, False, None
    return cmd_reproduce(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import MAX_RUNS, SWEEPS_DIR, load_sweep, run_sweep

    _load_plugins(args)
    sweep = load_sweep(args.sweep, max_runs=None if args.force else MAX_RUNS)
    result = run_sweep(sweep, args.out or SWEEPS_DIR / sweep.name, executor=args.executor,
                       address=args.address, jobs=args.jobs, threads=args.threads,
                       plugins=tuple(args.plugin or ()), progress=not args.no_progress,
                       force_disk=args.force)
    if args.json:
        _print_json(result)
    else:
        ran = [r for r in result["runs"] if r["planned"] in ("train", "resume")]
        lines = [f"sweep {result['name']}: {len(result['runs'])} runs in {result['out']} "
                 f"({len(ran)} run now, {len(result['failed'])} failed; "
                 f"{result['seconds'] / 60:.1f} min, {result['executor']})"]
        lines += [f"failed: {label}: {e}" for label, e in result["failed"].items()]
        lines.append(f"report: zgdyn sweep-report {result['out']}")
        sys.stdout.write("\n".join(lines) + "\n")
    return 1 if result["failed"] else 0


def format_sweep_report(r: dict[str, Any]) -> str:
    """The sweep's table: one row per run, its varied fields and its scorecard."""
    axes = r["axes"]
    widths = [max(len(a), *(len(f"{x['fields'][a]}") for x in r["rows"])) for a in axes]
    head = " ".join(f"{a:>{w}}" for a, w in zip(axes, widths))
    lines = [f"sweep {r['name']} in {r['out']}: {len(r['rows'])} runs",
             f"{head} {'status':>11} {'epochs':>8} {'first>=95%':>10} {'>=95%':>6} "
             f"{'collapses':>9} {'coll/100k':>9} {'period':>7} {'final':>6}"]
    for x in r["rows"]:
        c = x["card"] or {}
        cells = " ".join(f"{x['fields'][a]!s:>{w}}" for a, w in zip(axes, widths))
        first = _opt(c.get("first_95"), ",d").replace("-", "never") if c else "-"
        lines.append(f"{cells} {x['status']:>11} {_opt(c.get('epochs_done'), ',d'):>8} "
                     f"{first:>10} {_pct(c.get('frac_above_95')):>6} "
                     f"{_opt(c.get('collapses'), 'd'):>9} "
                     f"{_opt(c.get('collapses_per_100k'), '.2f'):>9} "
                     f"{_opt(c.get('period_mean'), ',.0f'):>7} "
                     f"{_pct(c.get('final_test_acc')):>6}")
    lines += [f"failed: {x['label']}: {x['error']}" for x in r["rows"] if x["error"]]
    return "\n".join(lines) + "\n"


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from .sweep import sweep_report

    r = sweep_report(args.sweep_dir, x=args.x, y=args.y)
    figure = args.figure or args.sweep_dir / "phase_diagram.png"
    outs = []
    if r["phase"] is not None and any(x["card"] for x in r["rows"]):
        from .plots import plot_phase_diagram
        outs = _figure_paths(figure, force=True)
        _save_figure(plot_phase_diagram(r["phase"], title=f"sweep {r['name']}: mean over "
                                        "runs at each point"), outs)
    if args.json:
        _print_json({**r, "figures": [str(o) for o in outs]})
    else:
        sys.stdout.write(format_sweep_report(r) + (f"wrote {', '.join(map(str, outs))}\n"
                                                   if outs else ""))
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zgdyn", description="Dynamics of Zipfian grokking: train, record, "
                     "analyze.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"zgdyn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a run and record it to HDF5",
                       description="Train one run, recording metrics, checkpoints and "
                       "keyframes to an HDF5 run file. Flags override --config.")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="TOML config file")
    p.add_argument("--out", type=Path, metavar="RUN.h5",
                   help="run file (default: data/runs/<p>-<weighting>-<s>-seed<seed>.h5)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out from its last keyframe (may change --epochs, "
                   "--phase2-epochs, --device)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out; and start (or --resume) even where the "
                   "disk estimate says the run will not fit (never past the memory estimate)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")
    _progress_flag(p)
    _json_flag(p, "the run summary")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="train one member per seed (an ensemble; with lists of --zipf-s, "
                   "--weighting, --lr or --weight-decay, one per combination), each to its "
                   "own file in the folder --out (default data/runs)")
    p.add_argument("--ensemble-size", type=int, metavar="K",
                   help="members per ensemble; more are trained as several ensembles in turn "
                   "(default: all at once)")
    from .ensemble import MODES
    p.add_argument("--ensemble-mode", choices=MODES, default="auto",
                   help="how an ensemble computes gradients: batched kernels (a GPU, or a "
                   "small model on a CPU) or each member's own fused step in turn, bitwise its "
                   "solo run (a CPU at full size); default auto chooses so")
    _add_plugin_flag(p)
    _add_config_flags(p, multi=ENSEMBLE_FIELDS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="summarize a run file")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    _json_flag(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("analyze", help="Fourier measures, memorization m and gamma(m) over "
                       "every checkpoint", description="Analyze every checkpoint of a run and "
                       "write the results to its analysis/trajectory group (resumable).")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--key-freqs", choices=("fixed", "auto"), default="fixed",
                   help="fixed: from --ref-epoch (default: the best-test checkpoint); auto: "
                   "chosen afresh at each checkpoint")
    p.add_argument("--ref-epoch", type=int, metavar="E", help="checkpoint fixing the key freqs")
    p.add_argument("--top-k", type=int, metavar="K",
                   help="take the K strongest diagonal frequencies (the reference's K = 5) "
                   "instead of the spectral gap")
    p.add_argument("--force", action="store_true",
                   help="recompute an analysis made with other settings")
    _progress_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("verify", help="check a run file's integrity (exit 1 if damaged)")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    _json_flag(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("events", help="collapse events and cycle statistics from the metrics")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    _threshold_flag(p)
    p.add_argument("--lookback", type=int, default=LOOKBACK, metavar="EPOCHS",
                   help=f"the recent minimum is taken over this many epochs (default {LOOKBACK})")
    p.add_argument("--refractory", type=int, default=REFRACTORY, metavar="EPOCHS",
                   help=f"after a collapse the detector rests this many epochs (default "
                   f"{REFRACTORY})")
    _json_flag(p)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("fit", help="fit the collapse rates, the 1-D law and a 2-D slow-fast "
                       "oscillator to an analyzed run", description="Needs zgdyn analyze "
                       "first. Stores the results in the run file's analysis/fit group.")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--model", choices=("1d", "2d", "both"), default="both",
                   help="the 1-D law, the 2-D slow-fast model, or both (default)")
    p.add_argument("--slow", choices=("fourier", "adam", "best"), default="best",
                   help="the 2-D model's slow variable: Fourier energy, Adam's second-moment "
                   "scale, or both fitted and the lower AIC kept (default)")
    p.add_argument("--m", choices=("m_w", "m_f"), default="m_w",
                   help="memorization amplitude: weight space (default) or function space")
    p.add_argument("--segment", type=int, metavar="N",
                   help="shooting segment in checkpoints (default: about a 16th of the period)")
    _threshold_flag(p)
    _progress_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("replay", help="recompute a stretch of a run at any resolution, "
                       "bitwise", description="Restart from the keyframe at or before --from "
                       "and write epochs --from..--to every --every epochs to a new run file.")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--from", dest="epoch_from", type=int, required=True, metavar="E1",
                   help="first epoch of the stretch")
    p.add_argument("--to", dest="epoch_to", type=int, required=True, metavar="E2",
                   help="last epoch of the stretch (at most the run's last keyframe)")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="record every N epochs (default 1: every epoch)")
    p.add_argument("--out", type=Path, required=True, metavar="WINDOW.h5",
                   help="the window's run file; an interrupted replay of the same window "
                   "there is resumed")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out, even past the disk estimate")
    _progress_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("hessian", help="extreme Hessian eigenpairs of L_s at a checkpoint")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--epoch", type=int, metavar="E", help="checkpoint (default: the last)")
    p.add_argument("--zipf-s", type=float, metavar="S",
                   help="exponent of the loss (default: the run's, after any switch)")
    p.add_argument("--k", type=int, default=10, help="eigenpairs at each end (default 10)")
    p.add_argument("--which", choices=("top", "bottom", "both"), default="both",
                   help="the largest, the smallest (most negative) or both ends (default)")
    p.add_argument("--preconditioned", action="store_true",
                   help="spectrum of D^-1/2 H D^-1/2 with Adam's D (needs a keyframe epoch)")
    p.add_argument("--coupled-wd", type=float, default=0.0, metavar="WD",
                   help="add (WD/2)|θ|² to the loss: the coupled view of weight decay")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision of the Hessian-vector products (default float64)")
    p.add_argument("--method", choices=("block", "arpack"), default="block",
                   help="block: block Krylov on the hand-written HVP (default); arpack: "
                   "ARPACK on torch.func's HVP, the reference (its tolerance is per pair)")
    _add_device_flag(p, "where the Hessian-vector products run")
    _progress_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_hessian)

    p = sub.add_parser("saddle", help="the saddle-point test: curvature of L_s for several s "
                       "at one keyframe")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--epoch", type=int, metavar="E", help="keyframe (default: the last)")
    p.add_argument("--zipf-s", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0],
                   metavar="S", help="exponents of the loss, one row each (default 0 1 1.5 2 "
                   "3)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision of the Hessian-vector products (default float64)")
    _add_device_flag(p, "where the Hessian-vector products run")
    _progress_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_saddle)

    p = sub.add_parser("sharpness", help="curvature along a run: extreme eigenvalues of H "
                       "(and of Adam's P^-1 H) at checkpoints, keyframes and collapse windows",
                       description="Records lambda_max, lambda_min and the curvature along "
                       "the gradient of the Hessian of L_s (with --preconditioned also of "
                       "P^-1 H, Adam's state replayed bitwise from the previous keyframe) to "
                       "the run's analysis/sharpness group (resumable), and prints each "
                       "collapse's onset against 38/lr, 2/lr and -2*wd.")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--every", type=int, default=500, metavar="N",
                   help="measure the checkpoints at multiples of N epochs (default 500), "
                   "besides every keyframe")
    p.add_argument("--from", dest="epoch_from", type=int, metavar="E1", help="first epoch")
    p.add_argument("--to", dest="epoch_to", type=int, metavar="E2", help="last epoch")
    p.add_argument("--zipf-s", type=float, metavar="S",
                   help="exponent of the loss (default: the run's at each epoch)")
    p.add_argument("--preconditioned", action="store_true",
                   help="also P^-1 H with Adam's second moment (replayed where no keyframe)")
    p.add_argument("--window-every", type=int, default=1, metavar="M",
                   help="every M-th record of each collapse window (default 1: all)")
    p.add_argument("--no-windows", action="store_true", help="skip the collapse windows")
    p.add_argument("--tol", type=float, default=1e-5,
                   help="residual tolerance |A u - lambda u| <= tol * max|lambda| "
                   "(default 1e-5)")
    p.add_argument("--force", action="store_true",
                   help="recompute a sharpness analysis made with other settings")
    _progress_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_sharpness)

    from .plots import KINDS
    p = sub.add_parser("plot", help="draw a figure of a run (PNG + PDF)")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--kind", choices=KINDS, default="dynamics",
                   help="the figure: " + ", ".join(KINDS) + " (default dynamics)")
    _figure_flag(p, required=True, what="the figure file", old="--out")
    p.add_argument("--from", dest="epoch_from", type=float, metavar="E", help="first epoch")
    p.add_argument("--to", dest="epoch_to", type=float, metavar="E", help="last epoch")
    p.add_argument("--checkpoints", dest="epochs", type=int, nargs="+", metavar="E",
                   help="the checkpoints' epochs to compare (spectrum; default: first, peak, "
                   "last)")
    p.add_argument("--epochs", dest="epochs", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace existing figure files")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("stats", help="statistics of the Zipf weight distribution")
    p.add_argument("--p", type=int, default=97, help="the modulus (default 97)")
    p.add_argument("--train-frac", type=float, default=0.3,
                   help="fraction of the pairs in the training set (default 0.3)")
    p.add_argument("--zipf-s", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0],
                   metavar="S", help="Zipf exponents, a row each (default 0 1 1.5 2 3)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="rank",
                   help="Zipf weighting mode (default rank)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    _json_flag(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("scorecard", help="the scorecard of run files: first >= 95%%, time "
                       "above 95%%, collapses per 100k epochs, phase-2 accuracy")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN.h5", help="run files")
    _threshold_flag(p)
    _json_flag(p)
    p.set_defaults(func=cmd_scorecard)

    p = sub.add_parser("two-phase", help="two-phase runs (uniform until 99%% test, then Zipf "
                       "s) over exponents and seeds, with the phase-2 table",
                       description="Runs one two-phase run per (s, seed), resumably and in "
                       "parallel, and prints the phase-2 table: mean test accuracy, its "
                       "std, the fraction below 50%%, collapses, and the epochs to the first "
                       "collapse and to test < 50%%, as mean ± std over seeds.")
    p.add_argument("--switch-s", type=float, nargs="+", required=True, metavar="S",
                   help="Zipf exponents after the switch")
    p.add_argument("--seeds", type=int, nargs="+", default=[42], metavar="N",
                   help="one run per seed and exponent (default 42)")
    p.add_argument("--config", type=Path, metavar="FILE.toml", help="base config")
    p.add_argument("--name", default="two-phase",
                   help="the runs go to OUT/runs/NAME (default two-phase)")
    _add_suite_flags(p, "data", device=False)
    _add_config_flags(p, skip=("switch_s", "seed"))
    p.set_defaults(func=cmd_two_phase)

    p = sub.add_parser("perturb", help="the perturbation experiment at a converged keyframe",
                       description="Move the point along theta_M, the most negative "
                       "preconditioned Hessian direction and a random direction by eps*|theta|"
                       ", train under Zipf s beside an unperturbed copy, and compare the "
                       "measured growth rates with the predicted ones.")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--epoch", type=int, metavar="E", help="keyframe (default: the last)")
    p.add_argument("--zipf-s", type=float, nargs="+", default=[1.5, 3.0], metavar="S",
                   help="exponents to train the copies under (default 1.5 3; add 0 for the "
                   "uniform control)")
    p.add_argument("--eps", type=float, nargs="+", default=[1e-6, 1e-4], metavar="X",
                   help="sizes, relative to |theta| (default 1e-6 1e-4)")
    p.add_argument("--epochs", type=int, default=200,
                   help="epochs each copy trains (default 200)")
    p.add_argument("--directions", nargs="+", default=["theta_m", "hessian", "random"],
                   choices=("theta_m", "hessian", "random"),
                   help="theta_m, the most negative preconditioned Hessian direction, a "
                   "random one (default all three)")
    p.add_argument("--early", type=int, default=5, metavar="N",
                   help="epochs of the early rate (default 5)")
    p.add_argument("--seed", type=int, default=0, help="of the random direction")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision of the Hessian-vector products (default float64)")
    _figure_flag(p, what="also draw the distances", old="--plot")
    _progress_flag(p)
    p.add_argument("--force", action="store_true", help="replace an existing --figure")
    _json_flag(p)
    p.set_defaults(func=cmd_perturb)

    p = sub.add_parser("reproduce", help="run a suite (the essay's tables) and write "
                       "REPORT.md", description="Runs every run of a suite (finished ones "
                       "skipped, interrupted ones resumed), analyzes them, and writes "
                       "OUT/REPORT.md with figures, the essay's numbers beside the measured "
                       "ones.")
    p.add_argument("--suite", required=True, metavar="NAME|FILE",
                   help="quick | essay | float64 | mechanism (experiments/suite_NAME.toml) or a file")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="override the suite's")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; report on the runs that are finished")
    p.add_argument("--only", nargs="+", choices=("single", "two-phase"), metavar="TABLE",
                   help="run only the runs of these tables (single, two-phase); the "
                   "report covers every finished run")
    _add_suite_flags(p, "data/report")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("demo", help="the quick suite: grokking, a switch to Zipf weighting "
                       "and its collapse, the saddle table (about 10 min on 2 cores)")
    _add_suite_flags(p, "data/report")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sweep", help="run a grid of runs over any config fields, on this "
                       "machine or a Ray cluster", description="Runs every run of a sweep "
                       "file (see zgdyn.sweep) into SWEEP_DIR/runs, resumably: finished runs "
                       "are skipped, interrupted ones resumed; a failing run is reported and "
                       "the others go on.")
    p.add_argument("sweep", type=Path, metavar="SWEEP.toml", help="the sweep file")
    p.add_argument("--out", type=Path, metavar="SWEEP_DIR",
                   help="the sweep's directory (default data/sweeps/<name>); with a Ray "
                   "cluster, on storage every node sees")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: a process pool here (default); ray: one Ray task per run")
    p.add_argument("--address", metavar="ADDR",
                   help="the Ray cluster's head, HOST:PORT (default: RAY_ADDRESS, or a "
                   "local Ray instance)")
    _add_pool_flags(p, "the cores / [resources] num_cpus; local only",
                    "[resources] num_cpus")
    p.add_argument("--force", action="store_true",
                   help="plan a sweep of more than 10,000 runs, and start runs even where "
                   "the disk estimate says they will not fit")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sweep-report", help="a sweep's runs with their scorecards, and its "
                       "phase diagram", description="One row per run: its fields, first >= "
                       "95%%, time above 95%%, collapses per 100k epochs, mean period; and a "
                       "figure of collapse frequency and time above 95%% over the (s, wd) "
                       "plane (mean over the other fields).")
    p.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the sweep's directory")
    p.add_argument("--x", metavar="FIELD", help="the figure's x axis (default zipf_s)")
    p.add_argument("--y", metavar="FIELD", help="the figure's y axis (default weight_decay)")
    p.add_argument("--figure", type=Path, metavar="FIG.png",
                   help="default SWEEP_DIR/phase_diagram.png (+ .pdf), rewritten each time")
    _json_flag(p)
    p.set_defaults(func=cmd_sweep_report)

    p = sub.add_parser("bench", help="throughput against a plain PyTorch loop, side by side")
    p.add_argument("--epochs", type=int, default=400, help="epochs per timed run")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats per variant")
    p.add_argument("--p", type=int, default=97, help="the modulus (default 97)")
    p.add_argument("--ensemble-sizes", type=int, nargs="*", default=[1, 2, 4, 8, 16, 64],
                   metavar="K", help="ensemble sizes to measure (none: skip; default 1 2 4 8 "
                   "16 64)")
    p.add_argument("--ensemble-model-epochs", type=int, default=1600, metavar="N",
                   help="model-epochs each ensemble size trains per repeat (default 1600)")
    p.add_argument("--no-analysis", action="store_true", help="skip the analysis rates")
    p.add_argument("--window", type=int, default=100, metavar="N",
                   help="the runs' collapse-detector window (0: off; default 100, as train)")
    p.add_argument("--hessian-only", action="store_true",
                   help="only the Hessian rows: HVPs/s of torch.func, the hand-written HVP "
                   "and its block form, and the 10 + 10 extremes by ARPACK and block Krylov")
    p.add_argument("--hessian-run", type=Path, metavar="RUN.h5",
                   help="measure the Hessian rows at a checkpoint of this run (implies "
                   "--hessian-only)")
    p.add_argument("--hessian-epoch", type=int, metavar="E",
                   help="the checkpoint of --hessian-run (default: the last)")
    _add_device_flag(p, "where the training variants run")
    p.add_argument("--out", type=Path, help="JSON file (default: data/bench/bench.json)")
    _json_flag(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZgdynError as e:
        return _fail(str(e))
    except OSError as e:  # the environment (a full or read-only disk, permissions), in a line
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    except KeyboardInterrupt:
        sys.stderr.write("zgdyn: interrupted\n")
        return 130
