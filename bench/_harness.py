"""Side-by-side timing and peak-memory measurement for bench/ scripts.

Each case runs in a fresh subprocess so that peak memory is its own: on CPU the peak resident set
size beyond what the process held once its inputs existed (``ru_maxrss``), on CUDA
``torch.cuda.max_memory_allocated`` beyond the inputs. Time is the median of ``repeat`` runs after
one warm-up.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty
from typing import Any

import torch

Setup = Callable[..., Callable[[], Any]]


@dataclass
class Result:
    name: str
    seconds: float
    peak_bytes: int
    value: float | None = None
    error: str | None = None


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The bench scripts' argument parser: the script's docstring as its help, ``--device`` (cuda when
    available) and ``--threads`` (all cores)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _child(setup: Setup, kwargs: dict[str, Any], device: str, repeat: int, threads: int, queue: Any) -> None:
    try:
        torch.set_num_threads(threads)
        step = setup(device=device, **kwargs)  # allocates the inputs
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = _rss_bytes()
        times = []
        value = None
        for i in range(repeat + 1):
            start = time.perf_counter()
            value = step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        number = float(value) if isinstance(value, torch.Tensor | float) else None
        queue.put((statistics.median(times), max(peak, 0), number, None))
    except Exception as err:  # report, don't crash the whole table (e.g. out of memory)
        queue.put((float("nan"), 0, None, f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"))


def measure(
    name: str, setup: Setup, kwargs: dict[str, Any], device: str = "cpu", repeat: int = 3, threads: int = 2
) -> Result:
    """Run ``setup(device=..., **kwargs)()`` ``repeat`` times in a fresh process; time and peak memory."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(setup, kwargs, device, repeat, threads, queue))
    proc.start()
    while True:
        try:
            seconds, peak, value, error = queue.get(timeout=1)
            break
        except Empty:
            if not proc.is_alive() and queue.empty():
                proc.join()
                return Result(name, float("nan"), 0, error=f"died (exit {proc.exitcode}; out of memory?)")
    proc.join()
    return Result(name, seconds, peak, value, error)


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def table(title: str, results: list[Result], baseline: str) -> str:
    """Markdown table: time, peak memory, ratios against the row named ``baseline``."""
    base = next(r for r in results if r.name == baseline)
    lines = [
        f"\n### {title}",
        "| implementation | time | × vs " + baseline + " | peak memory | × memory | value |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | — | — | — | — | {r.error} |")
            continue
        speed = base.seconds / r.seconds if r.seconds and not base.error else float("nan")
        mem = r.peak_bytes / base.peak_bytes if base.peak_bytes and not base.error else float("nan")
        value = "" if r.value is None else f"{r.value:.6g}"
        lines.append(
            f"| {r.name} | {r.seconds * 1e3:.1f} ms | {speed:.2f}× faster | {gib(r.peak_bytes)} "
            f"| {mem:.3f} | {value} |"
        )
    return "\n".join(lines)
