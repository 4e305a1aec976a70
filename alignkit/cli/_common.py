"""What every ``alignkit`` command shares: override parsing, number and path checks."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

__all__ = ["check_out_dir", "number", "one_line", "parse_overrides", "same_file"]


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def number(value: str | None, flag: str, kind: type, low: float, high: float | None = None) -> Any:
    """``value`` parsed as ``kind`` (int or float) within ``[low, high]`` (None stays None)."""
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    bad = number is None or not math.isfinite(number) or number < low or (high is not None and number > high)
    if bad:
        span = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{flag} must be {what} {span}, got {value!r}")
    return number


def same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def check_out_dir(path: Path, flag: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ValueError(f"{flag} {path}: directory {directory} does not exist")



def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=3", "lr=1e-3", "name=x"]`` → ``{"a.b": 3, "lr": 0.001, "name": "x"}``.

    Values are parsed as YAML scalars (``true``, ``null``, ``[1, 2]`` …); a string that Python reads
    as a float (``1e-3``, which YAML 1.1 leaves a string) becomes that float."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like KEY=VALUE")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and value.strip():
            with contextlib.suppress(ValueError):
                value = float(value)
        out[key.strip()] = value
    return out
