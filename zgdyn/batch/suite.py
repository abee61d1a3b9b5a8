"""Suites: every run an experiment needs, run resumably in parallel, then analyzed.

A suite is a TOML file (``experiments/suite_*.toml``):

    name = "quick"
    description = "..."
    seeds = [42]
    analyze = true         # false: score the runs only (no Fourier analysis, no saddle
                           # table, no perturbations), for a table of scorecards
    [base]                 # flat config fields for every run (as `zgdyn train` flags)
    eval_every = 100
    [variants]             # optional: a name -> flat config fields; one copy of every run
    float64 = { dtype = "float64" }
    [single]               # the essay's table 2: one run per (variant, s, seed)
    zipf_s = [0, 1.5]
    epochs = 30000
    [two_phase]            # the essay's table 3: uniform, then s at 99% test accuracy
    switch_s = [1, 3]
    switch_at_test_acc = 0.99
    epochs = 50000
    phase2_epochs = 10000
    [saddle]               # the saddle table at the last keyframe of the s = 0 run
    exponents = [0, 1, 1.5, 2, 3]
    [perturb]              # the perturbation experiment at the same keyframe
    zipf_s = [1.5, 3]
    eps = [1e-6, 1e-4]
    epochs = 200

`[single]` and `[two_phase]` may be lists of entries (``[[two_phase]]``), each with its own
fields and optional ``variants = [...]`` and ``seeds = [...]`` that run it.

`run_suite` plans the runs (a finished run is skipped, an interrupted one resumed, one
whose file holds another config is refused before anything starts), runs them in a
process pool (`jobs` processes of `threads` torch threads each), analyzes every run, runs
the saddle table and the perturbation experiment, and returns everything the report needs.
A run that fails is reported and the others go on.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.config import Config, ConfigError, ZgdynError, flatten, from_flat, read_toml
from .execute import Task, ensemble_backend, execute

if TYPE_CHECKING:
    from ..analysis.mechanism import RunRecord
    from ..analysis.perturb import PerturbResult
    from ..analysis.stability import SaddleResult
    from .digest import Digest
    from .results import MechanismSummary, SuiteResult
    from .scorecard import Scorecard

SECTIONS = {"single": "zipf_s", "two_phase": "switch_s"}
TOP_KEYS = {"name", "description", "seeds", "base", "variants", "single", "two_phase",
            "saddle", "perturb", "mechanism", "analyze"}
MECHANISM_KEYS = {"baseline", "onset_sharpness"}
SADDLE_KEYS = {"exponents", "dtype", "run"}
PERTURB_KEYS = {"zipf_s", "eps", "epochs", "directions", "dtype", "early", "seed"}
SUITES_DIR = Path("experiments")
# a suite's, a variant's or a sweep's name: it names a folder or files, so no path in it
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(where: str, name: Any, names: str) -> str:
    """`name` if it is a NAME, else a ConfigError saying so (`names`: what it names)."""
    if not (isinstance(name, str) and NAME.fullmatch(name)):
        raise ConfigError(f"{where}: must be 1 to 64 letters, digits, '_', '-', '.', not "
                          f"starting with '_', '-' or '.' (it names {names}), got {name!r}")
    return name


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite."""

    table: str  # "single" | "two_phase"
    variant: str
    s: float  # the exponent of the table: zipf_s (single) or switch_s (two-phase)
    seed: int
    config: Config
    path: Path

    @property
    def label(self) -> str:
        return self.path.stem


