"""experiments/migration.py: how alignkit's default is chosen (validation rows only, the stated rule) and
that the library's default is what the rule chose."""

from __future__ import annotations

import pytest
import torch

SIZES = (100, 500, 2000, 5000)


@pytest.fixture(scope="module")
def mig(experiment):
    return experiment("migration")


def _results(mig, val: dict[str, list[float]], test: dict[str, list[float]] | None = None) -> list[dict]:
    """Rows for both old models; every candidate not in ``val`` scores 0 everywhere."""
    rows = []
    for old in ("L3", "LSA"):
        for label in mig.CANDIDATES:
            for i, n in enumerate(SIZES):
                v = val.get(label, [0.0] * 4)[i]
                t = (test or {}).get(label, [0.0] * 4)[i]
                rows.append({"old": old, "method": label, "n": n, "val_after": {"recall@1": v},
                             "columns": {"after": {"recall@1": t}}})  # fmt: skip
    return rows


def test_decide_uses_validation_rows_never_test_rows(mig) -> None:
    clip, gcv = "mlp / clip", mig.GCV
    results = _results(mig, {clip: [0.3] * 4, gcv: [0.2] * 4}, test={clip: [0.1] * 4, gcv: [0.9] * 4})
    text, rule = mig.decide(results, SIZES, ["L3", "LSA"])
    assert rule == "mlp / clip at every n (rule 1)"
    assert "| mlp / clip | 0.300 (1) | 0.300 (1) | 0.300 (1) | 0.300 (1) | 0.300 | 1.00 |" in text


def test_decide_size_dependent_when_the_winners_form_two_runs(mig) -> None:
    clip, gcv = "mlp / clip", mig.GCV
    results = _results(mig, {clip: [0.1, 0.2, 0.4, 0.5], gcv: [0.2, 0.3, 0.3, 0.4]})
    _, rule = mig.decide(results, SIZES, ["L3", "LSA"])
    assert rule == f"{gcv} below n = 1000, mlp / clip from n = 1000 on (rule 2)"  # √(500·2000)


def test_decide_best_mean_rank_when_the_winners_alternate(mig) -> None:
    clip, gcv, info = "mlp / clip", mig.GCV, "mlp / info_nce"
    # per-n winners clip, gcv, clip, gcv (three runs or more); ranks: clip 1,3,1,2 → 1.75; gcv 2,1,3,1 → 1.75;
    # info 3,2,2,3 → 2.5; tie on mean rank broken by the higher mean R@1 (clip 0.3 > gcv 0.2875)
    results = _results(
        mig, {clip: [0.4, 0.1, 0.4, 0.3], gcv: [0.3, 0.3, 0.2, 0.35], info: [0.2, 0.2, 0.3, 0.2]}
    )
    text, rule = mig.decide(results, SIZES, ["L3", "LSA"])
    assert rule == "mlp / clip at every n (rule 3: best mean rank; per-n winners alternate)"
    assert "| mlp / clip | 0.400 (1) | 0.100 (3) | 0.400 (1) | 0.300 (2) | 0.300 | 1.75 |" in text
    # a candidate measured for one old model only at some n is left out, not scored on half the data
    partial = [r for r in results if not (r["method"] == clip and r["old"] == "LSA" and r["n"] == 500)]
    _, rule = mig.decide(partial, SIZES, ["L3", "LSA"])
    assert rule.startswith(gcv)


def test_decide_equal_scores_tie_exactly_whatever_the_float_sum(mig) -> None:
    clip, gcv = "mlp / clip", mig.GCV
    # at n = 100 both average to 0.15, but 0.1 + 0.2 > 0.3 + 0.0 in floating point: a tie shares rank 1
    results = [r for r in _results(mig, {}) if r["method"] not in (clip, gcv)]
    for label, (l3, lsa) in ((clip, (0.1, 0.2)), (gcv, (0.3, 0.0))):
        for old, v in (("L3", l3), ("LSA", lsa)):
            for n in SIZES:
                score = v if n == 100 else {clip: 0.5, gcv: 0.4}[label]
                rows = {"old": old, "method": label, "n": n, "val_after": {"recall@1": score}}
                results.append({**rows, "columns": {"after": {"recall@1": 0.0}}})
    text, rule = mig.decide(results, SIZES, ["L3", "LSA"])
    assert f"| {clip} | 0.150 (1) |" in text and f"| {gcv} | 0.150 (1) |" in text
    assert rule == "mlp / clip at every n (rule 1)"  # the tie at n = 100 broken by the higher mean R@1


def test_the_library_default_is_what_the_benchmark_chose(mig) -> None:
    from alignkit.adapters import fit_adapter

    assert mig.library_default() == "mlp / clip"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    _, report = fit_adapter(x, x @ torch.randn(6, 4, generator=g), epochs=2, progress=False)
    assert f"{report.method} / {report.objective}" == mig.library_default()
