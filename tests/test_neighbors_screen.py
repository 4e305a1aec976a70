"""The bfloat16-screened cosine self-search (``neighbors._screened_self_topk``): exact top-k by the
float64 cosine of the float32 rows, ties to the smaller index, whatever the tiling, threads or data;
its error bound checked against the real bfloat16 GEMM on adversarial rows; both fallbacks taken
when they should be."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import alignkit.functional as AF
import alignkit.functional.neighbors as neighbors


def cos64(x: torch.Tensor, exclude_self: bool = True) -> torch.Tensor:
    """(N, N) float64 cosines of the float32 rows as the rescore computes them (each pair's products
    summed alike, scaled by 1/‖x_i‖ · 1/‖x_j‖; zero rows 0), self −inf when excluded."""
    z = x.double()
    norm = z.norm(dim=1)
    inverse = torch.where(norm > 0, 1 / norm, 0.0)
    full = (z[:, None, :] * z[None, :, :]).sum(-1) * (inverse[:, None] * inverse[None, :])
    return full.fill_diagonal_(-math.inf) if exclude_self else full


def total_order_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k largest scores with ties to the smaller column (numpy lexsort), best first."""
    s = scores.numpy()
    cols = np.arange(s.shape[1])
    order = np.stack([np.lexsort((cols, -r)) for r in s])[:, :k]
    return torch.from_numpy(np.take_along_axis(s, order, 1)), torch.from_numpy(order)


def datasets() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(700, 48, generator=g)
    dup = gauss.clone()
    dup[100:200] = dup[:100]  # exact duplicates: exact ties
    ints = torch.randint(-2, 3, (600, 8), generator=g).float()  # many exactly equal cosines
    mixed = torch.randn(500, 16, generator=g)
    mixed[:40] = 0  # cosine 0 with every row
    mixed[40:80] *= 1e20
    mixed[80:120] *= 1e-25
    low_rank = torch.randn(800, 6, generator=g) @ torch.randn(6, 96, generator=g)  # concentrated
    low_rank += 0.05 * torch.randn(800, 96, generator=g)
    return {"gauss": gauss, "duplicates": dup, "integers": ints, "magnitudes": mixed, "low_rank": low_rank}


@pytest.fixture
def screen_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(neighbors, "_SCREEN_MIN_ROWS", 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(datasets()))
def test_screened_search_is_the_float64_total_order_topk(
    screen_always: None, name: str, threads: int
) -> None:
    """Every tile size (overlapping last tile included) and k gives exactly the brute force's top-k
    by float64 cosine under (value, then smaller index), and its values rounded to float32."""
    x = datasets()[name]
    full = cos64(x)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for k in (1, 10, 40):
            ref_v, ref_i = total_order_topk(full, k)
            for chunk in (64, 100, 333, None):
                got = AF.knn(x, k, chunk_size=chunk)
                assert torch.equal(got.indices, ref_i), (name, k, chunk)
                assert torch.equal(got.values, ref_v.float()), (name, k, chunk)
    finally:
        torch.set_num_threads(saved)