@dataclass
class Suite:
    name: str  # also the folder of its runs: <out>/runs/<name>/
    description: str
    seeds: list[int]
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]]  # "single" / "two_phase" -> their entries
    saddle: dict[str, Any] | None
    perturb: dict[str, Any] | None
    source: str = ""
    mechanism: dict[str, Any] | None = None  # the mechanism table: its baseline variant
    analyze: bool = True  # False: its runs are scored, not analyzed

    def runs(self, root: str | Path) -> list[RunSpec]:
        """Every run, with its config and its file under `root`/runs."""
        root = Path(root)
        out: list[RunSpec] = []
        for table, key in SECTIONS.items():
            for sec in self.tables.get(table, []):
                rest = {k: v for k, v in sec.items() if k not in (key, "variants", "seeds")}
                for variant, changes in self.variants.items():
                    if variant not in sec.get("variants", self.variants):
                        continue
                    for s in sec[key]:
                        for seed in sec.get("seeds", self.seeds):
                            out.append(self._spec(table, key, variant, changes, rest, float(s),
                                                  seed, root))
        return out

    def _spec(self, table: str, key: str, variant: str, changes: dict[str, Any],
              rest: dict[str, Any], s: float, seed: int, root: Path) -> RunSpec:
        flat = {**flatten(Config()), **self.base, **changes, **rest, key: s, "seed": seed}
        try:
            cfg = from_flat(flat)
        except ConfigError as e:
            raise ConfigError(f"suite {self.source or self.name}, [{table}]: {e}") from None
        prefix = "" if variant == "default" else f"{variant}-"
        name = f"{prefix}{table.replace('_', '-')}-s{s:g}-seed{seed}.h5"
        return RunSpec(table, variant, s, seed, cfg, root / "runs" / self.name / name)

    def anchor(self, specs: list[RunSpec]) -> RunSpec | None:
        """The run the saddle table and the perturbation experiment start from: the first
        single-phase run at s = 0 (first variant, first seed)."""
        return next((r for r in specs if r.table == "single" and r.s == 0), None)


def _list(name: str, value: Any, kind: type | tuple = (int, float)) -> list:
    if not isinstance(value, list):
        value = [value]
    if not value or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        what = "names" if kind is str else "numbers"
        raise ConfigError(f"{name}: must be a non-empty list of {what}, got {value!r}")
    return value


def _seeds(where: str, value: Any) -> list[int]:
    seeds = _list(where, value, int)
    if len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**32 for s in seeds):
        raise ConfigError(f"{where}: must be distinct integers in [0, 2^32), got {seeds}")
    return seeds


def with_seeds(d: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """A suite's TOML table restricted to `seeds`: they replace its seeds, and a table
    entry with seeds of its own keeps those of them that are in `seeds` (an entry left
    with none is dropped)."""
    out = {**d, "seeds": list(seeds)}
    for table in SECTIONS:
        if table not in d:
            continue
        entries = d[table] if isinstance(d[table], list) else [d[table]]
        kept = []
        for sec in entries:
            if isinstance(sec, dict) and isinstance(sec.get("seeds"), list):
                sec = {**sec, "seeds": [s for s in sec["seeds"] if s in seeds]}
                if not sec["seeds"]:
                    continue
            kept.append(sec)
        if kept:
            out[table] = kept
        else:
            del out[table]
    return out


def _known(where: str, table: dict[str, Any], allowed: set[str]) -> None:
    bad = sorted(set(table) - allowed)
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; allowed: "
                          f"{', '.join(sorted(allowed))}")


