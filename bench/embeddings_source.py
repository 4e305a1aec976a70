"""Memory and throughput of the ``embeddings`` source on a large memory-mapped ``.npy`` pair.

    nice -n 10 .venv/bin/python bench/embeddings_source.py              # N = 10⁵ and 10⁶, 768-d float16
    nice -n 10 .venv/bin/python bench/embeddings_source.py --quick      # N = 10⁴ and 10⁵, 60 steps

Writes two (N, d) float16 ``.npy`` files (10⁶ × 768: 1.4 GiB each) under ``--dir`` (default: the
system temporary folder), runs each case in a fresh Python process so that its peak resident set size
(``VmHWM``) is its own, and deletes the files at the end.

Cases:

* ``scan`` — one epoch over all N rows in shuffled batches through :class:`alignkit.data.FeatureRows`
  (positional reads, the default); ``scan, mmap + release`` — the same with ``mode="mmap"`` (pages
  dropped every 256 MiB of reads); ``scan, plain mmap`` — ``mode="mmap"``, ``release_bytes=None``: what
  indexing ``np.load(mmap_mode="r")`` does.
* ``train, FeatureRows`` — a linear CLIP head (768 → 256 on each side, learnable temperature,
  ``AF.clip_loss``, AdamW) for ``--steps`` random batches read from the memory-mapped files.
* ``train, hand loop`` — the same model, optimiser and loss written out by hand (``F.cross_entropy``
  both ways) on the same data loaded into memory as float16 tensors (``torch.from_numpy(np.load(…))``,
  rows widened to float32 per batch), the loop a user would write.
* ``alignkit train (recipe)`` — :func:`alignkit.recipes.run_recipe` (what ``alignkit train`` runs) on
  the same files: clip recipe, linear projection, no dropout, the same batch size and number of
  steps; its rate is the Trainer's logged ``samples_per_s``; its peak RSS includes the validation and
  test evaluation (1 % of the rows each) and the report.

Prints peak RSS, the part of it beyond the process's RSS before any data was opened (after the
imports and the model: the hand loop's in-memory data counts), and samples/s with the ratio to the
hand loop.
Same seed, same batches, one thread (``--threads``) for both loops.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1 << 30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak() -> int:
    """Peak RSS of this process image (VmHWM). Not ru_maxrss: Linux carries that over fork + exec, so
    a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_pair(directory: Path, n: int, d: int, seed: int = 0) -> tuple[Path, Path]:
    """Two (n, d) float16 files, B = A with its columns rolled by one + noise, written in chunks."""
    rng = np.random.default_rng(seed)
    paths = directory / f"a_{n}.npy", directory / f"b_{n}.npy"
    a_file = np.lib.format.open_memmap(paths[0], mode="w+", dtype=np.float16, shape=(n, d))
    b_file = np.lib.format.open_memmap(paths[1], mode="w+", dtype=np.float16, shape=(n, d))
    chunk = 50_000
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        a = rng.standard_normal((stop - start, d), dtype=np.float32)
        a_file[start:stop] = a
        b_file[start:stop] = np.roll(a, 1, axis=1) + 0.5 * rng.standard_normal(
            (stop - start, d), dtype=np.float32
        )
        a_file.flush()
        b_file.flush()
    del a_file, b_file
    return paths


def _model(d: int, width: int):
    import torch

    torch.manual_seed(0)
    heads = torch.nn.ModuleDict({"a": torch.nn.Linear(d, width), "b": torch.nn.Linear(d, width)})
    log_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
    optimiser = torch.optim.AdamW([*heads.parameters(), log_scale], lr=1e-3)
    return heads, log_scale, optimiser


def case(args: argparse.Namespace) -> dict:
    """One case, in this (fresh) process."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    import alignkit.functional as AF
    from alignkit.data import FeatureRows

    n, batch = args.n, args.batch
    rng = np.random.default_rng(1)
    if args.case.startswith("scan"):
        mode = "pread" if args.case == "scan" else "mmap"
        release = None if args.case == "scan-mmap-norelease" else 256 << 20
        base = _rss()  # after the imports, before the data
        a = FeatureRows(args.a, mode=mode, release_bytes=release)
        b = FeatureRows(args.b, mode=mode, release_bytes=release)
        order = torch.from_numpy(rng.permutation(n))
        start = time.perf_counter()
        total = 0.0
        for i in range(0, n, batch):
            rows = order[i : i + batch]
            total += float(a[rows][:, 0].sum() + b[rows][:, 0].sum())
        seconds = time.perf_counter() - start
        return {"rows": n, "seconds": seconds, "base": base, "peak": _peak()}

    if args.case == "train-alignkit":
        return _alignkit_train(args)
    heads, log_scale, optimiser = _model(args.dim, args.width)
    base = _rss()  # after the imports and the model, before the data
    if args.case == "train-ours":
        a, b = FeatureRows(args.a), FeatureRows(args.b)

        def step(rows: torch.Tensor) -> torch.Tensor:
            za = F.normalize(heads["a"](a[rows]), dim=-1)
            zb = F.normalize(heads["b"](b[rows]), dim=-1)
            return AF.clip_loss(za, zb, log_scale.exp())
    else:
        a = torch.from_numpy(np.load(args.a))  # (N, d) float16 in memory
        b = torch.from_numpy(np.load(args.b))

        def step(rows: torch.Tensor) -> torch.Tensor:
            za = F.normalize(heads["a"](a[rows].float()), dim=-1)
            zb = F.normalize(heads["b"](b[rows].float()), dim=-1)
            logits = log_scale.exp() * za @ zb.T
            target = torch.arange(len(rows))
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    batches = [torch.from_numpy(rng.choice(n, size=batch, replace=False)) for _ in range(args.steps + 5)]
    for rows in batches[:5]:  # warm-up
        optimiser.zero_grad(set_to_none=True)
        step(rows).backward()
        optimiser.step()
    start = time.perf_counter()
    for rows in batches[5:]:
        optimiser.zero_grad(set_to_none=True)
        loss = step(rows)
        loss.backward()
        optimiser.step()
    seconds = time.perf_counter() - start
    return {
        "rows": args.steps * batch,
        "seconds": seconds,
        "base": base,
        "peak": _peak(),
        "loss": float(loss),
    }


def _alignkit_train(args: argparse.Namespace) -> dict:
    """``run_recipe`` (what ``alignkit train`` runs) on the pair: clip recipe, linear projection to
    ``--width``, learnable temperature, no dropout; ``--steps`` batches of training rows (plus the
    5 warm-up batches of the other cases), then its validation and test evaluation on 1 % of the rows
    each. samples/s: the Trainer's own logged rate, median over its windows after the first."""
    from alignkit.recipes import load_config, run_recipe

    overrides = [
        "recipe=clip",
        "data.source=embeddings",
        f"data.a={args.a}",
        f"data.b={args.b}",
        "data.val_fraction=0.01",
        "data.test_fraction=0.01",
        f"data.train_subset={(args.steps + 5) * args.batch}",
        f"model.embed_dim={args.width}",
        "model.projection=linear",
        "model.dropout=0",
        "train.epochs=1",
        f"train.batch_size={args.batch}",
        f"train.threads={args.threads}",
        "train.log_every=5",
    ]
    base = _rss()
    with tempfile.TemporaryDirectory(prefix="alignkit-bench-run-") as out:
        run_recipe(load_config(None, overrides), out, progress=False)
        with open(Path(out) / "metrics.jsonl") as f:
            records = [json.loads(line) for line in f]
    rates = [r["samples_per_s"] for r in records if r.get("type") == "step"][1:]
    return {"rows": float(np.median(rates)), "seconds": 1.0, "base": base, "peak": _peak()}


