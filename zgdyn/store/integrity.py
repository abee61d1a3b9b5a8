"""A run file checked against its config and its own size (h5py, beside `store`).

`check_layout` is what every reader and writer runs before it reads a record: the
parameter datasets must be the config's model (names, shapes, dtype), the split and
weights the config's task, and no dataset a reader loads whole may declare more bytes than
the file stores for it. `verify` is `zgdyn verify`: it reads every dataset of the file,
`analysis/` included, checks that every chunk is stored once and inside the file, that the
parameters and Adam's moments are finite, that epochs grow, and that the records agree;
every HDF5 error becomes a problem "damaged: WHERE (error)".

    >>> check_layout(f, path, config, size)          # RunFileError if it does not hold
    >>> problems, checked = verify(f, path, config, size)
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from ..core.config import Config
from ..core.model import param_shapes
from ..core.optim import needs_max_moment
from ..core.train import METRICS, OPTIONAL_METRICS
from .journal import RunFileError

# what an HDF5 library error surfaces as, through h5py
HDF5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError)
KEYFRAME_FIELDS = ("epoch", "step", "phase", "switch_epoch")
STATUSES = ("running", "complete", "interrupted", "diverged")
_SLAB = 1 << 24  # bytes read at a time
# root attribute: crc32 of every other attribute in the file (their string values live in
# HDF5's global heap, which has no checksum of its own); absent in files written before it
ATTRS_CRC = "attrs_crc32"
# the numeric types zgdyn stores; anything else in a numeric dataset is a damaged header
_STANDARD_TYPES = [getattr(h5py.h5t, f"{kind}{bits}{order}")
                   for kind, sizes in (("IEEE_F", (32, 64)), ("STD_I", (8, 16, 32, 64)),
                                       ("STD_U", (8, 16, 32, 64)))
                   for bits in sizes for order in ("LE", "BE")]


def moment_groups(config: Config) -> tuple[str, ...]:
    """The optimizer-state groups of a run's keyframes: Adam's (or SGD's) two moments,
    AMSGrad's running maximum of v if any phase uses it (zeros before it is in use), and
    the step hook's buffers (``hook_<name>``, see `zgdyn.core.hooks`)."""
    from ..core.hooks import hook_state_names

    extra = ("max_exp_avg_sq",) if any(needs_max_moment(o) for o in config.optimizers) else ()
    return ("exp_avg", "exp_avg_sq", *extra, *(f"hook_{n}" for n in hook_state_names(config)))


def _param_groups(f: h5py.File, config: Config) -> tuple[str, ...]:
    """The datasets groups that hold one parameter-shaped record per checkpoint or keyframe."""
    return ("checkpoints", *(f"keyframes/{m}" for m in moment_groups(config)),
            *(("windows/params",) if "windows/params" in f else ()))


def attrs_checksum(f: h5py.File) -> int:
    """crc32 over every attribute of every object (but ATTRS_CRC), in name order."""
    names: list[str] = []
    f.visit(names.append)
    crc = 0
    for name in ["", *sorted(names)]:
        if name and not h5py.h5o.get_info(f.id, name.encode()).num_attrs:
            continue  # most objects have none: do not open them
        attrs = (f if name == "" else f[name]).attrs
        for key in sorted(attrs):
            if name == "" and key == ATTRS_CRC:
                continue
            v = attrs[key]
            text = v if isinstance(v, str) else \
                f"{np.asarray(v).dtype.str}:{json.dumps(np.asarray(v).tolist(), default=str)}"
            crc = zlib.crc32(f"{name}\0{key}\0{text}\0".encode("utf-8", "surrogateescape"),
                             crc)
    return crc


def check_attrs(f: h5py.File, path: Path) -> None:
    """Refuse a file whose attributes do not match their stored checksum."""
    stored = f.attrs.get(ATTRS_CRC)
    if stored is not None and int(stored) != attrs_checksum(f):
        raise damaged(path, "its attributes (the config among them) fail their checksum")


# the collapse detector's state, as `CollapseWatch.state` gives it
WATCH_STATE = ("resting_until", "last_peak", "peak_epoch", "peak_loss", "fired")
# keys that files written before them lack
_WATCH_STATE_LATER = ("fired",)


def parse_watch_state(raw: str) -> dict[str, float]:
    """The stored detector state: {WATCH_STATE: numbers}; ValueError if it is not that."""
    try:
        state = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not (isinstance(state, dict) and set(WATCH_STATE) - set(_WATCH_STATE_LATER)
            <= set(state) <= set(WATCH_STATE) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and (math.isfinite(v) or k == "peak_loss") for k, v in state.items())):
        raise ValueError(f"not {{{', '.join(WATCH_STATE)}}} as numbers: {raw[:80]}")
    return state