def suite_from_dict(d: dict[str, Any], source: str = "") -> Suite:
    """Validate a suite's TOML table (see the module docstring)."""
    where = f"suite {source}" if source else "suite"
    _known(where, d, TOP_KEYS)
    seeds = _seeds(f"{where}: seeds", d.get("seeds", [42]))
    base = d.get("base", {})
    variants = d.get("variants", {"default": {}})
    if not isinstance(base, dict) or not isinstance(variants, dict) or not variants \
            or not all(isinstance(v, dict) for v in variants.values()):
        raise ConfigError(f"{where}: [base] must be a table of config fields and [variants] a "
                          "table of name = {{config fields}}")
    for variant in variants:
        check_name(f"{where}: [variants] name", variant, "the variant's run files")
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, key in SECTIONS.items():
        if table not in d:
            continue
        entries = d[table] if isinstance(d[table], list) else [d[table]]
        for sec in entries:
            if not isinstance(sec, dict) or key not in sec:
                raise ConfigError(f"{where}: [{table}] must be a table with {key} = [...] "
                                  f"(or [[{table}]] tables, each with its own)")
            if "seeds" in sec:
                sec = {**sec, "seeds": _seeds(f"{where}: [{table}] seeds", sec["seeds"])}
            if "variants" in sec:
                names = _list(f"{where}: [{table}] variants", sec["variants"], str)
                unknown = [v for v in names if v not in variants]
                if unknown:
                    raise ConfigError(f"{where}: [{table}] variants: {unknown[0]!r} is not a "
                                      f"variant ({', '.join(variants)})")
            tables.setdefault(table, []).append(
                {**sec, key: _list(f"{where}: [{table}] {key}", sec[key])})
    if not tables:
        raise ConfigError(f"{where}: needs a [single] or a [two_phase] table")
    saddle, perturb, mechanism = d.get("saddle"), d.get("perturb"), d.get("mechanism")
    for name, sec, allowed in (("saddle", saddle, SADDLE_KEYS), ("perturb", perturb,
                                                                   PERTURB_KEYS),
                               ("mechanism", mechanism, MECHANISM_KEYS)):
        if sec is not None:
            if not isinstance(sec, dict):
                raise ConfigError(f"{where}: [{name}] must be a table")
            _known(f"{where}: [{name}]", sec, allowed)
    name = check_name(f"{where}: name", d.get("name", Path(source).stem if source
                                              else "suite"), "the runs' folder")
    if mechanism is not None:
        first = next(iter(variants))
        if mechanism.setdefault("baseline", first) not in variants:
            raise ConfigError(f"{where}: [mechanism] baseline: must name a variant "
                              f"({', '.join(variants)}), got {mechanism['baseline']!r}")
        if not isinstance(mechanism.setdefault("onset_sharpness", True), bool):
            raise ConfigError(f"{where}: [mechanism] onset_sharpness: must be true or false")
        exps = sorted({float(x) for sec in tables.get("single", []) for x in sec["zipf_s"]})
        if "two_phase" in tables or len(exps) != 1:
            raise ConfigError(f"{where}: [mechanism] compares controls of one single-phase "
                              "run: give [single] one zipf_s and no [two_phase] (got zipf_s "
                              f"{[f'{x:g}' for x in exps]}"
                              f"{' and a [two_phase] table' if 'two_phase' in tables else ''})")
    analyze = d.get("analyze", True)
    if not isinstance(analyze, bool):
        raise ConfigError(f"{where}: analyze: must be true or false, got {analyze!r}")
    suite = Suite(name=name,
                  description=str(d.get("description", "")), seeds=seeds, base=base,
                  variants=variants, tables=tables, saddle=saddle, perturb=perturb,
                  source=source, mechanism=mechanism, analyze=analyze)
    specs = suite.runs(".")  # validates every run's config
    paths = [sp.path for sp in specs]
    twice = next((p for p in paths if paths.count(p) > 1), None)
    if twice is not None:
        raise ConfigError(f"{where}: two entries ask for the same run {twice.name}; give each "
                          "(table, variant, s) once")
    if perturb is not None:
        _perturb_settings(perturb)
    if saddle is not None:
        if any(x < 0 for x in _list(f"{where}: [saddle] exponents",
                                    saddle.get("exponents", [0]))):
            raise ConfigError(f"{where}: [saddle] exponents: must be numbers >= 0")
        if saddle.get("dtype", "float64") not in ("float32", "float64"):
            raise ConfigError(f"{where}: [saddle] dtype: must be float32 | float64")
    if (saddle is not None or perturb is not None) and suite.anchor(specs) is None:
        raise ConfigError(f"{where}: [saddle] and [perturb] start from a single-phase s = 0 "
                          "run; add 0 to [single] zipf_s")
    return suite


def find_suite(name: str) -> Path:
    """A suite file: `name` itself if it is a file, else experiments/suite_<name>.toml here
    or in the source tree zgdyn was installed from."""
    candidates = [Path(name), SUITES_DIR / f"suite_{name}.toml",
                  Path(__file__).resolve().parents[2] / SUITES_DIR / f"suite_{name}.toml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted({p.stem[len("suite_"):] for d in (SUITES_DIR, candidates[-1].parent)
                    if d.is_dir() for p in d.glob("suite_*.toml")})
    raise ConfigError(f"suite {name!r}: no such suite file; known suites: "
                      f"{', '.join(known) or 'none'} (or give a path to a suite TOML)")


