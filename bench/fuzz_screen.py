"""Fuzz the bfloat16-screened cosine self-search (``neighbors._screened_self_topk``, used by
``AF.knn(x, k)``) against a float64 brute force: the contract is the top-k by
``(Σ_k x_ik·x_jk in float64)·(1/‖x_i‖·1/‖x_j‖)`` of the float32 rows, ties to the smaller index, values
those cosines rounded to float32. Not a test (minutes, random); a review tool.

    python bench/fuzz_screen.py --seed 12 --cases 1500     # small random cases, every path forced
    python bench/fuzz_screen.py --big                      # N = 4,096–6,000, and one at N = 16,384

Small cases: N 2–700, d 1–300, random k (1 … N − 1, or N with self included), chunk_size (None, 1,
2, 17, N − 1, N, random), 1/2/4 threads, exclude_self, row- or column-major x, 18 data families; the
screen's threshold is lowered to 1 row and the path is forced at random: the natural choice, bfloat16
or float32 tiles (``_screen_dtype`` overridden), and ``_screen_cap`` = k or 0 (most rows to the
float64 fallback ``_exact_rows64``). Cases that end in the plain float32 search (``_self_topk``,
ranked by float32 scores: the documented exception) are counted, not compared. --big runs real
sizes with the screen's threshold lowered to 4,096 rows (the default, ``_SCREEN_MIN_ROWS`` = 16,384,
is where the screen starts to pay; the path is the same), plus one search at the default threshold,
and checks ``AF.mutual_knn``, ``AF.cknna`` and ``alignkit measure`` (also with the threshold
lowered) against the brute-force neighbour graphs.
Prints every failing case and the counts per family, path and path taken.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from typing import Any

import numpy as np
import torch

import alignkit.functional as AF
import alignkit.functional.neighbors as nb

ORIGINAL = {name: getattr(nb, name) for name in ("_screen_dtype", "_screen_cap", "_SCREEN_MIN_ROWS")}
TAKEN: list[str] = []
_SELF_TOPK, _EXACT_ROWS, _TILES = nb._self_topk, nb._exact_rows64, nb._symmetric_tiles


def _spy_self(*args: Any) -> Any:
    TAKEN.append("plain")
    return _SELF_TOPK(*args)


def _spy_exact(*args: Any) -> Any:
    TAKEN.append("fallback64")
    return _EXACT_ROWS(*args)


def _spy_tiles(*args: Any) -> Any:
    TAKEN.append(str(args[5]).removeprefix("torch."))
    return _TILES(*args)


def cos64(x: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """(N, N) float64 cosines by the contract's formula (zero rows 0), self −inf when excluded."""
    z = x.contiguous().double()
    n, d = z.shape
    norm = z.norm(dim=1)
    inverse = torch.where(norm > 0, 1 / norm, 0.0)
    out = torch.empty(n, n, dtype=torch.float64)
    step = max(1, 2**23 // max(1, n * d))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        out[r0:r1] = (z[r0:r1, None, :] * z[None, :, :]).sum(-1) * (inverse[r0:r1, None] * inverse[None, :])
    return out.fill_diagonal_(-math.inf) if exclude_self else out


def reference(x: torch.Tensor, k: int, exclude_self: bool) -> nb.Neighbors:
    """Brute-force top-k: stable descending sort keeps ties in column order (smaller index first)."""
    values, order = cos64(x, exclude_self).sort(dim=1, descending=True, stable=True)
    return nb.Neighbors(order[:, :k], values[:, :k].float())


def family(name: str, n: int, d: int, g: torch.Generator) -> torch.Tensor:
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    if name == "gauss":
        return randn(n, d)
    if name == "integers":
        return torch.randint(-2, 3, (n, d), generator=g).float()
    if name == "binary":
        return torch.randint(0, 2, (n, d), generator=g).float()
    if name == "duplicates":  # copies, some scaled by powers of two: still exact ties
        x = randn(n, d)
        pick = rand(n) < 0.5
        x[pick] = x[torch.randint(0, max(1, n // 3), (n,), generator=g)[pick]]
        return x * torch.where(rand(n) < 0.3, 2.0 ** torch.randint(-5, 6, (n,), generator=g), 1.0)[:, None]
    if name in ("near1e-3", "near1e-6"):
        centers = randn(max(1, n // 50), d)
        noise = 1e-3 if name == "near1e-3" else 1e-6
        return centers[torch.randint(0, centers.shape[0], (n,), generator=g)] + noise * randn(n, d)
    if name == "zeros":
        x = randn(n, d)
        x[rand(n) < 0.3] = 0
        return x
    if name == "magnitudes":
        x = randn(n, d)
        e = torch.randint(0, 3, (n,), generator=g)
        x[e == 1] *= 1e30
        x[e == 2] *= 1e-30
        x[rand(n) < 0.05] = 0
        return x
    if name == "subnormal":
        x = randn(n, d) * 1e-39
        normal = rand(n) < 0.3
        x[normal] = randn(int(normal.sum()), d)
        return x
    if name == "low_rank":
        r = int(torch.randint(1, 6, (), generator=g))
        return randn(n, r) @ randn(r, d) + 0.01 * randn(n, d)
    if name == "positive":  # cosines 0.99 ± 0.005
        return 3 + 0.05 * randn(n, d)
    if name == "positive_uniform":
        return rand(n, d)
    if name == "bf16_adversarial":  # entries just below 1 + 2⁻⁹: every rounding error of one sign
        x = torch.full((n, d), 1 + 2.0**-9 - 2.0**-20) * torch.logspace(0, 1, n)[:, None]
        x = x * torch.where(rand(n, 1) < 0.5, torch.where(rand(n, d) < 0.5, -1.0, 1.0), 1.0)
        noisy = rand(n) < 0.4
        x[noisy, ::2] = randn(int(noisy.sum()), d)[:, ::2]
        return x
    if name == "bf16_halfway":  # exactly halfway between bfloat16 values, and 2⁻²⁰ off
        base = 1 + torch.randint(0, 128, (n, d), generator=g).float() * 2.0**-7 + 2.0**-8
        off = torch.tensor([0.0, 2.0**-20, -(2.0**-20)])[torch.randint(0, 3, (n, d), generator=g)]
        return (base + off) * torch.where(rand(n, d) < 0.3, -1.0, 1.0)
    if name == "one_hot":  # a single nonzero entry: cosines ±1 and 0
        x = torch.zeros(n, d)
        x[torch.arange(n), torch.randint(0, d, (n,), generator=g)] = randn(n)
        return x
    if name == "antipodal":  # negative cosines near −1
        x = randn(n, d)
        half = n // 2
        x[half : 2 * half] = -x[:half] * (1 + 1e-7 * randn(half, 1))
        return x
    if name == "sparse":
        x = randn(n, d)
        x[rand(n, d) < 0.9] = 0
        return x
    if name == "clusters_tight":
        return randn(3, d)[torch.randint(0, 3, (n,), generator=g)] + 1e-3 * randn(n, d)
    raise KeyError(name)


FAMILIES = [
    "gauss", "integers", "binary", "duplicates", "near1e-3", "near1e-6", "zeros", "magnitudes",
    "subnormal", "low_rank", "positive", "positive_uniform", "bf16_adversarial", "bf16_halfway",
    "one_hot", "antipodal", "sparse", "clusters_tight",
]  # fmt: skip
PATHS = ["natural", "bf16", "float32", "bf16_cap_k", "f32_cap_k", "bf16_cap_0"]


def set_path(path: str) -> None:
    """Force a path of the screen (see the module docstring); "natural" restores the originals."""
    nb._screen_dtype = ORIGINAL["_screen_dtype"]
    nb._screen_cap = ORIGINAL["_screen_cap"]
    if path.startswith("bf16"):
        nb._screen_dtype = lambda *a: torch.bfloat16
    elif path in ("float32", "f32_cap_k"):
        nb._screen_dtype = lambda *a: torch.float32
    if path.endswith("cap_k"):
        nb._screen_cap = lambda k: k
    elif path.endswith("cap_0"):
        nb._screen_cap = lambda k: 0


def pick_case(rng: np.random.Generator) -> dict[str, Any]:
    sizes = [rng.integers(2, 20), rng.integers(20, 150), rng.integers(150, 700)]
    n = int(rng.choice(sizes, p=[0.3, 0.45, 0.25]))
    d = int(rng.choice([rng.integers(1, 8), rng.integers(8, 64), rng.integers(64, 300)]))
    exclude = bool(rng.random() < 0.7)
    high = n - 1 if exclude else n
    k = int(rng.choice([1, rng.integers(1, min(high, 12) + 1), rng.integers(1, high + 1), high]))
    chunks: list[int | None] = [None, n, max(1, n - 1), 17, 64, int(rng.integers(1, n + 1))]
    chunks += [1, 2] if n <= 40 else [2, 3] if n <= 120 else []
    chunk = chunks[rng.integers(len(chunks))]
    if chunk is not None and (n / chunk) ** 2 > 4000:  # at most ~2,000 tiles
        chunk = n // 60 + 1
    return {
        "fam": FAMILIES[rng.integers(len(FAMILIES))], "n": n, "d": d, "k": k, "exclude": exclude,
        "chunk": chunk, "threads": int(rng.choice([1, 2, 4])), "path": PATHS[rng.integers(len(PATHS))],
        "seed": int(rng.integers(2**31)), "column_major": bool(rng.random() < 0.1),
    }  # fmt: skip


def run_case(case: dict[str, Any]) -> str | None:
    """None when AF.knn matches the brute force (or took the documented float32 exception)."""
    x = family(case["fam"], case["n"], case["d"], torch.Generator().manual_seed(case["seed"]))
    if case["column_major"]:
        x = x.T.contiguous().T
    set_path(case["path"])
    TAKEN.clear()
    saved = torch.get_num_threads()
    torch.set_num_threads(case["threads"])
    try:
        got = AF.knn(x, case["k"], exclude_self=case["exclude"], chunk_size=case["chunk"])
    finally:
        torch.set_num_threads(saved)
        set_path("natural")
    case["taken"] = "+".join(sorted(set(TAKEN)))
    if "plain" in TAKEN:
        return None
    want = reference(x, case["k"], case["exclude"])
    for what in ("indices", "values"):
        bad = (getattr(got, what) != getattr(want, what)).any(1).nonzero().squeeze(1)
        if bad.numel():
            r = int(bad[0])
            return (
                f"{what} differ in {bad.numel()} rows; row {r}: got {getattr(got, what)[r][:8].tolist()} "
                f"want {getattr(want, what)[r][:8].tolist()}"
            )
    return None


def small(seed: int, cases: int) -> int:
    nb._SCREEN_MIN_ROWS = 1
    rng = np.random.default_rng(seed)
    counts: Counter[tuple[str, Any]] = Counter()
    failures = 0
    start = time.time()
    for i in range(cases):
        case = pick_case(rng)
        try:
            error = run_case(case)
        except Exception:
            error = "exception " + traceback.format_exc(limit=3)
        for key in ("fam", "path", "threads", "taken"):
            counts[key, case.get(key)] += 1
        if error:
            failures += 1
            print("FAIL", case, error, flush=True)
        if (i + 1) % 250 == 0:
            print(f"{i + 1} cases, {failures} failures, {time.time() - start:.0f} s", flush=True)
    print(f"done: {cases} cases, {failures} failures, {time.time() - start:.0f} s")
    for key in sorted(counts, key=str):
        print(f"  {key[0]:8s} {key[1]!s:22s} {counts[key]}")
    nb._SCREEN_MIN_ROWS = ORIGINAL["_SCREEN_MIN_ROWS"]
    return failures


BIG = [  # family, N, d, k, exclude_self, knn keywords
    ("gauss", 4096, 64, 10, True, {}),
    ("gauss", 4097, 32, 1, True, {}),
    ("duplicates", 4500, 48, 10, True, {}),
    ("near1e-6", 4200, 96, 10, True, {}),
    ("near1e-3", 5000, 64, 25, True, {}),
    ("zeros", 4096, 16, 10, False, {}),
    ("magnitudes", 4100, 40, 10, True, {}),
    ("low_rank", 6000, 128, 10, True, {}),
    ("positive", 4096, 24, 10, True, {}),
    ("clusters_tight", 4096, 32, 10, True, {}),
    ("bf16_adversarial", 4096, 100, 10, True, {}),
    ("integers", 4096, 8, 10, True, {}),
    ("one_hot", 4096, 64, 10, True, {}),
    ("gauss", 4096, 768, 10, True, {}),
    ("gauss", 4100, 20, 2000, True, {}),
    ("positive", 4096, 24, 300, True, {"chunk_size": 128}),
    ("gauss", 5000, 32, 10, True, {"chunk_size": 1000}),
    ("gauss", 4096, 16, 4095, True, {}),
    ("zeros", 4096, 8, 4096, False, {}),
    ("duplicates", 4096, 300, 50, False, {}),
    ("antipodal", 4200, 64, 10, True, {}),
    ("sparse", 4096, 200, 10, True, {}),
]


BIG_THRESHOLD = 4096
# alignkit measure in a child process with the same lowered threshold
MEASURE = (
    "import sys; import alignkit.functional.neighbors as nb; "
    f"nb._SCREEN_MIN_ROWS = {BIG_THRESHOLD}; from alignkit.cli import main; sys.exit(main(sys.argv[1:]))"
)


def big(seed: int) -> int:
    """Real sizes, the screen's threshold lowered to 4,096 rows, and one search at the default
    threshold; needs a CPU with native bfloat16 for the screen to run."""
    print(f"native bfloat16: {nb._native_bf16()}")
    g = torch.Generator().manual_seed(seed)
    failures = 0
    cases = [(*case, BIG_THRESHOLD) for case in BIG]
    cases.append(("gauss", 16384, 64, 10, True, {}, ORIGINAL["_SCREEN_MIN_ROWS"]))
    for fam, n, d, k, exclude, kw, threshold in cases:
        nb._SCREEN_MIN_ROWS = threshold
        x = family(fam, n, d, g)
        TAKEN.clear()
        start = time.time()
        got = AF.knn(x, k, exclude_self=exclude, **kw)
        seconds = time.time() - start
        want = reference(x, k, exclude)
        bad = int(((got.indices != want.indices) | (got.values != want.values)).any(1).sum())
        taken = "+".join(sorted(set(TAKEN)))
        verdict = "OK" if not bad else "FAIL"
        if "plain" in TAKEN:
            verdict = "plain float32 search (documented exception)"
        failures += verdict == "FAIL"
        print(f"{fam:17s} N={n} d={d} k={k} exclude_self={exclude} {kw} {taken}: {verdict}, "
              f"{bad} rows differ from the float64 brute force, {seconds:.1f} s", flush=True)  # fmt: skip
    nb._SCREEN_MIN_ROWS = BIG_THRESHOLD
    for fam_y, n, dx, dy, k in [("low_rank", 4096, 64, 32, 10), ("near1e-3", 4300, 48, 24, 10)]:
        x = family("gauss", n, dx, g)
        y = x[:, :dy] + 0.5 * family(fam_y, n, dy, g)
        graphs = (reference(x, k, True), reference(y, k, True))
        want = (
            float(AF.mutual_knn(x, y, k=k, neighbors=graphs)),
            float(AF.cknna(x, y, k=k, neighbors=graphs)),
        )
        got = (float(AF.mutual_knn(x, y, k=k)), float(AF.cknna(x, y, k=k)))
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/a.npy", x.numpy())
            np.save(f"{tmp}/b.npy", y.numpy())
            command = [sys.executable, "-c", MEASURE, "measure", f"{tmp}/a.npy", f"{tmp}/b.npy"]
            command += ["--metrics", "mutual_knn,cknna", "--k", str(k), "--json"]
            found = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        cli = (found["metrics"]["mutual_knn"], found["metrics"]["cknna"])
        ok = got == want == cli
        failures += not ok
        print(f"mutual_knn, cknna N={n}: brute force {want}, AF {got}, alignkit measure {cli}: "
              f"{'OK' if ok else 'FAIL'}", flush=True)  # fmt: skip
    nb._SCREEN_MIN_ROWS = ORIGINAL["_SCREEN_MIN_ROWS"]
    return failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--big", action="store_true", help="the default-threshold runs instead")
    args = p.parse_args()
    nb._self_topk, nb._exact_rows64, nb._symmetric_tiles = _spy_self, _spy_exact, _spy_tiles  # paths taken
    failures = big(args.seed) if args.big else small(args.seed, args.cases)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
