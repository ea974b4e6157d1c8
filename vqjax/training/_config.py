"""Config values checked when a program starts, each error naming its flag.

A *rule* is a callable ``rule(value) -> str | None``: what was expected (``"an integer >= 1"``), or
None when the value is fine. An experiment declares one rule per field of its config,
``{dotted path: rule}``, and checks them all before anything trains::

    RULES = {**training.CONFIG_RULES, "model.hidden": training.integer(min=1),
             "model.quantizer.kind": training.one_of("vq", "ema")}
    training.validate(config, RULES)
    # ValueError: `--config.train.log_every` must be an integer >= 1; got 0.

Every violation is reported, one a line. Checks between fields are plain functions
``check(config, where="--config") -> list[str]`` of messages (name the flags with :func:`flag`),
passed as ``validate(config, rules, extra=(check, ...))``; they run once every field passed its
rule, so they may assume well-typed values. :func:`unchecked_fields` lists the fields without a
rule (a test keeps it empty for every experiment).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vqjax.training._task import SCHEDULES

__all__ = [
    "CONFIG_RULES",
    "Check",
    "Rule",
    "any_of",
    "boolean",
    "flag",
    "int_sequence",
    "integer",
    "nested",
    "number",
    "one_of",
    "path",
    "problems",
    "satisfies",
    "sequence",
    "string",
    "unchecked_fields",
    "unknown_rules",
    "validate",
    "within",
]

Rule = Callable[[Any], "str | None"]
# check(config, where="--config") -> messages, each naming its flags with flag(path, where)
Check = Callable[..., Iterable[str]]


class _Rule:
    """A rule with a readable ``expected`` text (also its repr)."""

    def __init__(self, ok: Callable[[Any], bool], expected: str):
        self.ok, self.expected = ok, expected

    def __call__(self, value: Any) -> str | None:
        return None if self.ok(value) else self.expected

    def __repr__(self) -> str:
        return f"<rule: {self.expected}>"


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or type(v).__name__ == "bool_"  # numpy's bool is no int subclass


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not _is_bool(v)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not _is_bool(v)


def _bounds(lo, hi, *, lo_open=False, hi_open=False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def _within(v, lo, hi, *, lo_open=False, hi_open=False) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def integer(min: int | None = None, max: int | None = None, *, multiple_of: int | None = None,
            odd: bool = False) -> Rule:
    """An int (not a bool, not a float such as ``2.0``) in ``[min, max]``; optionally a multiple of
    ``multiple_of`` or odd."""
    kind = "an even integer" if multiple_of == 2 else "an odd integer" if odd else "an integer"
    text = kind + _bounds(min, max)
    if multiple_of not in (None, 2):
        text += f" and a multiple of {multiple_of}"

    def ok(v):
        return (_is_int(v) and _within(v, min, max) and (multiple_of is None or v % multiple_of == 0)
                and (not odd or v % 2 == 1))

    return _Rule(ok, text)


def number(min: float | None = None, max: float | None = None, *, min_open: bool = False,
           max_open: bool = False, allow_inf: bool = False) -> Rule:
    """A real number (an int or a float, not a bool) in ``[min, max]`` (``min_open``/``max_open``:
    excluding the bound). NaN is never accepted; ``±inf`` only with ``allow_inf``."""
    text = ("a number" if allow_inf else "a finite number") + _bounds(min, max, lo_open=min_open, hi_open=max_open)

    def ok(v):
        if not _is_real(v) or math.isnan(v) or (math.isinf(v) and not allow_inf):
            return False
        return _within(v, min, max, lo_open=min_open, hi_open=max_open)

    return _Rule(ok, text)


def boolean() -> Rule:
    """``True`` or ``False`` (not 0 or 1)."""
    return _Rule(_is_bool, "True or False")


def one_of(*choices) -> Rule:
    """One of ``choices`` (compared with ``==``, never a bool for a number)."""
    text = repr(choices[0]) if len(choices) == 1 else f"one of {choices!r}"
    return _Rule(lambda v: any(v == c and _is_bool(v) == _is_bool(c) for c in choices), text)


def string(*, nonempty: bool = False) -> Rule:
    """A ``str`` (with ``nonempty``: not ``""``)."""
    return _Rule(lambda v: isinstance(v, str) and (bool(v) or not nonempty),
                 "a non-empty string" if nonempty else "a string")


def path() -> Rule:
    """A file or folder name: a ``str`` (``""`` or None: not given)."""
    return _Rule(lambda v: v is None or isinstance(v, str), "a path (a string; empty: not given)")


def sequence(item: Rule, *, min_len: int = 0, max_len: int | None = None) -> Rule:
    """A tuple or list of ``min_len`` to ``max_len`` items, each passing ``item``."""
    what = _expected(item)
    if max_len is not None and max_len == min_len:
        size = f"a tuple of {min_len} items"
    elif max_len is not None:
        size = f"a tuple of {min_len} to {max_len} items"
    elif min_len == 1:
        size = "a non-empty tuple"
    elif min_len > 1:
        size = f"a tuple of at least {min_len} items"
    else:
        size = "a tuple (possibly empty)"

    def ok(v):
        if not isinstance(v, (tuple, list)) or len(v) < min_len or (max_len is not None and len(v) > max_len):
            return False
        return all(item(x) is None for x in v)

    return _Rule(ok, f"{size}, each item {what}")


def int_sequence(*, min_len: int = 1, min: int | None = None, max: int | None = None) -> Rule:
    """A tuple or list of at least ``min_len`` ints in ``[min, max]`` (e.g. FSQ's levels)."""
    return sequence(integer(min=min, max=max), min_len=min_len)


def any_of(*rules: Rule) -> Rule:
    """Passes if one of ``rules`` does (``"0 or an integer >= 2"``)."""
    return _Rule(lambda v: any(r(v) is None for r in rules), " or ".join(_expected(r) for r in rules))


def satisfies(predicate: Callable[[Any], bool], expected: str) -> Rule:
    """A rule of its own: ``predicate(value)`` true (an exception counts as false); ``expected`` says what."""

    def ok(v):
        try:
            return bool(predicate(v))
        except Exception:  # noqa: BLE001  a malformed value is simply not what was expected
            return False

    return _Rule(ok, expected)


def _expected(rule: Rule) -> str:
    return getattr(rule, "expected", None) or repr(rule)


def nested(prefix: str, rules: Mapping[str, Rule]) -> dict[str, Rule]:
    """``rules`` of a config block that sits at ``prefix`` in a larger config (``"vqvae"``, ``"base"``)."""
    return {f"{prefix}.{k}": r for k, r in rules.items()}


def within(prefix: str, check: Check) -> Check:
    """``check`` of a block, applied to ``config[prefix]`` with its flags named under ``prefix``."""

    def nested_check(config, where: str = "--config") -> list[str]:
        found, block = _lookup(config, prefix)
        return list(check(block, f"{where}.{prefix}")) if found else []

    nested_check.__name__ = f"{getattr(check, '__name__', 'check')}@{prefix}"
    return nested_check


def flag(path: str, where: str = "--config") -> str:
    """The flag of ``path`` as messages write it: ``"`--config.train.steps`"``."""
    return f"`{where}.{path}`"


def _lookup(config, dotted: str) -> tuple[bool, Any]:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) and not hasattr(node, "keys"):
            return False, None
        if part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_block(v: Any) -> bool:
    return isinstance(v, Mapping) or (hasattr(v, "keys") and hasattr(v, "items") and not isinstance(v, str))


