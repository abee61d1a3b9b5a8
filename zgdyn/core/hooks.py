"""Step hooks: plug a regularizer or another optimizer into training.

A hook is a class registered under a name. A run selects it with the config fields
``optim.hook`` (the name) and ``optim.hook_strength`` (a coefficient), so the run file
records it and a resume rebuilds it. Every step then calls, in order:

1. the fused loss and gradient, into ``step.grad``;
2. ``hook.grad(step)``: change the gradient in place, e.g. add the gradient of a penalty;
3. ``hook.update(step)``: apply an update of its own and return True, or return False to
   let AdamW (``step.adamw()``) run as usual.

``step`` is the `FusedStep`: ``step.theta``, ``step.grad``, ``step.exp_avg`` and
``step.exp_avg_sq`` are flat buffers, ``step.views(flat)`` names their pieces by layer,
``step.t`` is Adam's step count and ``step.optim`` the optimizer settings. A hook is a
function of these, its own constants and the buffers it names in ``STATE``: flat,
parameter-shaped tensors (``self.buffers[name]``, zeros at the start) that every keyframe
stores beside Adam's moments (``keyframes/hook_<name>``), so a resumed run stays bitwise.

    >>> from zgdyn.core.hooks import Hook, register
    >>> @register("l1")
    ... class L1(Hook):
    ...     def grad(self, step):
    ...         step.grad.add_(step.theta.sign(), alpha=self.strength)

    zgdyn train --plugin mypackage.myhooks --hook l1 --hook-strength 1e-4 ...

With the hook registered, every command (train, two-phase, reproduce, scorecard) runs it
and scores it like the baseline.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

import torch

from .config import Config, ZgdynError

if TYPE_CHECKING:
    from .step import FusedStep


class Hook:
    """Base class: override `grad`, `update` or both. `strength` is ``optim.hook_strength``.
    `STATE` names the flat buffers the hook keeps across steps (see the module docstring)."""

    STATE: tuple[str, ...] = ()

    def __init__(self, strength: float, config: Config) -> None:
        self.strength = strength
        self.config = config
        self.buffers: dict[str, torch.Tensor] = {}

    def init_state(self, like: torch.Tensor) -> None:
        """Allocate the `STATE` buffers as zeros shaped like the flat parameters `like`."""
        self.buffers = {name: torch.zeros_like(like) for name in self.STATE}

    def grad(self, step: FusedStep) -> None:
        """Change ``step.grad`` in place (default: leave it)."""

    def update(self, step: FusedStep) -> bool:
        """Apply an update to ``step.theta`` and return True, or return False for AdamW."""
        return False


HOOKS: dict[str, type[Hook]] = {}


def register(name: str):  # noqa: ANN201 (a decorator)
    """Class decorator: make a `Hook` subclass available as ``optim.hook = name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"hook name: must be a non-empty string, got {name!r}")

    def deco(cls: type[Hook]) -> type[Hook]:
        if not (isinstance(cls, type) and issubclass(cls, Hook)):
            raise TypeError(f"hook {name!r}: must be a subclass of zgdyn.core.hooks.Hook")
        HOOKS[name] = cls
        return cls

    return deco


MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import the named modules, which register their hooks on import."""
    for name in modules:
        if not MODULE_NAME.fullmatch(name):
            raise ZgdynError(f"--plugin {name!r}: must be a module's dotted name, such as "
                             "mypackage.myhooks")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ZgdynError(f"--plugin {name}: cannot be imported ({e})") from None
        except Exception as e:  # the module itself failed: one line, not its traceback
            raise ZgdynError(f"--plugin {name}: importing it failed ({type(e).__name__}: "
                             f"{e})") from None


def hook_state_names(config: Config) -> tuple[str, ...]:
    """The state buffers of the config's hook (empty without a hook, or for one that is not
    registered in this process)."""
    cls = HOOKS.get(config.optim.hook) if config.optim.hook else None
    return tuple(cls.STATE) if cls is not None else ()


def make_hook(config: Config) -> Hook | None:
    """The hook a config names, or None for plain AdamW."""
    o = config.optim
    if not o.hook:
        return None
    cls = HOOKS.get(o.hook)
    if cls is None:
        known = ", ".join(sorted(HOOKS)) or "none"
        raise ZgdynError(f"hook: {o.hook!r} is not registered (registered: {known}); import "
                         "the module that registers it first (zgdyn ... --plugin MODULE)")
    return cls(o.hook_strength, config)


@register("coupled_l2")
class CoupledL2(Hook):
    """L2 regularization through the gradient: g <- g + strength * theta.

    Unlike AdamW's decoupled decay, this penalty is divided by Adam's preconditioner like
    the loss gradient, the classic "Adam with L2". With ``weight_decay = 0`` it asks
    whether decoupling matters for the collapses.
    """

    def grad(self, step: FusedStep) -> None:
        step.grad.add_(step.theta, alpha=self.strength)


@register("perp_grad")
class PerpGrad(Hook):
    """⊥Grad (Prieto et al. 2025, "Grokking at the edge of numerical stability", arXiv
    2501.04697): each parameter tensor's gradient loses its component along that tensor,
    g ← g − (θ·g / θ·θ) θ, and is rescaled to its former norm, as the paper's code does; the
    optimizer then steps on it. What is removed is the "naïve loss minimization" direction,
    which scales the logits without changing predictions. The strength is unused (0).
    """

    def grad(self, step: FusedStep) -> None:
        thetas, grads = step.views(step.theta), step.views(step.grad)
        for name, g in grads.items():
            w = thetas[name].reshape(-1)
            flat = g.reshape(-1)
            g_norm = flat.norm()
            flat.sub_(w, alpha=float(torch.dot(w, flat) / (torch.dot(w, w) + 1e-30)))
            flat.mul_(g_norm / (flat.norm() + 1e-30))


@register("fixed_norm")
class FixedNorm(Hook):
    """A fixed parameter norm, as in Omnigrok (Liu et al. 2022, "Omnigrok: grokking beyond
    algorithmic data", arXiv 2210.01117): after each optimizer step, θ ← θ · R / ‖θ‖ with
    R = strength × ‖θ_0‖, the norm of the run's initialization (recomputed from the config,
    so a resumed run projects onto the same sphere). Strength 1 keeps the initial norm;
    Omnigrok's grokking-free runs constrain it below the norm weight decay settles at.
    """

    def __init__(self, strength: float, config: Config) -> None:
        super().__init__(strength, config)
        if not strength > 0:
            raise ZgdynError(f"hook fixed_norm: --hook-strength is the norm as a multiple of "
                             f"the initialization's, > 0; got {strength}")
        from .model import build_model

        d, m = config.data, config.model
        init = build_model(d.p, m.hidden, init=m.init, seed=config.seed, dtype=m.dtype)
        self.radius = strength * float(torch.sqrt(sum((t.detach().double() ** 2).sum()
                                                      for t in init.parameters())))

    def update(self, step: FusedStep) -> bool:
        step.optimizer_step()
        step.theta.mul_(self.radius / float(step.theta.double().norm()))
        return True


@register("grokfast")
class Grokfast(Hook):
    """Grokfast-EMA (Lee et al. 2024, "Grokfast: accelerated grokking by amplifying slow
    gradients", arXiv 2405.20233): the gradient's slow part, an exponential moving average
    μ ← α μ + (1 − α) g, is amplified and added back, g ← g + λ μ, before the optimizer
    steps. λ is the strength (the paper's default 2); α = 0.98, the paper's default. μ
    starts at the first gradient, as the paper's code does (and again where Adam's state
    is reset, at step 0). μ is kept in every keyframe.
    """

    STATE = ("grad_ema",)
    ALPHA = 0.98

    def __init__(self, strength: float, config: Config) -> None:
        super().__init__(strength, config)
        if not strength >= 0:
            raise ZgdynError(f"hook grokfast: --hook-strength is the amplification λ, >= 0; "
                             f"got {strength}")

    def grad(self, step: FusedStep) -> None:
        mu = self.buffers["grad_ema"]
        if step.t == 0:
            mu.copy_(step.grad)
        else:
            mu.mul_(self.ALPHA).add_(step.grad, alpha=1 - self.ALPHA)
        step.grad.add_(mu, alpha=self.strength)


__all__ = ["Hook", "HOOKS", "register", "load_plugins", "hook_state_names", "make_hook",
           "CoupledL2", "PerpGrad", "FixedNorm", "Grokfast"]
