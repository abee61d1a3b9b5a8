"""Digests: a finished run in brief, small enough to keep under version control.

A run file holds dense checkpoints and the optimizer's state: tens to hundreds of MB, so
runs live in an unversioned ``data/`` and are lost with the machine. A suite that takes
hours a seed (the mechanism suite, the intervention benchmark) would then have to finish
on one machine. A digest keeps what the suite's tables need of a complete run, about
40 KB as JSON: its config, its scorecard, its mechanism record (with the curvature at
each onset, which needs the file to compute) and its evaluation-grid metrics (epoch, test
accuracy, train loss) and its collapses for the report. ``zgdyn reproduce --digests DIR`` writes one per
complete run to ``DIR/<suite>/<run>.json`` and counts a run whose file is absent as done
when its digest holds the run the suite asks for; `zgdyn leaderboard --digests DIR`
ranks from them the same way. So a suite can be run a seed at a time on different
machines, its digests committed, and reported whole.

    >>> d = digest_run("data/mechanism/runs/mechanism/baseline-single-s1.5-seed42.h5")
    >>> write_digest("experiments/results/digests/mechanism", d)
    >>> read_digests("experiments/results/digests/mechanism")["baseline-single-s1.5-seed42"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..analysis.mechanism import RunRecord
from ..core.config import Config, ConfigError, ZgdynError, flatten, from_dict
from ..core.results import Result
from .scorecard import Scorecard, run_scorecard

if TYPE_CHECKING:
    from .suite import RunSpec

FORMAT, VERSION = "zgdyn.digest", 1
# how a digest's metrics are rounded: test accuracy to 6 decimals (a step of 1/n_test is
# 1.5e-4 at p = 97), the train loss to 4 significant digits
TEST_DECIMALS, LOSS_DIGITS = 6, 4
# config fields that say how or where a run computed, not which run it is
HOW = ("device", "flush_subnormals")
# fields in which a run may grow (the planner extends a finished run whose epochs grew);
# its longer digest replaces the shorter
GROWTH = ("epochs", "phase2_epochs", "stop_after_collapses")


@dataclass(frozen=True)
class Digest(Result):
    """One complete run in brief (see the module docstring). `metrics` holds the
    evaluation grid: "epoch", "test_acc", "train_loss", as lists; `source` the versions it
    was trained and digested with."""

    format: str
    version: int
    label: str
    config: dict[str, Any]  # Config.to_dict()
    status: str
    epochs_done: int
    card: Scorecard
    mechanism: RunRecord | None
    events: tuple[dict[str, Any], ...]  # its collapses, as `zgdyn events` lists them
    metrics: dict[str, list[float]]
    source: dict[str, str]

    @property
    def run_config(self) -> Config:
        return from_dict(self.config)

    def for_spec(self, spec: RunSpec) -> Digest:
        """This digest as the run of `spec`: its card under the spec's path."""
        return dataclasses.replace(self, card=dataclasses.replace(self.card,
                                                                   path=str(spec.path)))


def digest_run(path: str | Path, *, mechanism: RunRecord | None = None,
               events: list[dict[str, Any]] | None = None) -> Digest:
    """The digest of the complete run file at `path` (ZgdynError if it is not complete);
    `mechanism` its mechanism record, if the suite made one, `events` its collapses
    (`analysis.analyze.run_events`, read here where not given)."""
    from ..analysis.analyze import run_events
    from ..store.reader import open_run

    path = Path(path)
    if events is None:
        events = run_events(str(path))["events"]
    with open_run(path) as run:
        status = str(run.attrs["status"])
        if status != "complete":
            raise ZgdynError(f"{path}: is {status}, not complete; only a complete run has a "
                             "digest")
        card = run_scorecard(run)
        m = run.metrics
        metrics = {"epoch": [int(e) for e in m["epoch"]],
                   "test_acc": [round(float(x), TEST_DECIMALS) for x in m["test_acc"]],
                   "train_loss": [float(f"{x:.{LOSS_DIGITS}g}") for x in m["train_loss"]]}
        source = {"zgdyn_trained": str(run.attrs.get("zgdyn_version", "")),
                  "torch_trained": str(run.attrs.get("torch_version", "")),
                  "zgdyn_digested": __version__}
        return Digest(format=FORMAT, version=VERSION, label=path.stem,
                      config=json.loads(run.config.to_json()), status=status,
                      epochs_done=int(run.attrs["epochs_done"]), card=card,
                      mechanism=mechanism, events=tuple(events), metrics=metrics,
                      source=source)


def suite_folder(digests: str | Path, suite: str) -> Path:
    """DIGESTS/<suite>, the folder of a suite's digests; a ZgdynError where `digests` or it
    is there but not a folder."""
    for p in (Path(digests), Path(digests) / suite):
        if p.exists() and not p.is_dir():
            raise ZgdynError(f"{p}: is not a folder; digests go to DIR/<suite>/ (--digests DIR)")
    return Path(digests) / suite


def digest_file(root: str | Path, label: str) -> Path:
    return Path(root) / f"{label}.json"


