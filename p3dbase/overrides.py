"""The one `--set key=value` grammar and the one check of a setting's value against its field's type.

`python -m pipeline ... --set` (pipeline.config, every section) and `python -m flow.evaluate --set`
([flow] only) read overrides the same way. Errors are ValueError with the key; each caller adds where
the value came from (a file, `--set`) and raises its own package's error.
"""
from __future__ import annotations

import datetime
import math
import re
import types
import typing
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def parse_override(item: str) -> tuple[str, Any]:
    """`"flow.bound=20"` -> ("flow.bound", 20). The value is a TOML literal (`20`, `true`, `[1.0, 1.5]`,
    `"text"`) or, when it is not one, the bare string (`flow.store=mmaction`)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {item!r}: expected key=value, e.g. flow.bound=20")
    value = _literal(text)
    if isinstance(value, str) and text.strip().startswith("[") and text.strip().endswith("]"):
        value = _bare_list(text.strip()[1:-1])  # [red, blue] -> ["red", "blue"]
    return key.strip(), value


# TOML's 0x/0o/0b integers: `flow.size=0x0` (no size) must not become the number 0.
_PREFIXED_INT = re.compile(r"^[+-]?0[xob]", re.IGNORECASE)


class _Int(int):
    """An integer typed in `--set`, with its text (`_typed`)."""

    text: str


class _Float(float):
    """A float typed in `--set`, with its text (`_typed`)."""

    text: str


def _typed(value: int | float, text: str) -> int | float:
    """A number as TOML reads it, carrying the text it was typed as: a text setting takes the text
    (`--set train.run=0.10` is the run "0.10", as `--run 0.10` is; str(0.1) made it "0.1")."""
    number = _Int(value) if isinstance(value, int) else _Float(value)
    number.text = text
    return number


def set_text(value: Any) -> Any:
    """The text of a number typed in `--set` (`work_dir=2024` is the folder "2024"), else `value`."""
    return value.text if isinstance(value, (_Int, _Float)) else value


def _literal(text: str) -> Any:
    """A TOML literal, or the bare text when it is none (or a hex/octal/binary integer, or a date or
    time: no setting is one, and a name like `2024-01-01` is meant as typed)."""
    if _PREFIXED_INT.match(text.strip()):
        return text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return text.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _typed(value, text.strip())
    return value


_ITEM = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[^,]*?)\s*(?:,|$)')


def _bare_list(inner: str) -> list[Any]:
    """Items of a list that is not TOML because of bare words: each a TOML literal or a bare word."""
    if not inner.strip():
        return []
    items, pos = [], 0
    while pos < len(inner):
        match = _ITEM.match(inner, pos)
        items.append(_literal(match.group(1)))
        pos = match.end()
        if match.end() == len(inner) or match.end() == match.start():
            break
    return items


# A float field that means something by inf or NaN says so: field(..., metadata={ALLOW_NONFINITE: True}),
# and its loader passes finite=False. Every other float refuses them: `flow.bound=inf` stored every
# flow image as zeros, `train.lr=nan` trained nothing, `eval.fusion_weights=[nan, 1]` scored 0.00.
ALLOW_NONFINITE = "allow_nonfinite"


def check_range(name: str, value: float, low: float, high: float, why: str, *, above: bool = False,
                unit: str = "") -> None:
    """ValueError naming the setting `name` unless low <= value <= high (`above`: low < value <= high);
    `why` says what the range comes from. NaN is outside every range."""
    if not (low < value <= high if above else low <= value <= high):
        span = f"> {low:g} and at most {high:g}{unit}" if above else f"{low:g} to {high:g}{unit}"
        raise ValueError(f"{name}: must be {span} ({why}), got {value}")


def check_value(value: Any, hint: Any, key: str, finite: bool = True) -> Any:
    """`value` as type `hint` (str, int, float, bool, list[...], or X | None), else ValueError naming `key`;
    with `finite`, an inf or NaN float (also in a list) is refused too."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ValueError(f"{key} must be a list, got {value!r}")
        return [check_value(v, args[0], f"{key}[{i}]", finite) for i, v in enumerate(value)]
    if isinstance(value, (_Int, _Float)):  # typed in --set: a text setting takes the text, others the number
        if hint is str:
            return check_value(value.text, str, key)
        value = int(value) if isinstance(value, int) else float(value)
    if hint is float and isinstance(value, float) and finite and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # `dataset.split = 1` in a file arrives as an int
    if hint is bool and isinstance(value, str) and value.lower() in ("yes", "no", "on", "off"):
        return value.lower() in ("yes", "on")
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be {hint.__name__}, got {value!r}")
    if hint is str and "\x00" in value:  # TOML's \u0000: no path, name or choice holds one (open() raised)
        raise ValueError(f"{key} holds a NUL character, which no path or name may hold, got {value!r}")
    return value
