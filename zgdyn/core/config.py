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
SPLIT_RNGS = ("random_state", "default_rng")
INITS = ("lecun", "torch")
DTYPE_NAMES = ("float32", "float64")  # torch dtypes by name: `model.DTYPES`
# the collapse detector: the recent minimum is over LOOKBACK epochs, and after a collapse
# it rests REFRACTORY epochs (`watch.CollapseWatch`, `events.detect_events`)
LOOKBACK = 2_000
REFRACTORY = 2_000
# the flat changes that turn the detector off, with what only it can do (stop a run after
# its n-th collapse): a replay of any run, whose epochs the detector has already seen
DETECTOR_OFF = {"window": 0, "stop_after_collapses": None}
OPTIMIZERS = ("adamw", "sgd", "amsgrad", "adam_atan2")
LOSSES = ("softmax", "stablemax")
ADAM_FAMILY = ("adamw", "amsgrad")  # the optimizers with eps, a floor and update clipping
HOOK_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]{0,63})?")


class ZgdynError(Exception):
    """A user-facing error: bad input or a bad file. The CLI prints its message on one line."""


class ConfigError(ZgdynError, ValueError):
    """An invalid configuration value; the message names the field and what is allowed."""


def _f(default: Any, help: str, *, flat: str | None = None) -> Any:
    """A field with its help text; `flat` names it in flat form (flags, suites, sweeps)
    where its own name would be ambiguous."""
    meta = {"help": help} if flat is None else {"help": help, "flat": flat}
    return field(default=default, metadata=meta)


def flat_name(f: dataclasses.Field) -> str:
    """A leaf field's name in flat form: `optim.name` is "optimizer", the rest their own."""
    return f.metadata.get("flat", f.name)


