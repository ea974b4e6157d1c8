"""Declaring a sweep: lists of config overrides built by product and zip, or parsed from one flag."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

Overrides = dict[str, Any]  # {"model.beta": 0.25, "seed": 1}


def values(path: str, vals: Iterable[Any]) -> list[Overrides]:
    """One override per value: ``values("model.beta", [0.1, 1])`` -> ``[{"model.beta": 0.1}, {"model.beta": 1}]``."""
    vals = list(vals)
    if not vals:
        raise ValueError(f"The sweep over {path!r} has no values.")
    return [{path: v} for v in vals]


def product(*sweeps: Sequence[Overrides]) -> list[Overrides]:
    """Every combination: the first sweep varies slowest."""
    return [_merge(combo) for combo in itertools.product(*sweeps)]


def zipped(*sweeps: Sequence[Overrides]) -> list[Overrides]:
    """Members side by side: ``zipped(values("a", [1, 2]), values("b", [3, 4]))`` -> ``[{a: 1, b: 3}, {a: 2, b: 4}]``."""
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise ValueError(f"Zipped sweeps must have equal lengths; got {[len(s) for s in sweeps]}.")
    return [_merge(combo) for combo in zip(*sweeps)]


def _merge(parts) -> Overrides:
    out: Overrides = {}
    for p in parts:
        clash = set(out) & set(p)
        if clash:
            raise ValueError(f"A sweep sets {sorted(clash)} twice in one member.")
        out.update(p)
    return out


def _value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for cast in (int, float):
        try:
            return cast(t)
        except ValueError:
            pass
    return t


def parse_sweep(text: str) -> list[Overrides]:
    """The command-line form: factors joined by ``*`` (their product), each ``path=v1,v2,...``;
    paths joined by ``;`` inside one factor are zipped.

    ``"model.beta=0.1,0.25,0.5,1 * seed=0,1"`` is 8 members;
    ``"model.beta=0.1,1;optimizer.learning_rate=1e-3,3e-4 * seed=0,1"`` is 4.
    """
    factors = []
    for factor in text.split("*"):
        parts = []
        for assignment in factor.split(";"):
            if "=" not in assignment:
                raise ValueError(f"`--sweep`: expected `path=v1,v2,...` in {assignment.strip()!r} of {text!r}.")
            path, vals = assignment.split("=", 1)
            parts.append(values(path.strip(), [_value(v) for v in vals.split(",") if v.strip()]))
        factors.append(zipped(*parts))
    return product(*factors)


def member_name(overrides: Overrides) -> str:
    """A run directory's name: ``model.beta=0.25,seed=1`` (``run`` for no overrides)."""
    def fmt(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    name = ",".join(f"{k}={fmt(v)}" for k, v in overrides.items()) or "run"
    return name.replace("/", "_").replace(" ", "")


def apply_overrides(config, overrides: Overrides):
    """A copy of the ``ConfigDict`` with ``overrides`` set; an unknown path or a value of the wrong type
    is a ``ValueError`` naming it."""
    c = config.copy_and_resolve_references()
    for path, v in overrides.items():
        *parents, leaf = path.split(".")
        node = c
        for p in parents:
            if p not in node:
                raise ValueError(f"The sweep sets `config.{path}`, but the config has no `{p}` block.")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"The sweep sets `config.{path}`, which the config does not have.")
        old = node[leaf]
        if isinstance(old, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(old, tuple) and isinstance(v, list):
            v = tuple(v)
        try:
            node[leaf] = v
        except TypeError as e:
            raise ValueError(f"The sweep sets `config.{path}` to {v!r}, but it holds a "
                             f"{type(old).__name__} ({old!r}).") from e
    return c


def get_path(config, path: str) -> Any:
    node = config
    for p in path.split("."):
        node = node[p]
    return node
