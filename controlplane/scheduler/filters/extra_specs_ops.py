"""The comparison language of flavor extra specs matched against aggregate metadata.

A requirement is a plain value (equal as strings) or an operator and its operand(s):
`= N` (the value is at least N, as numbers), `== N`, `!= N`, `>= N`, `<= N` (numbers),
`s== S`, `s!= S`, `s>= S`, `s> S`, `s<= S`, `s< S` (strings), `<in> S` (S is a substring),
`<all-in> A B` (every word in the value), `<or> A <or> B` (one of them).
"""

from __future__ import annotations

import operator
from collections.abc import Callable


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _numeric(op: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    def compare(value: str, operand: str) -> bool:
        a, b = _number(value), _number(operand)
        return a is not None and b is not None and op(a, b)

    return compare


_BINARY: dict[str, Callable[[str, str], bool]] = {
    "=": _numeric(operator.ge),
    "==": _numeric(operator.eq),
    "!=": _numeric(operator.ne),
    ">=": _numeric(operator.ge),
    "<=": _numeric(operator.le),
    "s==": operator.eq,
    "s!=": operator.ne,
    "s>=": operator.ge,
    "s>": operator.gt,
    "s<=": operator.le,
    "s<": operator.lt,
    "<in>": lambda value, operand: operand in value,
}


def matches(value: str, requirement: str) -> bool:
    """True when `value` (one aggregate's metadata value) meets `requirement`."""
    words = requirement.split()
    if not words:
        return value == requirement
    op = words[0]
    if op == "<or>":
        return value in words[1::2] if all(w == "<or>" for w in words[0::2]) else False
    if op == "<all-in>":
        have = set(value.split())
        return all(w in have for w in words[1:])
    if op in _BINARY and len(words) >= 2:
        return _BINARY[op](value, requirement.split(None, 1)[1].strip())
    if "<or>" in words:
        alternatives = [w for w in words if w != "<or>"]
        return value in alternatives
    return value == requirement
