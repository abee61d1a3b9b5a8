"""Run configuration: frozen dataclasses, validated on construction.

A `Config` describes one run completely; it is written into every run file,
so a run describes itself. Every field carries its help text in
``metadata["help"]``, which is also what ``zgdyn train --help`` prints.

    >>> cfg = Config(data=DataConfig(zipf_s=1.5), schedule=ScheduleConfig(epochs=50_000))
    >>> cfg = load_toml("experiments/two_phase_s1.5.toml")
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHTINGS = ("rank", "independent", "output_freq")
INITS = ("lecun", "torch")
DTYPES = ("float32", "float64")
HOOK_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]{0,63})?")


class ZgdynError(Exception):
    """A user-facing error: bad input or a bad file. The CLI prints its message on one line."""


class ConfigError(ZgdynError, ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _check(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: must be {allowed}, got {value!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class DataConfig:
    p: int = _f(97, "modulus: the task is (a + b) mod p over all p^2 ordered pairs")
    train_frac: float = _f(0.3, "fraction of the p^2 pairs in the training set, in (0, 1)")
    weighting: str = _f("rank", "Zipf weighting mode: rank | independent | output_freq")
    zipf_s: float = _f(0.0, "Zipf exponent s >= 0 of the training weights (0 = uniform)")

    def __post_init__(self) -> None:
        _check(_is_int(self.p) and self.p >= 2, "p", "an integer >= 2", self.p)
        _check(self.p < 2**31, "p", "below 2^31 (and small enough to fit in memory)", self.p)
        _check(_is_real(self.train_frac) and 0 < self.train_frac < 1,
               "train_frac", "a number in (0, 1)", self.train_frac)
        n_train = int(self.p * self.p * self.train_frac)
        _check(1 <= n_train < self.p * self.p, "train_frac",
               f"large enough for 1 training pair and small enough for 1 test pair at p={self.p}",
               self.train_frac)
        _check(self.weighting in WEIGHTINGS, "weighting", " | ".join(WEIGHTINGS), self.weighting)
        _check(_is_real(self.zipf_s) and self.zipf_s >= 0, "zipf_s", "a number >= 0", self.zipf_s)


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = _f((128, 128), "hidden layer widths, one or more integers >= 1")
    init: str = _f("lecun", "initialization: lecun (reference: truncated LeCun-normal, zero "
                   "biases) | torch (nn.Linear default: Kaiming-uniform, uniform biases)")
    dtype: str = _f("float32", "parameter and compute dtype: float32 | float64")

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else self.hidden
        object.__setattr__(self, "hidden", hidden)
        _check(isinstance(hidden, tuple) and len(hidden) >= 1
               and all(_is_int(h) and h >= 1 for h in hidden),
               "hidden", "one or more integers >= 1", self.hidden)
        _check(self.init in INITS, "init", " | ".join(INITS), self.init)
        _check(self.dtype in DTYPES, "dtype", " | ".join(DTYPES), self.dtype)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = _f(1e-3, "AdamW learning rate, > 0")
    weight_decay: float = _f(1.0, "decoupled weight decay on every parameter, >= 0; "
                             "each step multiplies parameters by (1 - lr * weight_decay)")
    beta1: float = _f(0.9, "Adam first-moment decay, in [0, 1)")
    beta2: float = _f(0.999, "Adam second-moment decay, in [0, 1)")
    eps: float = _f(1e-8, "Adam epsilon, > 0")
    hook: str = _f("", "a registered step hook (zgdyn.hooks): a regularizer or a change of "
                   "optimizer applied every step; empty = plain AdamW")
    hook_strength: float = _f(0.0, "the hook's coefficient (its meaning is the hook's)")

    def __post_init__(self) -> None:
        _check(_is_real(self.lr) and self.lr > 0, "lr", "a number > 0", self.lr)
        _check(_is_real(self.weight_decay) and self.weight_decay >= 0,
               "weight_decay", "a number >= 0", self.weight_decay)
        _check(_is_real(self.weight_decay) and self.lr * self.weight_decay < 1,
               "weight_decay", "below 1 / lr, so that 1 - lr * weight_decay > 0",
               self.weight_decay)
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            _check(_is_real(v) and 0 <= v < 1, name, "a number in [0, 1)", v)
        _check(_is_real(self.eps) and self.eps > 0, "eps", "a number > 0", self.eps)
        _check(isinstance(self.hook, str) and HOOK_NAME.fullmatch(self.hook) is not None,
               "hook", "empty or a name of letters, digits, '_', '-' and '.'", self.hook)
        _check(_is_real(self.hook_strength), "hook_strength", "a finite number",
               self.hook_strength)


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = _f(30_000, "epochs to train (full-batch steps); with a switch, the most "
                     "epochs allowed before it")
    switch_s: float | None = _f(None, "Zipf exponent after the switch (two-phase protocol); "
                                "unset = one phase")
    switch_at_test_acc: float | None = _f(None, "switch at the first evaluation with test "
                                          "accuracy >= this, in (0, 1]")
    switch_at_epoch: int | None = _f(None, "switch at this epoch instead, >= 0")
    phase2_epochs: int | None = _f(None, "epochs to train after the switch; unset = stop at "
                                   "`epochs`")

    def __post_init__(self) -> None:
        _check(_is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        has_switch = self.switch_s is not None
        if self.switch_s is not None:
            _check(_is_real(self.switch_s) and self.switch_s >= 0,
                   "switch_s", "a number >= 0", self.switch_s)
        if self.switch_at_test_acc is not None:
            _check(_is_real(self.switch_at_test_acc) and 0 < self.switch_at_test_acc <= 1,
                   "switch_at_test_acc", "a number in (0, 1]", self.switch_at_test_acc)
        if self.switch_at_epoch is not None:
            _check(_is_int(self.switch_at_epoch) and 0 <= self.switch_at_epoch <= self.epochs,
                   "switch_at_epoch", f"an integer in [0, epochs={self.epochs}]",
                   self.switch_at_epoch)
        if self.phase2_epochs is not None:
            _check(_is_int(self.phase2_epochs) and self.phase2_epochs >= 1,
                   "phase2_epochs", "an integer >= 1", self.phase2_epochs)
        triggers = (self.switch_at_test_acc is not None) + (self.switch_at_epoch is not None)
        if has_switch:
            _check(triggers == 1, "switch_s",
                   "given with exactly one of switch_at_test_acc or switch_at_epoch", triggers)
        else:
            _check(triggers == 0 and self.phase2_epochs is None, "switch_at_test_acc",
                   "unset unless switch_s is set (switch_at_epoch and phase2_epochs likewise)",
                   self.switch_at_test_acc if self.switch_at_test_acc is not None
                   else self.switch_at_epoch if self.switch_at_epoch is not None
                   else self.phase2_epochs)


@dataclass(frozen=True)
class RecordConfig:
    eval_every: int = _f(100, "evaluate train/test loss and accuracy every this many epochs")
    ckpt_every: int = _f(250, "store the parameters every this many epochs (216 KB each at "
                         "p=97, float32)")
    keyframe_every: int = _f(5_000, "store the optimizer state and commit the file every "
                             "this many epochs; a multiple of ckpt_every. A crash loses at "
                             "most this many epochs")
    window: int = _f(100, "on a detected collapse, store every epoch from this many epochs "
                     "before to this many after (2 * window + 1 parameter records); 0 = off")
    collapse_threshold: float = _f(100.0, "a collapse is flagged when the per-step train "
                                   "loss exceeds this multiple of its minimum over the "
                                   "preceding 2,000 epochs, > 1")

    def __post_init__(self) -> None:
        for name in ("eval_every", "ckpt_every", "keyframe_every"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, name, "an integer >= 1", v)
        _check(_is_int(self.window) and 0 <= self.window <= 100_000, "window",
               "an integer in [0, 100000]", self.window)
        _check(_is_real(self.collapse_threshold) and self.collapse_threshold > 1,
               "collapse_threshold", "a number > 1", self.collapse_threshold)
        _check(self.keyframe_every % self.ckpt_every == 0, "keyframe_every",
               f"a multiple of ckpt_every={self.ckpt_every}", self.keyframe_every)


@dataclass(frozen=True)
class Config:
    seed: int = _f(42, "seed of the train/test shuffle (numpy RandomState) and of the init")
    device: str = _f("cpu", "torch device: cpu | cuda | cuda:N")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    record: RecordConfig = field(default_factory=RecordConfig)

    def __post_init__(self) -> None:
        _check(_is_int(self.seed) and 0 <= self.seed < 2**32, "seed",
               "an integer in [0, 2^32)", self.seed)
        _check(isinstance(self.device, str) and (self.device == "cpu" or self.device == "cuda"
               or (self.device.startswith("cuda:") and self.device[5:].isdigit())),
               "device", "cpu | cuda | cuda:N", self.device)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes: Any) -> Config:
        """A copy with flat field names changed, e.g. ``cfg.replace(zipf_s=1.5, epochs=10)``."""
        return from_flat({**flatten(self), **changes})


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
    "schedule": ScheduleConfig, "record": RecordConfig,
}


def fields_by_section() -> dict[str | None, list[dataclasses.Field]]:
    """Every leaf field, grouped by section (None for the top-level fields)."""
    top = [f for f in dataclasses.fields(Config) if f.name not in SECTIONS]
    out: dict[str | None, list[dataclasses.Field]] = {None: top}
    for name, cls in SECTIONS.items():
        out[name] = list(dataclasses.fields(cls))
    return out


def flatten(cfg: Config) -> dict[str, Any]:
    """{leaf field name: value}; leaf names are unique across sections."""
    flat: dict[str, Any] = {}
    for section, fields in fields_by_section().items():
        obj = cfg if section is None else getattr(cfg, section)
        for f in fields:
            flat[f.name] = getattr(obj, f.name)
    return flat


def from_flat(flat: dict[str, Any]) -> Config:
    """Build a Config from flat leaf names; unknown names are an error."""
    groups = fields_by_section()
    known = {f.name for fs in groups.values() for f in fs}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config field; allowed: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {f.name: flat[f.name] for f in groups[None] if f.name in flat}
    for section, cls in SECTIONS.items():
        kwargs[section] = cls(**{f.name: flat[f.name] for f in groups[section] if f.name in flat})
    return Config(**kwargs)


def from_dict(d: dict[str, Any]) -> Config:
    """Build a Config from the nested form of `Config.to_dict` or a TOML file."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: must be a table of sections, got {type(d).__name__}")
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a table, got {value!r}")
            section_fields = {f.name for f in dataclasses.fields(SECTIONS[key])}
            for name, v in value.items():
                if name not in section_fields:
                    raise ConfigError(f"{key}.{name}: unknown field; allowed in [{key}]: "
                                      f"{', '.join(sorted(section_fields))}")
                flat[name] = v
        else:
            flat[key] = value
    return from_flat(flat)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The table of a TOML file; a one-line ConfigError naming `what` if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{what} {path}: nested too deeply to read") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path}: cannot be read ({e})") from None


def load_toml(path: str | Path) -> Config:
    """Read a config from a TOML file with optional [data] [model] [optim] [schedule] [record]."""
    path = Path(path)
    d = read_toml(path)
    try:
        return from_dict(d)
    except TypeError as e:  # e.g. a value of the wrong shape in a section
        raise ConfigError(f"config file {path}: {e}") from None