def _check(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: must be {allowed}, got {value!r}")


def layer_names(n_hidden: int) -> list[str]:
    """The MLP's linear layer names in order: fc1 .. fc{n_hidden}, out (`model`'s)."""
    return [f"fc{i + 1}" for i in range(n_hidden)] + ["out"]


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
    weight_cap: float | None = _f(None, "cap every pair's loss weight at this multiple of the "
                                  "uniform 1/n_train, the capped mass spread over the others "
                                  "in proportion (water-filling), so the effective sample "
                                  "size stays >= n_train / cap; > 1, unset = no cap")
    weight_power: float | None = _f(None, "temper the loss weights: each raised to this power "
                                    "t and renormalized, w ∝ (Zipf weight)^t, so the "
                                    "effective sample size grows as t falls (applied before "
                                    "weight_cap); in (0, 1), unset = off")
    split_rng: str = _f("random_state", "how the seed shuffles the pairs: random_state "
                        "(numpy RandomState(seed).shuffle, the reference's single-phase "
                        "script) | default_rng (default_rng(seed).permutation, its two-phase "
                        "script: other pairs get the top Zipf ranks)")

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
        if self.weight_cap is not None:
            _check(_is_real(self.weight_cap) and self.weight_cap > 1, "weight_cap",
                   "a number > 1 (1 would be uniform weights)", self.weight_cap)
        if self.weight_power is not None:
            _check(_is_real(self.weight_power) and 0 < self.weight_power < 1, "weight_power",
                   "a number in (0, 1) (1 would leave the weights as they are)",
                   self.weight_power)
        _check(self.split_rng in SPLIT_RNGS, "split_rng", " | ".join(SPLIT_RNGS), self.split_rng)


@dataclass(frozen=True)
class ModelConfig:
    hidden: tuple[int, ...] = _f((128, 128), "hidden layer widths, one or more integers >= 1")
    init: str = _f("lecun", "initialization: lecun (reference: truncated LeCun-normal, zero "
                   "biases) | torch (nn.Linear default: Kaiming-uniform, uniform biases)")
    dtype: str = _f("float32", "parameter and compute dtype: float32 | float64")
    loss: str = _f("softmax", "the output normalizer of the cross-entropy: softmax | stablemax "
                   "(Prieto et al. 2025: s(x) = x + 1 for x >= 0 and 1 / (1 - x) below, in "
                   "place of exp, so no probability rounds to exactly 1)")

    def __post_init__(self) -> None:
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else self.hidden
        object.__setattr__(self, "hidden", hidden)
        _check(isinstance(hidden, tuple) and len(hidden) >= 1
               and all(_is_int(h) and h >= 1 for h in hidden),
               "hidden", "one or more integers >= 1", self.hidden)
        _check(self.init in INITS, "init", " | ".join(INITS), self.init)
        _check(self.dtype in DTYPE_NAMES, "dtype", " | ".join(DTYPE_NAMES), self.dtype)
        _check(self.loss in LOSSES, "loss", " | ".join(LOSSES), self.loss)


@dataclass(frozen=True)
class OptimConfig:
    name: str = _f("adamw", "optimizer: adamw (torch.optim.AdamW) | sgd (heavy ball or "
                   "Nesterov, with the same decoupled decay) | amsgrad (AdamW whose v-hat "
                   "never decreases) | adam_atan2 (no eps: the step is atan2(m-hat, "
                   "sqrt(v-hat)), Everett et al. 2024)", flat="optimizer")
    lr: float = _f(1e-3, "learning rate, > 0")
    weight_decay: float = _f(1.0, "decoupled weight decay on every parameter, >= 0; "
                             "each step multiplies parameters by (1 - lr * weight_decay)")
    no_decay: tuple[str, ...] = _f((), "layers exempt from the weight decay, by name (fc1 .. "
                                   "fcN, out; the reference's two-phase script trains `out` "
                                   "by plain Adam); the analyses still take the decay rate "
                                   "as lr * weight_decay on every parameter")
    beta1: float = _f(0.9, "Adam first-moment decay, in [0, 1)")
    beta2: float = _f(0.999, "Adam second-moment decay, in [0, 1)")
    eps: float = _f(1e-8, "Adam epsilon, > 0 (adamw, amsgrad)")
    momentum: float | None = _f(None, "sgd: momentum in [0, 1); unset = 0")
    nesterov: bool = _f(False, "sgd: Nesterov momentum (needs momentum > 0)")
    sqrt_v_floor: float = _f(0.0, "adamw, amsgrad: Adam's denominator becomes "
                             "max(sqrt(v-hat), floor) + eps, so it cannot decay below the "
                             "floor; 0 = off")
    update_clip: bool = _f(False, "adamw, amsgrad: StableAdamW's update clipping (Wortsman "
                           "et al. 2023): each tensor's lr is divided by max(1, RMS of "
                           "g^2 / max(v-hat, eps^2))")
    flush_subnormals: bool = _f(False, "compute each step in the CPU's flush-to-zero mode, "
                                "and after each update set parameters and optimizer "
                                "moments smaller than the dtype's smallest normal number "
                                "(1.2e-38 in float32) to zero: dead units' weights that "
                                "weight decay drives into subnormals, and the tiny "
                                "softmax terms of large logits, otherwise make every "
                                "epoch several times slower on a CPU")
    hook: str = _f("", "a registered step hook (zgdyn.core.hooks): a regularizer or a change of "
                   "optimizer applied every step; empty = the optimizer alone")
    hook_strength: float = _f(0.0, "the hook's coefficient (its meaning is the hook's)")

    def __post_init__(self) -> None:
        _check(self.name in OPTIMIZERS, "name", " | ".join(OPTIMIZERS), self.name)
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
        no_decay = tuple(self.no_decay) if isinstance(self.no_decay, (list, tuple)) \
            else self.no_decay
        object.__setattr__(self, "no_decay", no_decay)
        _check(isinstance(no_decay, tuple) and all(isinstance(n, str) for n in no_decay)
               and len(set(no_decay)) == len(no_decay), "no_decay",
               "a list of distinct layer names", self.no_decay)
        if self.momentum is not None:
            _check(_is_real(self.momentum) and 0 <= self.momentum < 1, "momentum",
                   "a number in [0, 1)", self.momentum)
        _check(isinstance(self.nesterov, bool), "nesterov", "true or false", self.nesterov)
        _check(_is_real(self.sqrt_v_floor) and self.sqrt_v_floor >= 0, "sqrt_v_floor",
               "a number >= 0", self.sqrt_v_floor)
        _check(isinstance(self.update_clip, bool), "update_clip", "true or false",
               self.update_clip)
        _check(isinstance(self.flush_subnormals, bool), "flush_subnormals", "true or false",
               self.flush_subnormals)
        _check(isinstance(self.hook, str) and HOOK_NAME.fullmatch(self.hook) is not None,
               "hook", "empty or a name of letters, digits, '_', '-' and '.'", self.hook)
        _check(_is_real(self.hook_strength), "hook_strength", "a finite number",
               self.hook_strength)

    @property
    def momentum_or_zero(self) -> float:
        return 0.0 if self.momentum is None else self.momentum


_OPTIM_DEFAULTS: dict[str, Any] = {}


def check_applies(o: OptimConfig, *names: str) -> None:
    """ConfigError for a setting changed from its default that none of the optimizers
    `names` uses (a phase's optimizer, and the one after a switch)."""
    if not _OPTIM_DEFAULTS:
        _OPTIM_DEFAULTS.update({f.name: f.default for f in dataclasses.fields(OptimConfig)})
    uses = {"momentum": ("sgd",), "nesterov": ("sgd",), "eps": ADAM_FAMILY,
            "beta1": ("adamw", "amsgrad", "adam_atan2"),
            "beta2": ("adamw", "amsgrad", "adam_atan2"),
            "sqrt_v_floor": ADAM_FAMILY, "update_clip": ADAM_FAMILY}
    for field_name, users in uses.items():
        value = getattr(o, field_name)
        if value != _OPTIM_DEFAULTS[field_name] and not any(n in users for n in names):
            raise ConfigError(f"{field_name}: applies only to optimizer "
                              f"{' | '.join(users)}, not {' or '.join(dict.fromkeys(names))}; "
                              f"got {value!r}")
    if o.nesterov and not o.momentum_or_zero > 0:
        raise ConfigError(f"nesterov: needs momentum > 0, got momentum {o.momentum!r}")


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
    reset_optimizer_at_switch: bool = _f(False, "start the optimizer afresh at the switch "
                                         "(zero moments, step count 0) instead of carrying "
                                         "its state across")
    switch_optimizer: str | None = _f(None, "the optimizer after the switch (see optim.name; "
                                      "its state starts afresh); unset = keep it")
    switch_lr: float | None = _f(None, "the learning rate after the switch, > 0; unset = keep "
                                 "optim.lr")
    stop_after_collapses: int | None = _f(None, "end the run (complete) once the collapse "
                                          "detector has fired this many times and the last "
                                          "window has closed, >= 1; needs record.window > 0; "
                                          "unset = run to `epochs`")

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
        _check(isinstance(self.reset_optimizer_at_switch, bool), "reset_optimizer_at_switch",
               "true or false", self.reset_optimizer_at_switch)
        if self.switch_optimizer is not None:
            _check(self.switch_optimizer in OPTIMIZERS, "switch_optimizer",
                   " | ".join(OPTIMIZERS), self.switch_optimizer)
        if self.switch_lr is not None:
            _check(_is_real(self.switch_lr) and self.switch_lr > 0, "switch_lr", "a number > 0",
                   self.switch_lr)
        if self.stop_after_collapses is not None:
            _check(_is_int(self.stop_after_collapses) and self.stop_after_collapses >= 1,
                   "stop_after_collapses", "an integer >= 1", self.stop_after_collapses)
        phase2_only = {"reset_optimizer_at_switch": self.reset_optimizer_at_switch or None,
                       "switch_optimizer": self.switch_optimizer, "switch_lr": self.switch_lr}
        for name, value in phase2_only.items():
            _check(value is None or has_switch, name, "unset unless switch_s is set", value)
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
                                   f"preceding {LOOKBACK:,} epochs, > 1")
    lambda_grad: bool = _f(False, "record at every evaluation the preconditioned sharpness "
                           "along the gradient, g P^-1 H P^-1 g / g P^-1 g (one gradient and "
                           "one Hessian-vector product each)")

    def __post_init__(self) -> None:
        for name in ("eval_every", "ckpt_every", "keyframe_every"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, name, "an integer >= 1", v)
        _check(_is_int(self.window) and 0 <= self.window <= 100_000, "window",
               "an integer in [0, 100000]", self.window)
        _check(_is_real(self.collapse_threshold) and self.collapse_threshold > 1,
               "collapse_threshold", "a number > 1", self.collapse_threshold)
        _check(isinstance(self.lambda_grad, bool), "lambda_grad", "true or false",
               self.lambda_grad)
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
        sch = self.schedule
        check_applies(self.optim, *self.optimizers)
        layers = layer_names(len(self.model.hidden))
        unknown = [n for n in self.optim.no_decay if n not in layers]
        _check(not unknown, "no_decay", f"layer names of this model ({', '.join(layers)})",
               unknown[0] if unknown else None)
        _check(sch.stop_after_collapses is None or self.record.window > 0,
               "stop_after_collapses", "unset unless the collapse detector is on (window > 0)",
               sch.stop_after_collapses)
        if sch.switch_lr is not None:
            _check(sch.switch_lr * self.optim.weight_decay < 1, "switch_lr",
                   "below 1 / weight_decay, so that 1 - switch_lr * weight_decay > 0",
                   sch.switch_lr)

    @property
    def optimizers(self) -> tuple[str, ...]:
        """The optimizer of each phase."""
        sch = self.schedule
        if sch.switch_s is None:
            return (self.optim.name,)
        return (self.optim.name, sch.switch_optimizer or self.optim.name)

    def phase_optim(self, phase: int) -> OptimConfig:
        """The optimizer settings in force in `phase` (0, or 1 after a switch)."""
        sch = self.schedule
        if phase == 0 or (sch.switch_optimizer is None and sch.switch_lr is None):
            return self.optim
        return dataclasses.replace(self.optim, name=sch.switch_optimizer or self.optim.name,
                                   lr=self.optim.lr if sch.switch_lr is None else sch.switch_lr)

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
    """{flat leaf name: value}; flat names are unique across sections (see `flat_name`)."""
    flat: dict[str, Any] = {}
    for section, fields in fields_by_section().items():
        obj = cfg if section is None else getattr(cfg, section)
        for f in fields:
            flat[flat_name(f)] = getattr(obj, f.name)
    return flat