def damaged(path: Path, what: str) -> RunFileError:
    return RunFileError(f"{path}: damaged run file, {what}")


def declared_bytes(ds: h5py.Dataset) -> int:
    return math.prod(ds.shape) * ds.dtype.itemsize


def holds(ds: h5py.Dataset, path: Path, size: int) -> None:
    """Refuse a dataset that declares more bytes than the file stores for it (reading it
    would allocate them and return fill values)."""
    declared, stored = declared_bytes(ds), ds.id.get_storage_size()
    if declared > stored or stored > size:
        raise damaged(path, f"{ds.name} declares shape {ds.shape} ({declared:,} bytes) but "
                      f"the file stores {stored:,} bytes of it (file size {size:,})")


def _task_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """The split and weight datasets the config's task fixes."""
    p, frac = cfg.data.p, cfg.data.train_frac
    n_train = int(p * p * frac)
    out = {"split/train_idx": (n_train,), "split/test_idx": (p * p - n_train,),
           "weights/phase0": (n_train,)}
    if cfg.schedule.switch_s is not None:
        out["weights/phase1"] = (n_train,)
    return out


def loaded_whole(f: h5py.File) -> list[h5py.Dataset]:
    """The datasets a reader loads whole when it opens a run."""
    from .reader import WINDOW_FIELDS

    out = [f["metrics"][k] for k in f["metrics"]]
    out += [f["checkpoints/epoch"]] + [f["keyframes"][k] for k in KEYFRAME_FIELDS
                                       if k in f["keyframes"]]
    w = f.get("windows")
    if w is not None:
        out += [w[k] for k in (*WINDOW_FIELDS, "epoch") if k in w]
        if "metrics" in w:
            out += [w["metrics"][k] for k in w["metrics"]]
    return out


def check_layout(f: h5py.File, path: Path, cfg: Config, size: int) -> None:
    """Refuse a file whose datasets are not its config's, or declare more than it holds."""
    shapes = param_shapes(cfg.data.p, cfg.model.hidden)
    dtype = np.dtype(cfg.model.dtype)
    for group in _param_groups(f, cfg):
        g = f[group]
        names = sorted(k for k in g if k != "epoch")
        if names != sorted(shapes):
            raise damaged(path, f"{group} holds {', '.join(names) or 'nothing'}, but its "
                          f"config's model (p = {cfg.data.p}, hidden {list(cfg.model.hidden)}) "
                          f"has {', '.join(sorted(shapes))}")
        for name, shape in shapes.items():
            ds = g[name]
            if ds.shape[1:] != shape or ds.dtype != dtype:
                raise damaged(path, f"{group}/{name} has records of shape {ds.shape[1:]} "
                              f"{ds.dtype}, its config's model {shape} {dtype}")
    for name, shape in _task_shapes(cfg).items():
        ds = f.get(name)
        if ds is None or ds.shape != shape:
            raise damaged(path, f"{name} has shape {None if ds is None else ds.shape}, its "
                          f"config's task (p = {cfg.data.p}, train_frac = "
                          f"{cfg.data.train_frac}) {shape}")
        holds(ds, path, size)
    for ds in loaded_whole(f):
        holds(ds, path, size)


# -- zgdyn verify ----------------------------------------------------------------------------


def _walk(g: h5py.Group, guard: Callable) -> list[tuple[str, h5py.Dataset]]:
    """Every dataset below `g`, a damaged group reported (and skipped) by `guard`."""
    out: list[tuple[str, h5py.Dataset]] = []

    def visit(group: h5py.Group) -> None:
        for key in guard(group.name, lambda: list(group.keys())) or []:
            obj = guard(f"{group.name.rstrip('/')}/{key}", lambda: group[key])
            if isinstance(obj, h5py.Group):
                visit(obj)
            elif isinstance(obj, h5py.Dataset):
                out.append((obj.name.lstrip("/"), obj))

    visit(g)
    return out


def _chunks(ds: h5py.Dataset) -> list[Any]:
    infos: list[Any] = []
    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(infos.append)
    else:  # older HDF5
        infos = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    return infos


