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
import sys
from pathlib import Path

from ..core.config import LOOKBACK, REFRACTORY, WEIGHTINGS, ZgdynError
from .analysis_commands import (cmd_analyze, cmd_events, cmd_fit, cmd_hessian, cmd_perturb,
                                cmd_plot, cmd_replay, cmd_saddle, cmd_sharpness)
from .commands import (cmd_bench, cmd_demo, cmd_info, cmd_leaderboard, cmd_reproduce,
                       cmd_scorecard, cmd_stats, cmd_sweep, cmd_sweep_report, cmd_train,
                       cmd_two_phase, cmd_verify, fail)
from .flags import (ENSEMBLE_FIELDS, Parser, add_config_flags, add_device_flag, add_plugin_flag,
                    add_pool_flags, add_suite_flags, figure_flag, json_flag, progress_flag,
                    threshold_flag)


def _train(sub: argparse._SubParsersAction) -> None:
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
    progress_flag(p)
    json_flag(p, "the run summary")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="train one member per seed (an ensemble; with lists of --zipf-s, "
                   "--weighting, --lr or --weight-decay, one per combination), each to its "
                   "own file in the folder --out (default data/runs)")
    p.add_argument("--ensemble-size", type=int, metavar="K",
                   help="members per ensemble; more are trained as several ensembles in turn "
                   "(default: all at once)")
    from ..core.ensemble import MODES
    p.add_argument("--ensemble-mode", choices=MODES, default="auto",
                   help="how an ensemble computes gradients: batched kernels (a GPU, or a "
                   "small model on a CPU) or each member's own fused step in turn, bitwise its "
                   "solo run (a CPU at full size); default auto chooses so")
    add_plugin_flag(p)
    add_config_flags(p, multi=ENSEMBLE_FIELDS)
    p.set_defaults(func=cmd_train)


def _info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarize a run file")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    json_flag(p)
    p.set_defaults(func=cmd_info)


def _analyze(sub: argparse._SubParsersAction) -> None:
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
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_analyze)


def _verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check a run file's integrity (exit 1 if damaged)")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    json_flag(p)
    p.set_defaults(func=cmd_verify)


def _events(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="collapse events and cycle statistics from the metrics")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    threshold_flag(p)
    p.add_argument("--lookback", type=int, default=LOOKBACK, metavar="EPOCHS",
                   help=f"the recent minimum is taken over this many epochs (default {LOOKBACK})")
    p.add_argument("--refractory", type=int, default=REFRACTORY, metavar="EPOCHS",
                   help=f"after a collapse the detector rests this many epochs (default "
                   f"{REFRACTORY})")
    json_flag(p)
    p.set_defaults(func=cmd_events)


def _fit(sub: argparse._SubParsersAction) -> None:
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
    threshold_flag(p)
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_fit)


def _replay(sub: argparse._SubParsersAction) -> None:
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
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_replay)


def _hessian(sub: argparse._SubParsersAction) -> None:
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
    add_device_flag(p, "where the Hessian-vector products run")
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_hessian)


def _saddle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("saddle", help="the saddle-point test: curvature of L_s for several s "
                       "at one keyframe")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--epoch", type=int, metavar="E", help="keyframe (default: the last)")
    p.add_argument("--zipf-s", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0],
                   metavar="S", help="exponents of the loss, one row each (default 0 1 1.5 2 "
                   "3)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="precision of the Hessian-vector products (default float64)")
    add_device_flag(p, "where the Hessian-vector products run")
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_saddle)


def _sharpness(sub: argparse._SubParsersAction) -> None:
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
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_sharpness)


def _plot(sub: argparse._SubParsersAction) -> None:
    from ..present.plots import KINDS

    p = sub.add_parser("plot", help="draw a figure of a run (PNG + PDF)")
    p.add_argument("run", type=Path, metavar="RUN.h5", help="the run file")
    p.add_argument("--kind", choices=KINDS, default="dynamics",
                   help="the figure: " + ", ".join(KINDS) + " (default dynamics)")
    figure_flag(p, required=True, what="the figure file", old="--out")
    p.add_argument("--from", dest="epoch_from", type=float, metavar="E", help="first epoch")
    p.add_argument("--to", dest="epoch_to", type=float, metavar="E", help="last epoch")
    p.add_argument("--checkpoints", dest="epochs", type=int, nargs="+", metavar="E",
                   help="the checkpoints' epochs to compare (spectrum; default: first, peak, "
                   "last)")
    p.add_argument("--epochs", dest="epochs", type=int, nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace existing figure files")
    p.set_defaults(func=cmd_plot)


def _stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="statistics of the Zipf weight distribution")
    p.add_argument("--p", type=int, default=97, help="the modulus (default 97)")
    p.add_argument("--train-frac", type=float, default=0.3,
                   help="fraction of the pairs in the training set (default 0.3)")
    p.add_argument("--zipf-s", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0],
                   metavar="S", help="Zipf exponents, a row each (default 0 1 1.5 2 3)")
    p.add_argument("--weighting", choices=WEIGHTINGS, default="rank",
                   help="Zipf weighting mode (default rank)")
    p.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")
    json_flag(p)
    p.set_defaults(func=cmd_stats)