def test_screen_is_used_and_self_can_be_included(
    screen_always: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screen runs (bfloat16 tiles) for cosine float32 self-searches, with self included too
    (duplicates then tie with self, to the smaller index); dot, float64 and searches against other
    rows do not use it."""
    calls: list[int] = []
    screened = neighbors._screened_self_topk

    def spy(*args: object, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return screened(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(neighbors, "_screened_self_topk", spy)
    x = datasets()["duplicates"]
    full = cos64(x, exclude_self=False)  # cos(x_i, x_i) ties with its duplicates' exactly
    for k in (1, 5):
        ref_v, ref_i = total_order_topk(full, k)
        got = AF.knn(x, k, exclude_self=False, chunk_size=128)
        assert torch.equal(got.indices, ref_i)
        assert torch.equal(got.values, ref_v.float())
    assert len(calls) == 2
    AF.knn(x, 5, metric="dot")
    AF.knn(x.double(), 5)
    AF.knn(x, 5, y=x, backend="torch")
    assert len(calls) == 2


@pytest.mark.parametrize("d", [2, 7, 64, 768])
def test_screen_error_bound_holds_for_the_bfloat16_gemm(d: int) -> None:
    """|s̃ − r| ≤ A_i + u·|s̃| for every pair, s̃ from the real bfloat16 GEMM in the search's tile shape,
    on rows built to make the rounding errors add up: entries just below 1 + 2⁻⁹ (each rounds down by
    almost u relative, all the same sign), and rows whose unit entries alternate such values with
    random ones; and the float32 screen's bound on the float32 GEMM. The bfloat16 bound is also
    checked to be tight there (errors reach 0.88–0.98 of it; 0.98 with two columns, where the
    rows' rounding errors line up with the other rows most easily)."""
    g = torch.Generator().manual_seed(d)
    n = 512
    worst = torch.full((n // 2, d), 1 + 2.0**-9 - 2.0**-20) * torch.logspace(0, 1, n // 2)[:, None]
    noisy = torch.randn(n // 2, d, generator=g)
    noisy[:, ::2] = worst[:, ::2]
    x = torch.cat([worst, noisy])
    factors = neighbors.l2_row_factors(x, 128)
    _, margins = neighbors._screen_margins(x, factors, 128)
    unit = neighbors._unit(x, factors, slice(0, n))
    z = x.double()  # float64 cosines by a GEMM, not the rescore's code; their rounding (~1e-14)
    exact = (z @ z.T) / torch.outer(z.norm(dim=1), z.norm(dim=1))  # is far below the bound
    for dtype, u in neighbors._ROUNDOFF.items():
        screen = torch.mm(unit.to(dtype), unit.to(dtype).T).double()
        error = (screen - exact).abs()
        allowed = margins[dtype][:, None] / 2 + u * screen.abs()
        assert bool((error <= allowed).all()), (dtype, float((error / allowed).max()))
        if dtype == torch.bfloat16:  # the bound is not vacuous
            assert float((error / allowed).max()) > 0.75


def test_rows_with_too_many_candidates_are_searched_in_float64(
    screen_always: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows whose screen window holds more than the cap (a block of near-identical rows) go to the
    float64 fallback, and the result is still the exact total-order top-k."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(900, 32, generator=g)
    x[:120] = x[0] + 1e-4 * torch.randn(120, 32, generator=g)  # 120 near copies: > cap = 4k + 64
    fallback: list[int] = []
    exact_rows = neighbors._exact_rows64

    def spy(a: torch.Tensor, inverse: torch.Tensor, rows: torch.Tensor, *rest: object) -> object:
        fallback.append(rows.numel())
        return exact_rows(a, inverse, rows, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(neighbors, "_exact_rows64", spy)
    monkeypatch.setattr(neighbors, "_screen_dtype", lambda *a: torch.bfloat16)  # past the sample check
    ref_v, ref_i = total_order_topk(cos64(x), 5)
    for chunk in (128, 300):
        got = AF.knn(x, 5, chunk_size=chunk)
        assert torch.equal(got.indices, ref_i)
        assert torch.equal(got.values, ref_v.float())
    assert sum(fallback) >= 2 * 100  # the near copies, in each run


def test_concentrated_data_is_screened_in_float32_or_searched_plainly(
    screen_always: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the sample predicts that many rows would overflow the cap in bfloat16 (cosines packed
    within the bfloat16 margin) the tiles are float32, still exact by float64 cosine; when even the
    float32 window would overflow (rows equal to 1e-3), the float32 self-search runs, unchanged."""
    g = torch.Generator().manual_seed(6)
    screens: list[torch.dtype] = []
    tiles = neighbors._symmetric_tiles

    def spy(*args: object, **kw: object) -> None:
        screens.append(args[5])  # type: ignore[arg-type]
        tiles(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(neighbors, "_symmetric_tiles", spy)
    packed = 3 + 0.05 * torch.randn(600, 24, generator=g)  # cosines 0.99 ± 0.005
    ref_v, ref_i = total_order_topk(cos64(packed), 5)
    got = AF.knn(packed, 5, chunk_size=128)
    assert screens == [torch.float32]
    assert torch.equal(got.indices, ref_i)
    assert torch.equal(got.values, ref_v.float())

    screens.clear()
    same = torch.ones(600, 16) + 1e-3 * torch.randn(600, 16, generator=g)
    got = AF.knn(same, 5, chunk_size=128)
    assert screens == [torch.float32]  # the plain search's own tiles (it runs the same loop)
    want = neighbors._self_topk(same, 5, 120, True, True)  # chunk_size 128 balanced for N = 600
    assert torch.equal(got.indices, want[1])
    assert torch.equal(got.values, want[0])


def test_duplicate_heavy_data_takes_the_plain_float32_search(screen_always: None) -> None:
    """README's example of the documented exception: one row repeated 150 times among 4,096 Gaussian
    rows (d = 64) overflows the candidate cap in the sample for both screens, so the float32 search
    runs: its values are float32 cosines (within 1e-6 of float64), not the float64 ones rounded.
    With 100 copies the float32 screen still runs."""
    g = torch.Generator().manual_seed(0)
    for copies, want in ((100, torch.float32), (150, None)):
        x = torch.randn(4096, 64, generator=g)
        x[:copies] = x[0]
        factors = neighbors.l2_row_factors(x, 2048)
        inverse, margins = neighbors._screen_margins(x, factors, 256)
        assert neighbors._screen_dtype(x, factors, 10, margins, inverse, True) == want, copies
    got = AF.knn(x, 10)
    unit = torch.nn.functional.normalize(x.double(), dim=1)
    ref_v, _ = (unit @ unit.T).fill_diagonal_(-math.inf).topk(10, dim=1)  # float64 reference
    torch.testing.assert_close(got.values.double(), ref_v, rtol=0, atol=1e-6)
    assert torch.equal(got.indices, neighbors._self_topk(x, 10, 4096, True, True)[1][:, :10])


def test_default_threshold_and_cpu_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cosine self-search of at least ``_SCREEN_MIN_ROWS`` float32 rows (16,384 by default; 3,000
    here) is screened only where the CPU multiplies bfloat16 natively (then exactly the float64
    top-k); otherwise the float32 search runs."""
    assert neighbors._SCREEN_MIN_ROWS == 16384
    monkeypatch.setattr(neighbors, "_SCREEN_MIN_ROWS", 3000)
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(7))
    z = x.double()
    unit = z / z.norm(dim=1, keepdim=True)
    ref = (unit @ unit.T).fill_diagonal_(-math.inf).topk(5, dim=1)
    calls: list[int] = []
    screened = neighbors._screened_self_topk
    monkeypatch.setattr(neighbors, "_screened_self_topk", lambda *a: calls.append(1) or screened(*a))
    for native in (True, False):
        calls.clear()
        monkeypatch.setattr(neighbors, "_native_bf16", lambda native=native: native)
        got = AF.knn(x, 5)
        want = ref.indices if native else neighbors._self_topk(x, 5, 3000, True, True)[1]
        assert torch.equal(got.indices, want)
        torch.testing.assert_close(got.values.double(), ref.values, rtol=0, atol=1e-6)
        assert len(calls) == int(native)
        AF.knn(x[:-1], 5)  # below the threshold: never screened
        assert len(calls) == int(native)


def test_float32_screen_with_rows_short_of_k_candidates(screen_always: None) -> None:
    """A row whose first tiles hold fewer than k entries (k above the tile width) has a k-th best of
    −inf; its floor is float32's lowest value for the float32 screen too (u = 0; ``−inf − 0·inf``
    was NaN, which dropped every candidate and returned the padding index N). Concentrated data
    takes the float32 screen by itself."""
    g = torch.Generator().manual_seed(6)
    packed = 3 + 0.05 * torch.randn(300, 24, generator=g)  # cosines 0.99 ± 0.005: float32 screen
    floor = neighbors._screen_floor(torch.tensor([-math.inf]), torch.tensor([1e-4], dtype=torch.float64), 0.0)
    assert float(floor) == torch.finfo(torch.float32).min
    for k, chunk in ((40, 16), (7, 5)):
        ref_v, ref_i = total_order_topk(cos64(packed), k)
        got = AF.knn(packed, k, chunk_size=chunk)
        assert torch.equal(got.indices, ref_i), (k, chunk)
        assert torch.equal(got.values, ref_v.float()), (k, chunk)


def test_float32_screen_only_with_full_float32_matmul_precision(
    screen_always: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``torch.set_float32_matmul_precision("medium")`` a float32 GEMM may multiply in
    bfloat16 (AMX CPUs), outside the float32 screen's margin: concentrated data, which takes the
    float32 screen at "highest", then takes the plain float32 search instead."""
    packed = 3 + 0.05 * torch.randn(300, 24, generator=torch.Generator().manual_seed(6))
    factors = neighbors.l2_row_factors(packed, 64)
    inverse, margins = neighbors._screen_margins(packed, factors, 64)
    pick = neighbors._screen_dtype
    assert pick(packed, factors, 7, margins, inverse, True) == torch.float32
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "medium")
    assert pick(packed, factors, 7, margins, inverse, True) is None


def test_float64_fallback_keeps_exact_ties_of_duplicate_rows(
    screen_always: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows over the cap (a block of 120 copies of one row, k = 5: cap 84) are searched again in
    float64; the float64 GEMM sums the products in an order that depends on the output position, so
    copies scored differently there (exact ties went to a larger index, values off by an ulp). The
    GEMM only screens now, and the kept pairs get the rescore's float64 cosine: copies tie exactly."""
    monkeypatch.setattr(neighbors, "_screen_dtype", lambda *a: torch.bfloat16)  # past the sample check
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 21, generator=g)
    x[200:] = x[torch.randint(0, 40, (200,), generator=g)]  # copies of 40 rows
    x[100:220] = x[7]
    for k in (5, 10):
        ref_v, ref_i = total_order_topk(cos64(x), k)
        got = AF.knn(x, k, chunk_size=128)
        assert torch.equal(got.indices, ref_i), k
        assert torch.equal(got.values, ref_v.float()), k


def test_screen_does_not_depend_on_the_memory_layout(screen_always: None) -> None:
    """A column-major x gives bitwise the result of the same rows stored row-major: its float64 norms
    were reduced in another order, so near ties (here cosines within a few ulps of 1) went another
    way."""
    g = torch.Generator().manual_seed(4)
    worst = torch.full((110, 246), 1 + 2.0**-9 - 2.0**-20) * torch.logspace(0, 1, 110)[:, None]
    signs = torch.randn(110, 246, generator=g).sign()
    x = worst * torch.where(torch.rand(110, 1, generator=g) < 0.5, signs, 1.0)
    column_major = x.T.contiguous().T
    ref_v, ref_i = total_order_topk(cos64(x), 109)
    got = AF.knn(column_major, 109, chunk_size=98)
    assert torch.equal(got.indices, ref_i)
    assert torch.equal(got.values, ref_v.float())
