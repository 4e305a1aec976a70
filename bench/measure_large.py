"""`alignkit measure` on two large embedding files: wall time, peak resident memory, and the machine's
GEMM rate measured just before and after (README's "measure on 100,000 × 768" paragraph).

    python bench/measure_large.py                  # N = 100,000, d = 768 (about 4 min on 2 CPU cores)
    python bench/measure_large.py --n 20000        # smaller

The two files are seeded random float32 matrices sharing a rank-64 signal plus unit noise
(seed 0), written to a temporary folder and deleted afterwards. The command runs in a child
process started by a small interpreter; its peak resident set size is that interpreter's
``RUSAGE_CHILDREN`` ``ru_maxrss`` (a child forked from the bench itself would be charged the bench's own
memory up to its exec).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from run import gemm_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--rank", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        z = rng.standard_normal((args.n, args.rank)).astype(np.float32)
        files = []
        for name in ("A", "B"):
            mix = rng.standard_normal((args.rank, args.d)).astype(np.float32)
            noise = rng.standard_normal((args.n, args.d)).astype(np.float32)
            path = Path(tmp) / f"{name}.npy"
            np.save(path, z @ mix + noise)
            files.append(str(path))
        del z, mix, noise
        before = gemm_rate("cpu", 2048, 2) / 1e9
        before_bf16 = gemm_rate("cpu", 2048, 2, torch.bfloat16) / 1e9
        exe = Path(sys.executable).with_name("alignkit")
        start = time.perf_counter()
        # The command starts from a small interpreter, which reports its child's peak: a child forked
        # from this process would be charged this process's own resident memory (the generated data,
        # torch) up to its exec, and RUSAGE_CHILDREN would report that instead of the command's peak.
        probe = (
            "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)"
        )
        done = subprocess.run([sys.executable, "-c", probe, str(exe), "measure", *files], check=True,
                              stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        *messages, last = done.stderr.strip().splitlines()
        print("\n".join(messages), file=sys.stderr)
        peak_kib = int(last)
        after = gemm_rate("cpu", 2048, 2) / 1e9
        after_bf16 = gemm_rate("cpu", 2048, 2, torch.bfloat16) / 1e9
    work = 2 * args.n**2 * args.d  # two neighbour graphs, each the upper triangle of an N × N × d product
    gib = peak_kib / 2**20
    print(f"N = {args.n:,}, d = {args.d}: {wall:.0f} s wall, peak {peak_kib:,} KiB ({gib:.2f} GiB)")
    fp32, bf16 = (before + after) / 2, (before_bf16 + after_bf16) / 2
    print(f"GEMM rate before / after: fp32 {before:.0f} / {after:.0f}, "
          f"bf16 {before_bf16:.0f} / {after_bf16:.0f} GFLOP/s; the two neighbour searches' tiles alone "
          f"are {work / (1e9 * fp32):.0f} s of GEMM work at the fp32 rate, {work / (1e9 * bf16):.0f} s "
          "at the bf16 rate (the screen's, where the CPU has it)")

if __name__ == "__main__":
    main()
