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
    """:func:`alignkit.io.same_file` (imported lazily: the parser must not import torch)."""
    from alignkit.io import same_file as same

    return same(a, b)


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


def add_overrides(parser: Any, what: str = "config override") -> None:
    """The override grammar of every command that takes settings: ``KEY=VALUE`` positionals (any
    number) and ``--set KEY=VALUE`` (repeatable, the older spelling); :func:`overrides_of` joins them."""
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help=f"{what}, e.g. train.epochs=5 (repeatable)"
    )
    parser.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the same as a KEY=VALUE positional (kept for older scripts)",
    )


def overrides_of(args: Any) -> list[str]:
    """The ``KEY=VALUE`` items of :func:`add_overrides`, ``--set`` ones first, each checked."""
    items = [*getattr(args, "set_overrides", []), *(getattr(args, "overrides", None) or [])]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not an override: write KEY=VALUE, e.g. train.epochs=5")
    return items


def add_output_flags(parser: Any, quiet: bool = True, as_json: bool = True) -> None:
    """``--quiet`` (no progress lines) and ``--json`` (only JSON on stdout; progress goes to stderr)."""
    if quiet:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines or bars")
    if as_json:
        parser.add_argument("--json", action="store_true", help="print only JSON on stdout")


def config_hint(flag: str, value: str | None) -> str | None:
    """``"did you mean train.epochs=5?"`` for an unknown ``--epochs 5`` whose name is the last part of
    a config key of some recipe (``-`` read as ``_``); ``None`` when no key matches."""
    name = flag.lstrip("-").split("=", 1)[0].replace("-", "_")
    if not name:
        return None
    try:
        from alignkit.recipes.config import RECIPES, config_keys
    except ImportError:  # pragma: no cover - recipes is part of the package
        return None
    matches: list[str] = []
    for recipe in RECIPES:
        with contextlib.suppress(ValueError, KeyError):
            for key in config_keys(recipe):
                if (key == name or key.endswith("." + name)) and key not in matches:
                    matches.append(key)
    if not matches:
        return None
    shown = value if value is not None else "VALUE"
    return "did you mean " + " or ".join(f"{key}={shown}" for key in matches[:3]) + "?"
