"""The flags the commands share: one per config field, from the dataclasses, and the
common ones (--json, --no-progress, --plugin, --jobs, --figure, ...)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from ..core.config import (DTYPE_NAMES, INITS, LOSSES, OPTIMIZERS, WEIGHTINGS, fields_by_section,
                           flat_name)


CHOICES = {"weighting": WEIGHTINGS, "init": INITS, "dtype": DTYPE_NAMES, "loss": LOSSES,
           "optimizer": OPTIMIZERS, "switch_optimizer": OPTIMIZERS}


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


ENSEMBLE_FIELDS = ("zipf_s", "weighting", "lr", "weight_decay")  # zgdyn train takes lists


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
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
                                  "help": f"{f.metadata['help']} (default: {field_default(f)})"}
            typ = str(f.type)
            if typ.startswith("bool"):
                kw.update(type=parse_bool, metavar="true|false")
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
            group.add_argument(flag(name), **kw)
    parser.add_argument("--wd", dest="cfg_weight_decay", type=float, metavar="X",
                        default=argparse.SUPPRESS, help="alias of --weight-decay",
                        nargs="+" if "weight_decay" in multi else None)


def parse_bool(text: str) -> bool:
    """A flag's true/false value (also 1/0, yes/no)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in value:
        raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")
    return value[text.lower()]


def add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help=f"{what}: cpu | cuda | cuda:N (default cpu)")


def add_plugin_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", metavar="MODULE",
                   help="import this Python module first; it registers step hooks "
                   "(--hook NAME), see zgdyn.core.hooks (repeatable)")


def add_suite_flags(p: argparse.ArgumentParser, out: str, *, device: bool = True) -> None:
    p.add_argument("--out", type=Path, default=Path(out), metavar="DIR",
                   help=f"runs go to DIR/runs/<suite>, the report to DIR (default {out})")
    add_pool_flags(p, "the cores", "the cores / jobs")
    if device:  # (two-phase has it among its config flags)
        p.add_argument("--device", metavar="DEVICE",
                       help="every run's device: cpu | cuda | cuda:N (default: the suite's)")
    p.add_argument("--ensemble", type=int, nargs="?", const=0, metavar="K",
                   help="train the runs in this process as ensembles of up to K members "
                   "(all at once without K) instead of a process pool: the way on a GPU")


def json_flag(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or stage lines on stderr")


def figure_flag(p: argparse.ArgumentParser, *, required: bool = False, what: str,
                 old: str | None = None) -> None:
    """--figure FIG.png (a .png gets a .pdf beside it); `old` is an earlier spelling, kept
    working but not shown (a required one is checked by the command, which sees both)."""
    p.add_argument("--figure", type=Path, metavar="FIG.png",
                   help=f"{what}{' (required)' if required else ''}; a .png also gets a "
                   ".pdf beside it")
    if old is not None:
        p.add_argument(old, dest="figure", type=Path, help=argparse.SUPPRESS)


def threshold_flag(p: argparse.ArgumentParser) -> None:
    """--collapse-threshold, as train's config field; --threshold is its old spelling."""
    p.add_argument("--collapse-threshold", dest="threshold", type=float, default=100.0,
                   metavar="X", help="a collapse is an evaluation whose train loss exceeds X "
                   "times its recent minimum, as the trainer's detector (default 100)")
    p.add_argument("--threshold", dest="threshold", type=float, help=argparse.SUPPRESS)


def add_pool_flags(p: argparse.ArgumentParser, jobs: str, threads: str) -> None:
    p.add_argument("--jobs", type=int, metavar="N",
                   help=f"runs at a time, each in its own process (default: {jobs})")
    p.add_argument("--threads", type=int, metavar="N",
                   help=f"torch threads per run (default: {threads})")
    progress_flag(p)
    json_flag(p)
    add_plugin_flag(p)


def field_default(f: Any) -> Any:
    return f.default


__all__ = ["CHOICES", "Parser", "flag", "ENSEMBLE_FIELDS", "add_config_flags", "parse_bool",
           "add_device_flag", "add_plugin_flag", "add_suite_flags", "json_flag", "progress_flag",
           "figure_flag", "threshold_flag", "add_pool_flags", "field_default"]