def _storage(name: str, ds: h5py.Dataset, size: int, extents: list,
             problem: Callable[[str], None]) -> None:
    """A standard type, every chunk stored once, inside the file; record where the data lie."""
    t = ds.id.get_type()
    if t.get_class() in (h5py.h5t.FLOAT, h5py.h5t.INTEGER) and \
            not any(t == std for std in _STANDARD_TYPES):
        problem(f"{name}: its datatype is not a standard {ds.dtype}: a damaged header")
    if ds.chunks is None:
        off = ds.id.get_offset()
        if off is not None:
            n = ds.id.get_storage_size()
            extents.append((off, n, name))
            if off + n > size:
                problem(f"{name}: its data lie past the end of the file")
        return
    grid = [range(0, n, c) for n, c in zip(ds.shape, ds.chunks)]
    expected = math.prod(len(r) for r in grid)
    infos = _chunks(ds)
    stored = {tuple(i.chunk_offset) for i in infos}
    if len(infos) != expected or len(stored) != len(infos) or any(
            any(o % c or o >= n for o, c, n in zip(off, ds.chunks, ds.shape))
            for off in stored):
        problem(f"{name}: {expected} chunks expected, the index lists {len(infos)} "
                f"({len(stored)} distinct); records would read as zeros or as others' data")
    for i in infos:
        extents.append((i.byte_offset, i.size, name))
        if i.byte_offset + i.size > size:
            problem(f"{name}: a chunk lies past the end of the file")


def _is_param(name: str) -> bool:
    return name.startswith(("checkpoints/", "keyframes/exp_avg", "keyframes/max_exp_avg",
                             "windows/params/")) \
        and not name.endswith("/epoch")