def _scorecard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scorecard", help="the scorecard of run files: first >= 95%%, time "
                       "above 95%%, collapses per 100k epochs, phase-2 accuracy")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN.h5", help="run files")
    threshold_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_scorecard)


def _two_phase(sub: argparse._SubParsersAction) -> None:
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
    add_suite_flags(p, "data", device=False)
    add_config_flags(p, skip=("switch_s", "seed"))
    p.set_defaults(func=cmd_two_phase)


def _perturb(sub: argparse._SubParsersAction) -> None:
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
    figure_flag(p, what="also draw the distances", old="--plot")
    progress_flag(p)
    p.add_argument("--force", action="store_true", help="replace an existing --figure")
    json_flag(p)
    p.set_defaults(func=cmd_perturb)


def _reproduce(sub: argparse._SubParsersAction) -> None:
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
    digests_flag(p)
    add_suite_flags(p, "data/report")
    p.set_defaults(func=cmd_reproduce)


def digests_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--digests", type=Path, metavar="DIR",
                   help="a folder of run digests (small JSON summaries, see "
                   "zgdyn.batch.digest) in DIR/<suite>/: a run with no file counts as done "
                   "where its digest holds it, and every complete run's digest is written "
                   "there, so a suite can span machines")


def _demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the quick suite: grokking, a switch to Zipf weighting "
                       "and its collapse, the saddle table (about 10 min on 2 cores)")
    add_suite_flags(p, "data/report")
    p.set_defaults(func=cmd_demo)


def _sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs over any config fields, on this "
                       "machine or a Ray cluster", description="Runs every run of a sweep "
                       "file (see zgdyn.batch.sweep) into SWEEP_DIR/runs, resumably: finished runs "
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
    add_pool_flags(p, "the cores / [resources] num_cpus; local only",
                    "[resources] num_cpus")
    p.add_argument("--force", action="store_true",
                   help="plan a sweep of more than 10,000 runs, and start runs even where "
                   "the disk estimate says they will not fit")
    p.set_defaults(func=cmd_sweep)


def _sweep_report(sub: argparse._SubParsersAction) -> None:
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
    json_flag(p)
    p.set_defaults(func=cmd_sweep_report)


def _leaderboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("leaderboard", help="a suite's methods (variants) ranked against its "
                       "baseline, with the phase-2 curves figure",
                       description="One row per variant of the suite whose runs are under "
                       "SUITE_DIR (as zgdyn reproduce --out wrote them): the phase-2 mean test "
                       "accuracy at each two-phase exponent, the lowest and the time below "
                       "50%% at --rank-s, collapses per 100k epochs and the first >= 95%% of "
                       "the single-phase runs, and the epoch time over the baseline's, "
                       "measured side by side now; ranked by the phase-2 mean at --rank-s.")
    p.add_argument("suite_dir", type=Path, metavar="SUITE_DIR",
                   help="the suite's output folder (its runs are in SUITE_DIR/runs/NAME)")
    p.add_argument("--suite", metavar="NAME|FILE", help="the suite (default: the one "
                   "folder under SUITE_DIR/runs, as experiments/suite_NAME.toml)")
    p.add_argument("--rank-s", type=float, default=2.0, metavar="S",
                   help="the two-phase exponent that ranks the methods (default 2)")
    p.add_argument("--no-cost", action="store_true", help="skip timing the methods' epochs")
    p.add_argument("--figure", type=Path, metavar="FIG.png", help="default "
                   "SUITE_DIR/leaderboard.png (+ .pdf), rewritten each time")
    p.add_argument("--threads", type=int, help="torch threads for the timing (default: all)")
    digests_flag(p)
    progress_flag(p)
    json_flag(p)
    p.set_defaults(func=cmd_leaderboard)


def _bench(sub: argparse._SubParsersAction) -> None:
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
    add_device_flag(p, "where the training variants run")
    p.add_argument("--out", type=Path, help="JSON file (default: data/bench/bench.json)")
    json_flag(p)
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="zgdyn", description="Dynamics of Zipfian grokking: train, record, "
                     "analyze.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"zgdyn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    for add in (_train, _info, _analyze, _verify, _events, _fit, _replay, _hessian, _saddle, _sharpness, _plot, _stats, _scorecard, _two_phase, _perturb, _reproduce, _demo, _sweep, _sweep_report, _leaderboard, _bench):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ZgdynError as e:
        return fail(str(e))
    except OSError as e:  # the environment (a full or read-only disk, permissions), in a line
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}")
    except KeyboardInterrupt:
        sys.stderr.write("zgdyn: interrupted\n")
        return 130


__all__ = ["build_parser", "main"]