def load_suite(name: str) -> Suite:
    path = find_suite(name)
    return suite_from_dict(read_toml(path, "suite file"), str(path))


# -- planning --------------------------------------------------------------------------------


def plan(specs: list[RunSpec]) -> list[Task]:
    """One task per run. A file that holds another config is an error (nothing is touched),
    unless only `epochs` / `phase2_epochs` grew: then the run is extended. A change of
    `flush_subnormals` (or `stop_after_collapses`) applies from where a run goes on; a
    complete run that has nowhere to go is left as it was trained."""
    from ..store.runner import RESUMABLE_CHANGES
    from ..store.locks import writer_active
    from ..store.reader import open_run

    tasks = []
    for spec in specs:
        if not spec.path.exists():
            tasks.append(Task(spec, "train"))
            continue
        if writer_active(spec.path):
            raise ZgdynError(f"{spec.path}: is being written by another process; wait for it "
                             "or stop it")
        with open_run(spec.path) as run:
            stored, status = run.config, run.attrs["status"]
            done = int(run.attrs["epochs_done"])
            switch = int(run.attrs["switch_epoch"])
        a, b = flatten(stored), flatten(spec.config)
        diff = {k: b[k] for k in b if a[k] != b[k]}
        if status == "complete" and set(diff) == {"flush_subnormals"}:
            diff = {}  # how a run computes, not what it is: a finished run is done as it is
        # a run may grow (epochs, phase2_epochs), change when it stops after collapses, and
        # flush subnormals from here on
        growing = all((k in RESUMABLE_CHANGES[:2] and b[k] is not None and a[k] is not None
                       and b[k] >= a[k]) or k in ("stop_after_collapses", "flush_subnormals")
                      for k in diff)
        if diff and not growing:
            k = next(iter(diff))
            raise ZgdynError(f"{spec.path}: holds a run with another config ({k} = {a[k]!r}, "
                             f"the suite wants {b[k]!r}); move the file away or give the "
                             "suite another --out")
        if status == "diverged":
            tasks.append(Task(spec, "failed", start_epoch=done, note="diverged earlier"))
        elif status == "complete" and not diff:
            tasks.append(Task(spec, "done", start_epoch=done))
        else:
            tasks.append(Task(spec, "resume", diff, start_epoch=max(done, 0),
                              note=f"{status} at epoch {done}"
                              + (f", switched at {switch}" if switch >= 0 else "")))
    return tasks


# -- the whole suite -------------------------------------------------------------------------


def _perturb_settings(sec: dict[str, Any]) -> dict[str, Any]:
    """The [perturb] table as `perturb_run` keywords, checked (ConfigError if bad)."""
    from ..analysis.perturb import DIRECTIONS, check_settings

    ps = {"zipf_s": tuple(_list("perturb: zipf_s", sec.get("zipf_s", [1.5]))),
          "eps": tuple(_list("perturb: eps", sec.get("eps", [1e-4]))),
          "epochs": sec.get("epochs", 200),
          "directions": tuple(_list("perturb: directions", sec.get("directions",
                                                                    list(DIRECTIONS)), str)),
          "dtype": sec.get("dtype", "float64"), "early": sec.get("early", 5),
          "seed": sec.get("seed", 0)}
    try:
        check_settings(**ps)
    except ZgdynError as e:
        raise ConfigError(f"[perturb] {e}") from None
    ps["zipf_s"] = tuple(float(x) for x in ps["zipf_s"])
    ps["eps"] = tuple(float(x) for x in ps["eps"])
    return ps


