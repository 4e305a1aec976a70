"""One progress display for every long loop: a bar in a terminal, else a few flushed lines on stderr.

Every loop that reports progress (adapter training, the Trainer, text and tower embedding, token
embeddings) goes through :class:`Progress` or :func:`track`, so ``alignkit --quiet`` and the
terminal / log-file distinction behave the same everywhere:

* stderr is a terminal: a tqdm bar (cleared when done unless ``leave``), with the caller's values
  after it (``loss=0.41``);
* stderr is a file or pipe (CI logs, ``2> log``): no carriage returns, only whole flushed lines —
  ``{label}: {unit} {done}/{total} key value … (elapsed s)`` at about ``lines`` evenly spaced points
  and at the end;
* ``enabled=False``: nothing at all.

tqdm is imported only when a bar is drawn.

    >>> with Progress(epochs, "fit mlp/clip", unit="epoch") as progress:
    ...     for epoch in range(epochs):
    ...         ...
    ...         progress.update(loss=f"{loss:.4g}")
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

__all__ = ["Progress", "track"]

_T = TypeVar("_T")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress of ``total`` units of work on ``stream`` (stderr): a bar in a terminal, else lines.

    Args:
        total: units of work (≥ 0).
        label: what runs (``"fit mlp/clip"``, ``"[2/6] byol: "``); the bar's description, and the
            start of each line (followed by ``": "`` unless it already ends in a space).
        unit: the unit counted (``"epoch"``, ``"texts"``), written before the count in lines.
        enabled: ``False``: show nothing (``--quiet``, other ranks than 0).
        lines: about how many automatic lines to print outside a terminal (one every
            ``max(1, total // lines)`` units, and one at ``total``); 0: none, only :meth:`line`.
        initial: units already done (a resumed run).
        leave: keep the bar on screen when closed.
        stream: where to write (default ``sys.stderr``, looked up when the object is made).

    Attributes:
        drawing: a bar is drawn (enabled, in a terminal).
        plain: lines are printed (enabled, not a terminal).
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        unit: str = "",
        enabled: bool = True,
        lines: int = 10,
        initial: int = 0,
        leave: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total, self.label, self.unit = int(total), label, unit
        self.done = int(initial)
        terminal = bool(enabled) and _is_terminal(self.stream)
        self.drawing = terminal
        self.plain = bool(enabled) and not terminal
        self._every = max(1, self.total // lines) if lines > 0 else 0
        self._start = time.perf_counter()
        self._bar: Any = None
        if self.drawing:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.done,
                desc=label.rstrip(": ") or None,
                unit=unit or "it",
                leave=leave,
                dynamic_ncols=True,
                file=self.stream,
            )

    @property
    def prefix(self) -> str:
        """``label`` followed by ``": "`` (unless empty or already ending in a space)."""
        if not self.label or self.label.endswith(" "):
            return self.label
        return f"{self.label}: "

    def update(self, n: int = 1, **values: object) -> None:
        """``n`` more units done; ``values`` (already formatted) follow the bar or the line."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if values:
                self._bar.set_postfix({k: str(v) for k, v in values.items()}, refresh=False)
        elif self.plain and self._every and (
            self.done // self._every > (self.done - n) // self._every or self.done == self.total
        ):  # crossed a multiple of ``every`` (updates may count several units) or finished
            shown = "".join(f" {k} {v}" for k, v in values.items())
            count = f"{self.unit} {self.done:,}/{self.total:,}".strip()
            self.line(f"{count}{shown} ({time.perf_counter() - self._start:.1f} s)")

    def describe(self, text: str) -> None:
        """Change the bar's description (``"[1/2] tiny: epoch 2/3"``); lines are unaffected."""
        if self._bar is not None:
            self._bar.set_description(text, refresh=False)

    def line(self, message: str) -> None:
        """A flushed line ``{label}: {message}``, outside a terminal only (in one, the bar shows it)."""
        if self.plain:
            print(f"{self.prefix}{message}", file=self.stream, flush=True)

    def say(self, message: str) -> None:
        """A flushed line ``{label}: {message}`` whenever enabled (above the bar in a terminal)."""
        if self._bar is not None:
            self._bar.write(f"{self.prefix}{message}", file=self.stream)
        elif self.plain:
            print(f"{self.prefix}{message}", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(
    items: Iterable[_T],
    total: int,
    label: str = "",
    *,
    unit: str = "",
    enabled: bool = True,
    lines: int = 10,
    sizes: Iterable[int] | None = None,
) -> Iterator[_T]:
    """Yield ``items``, counting one unit per item (or ``sizes[i]`` units for item i) with a
    :class:`Progress` of ``total`` units that is closed when the loop ends or is left."""
    progress = Progress(total, label, unit=unit, enabled=enabled, lines=lines)
    steps = iter(sizes) if sizes is not None else None
    try:
        for item in items:
            yield item
            progress.update(1 if steps is None else next(steps))
    finally:
        progress.close()