def read_digest(path: str | Path) -> Digest:
    """The digest at `path`; a one-line ZgdynError if it is not one."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ZgdynError(f"{path}: not a readable digest ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ZgdynError(f"{path}: not a zgdyn digest (no format {FORMAT!r})")
    if d.get("version") != VERSION:
        raise ZgdynError(f"{path}: digest version {d.get('version')!r}; this zgdyn reads "
                         f"version {VERSION}")
    shapes = {"config": dict, "card": dict, "metrics": dict, "events": list,
              "mechanism": (dict, type(None))}
    bad = next((k for k, t in shapes.items() if not isinstance(d.get(k), t)), None)
    if bad is not None:
        raise ZgdynError(f"{path}: a damaged digest ({bad}: {type(d.get(bad)).__name__})")
    m = d["metrics"]
    if set(m) != {"epoch", "test_acc", "train_loss"} or not all(isinstance(v, list) for v in
                                                                 m.values()) \
            or len({len(v) for v in m.values()}) != 1:
        raise ZgdynError(f"{path}: a damaged digest (metrics must be epoch, test_acc and "
                         "train_loss, lists of one length)")
    try:
        digest = Digest.from_dict(d)
        digest.run_config  # validates the config
        digest_curve(digest)  # numbers, or null
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ZgdynError(f"{path}: a damaged digest ({e})") from None
    return digest


def read_digests(root: str | Path) -> dict[str, Digest]:
    """Every digest under `root`, by run label (a folder that does not exist has none)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ZgdynError(f"{root}: is not a folder of digests")
    return {p.stem: read_digest(p) for p in sorted(root.glob("*.json"))} if root.is_dir() \
        else {}


def _strict(x: Any) -> Any:
    """`x` with every NaN or infinity as None, for strict JSON (null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def _text(digest: Digest) -> str:
    return json.dumps(_strict(digest.to_dict()), indent=1, sort_keys=True,
                      allow_nan=False) + "\n"


def write_digest(root: str | Path, digest: Digest) -> bool:
    """Write `digest` to ROOT/<label>.json, atomically; False (and nothing written) where
    the same digest is there already, or one with more in it (`should_write`, which also
    refuses to replace the digest of another run)."""
    path = digest_file(root, digest.label)
    text = _text(digest)
    try:
        if path.is_file() and path.read_text() == text:
            return False
    except OSError as e:
        raise ZgdynError(f"{path}: cannot read the digest ({e.strerror or e})") from None
    if not should_write(root, digest):
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise ZgdynError(f"{path}: cannot write the digest ({e.strerror or e})") from None
    return True


def config_difference(digest: Digest, config: Config, *,
                      ignore: tuple[str, ...] = ()) -> tuple[str, Any, Any] | None:
    """(field, the digest's value, `config`'s value) of the first field in which the
    digest's run is not the run `config` asks for, ignoring how it computed (`HOW`) and
    the fields in `ignore`; None where it is that run."""
    a, b = flatten(digest.run_config), flatten(config)
    for k in b:
        if k not in HOW + ignore and a[k] != b[k]:
            return k, a[k], b[k]
    return None


def _refuse(path: Path, diff: tuple[str, Any, Any], wants: str) -> ConfigError:
    k, have, want = diff
    return ConfigError(f"{path}: holds a run with another config ({k} = {have!r}, {wants} "
                       f"{want!r}); move it away or give another --digests")


def _existing(path: Path, config: Config, wants: str
              ) -> tuple[Digest, tuple[str, Any, Any] | None] | None:
    """The digest at `path` (None where there is none) and the first field in which it
    differs from `config`, a GROWTH field (None where none); a ConfigError where it holds
    another run (`wants`: how the message names `config`)."""
    if not path.is_file():
        return None
    digest = read_digest(path)
    diff = config_difference(digest, config, ignore=GROWTH)
    if diff is not None:
        raise _refuse(path, diff, wants)
    return digest, config_difference(digest, config)


def matching_digest(root: str | Path, spec: RunSpec) -> Digest | None:
    """The digest of `spec`'s run under `root` (ROOT/<label>.json), as the run at the
    spec's path; None where there is none, or where it holds the run shorter than the
    spec asks (it grew: the run is to be made again, and its digest then replaced). A
    ConfigError where the digest of that name holds another run; other files under `root`
    are not read."""
    path = digest_file(root, spec.label)
    found = _existing(path, spec.config, "the suite wants")
    if found is None:
        return None
    digest, grown = found
    if grown is not None:
        k, have, want = grown
        if have is not None and want is not None and want > have:
            return None
        raise _refuse(path, grown, "the suite wants")
    return digest.for_spec(spec)


def _curvature(d: Digest) -> bool:
    return d.mechanism is not None and any(o.lambda_max is not None for o in d.mechanism.onsets)


def should_write(root: str | Path, new: Digest) -> bool:
    """Whether `new` may take the place of the digest of its name under `root`: where there
    is none, or it holds the same run (or that run shorter) with no more in it. A digest
    of another run is a ConfigError (nothing is replaced); one that holds the same run
    with a mechanism record or onset curvature that `new` lacks is kept (False)."""
    path = digest_file(root, new.label)
    found = _existing(path, new.run_config, "this run has")
    if found is None:
        return True
    old, grown = found
    if grown is not None:  # it grew, or shrank
        if new.epochs_done < old.epochs_done:
            raise ZgdynError(f"{path}: holds this run longer ({old.epochs_done:,} epochs, "
                             f"this one {new.epochs_done:,}); move it away or give another "
                             "--digests")
        return True
    richer = (old.mechanism is not None and new.mechanism is None) or \
        (_curvature(old) and not _curvature(new))
    return not richer


def digest_curve(digest: Digest) -> dict[str, np.ndarray]:
    """The digest's metrics as arrays, like `Run.metrics` (null as NaN)."""
    return {k: np.array([math.nan if x is None else x for x in v], np.float64)
            for k, v in digest.metrics.items()}


__all__ = ["FORMAT", "VERSION", "GROWTH", "Digest", "digest_run", "suite_folder", "digest_file",
           "read_digest", "read_digests", "write_digest", "config_difference",
           "matching_digest", "should_write", "digest_curve"]
