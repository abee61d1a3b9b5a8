"""The base of zgdyn's typed results: frozen dataclasses whose `to_dict()` is their JSON form
(what `--json` prints and what the run file stores) and whose `from_dict()` reads it back.

A field typed as another result (anything with `from_dict`), or as a tuple, dict or
optional of one, is converted both ways; tuples become lists in the JSON form, a field named in
`OMIT_NONE` is left out of it while it is None, for keys that only some results carry, and
`KEYS` maps a field to its JSON key where that key is not a Python name ("lambda").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Result")


def plain(value: Any) -> Any:
    """`value` in its JSON form: results by their `to_dict`, tuples as lists, recursively."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _typed(hint: Any, value: Any) -> Any:
    """`value` (a JSON form) as the type `hint` names: results by `from_dict`, lists as
    tuples where the hint is a tuple; anything else as it is."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _typed(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_typed(inner, v) for v in value)
    if origin is dict and isinstance(value, dict):
        args = typing.get_args(hint)
        return {k: _typed(args[1], v) for k, v in value.items()} if args else dict(value)
    if isinstance(hint, type) and hasattr(hint, "from_dict") and isinstance(value, dict):
        return hint.from_dict(value)
    return value


@dataclasses.dataclass(frozen=True)
class Result:
    """A typed result; subclasses are frozen dataclasses of their own fields."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ()
    KEYS: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {self.KEYS.get(f.name, f.name): plain(getattr(self, f.name))
                for f in dataclasses.fields(self)
                if not (f.name in self.OMIT_NONE and getattr(self, f.name) is None)}

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        hints = typing.get_type_hints(cls)
        names = {cls.KEYS.get(f.name, f.name): f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise KeyError(f"{cls.__name__}: unknown fields {unknown}")
        return cls(**{names[k]: _typed(hints[names[k]], v) for k, v in d.items()})


__all__ = ["Result", "plain"]