def run_suite(suite: Suite, out: str | Path, *, jobs: int = 1, threads: int | None = None,
              plugins: tuple[str, ...] = (), progress: bool = False,
              report_only: bool = False, only: tuple[str, ...] | None = None,
              analyze: bool = True, device: str | None = None,
              ensemble: int | None = None, digests: str | Path | None = None,
              on_stage: Callable[[str], None] = lambda stage: None) -> SuiteResult:
    """Run (unless `report_only`; with `only`, just the runs of those tables) and analyze
    every run of `suite` under `out`/runs/<name>; return everything the report shows.
    `on_stage` hears the name of each stage as it starts. With `analyze` False, or a suite
    that says `analyze = false`, runs are only scored (no Fourier analysis, no saddle
    table, no perturbations). `device` sets every run's device; `ensemble` (K, or 0 for
    all at once) trains the runs here as ensembles of up to K members instead of in a
    process pool. `digests`: a folder whose `<name>/` subfolder holds the suite's digests
    (`zgdyn.batch.digest`): a run with no file is done where its digest holds it, and
    every complete run's digest is written there as the run ends."""
    from ..core.data import stats_table
    from .digest import suite_folder
    from .results import SuiteInfo, SuiteResult, TaskEntry
    from .scorecard import aggregate

    t0 = time.perf_counter()
    out = Path(out)
    analyze = analyze and suite.analyze
    specs = suite.runs(out)
    if device is not None:
        specs = [replace(sp, config=sp.config.replace(device=device)) for sp in specs]
    tasks = plan(specs)
    digest_dir = None if digests is None else suite_folder(digests, suite.name)
    digested = {} if digest_dir is None else _take_digests(suite, tasks, digest_dir)
    for t in tasks:  # runs left out this time: reported as not run
        if t.action in ("train", "resume") and (report_only or (only is not None
                                                                 and t.spec.table not in only)):
            t.action, t.note = "skipped", f"not run: {t.note or 'no file yet'}"
    on_stage("runs")
    backend = None if ensemble is None else ensemble_backend(ensemble or None)
    curvature = analyze and suite.mechanism is not None and bool(
        suite.mechanism["onset_sharpness"])
    results = execute(tasks, jobs=jobs, threads=threads, plugins=plugins,
                      progress=progress and not report_only, desc=f"{suite.name}: runs",
                      backend=backend, on_finished=None if digest_dir is None else
                      lambda t: _digest_now(suite, t.spec, digest_dir, analyze=analyze,
                                            curvature=curvature))
    t_runs = time.perf_counter() - t0
    on_stage("analysis")
    files = [sp for sp in specs if str(sp.path) not in digested]
    cards, errors = _score_runs(files, results, analyze=analyze, progress=progress)
    cards.update({path: d.card for path, d in digested.items()})
    cards = {str(sp.path): cards[str(sp.path)] for sp in specs if str(sp.path) in cards}
    groups: dict[tuple[str, str, float], list[Scorecard]] = {}
    for spec in specs:
        card = cards.get(str(spec.path))
        if card is not None and card.status == "complete":
            groups.setdefault((spec.table, spec.variant, spec.s), []).append(card)
    tables = [{"table": t, "variant": v, "s": s, **aggregate(c)}
              for (t, v, s), c in groups.items()]
    anchor = suite.anchor(specs)
    anchor_epoch, saddle, perturb = _anchor_analyses(
        suite, anchor, cards.get(str(anchor.path)) if anchor is not None else None,
        analyze=analyze, progress=progress, on_stage=on_stage)
    mechanism, records = None, {}
    if suite.mechanism is not None:
        on_stage("mechanism")
        records = _mechanism_records(suite, specs, cards, digested, curvature=curvature,
                                     progress=progress)
        mechanism = _mechanism(suite, list(records.values()))
    if digest_dir is not None:
        on_stage("digests")
        _write_digests(files, cards, records, digest_dir, errors)
    p = next(iter(specs)).config.data
    stats = stats_table(p.p, p.train_frac, [0, 1, 1.5, 2, 3], seed=specs[0].seed,
                        mode=p.weighting)
    return SuiteResult(
        suite=SuiteInfo(name=suite.name, description=suite.description, source=suite.source,
                        seeds=suite.seeds, variants=suite.variants, base=suite.base),
        out=str(out),
        tasks=tuple(TaskEntry(path=str(t.spec.path), table=t.spec.table,
                              variant=t.spec.variant, s=t.spec.s, seed=t.spec.seed,
                              planned=t.action, note=t.note) for t in tasks),
        results=tuple(results), errors=errors, cards=tuple(cards.values()),
        tables=tuple(tables), anchor=None if anchor is None else str(anchor.path),
        anchor_epoch=anchor_epoch, saddle=saddle, perturb=perturb,
        anchor_weight_decay=None if anchor is None else anchor.config.optim.weight_decay,
        stats=tuple(stats), seconds={"runs": t_runs, "total": time.perf_counter() - t0},
        jobs=jobs, threads=threads, mechanism=mechanism,
        digests=None if digest_dir is None else str(digest_dir))


