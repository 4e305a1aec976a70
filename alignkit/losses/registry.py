"""Name → loss-class registry: ``alignkit.losses.build("info_nce", temperature=0.1)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["aliases", "available", "build", "register"]

_REGISTRY: dict[str, type[nn.Module]] = {}
M = TypeVar("M", bound=type[nn.Module])


def register(*names: str) -> Callable[[M], M]:
    """Class decorator: make a loss module buildable by each of ``names``."""

    def decorator(cls: M) -> M:
        for name in names:
            key = name.lower()
            if key in _REGISTRY and _REGISTRY[key] is not cls:
                raise ValueError(f"loss name {name!r} is already registered to {_REGISTRY[key].__name__}")
            _REGISTRY[key] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Every registered loss name, sorted."""
    return sorted(_REGISTRY)


def aliases() -> dict[str, list[str]]:
    """Each loss's name (the first it was registered under) → its other names, sorted by name."""
    first: dict[type[nn.Module], str] = {}
    others: dict[str, list[str]] = {}
    for name, cls in _REGISTRY.items():  # insertion order: the first name of a class is its own
        if cls not in first:
            first[cls] = name
            others[name] = []
        else:
            others[first[cls]].append(name)
    return {name: sorted(others[name]) for name in sorted(others)}


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss registered as ``name`` with ``kwargs`` as its constructor arguments.

    Raises ``ValueError`` naming the allowed values for an unknown name, and the accepted
    arguments for an unknown keyword.
    """
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; expected one of: {', '.join(available())}")
    cls = _REGISTRY[key]
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(signature.parameters)
        raise ValueError(f"bad arguments for loss {name!r} ({err}); accepted: {accepted}") from None
    return cls(**kwargs)
