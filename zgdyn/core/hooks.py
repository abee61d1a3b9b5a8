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
``step.t`` is Adam's step count and ``step.optim`` the optimizer settings. A hook must be
a function of these (plus its own constants): the run file stores nothing else, so a
resumed run stays bitwise only if the hook keeps no state of its own.

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

from .config import Config, ZgdynError

if TYPE_CHECKING:
    from .step import FusedStep


class Hook:
    """Base class: override `grad`, `update` or both. `strength` is ``optim.hook_strength``."""

    def __init__(self, strength: float, config: Config) -> None:
        self.strength = strength
        self.config = config

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


__all__ = ["Hook", "HOOKS", "register", "load_plugins", "make_hook", "CoupledL2"]