def _score_runs(specs: list[RunSpec], results: list[dict[str, Any]], *, analyze: bool,
                progress: bool) -> tuple[dict[str, Scorecard], dict[str, str]]:
    """Each run's scorecard (after its Fourier analysis, with `analyze`), and the error of
    each run that failed or could not be scored, by path."""
    from ..analysis.analyze import analyze_run
    from .scorecard import scorecard

    cards: dict[str, Scorecard] = {}
    errors: dict[str, str] = {r["path"]: r["error"] for r in results if r["error"]}
    for spec in specs:
        if not spec.path.exists() or str(spec.path) in errors:
            continue
        try:
            if analyze:
                analyze_run(str(spec.path), progress=progress, desc=f"analyze {spec.label}")
            cards[str(spec.path)] = scorecard(spec.path)
        except ZgdynError as e:
            errors[str(spec.path)] = str(e)
    return cards, errors


def _anchor_analyses(suite: Suite, anchor: RunSpec | None, anchor_card: Scorecard | None, *,
                     analyze: bool, progress: bool, on_stage: Callable[[str], None]
                     ) -> tuple[int | None, SaddleResult | None, PerturbResult | None]:
    """(epoch, saddle table, perturbation experiment) at the anchor run's last keyframe,
    each stored result reused where its settings match."""
    from ..analysis.perturb import perturb_run, stored_perturb
    from ..analysis.stability import saddle_table, stored_saddle
    from ..store.reader import open_run

    saddle = perturb = None
    anchor_epoch = None
    if analyze and anchor_card is not None and anchor_card.status == "complete" \
            and anchor.path.exists():  # not from a digest: these need the file
        with open_run(anchor.path) as run:
            anchor_epoch = run.last_keyframe
        if suite.saddle is not None:
            on_stage("saddle")
            exps = _list("saddle: exponents", suite.saddle.get("exponents",
                                                               [0, 1, 1.5, 2, 3]))
            dtype = str(suite.saddle.get("dtype", "float64"))
            saddle = stored_saddle(anchor.path, anchor_epoch, dtype, exps) or saddle_table(
                str(anchor.path), epoch=anchor_epoch, exponents=tuple(map(float, exps)),
                dtype=dtype)
        if suite.perturb is not None:
            on_stage("perturb")
            ps = _perturb_settings(suite.perturb)
            old = stored_perturb(anchor.path, anchor_epoch)
            kept = {} if old is None else old.to_dict()
            same = old is not None and all(
                (tuple(kept[k]) if isinstance(kept[k], list) else kept[k]) == v
                for k, v in ps.items() if k in kept)
            perturb = old if same else perturb_run(str(anchor.path), epoch=anchor_epoch,
                                                   progress=progress, **ps)
    return anchor_epoch, saddle, perturb


def _mechanism_records(suite: Suite, specs: list[RunSpec], cards: dict[str, Scorecard],
                       digested: dict[str, Digest], *, curvature: bool,
                       progress: bool) -> dict[str, RunRecord]:
    """The mechanism record of each of the suite's complete runs, by path, in suite order:
    from its file, with the curvature at its onsets, or from its digest."""
    from ..analysis.mechanism import mechanism_record

    done = [sp for sp in specs if str(sp.path) in cards
            and cards[str(sp.path)].status == "complete"]
    files = [sp for sp in done if str(sp.path) not in digested]
    bar = None
    if progress and curvature:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(cards[str(sp.path)].collapses for sp in files),
                   desc=f"{suite.name}: curvature at onsets", unit="onset")
    records: dict[str, RunRecord] = {}
    try:
        for sp in done:
            d = digested.get(str(sp.path))
            if d is not None:
                if d.mechanism is not None:
                    records[str(sp.path)] = replace(d.mechanism, variant=sp.variant)
                continue
            records[str(sp.path)] = mechanism_record(
                sp.path, variant=sp.variant, curvature=curvature,
                progress=None if bar is None else lambda i, n: bar.update(1))
    finally:
        if bar is not None:
            bar.close()
    return records