def _read_all(name: str, ds: h5py.Dataset, problem: Callable[[str], None]) -> int:
    """Read every element; check parameters and moments for finiteness. Returns the rows
    read. A checksummed dataset is read record by record, to name a bad one."""
    if ds.shape == ():
        ds[()]
        return 1
    n = ds.shape[0]
    row = max(1, declared_bytes(ds) // max(n, 1))
    step = 1 if ds.fletcher32 else max(1, _SLAB // row)
    bad_rows = []
    for a in range(0, n, step):
        try:
            data = ds[a:a + step]
        except OSError as e:
            if step == 1:
                problem(f"{name}[{a}]: unreadable, checksum or I/O error ({e})")
                continue
            raise
        if _is_param(name) and data.dtype.kind == "f":
            finite = np.isfinite(data).reshape(len(data), -1).all(axis=1)
            bad_rows += [a + int(k) for k in np.flatnonzero(~finite)]
            if name.startswith(("keyframes/exp_avg_sq/", "keyframes/max_exp_avg_sq/")) \
                    and (data < 0).any():
                problem(f"{name}: negative second moments, from record {a}")
    if bad_rows:
        problem(f"{name}: records {bad_rows[:5]} are not finite")
    return n


def _increasing(f: h5py.File, name: str, problem: Callable[[str], None],
                sound: set[str]) -> None:
    if name in sound:
        e = f[name][:]
        if len(e) > 1 and not (np.diff(e) > 0).all():
            k = int(np.flatnonzero(np.diff(e) <= 0)[0])
            problem(f"{name}: epochs do not grow at record {k + 1} ({int(e[k])} then "
                    f"{int(e[k + 1])}): a record is duplicated or out of order")


def _attrs(f: h5py.File, problem: Callable[[str], None]) -> None:
    status = f.attrs.get("status")
    if status not in STATUSES:
        problem(f"attribute status: {status!r}, not one of {', '.join(STATUSES)}")
    for name, parse in (("watch_state", parse_watch_state), ("history", json.loads)):
        raw = f.attrs.get(name)
        if raw is not None:
            try:
                parse(raw)
            except (ValueError, TypeError, RecursionError) as e:
                problem(f"attribute {name}: cannot be read ({e})")


def _analysis_groups(f: h5py.File) -> list[h5py.Group]:
    """The groups under analysis/ that hold an epoch dataset (their records are epochs)."""
    out: list[h5py.Group] = []
    if "analysis" in f:
        f["analysis"].visititems(lambda name, obj: out.append(obj) if isinstance(
            obj, h5py.Group) and isinstance(obj.get("epoch"), h5py.Dataset) else None)
    return out


def _records(f: h5py.File, cfg: Config, problem: Callable[[str], None],
             checked: dict[str, int], sound: set[str]) -> None:
    """The record counts agree, keyframes have checkpoints, epochs_done is the last one.
    Only datasets in `sound` (those that hold what they declare) are read."""
    from .reader import WINDOW_FIELDS

    n_eval = {m: len(f[f"metrics/{m}"]) for m in METRICS
              if m not in OPTIONAL_METRICS or f"metrics/{m}" in f}
    if len(set(n_eval.values())) > 1:
        problem(f"metrics: datasets of different lengths {n_eval}")
    n_ck, n_kf = len(f["checkpoints/epoch"]), len(f["keyframes/epoch"])
    for name in param_shapes(cfg.data.p, cfg.model.hidden):
        for group, n in (("checkpoints", n_ck),
                         *((f"keyframes/{m}", n_kf) for m in moment_groups(cfg))):
            got = len(f[f"{group}/{name}"])
            if got != n:
                problem(f"{group}/{name}: {got} records, expected {n}")
    for name in KEYFRAME_FIELDS:
        if len(f[f"keyframes/{name}"]) != n_kf:
            problem(f"keyframes/{name}: {len(f[f'keyframes/{name}'])} records, expected {n_kf}")
    for name in ("metrics/epoch", "checkpoints/epoch", "keyframes/epoch"):
        _increasing(f, name, problem, sound)
    checked["checkpoints"], checked["keyframes"] = n_ck, n_kf
    for group in _analysis_groups(f):  # one record per analyzed epoch in each
        n = len(group["epoch"])
        for name in group:
            ds = group[name]
            if isinstance(ds, h5py.Dataset) and ds.shape and len(ds) != n:
                problem(f"{ds.name.lstrip('/')}: {len(ds)} records, its group's epoch has {n}")
    if n_kf and {"checkpoints/epoch", "keyframes/epoch"} <= sound:
        ck = set(f["checkpoints/epoch"][:].tolist())
        missing = [e for e in f["keyframes/epoch"][:].tolist() if e not in ck]
        if missing:
            problem(f"keyframes at epochs {missing[:5]} have no checkpoint")
        done, last = int(f.attrs.get("epochs_done", -1)), int(f["keyframes/epoch"][-1])
        if last != done:
            problem(f"epochs_done={done} but the last keyframe is at epoch {last}")
    if "windows" in f:
        w = f["windows"]
        n_rec, n_win = len(w["epoch"]), len(w["trigger"])
        for name in WINDOW_FIELDS:
            if len(w[name]) != n_win:
                problem(f"windows/{name}: not one record per window")
        for name in (*[f"metrics/{m}" for m in METRICS if f"metrics/{m}" in w],
                     *[f"params/{n}" for n in w["params"]]):
            if len(w[name]) != n_rec:
                problem(f"windows/{name}: {len(w[name])} records, expected {n_rec}")
        if n_win and int(w["n_records"][:].sum()) != n_rec:
            problem("windows: the index does not account for every record")
        checked["window_records"] = n_rec


def verify(f: h5py.File, path: Path, cfg: Config, size: int) -> tuple[list[str], dict]:
    """(problems, counts of what was read) for an open run file of `size` bytes."""
    problems: list[str] = []
    checked: dict[str, int] = {"checkpoints": 0, "keyframes": 0, "datasets": 0}

    def guard(where: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RunFileError as e:
            problems.append(str(e).split("damaged run file, ", 1)[-1])
        except (*HDF5_ERRORS, RecursionError, MemoryError) as e:
            problems.append(f"damaged: {where} ({type(e).__name__}: {e})")
        return None

    datasets = _walk(f, guard)
    # the datasets that hold what they declare: only these are read
    sound = {name for name, ds in datasets
             if guard(name, lambda: holds(ds, path, size) or True)}
    guard("the layout", lambda: check_layout(f, path, cfg, size))
    guard("attributes", lambda: check_attrs(f, path))
    guard("attributes", lambda: _attrs(f, problems.append))
    guard("records", lambda: _records(f, cfg, problems.append, checked, sound))
    extents: list[tuple[int, int, str]] = []
    for name, ds in datasets:
        guard(name, lambda: _storage(name, ds, size, extents, problems.append))
        if name in sound and guard(name, lambda: _read_all(name, ds, problems.append)) \
                is not None:
            checked["datasets"] += 1
    extents.sort()
    for (a, n, x), (b, _, y) in zip(extents, extents[1:]):
        if b < a + n:
            problems.append(f"damaged: {x} and {y} claim the same bytes at offset {b:,}")
            break
    return list(dict.fromkeys(problems)), checked


__all__ = ["HDF5_ERRORS", "KEYFRAME_FIELDS", "STATUSES", "ATTRS_CRC", "moment_groups",
           "attrs_checksum", "check_attrs", "WATCH_STATE", "parse_watch_state", "damaged",
           "declared_bytes", "holds", "loaded_whole", "check_layout", "verify"]