def run_case(name: str, a: Path, b: Path, n: int, opts: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--case",
        name,
        "--a",
        str(a),
        "--b",
        str(b),
        "--n",
        str(n),
        "--dim",
        str(opts.dim),
        "--width",
        str(opts.width),
        "--batch",
        str(opts.batch),
        "--steps",
        str(opts.steps),
        "--threads",
        str(opts.threads),
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"case {name} at N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="values of N (default 1e5 1e6)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where the files go (default: the temp folder)")
    parser.add_argument("--quick", action="store_true", help="N = 1e4 and 1e5, 60 steps")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--a", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--b", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on kill
    if opts.case:
        print(json.dumps(case(opts)))
        return
    if opts.quick:
        opts.steps = 60
    sizes = opts.rows or ([10_000, 100_000] if opts.quick else [100_000, 1_000_000])
    need = 2 * max(sizes) * opts.dim * 2
    directory = Path(tempfile.mkdtemp(prefix="alignkit-bench-", dir=opts.dir))
    free = shutil.disk_usage(directory).free
    if free < 1.2 * need:
        shutil.rmtree(directory)
        raise SystemExit(f"{directory}: needs {need / GIB:.1f} GiB free, has {free / GIB:.1f} GiB")
    print(
        f"embeddings source: (N, {opts.dim}) float16 pair, batch {opts.batch}, {opts.steps} training steps, "
        f"{opts.threads} thread(s), linear CLIP head {opts.dim}→{opts.width}; files in {directory}"
    )
    header = f"{'case':<24}{'N':>10}{'peak RSS':>11}{'beyond imports':>16}{'samples/s':>12}{'vs hand':>9}"
    print(header)
    print("-" * len(header))
    try:
        for n in sizes:
            start = time.perf_counter()
            a, b = write_pair(directory, n, opts.dim)
            written = time.perf_counter() - start
            results = {}
            names = (
                "scan",
                "scan-mmap",
                "scan-mmap-norelease",
                "train-hand",
                "train-ours",
                "train-alignkit",
                "train-hand2",
                "train-ours2",
                "train-alignkit2",
            )
            for name in names:
                results[name] = run_case(name.rstrip("2"), a, b, n, opts)
            hand = np.median(
                [results[k]["rows"] / results[k]["seconds"] for k in ("train-hand", "train-hand2")]
            )
            labels = {
                "scan": "scan, FeatureRows",
                "scan-mmap": "scan, mmap + release",
                "scan-mmap-norelease": "scan, plain mmap",
                "train-hand": "train, hand loop",
                "train-ours": "train, FeatureRows",
                "train-alignkit": "alignkit train (recipe)",
            }
            for key, label in labels.items():
                r = results[key]
                rate = r["rows"] / r["seconds"]
                if key.startswith("train"):
                    rate = float(
                        np.median(
                            [
                                r["rows"] / r["seconds"],
                                results[key + "2"]["rows"] / results[key + "2"]["seconds"],
                            ]
                        )
                    )
                ratio = f"{rate / hand:8.2f}×" if key.startswith("train") else ""
                print(
                    f"{label:<24}{n:>10,}{r['peak'] / GIB:>10.2f}G{(r['peak'] - r['base']) / GIB:>15.2f}G"
                    f"{rate:>12,.0f}{ratio:>9}"
                )
            print(f"{'':<24}{'':>10}  (files written in {written:.0f} s)")
            for path in (a, b):
                os.unlink(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(
        "peak RSS: VmHWM of the case's process; beyond imports: minus its RSS once torch, alignkit "
        "and the model were loaded, before any data (the hand loop's data in memory counts). "
        "samples/s: median of 2 runs; vs hand: ratio to the hand loop's median."
    )


if __name__ == "__main__":
    main()