def _mechanism(suite: Suite, records: list[RunRecord]) -> MechanismSummary:
    """The mechanism table of the records: the verdicts against the suite's baseline and
    the onset summary (`zgdyn.analysis.mechanism`)."""
    from ..analysis.mechanism import onset_summary, verdicts
    from .results import MechanismSummary

    baseline = suite.mechanism["baseline"]
    return MechanismSummary(baseline=baseline, variants=tuple(suite.variants),
                            records=tuple(records),
                            verdicts=tuple(verdicts(records, baseline=baseline)),
                            onset=onset_summary(records))


# -- digests ---------------------------------------------------------------------------------


def _take_digests(suite: Suite, tasks: list[Task], root: Path) -> dict[str, Digest]:
    """The digests under `root` that stand for runs not complete here (their tasks become
    "digest"), by path: a run with no file, or an unfinished file that its complete digest
    holds (the file is left as it is). A digest of a run the suite would train, for
    another config, is an error, as a file of another config is (`plan`); in a mechanism
    suite a digest without a mechanism record does not stand for its run."""
    from .digest import matching_digest

    out = {}
    for t in tasks:
        if t.action == "done":  # a complete file here is the run
            continue
        try:
            d = matching_digest(root, t.spec)
        except ConfigError:
            if t.action == "train":
                raise
            continue  # a file here, of the suite's config: it is the run
        if d is None:
            continue
        if suite.mechanism is not None and d.mechanism is None:
            t.note = "; ".join(x for x in (t.note, "its digest has no mechanism record") if x)
            continue
        here = "no file here" if t.action == "train" else f"its file here: {t.note}"
        t.action, t.note = "digest", f"from its digest in {root} ({here})"
        out[str(t.spec.path)] = d
    return out


def _write_digests(specs: list[RunSpec], cards: dict[str, Scorecard],
                   records: dict[str, RunRecord], root: Path, errors: dict[str, str]) -> None:
    """Write the digest of every complete run with a file under `root` (those unchanged
    are left as they are); a digest that cannot be made is an error of its run."""
    from .digest import digest_run, write_digest

    for sp in specs:
        card = cards.get(str(sp.path))
        if card is None or card.status != "complete" or not sp.path.exists():
            continue
        try:
            write_digest(root, digest_run(sp.path, mechanism=records.get(str(sp.path))))
        except ZgdynError as e:
            errors[str(sp.path)] = f"digest: {e}"


def _digest_now(suite: Suite, spec: RunSpec, root: Path, *, analyze: bool,
                curvature: bool) -> None:
    """A run of the suite just ended: analyze it and write its digest now, while the others
    train, so that a suite stopped before its end keeps it. What fails here (the task's
    note says what) is left to the analysis stage, which meets it again and reports it."""
    from ..analysis.analyze import analyze_run
    from ..analysis.mechanism import mechanism_record
    from .scorecard import scorecard

    if analyze:
        analyze_run(str(spec.path))
    card = scorecard(spec.path)
    records = {} if suite.mechanism is None or card.status != "complete" else {
        str(spec.path): mechanism_record(spec.path, variant=spec.variant, curvature=curvature)}
    errors: dict[str, str] = {}
    _write_digests([spec], {str(spec.path): card}, records, root, errors)
    if errors:
        raise ZgdynError(next(iter(errors.values())))


__all__ = ["SECTIONS", "TOP_KEYS", "MECHANISM_KEYS", "SADDLE_KEYS", "PERTURB_KEYS", "SUITES_DIR",
           "NAME", "check_name", "RunSpec", "Suite", "with_seeds", "suite_from_dict", "find_suite",
           "load_suite", "plan", "run_suite"]
