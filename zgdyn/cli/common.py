"""What the commands share: JSON on stdout, figures saved as PNG and PDF, and the checks of
a device name and of numbers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from ..core.config import Config, ZgdynError


def device_arg(name: str) -> str:
    """A checked torch device name: one line and exit 2 for anything else or a missing GPU."""
    from ..store.budget import check_device

    Config(device=name)  # the same rule as a run's device field
    check_device(name)
    return name


def check_finite(flag: str, values: Any, low: float = 0.0) -> None:
    """Refuse values of `flag` that are not finite numbers >= `low`."""
    for v in values if isinstance(values, (list, tuple)) else [values]:
        if v is not None and not (math.isfinite(v) and v >= low):
            raise ZgdynError(f"{flag}: must be a finite number >= {low:g}, got {v}")


def print_json(obj: Any) -> None:
    """`obj` as indented JSON on stdout; typed results by their `to_dict`."""
    from ..core.results import plain

    sys.stdout.write(json.dumps(plain(obj), indent=2, default=str) + "\n")


def save_figure(fig: Any, outs: list[Path]) -> None:
    """Write a figure to each of `outs` (their folder made); one line if that fails."""
    from ..present.plots import save

    target = outs[0].parent
    try:
        target.mkdir(parents=True, exist_ok=True)
        for target in outs:
            save(fig, str(target))
    except OSError as e:
        raise ZgdynError(f"{target}: the figure cannot be written ({e.strerror or e})") \
            from None


def figure_paths(out: Path, force: bool) -> list[Path]:
    """The files a figure goes to (a .png gets a .pdf beside it); refuses to overwrite."""
    if out.suffix not in (".png", ".pdf", ".svg"):
        raise ZgdynError(f"--figure {out.name!r}: must end in .png, .pdf or .svg")
    outs = [out] + ([out.with_suffix(".pdf")] if out.suffix == ".png" else [])
    existing = [str(o) for o in outs if o.exists()]
    if existing and not force:
        raise ZgdynError(f"{', '.join(existing)}: already exists; pass --force to replace it")
    return outs


__all__ = ["device_arg", "check_finite", "print_json", "save_figure", "figure_paths"]
