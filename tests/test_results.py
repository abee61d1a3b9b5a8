"""The typed results' base: the JSON form and its inverse."""

import json
from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import pytest

from zgdyn.core.results import Result, plain


@dataclass(frozen=True)
class _Inner(Result):
    x: float
    tags: tuple[str, ...]


@dataclass(frozen=True)
class _Outer(Result):
    KEYS: ClassVar[dict[str, str]] = {"lam": "lambda"}
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("extra",)

    lam: float
    inner: _Inner
    many: tuple[_Inner, ...]
    maybe: _Inner | None
    table: dict[str, int]
    extra: int | None = None


def test_a_result_round_trips_through_json_with_renamed_and_omitted_keys():
    r = _Outer(lam=1e-3, inner=_Inner(1.5, ("a",)), many=(_Inner(2.0, ()), _Inner(3.0, ("b", "c"))),
               maybe=None, table={"k": 1})
    d = r.to_dict()
    assert d == {"lambda": 1e-3, "inner": {"x": 1.5, "tags": ["a"]},
                 "many": [{"x": 2.0, "tags": []}, {"x": 3.0, "tags": ["b", "c"]}],
                 "maybe": None, "table": {"k": 1}}  # extra left out while None
    back = _Outer.from_dict(json.loads(json.dumps(d)))
    assert back == r and isinstance(back.many[1], _Inner) and back.many[1].tags == ("b", "c")
    with_extra = _Outer.from_dict({**d, "extra": 4, "maybe": d["inner"]})
    assert with_extra.to_dict()["extra"] == 4 and with_extra.maybe == r.inner
    assert plain([r.inner, (1, 2)]) == [{"x": 1.5, "tags": ["a"]}, [1, 2]]


def test_a_result_refuses_unknown_keys_and_assignment():
    with pytest.raises(KeyError, match=r"_Inner: unknown fields \['y'\]"):
        _Inner.from_dict({"x": 1.0, "tags": [], "y": 2})
    with pytest.raises(FrozenInstanceError):
        _Inner(1.0, ()).x = 2.0