def _leaves(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        p = f"{prefix}{k}"
        out += _leaves(v, p + ".") if _is_block(v) else [p]
    return out


def problems(config, rules: Mapping[str, Rule], *, where: str = "--config", extra: Sequence[Check] = ()) -> list[str]:
    """Every violation of ``rules`` (paths absent from ``config`` are skipped), then, if there was
    none, the messages of the ``extra`` cross-field checks; ``[]`` when the config is fine."""
    out = []
    for p, rule in rules.items():
        found, value = _lookup(config, p)
        if not found:
            continue
        expected = rule(value)
        if expected is not None:
            out.append(f"{flag(p, where)} must be {expected}; got {value!r}.")
    if out:
        return out
    for check in extra:
        out += list(check(config, where))
    return out


def validate(config, rules: Mapping[str, Rule], *, where: str = "--config", extra: Sequence[Check] = ()) -> None:
    """ValueError listing every violation of ``rules`` and ``extra`` (one a line), each naming its
    flag (``where`` + the path: ``--config.train.log_every``); nothing when the config is fine.

    Paths of ``rules`` the config lacks are skipped (a config without an optional block); use
    :func:`unknown_rules` in a test to catch a misspelt path.
    """
    found = problems(config, rules, where=where, extra=extra)
    if found:
        raise ValueError("\n".join(found))


def unchecked_fields(config, rules: Mapping[str, Rule]) -> list[str]:
    """Dotted paths of the config's values that no rule checks (sorted)."""
    return sorted(p for p in _leaves(config) if p not in rules)


def unknown_rules(config, rules: Mapping[str, Rule]) -> list[str]:
    """Paths of ``rules`` that are not fields of ``config`` (misspelt, or of another config)."""
    return sorted(p for p in rules if not _lookup(config, p)[0])


# The shared blocks of experiments/configs/common.py, as the training loop reads them.
CONFIG_RULES: dict[str, Rule] = {
    "seed": integer(min=0),
    "cpu_devices_per_core": boolean(),
    "dtype": one_of("float32", "bfloat16"),  # the networks' computation dtype (parameters stay float32)
    # "mnist", "bars", a TFDS name ("cifar10"), "folder:PATH", "npz:PATH", "idx:PATH" (vqjax.data.get_source)
    "data.dataset": string(nonempty=True),
    "data.idx_dir": path(),
    "data.tfds_data_dir": path(),
    "data.image_size": integer(min=0),  # 0: as stored; S: S×S
    "data.crop": one_of("none", "center"),
    "data.channels": one_of(0, 1, 3),  # 0: as stored
    "data.test_fraction": number(min=0, max=1, min_open=True, max_open=True),
    "data.seed": integer(min=-1),  # -1: the run's seed
    "data.batch_size": integer(min=1),
    "data.eval_batch_size": integer(min=1),
    "optimizer.learning_rate": number(min=0, min_open=True),
    "optimizer.warmup_steps": integer(min=0),
    "optimizer.schedule": one_of(*SCHEDULES),
    "train.steps": integer(min=1),
    "train.log_every": integer(min=1),
    "train.checkpoint_every": integer(min=1),
    "train.eval_every": integer(min=0),  # 0: only at the end
    "train.keep_checkpoints": integer(min=1),
    "train.profile_steps": integer(min=0),  # 0: no profiler trace
    "train.micro_batches": integer(min=0),  # 0: automatic (vqjax.training.auto_micro_batches)
}