def from_flat(flat: dict[str, Any]) -> Config:
    """Build a Config from flat leaf names; unknown names are an error."""
    groups = fields_by_section()
    known = {flat_name(f) for fs in groups.values() for f in fs}
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config field; allowed: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {f.name: flat[f.name] for f in groups[None] if f.name in flat}
    for section, cls in SECTIONS.items():
        kwargs[section] = cls(**{f.name: flat[flat_name(f)] for f in groups[section]
                                 if flat_name(f) in flat})
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
            section_fields = {f.name: flat_name(f) for f in dataclasses.fields(SECTIONS[key])}
            for name, v in value.items():
                if name not in section_fields:
                    raise ConfigError(f"{key}.{name}: unknown field; allowed in [{key}]: "
                                      f"{', '.join(sorted(section_fields))}")
                flat[section_fields[name]] = v
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


__all__ = ["WEIGHTINGS", "SPLIT_RNGS", "INITS", "DTYPE_NAMES", "LOOKBACK", "REFRACTORY",
           "DETECTOR_OFF", "OPTIMIZERS", "LOSSES", "ADAM_FAMILY", "HOOK_NAME", "ZgdynError",
           "ConfigError", "flat_name", "layer_names", "DataConfig", "ModelConfig", "OptimConfig",
           "check_applies", "ScheduleConfig", "RecordConfig", "Config", "SECTIONS",
           "fields_by_section", "flatten", "from_flat", "from_dict", "read_toml", "load_toml"]
