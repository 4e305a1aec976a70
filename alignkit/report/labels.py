"""What each test-split metric is called, which way is better, and its chance level — in one place.

The CLI's results table (``alignkit train`` / ``demo``), the run report (``report.html``) and the
comparison (``compare.md`` / ``compare.html``) all read :data:`METRICS`, so a metric has one label,
one direction and one chance level everywhere.

    from alignkit.report.labels import METRICS, chance_level, metric_rows
    chance_level("i2t_recall@5", n_test=360)      # 5 / 360
    metric_rows(metrics, n_test=360)               # [(info, value, chance), …] in display order

Chance levels (a random ranking / random classifier on N test rows and C classes):

=====================  ==========================================================================
zero-shot accuracy     1/C
R@K (either way)       min(1, K/N)              the own caption among N candidates
median rank            (N+1)/2                  the median of a rank uniform on 1..N
mAP (one positive)     H_N / N = (1/N)·Σ_r 1/r  the mean of 1/rank for a rank uniform on 1..N
mutual k-NN (k = 10)   k/(N−1)                  overlap of two independent random k-sets
=====================  ==========================================================================

CKA, alignment and uniformity have no closed-form chance level (it depends on the embeddings), so
none is printed for them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["METRICS", "METRIC_INFO", "MetricInfo", "chance_level", "metric_rows"]


@dataclass(frozen=True)
class MetricInfo:
    """One metric of ``metrics.json``.

    Attributes:
        key: the ``metrics.json`` key.
        label: the long label of the results table / report ("image→text R@1").
        short: a column title for wide tables ("i2t R@1").
        better: ``"higher"``, ``"lower"`` or ``""`` (neither, e.g. epochs).
        chance: the kind of chance level (see :func:`chance_level`) or ``None``.
        fmt: the format spec of a value in tables (``".3f"``; ranks and seconds ``".1f"``).
    """

    key: str
    label: str
    short: str
    better: str
    chance: str | None = None
    fmt: str = ".3f"

    @property
    def arrow(self) -> str:
        """``"↑"`` (higher is better), ``"↓"`` (lower is better) or ``""``."""
        return {"higher": "↑", "lower": "↓"}.get(self.better, "")


#: Display order: classification, retrieval both ways, ranks, similarity of the spaces, geometry, cost.
METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("zero_shot_accuracy", "zero-shot accuracy (unseen prompts)", "zero-shot", "higher", "classes"),
    MetricInfo(
        "zero_shot_accuracy_seen_template",
        "zero-shot accuracy (a training caption template)",
        "zero-shot acc (seen)",
        "higher",
        "classes",
    ),
    MetricInfo("i2t_recall@1", "image→text R@1", "i2t R@1", "higher", "recall@1"),
    MetricInfo("i2t_recall@5", "image→text R@5", "i2t R@5", "higher", "recall@5"),
    MetricInfo("i2t_recall@10", "image→text R@10", "i2t R@10", "higher", "recall@10"),
    MetricInfo("t2i_recall@1", "text→image R@1", "t2i R@1", "higher", "recall@1"),
    MetricInfo("t2i_recall@5", "text→image R@5", "t2i R@5", "higher", "recall@5"),
    MetricInfo("t2i_recall@10", "text→image R@10", "t2i R@10", "higher", "recall@10"),
    *(
        MetricInfo(f"{d}_recall@{k}_grouped", f"{name} R@{k}, any of the group", f"{d} R@{k} (gr.)", "higher")
        for d, name in (("i2t", "image→text"), ("t2i", "text→image"))
        for k in (1, 5, 10)
    ),
    *(  # the itm recipe: the matcher re-ranks the contrastive top-k (alignkit.recipes.systems.itm)
        MetricInfo(
            f"{d}_recall@{k}{g}_{tag}",
            f"{name} R@{k}{', any of the group' if g else ''}, re-ranked{how}",
            f"{d} R@{k}{' (gr.)' if g else ''} {short}",
            "higher",
            None if g else f"recall@{k}",
        )
        for tag, how, short in (
            ("rerank", "", "rer."),
            ("rerank_sum", " (+ contrastive)", "rer.+"),
        )
        for g in ("", "_grouped")
        for d, name in (("i2t", "image→text"), ("t2i", "text→image"))
        for k in (1, 5)
    ),
    *(
        MetricInfo(
            f"{d}_recall@k{g}_candidates",
            f"{name}: {'a group member' if g else 'the partner'} among the top-k re-ranked",
            f"{d} in top-k{' (gr.)' if g else ''}",
            "higher",
        )
        for g in ("", "_grouped")
        for d, name in (("i2t", "image→text"), ("t2i", "text→image"))
    ),
    MetricInfo("itm_top_k", "candidates re-ranked per query (k)", "top-k", "", None, ".0f"),
    MetricInfo("median_rank", "median rank (image→text)", "median rank", "lower", "median", ".1f"),
    MetricInfo("t2i_median_rank", "median rank (text→image)", "t2i median rank", "lower", "median", ".1f"),
    MetricInfo("i2t_map", "image→text mAP", "i2t mAP", "higher", "map"),
    MetricInfo("t2i_map", "text→image mAP", "t2i mAP", "higher", "map"),
    MetricInfo("cka_linear", "linear CKA (joint)", "CKA", "higher"),
    MetricInfo("cka_unbiased", "unbiased linear CKA (joint)", "unbiased CKA", "higher"),
    MetricInfo("cka_towers", "linear CKA (towers)", "CKA towers", "higher"),
    MetricInfo("mutual_knn", "mutual 10-NN", "mutual kNN", "higher", "knn"),
    MetricInfo("alignment", "alignment", "alignment", "lower"),
    MetricInfo("uniformity", "uniformity", "uniformity", "lower"),
    MetricInfo("epochs", "epochs", "epochs", "", None, "d"),
    MetricInfo("seconds", "seconds", "seconds", "lower", None, ".1f"),
)
#: key → :class:`MetricInfo`
METRIC_INFO: dict[str, MetricInfo] = {m.key: m for m in METRICS}


def chance_level(key: str, n_test: int, n_classes: int = 10, k: int = 10) -> float | None:
    """The chance level of metric ``key`` on ``n_test`` rows and ``n_classes`` classes, or ``None``.

    See the module docstring for the formulas (``k`` is the mutual-kNN neighbourhood). A metric
    without a closed-form chance level (CKA, alignment, uniformity, seconds, an unknown key) gives
    ``None``.
    """
    info = METRIC_INFO.get(key)
    if info is None or info.chance is None or n_test < 2:
        return None
    kind = info.chance
    if kind == "classes":
        return 1.0 / n_classes
    if kind.startswith("recall@"):
        return min(1.0, int(kind.split("@")[1]) / n_test)
    if kind == "median":
        return (n_test + 1) / 2
    if kind == "map":
        return math.fsum(1.0 / r for r in range(1, n_test + 1)) / n_test
    if kind == "knn":
        return min(k, n_test - 1) / (n_test - 1)
    raise AssertionError(f"unknown chance kind {kind!r}")


def metric_rows(
    metrics: Mapping[str, Any], n_test: int | None, n_classes: int = 10
) -> list[tuple[MetricInfo, Any, float | None]]:
    """``(info, value, chance)`` for each metric of ``metrics`` in display order: the known ones of
    :data:`METRICS` first, then any other numeric entry (recipe-specific numbers, sorted by key,
    with a plain :class:`MetricInfo` whose label is the key). ``recipe`` and non-numeric entries are
    left out; ``chance`` is ``None`` when ``n_test`` is unknown."""
    rows: list[tuple[MetricInfo, Any, float | None]] = []
    for info in METRICS:
        if info.key in metrics:
            chance = None if n_test is None else chance_level(info.key, n_test, n_classes)
            rows.append((info, metrics[info.key], chance))
    for key in sorted(k for k in metrics if k not in METRIC_INFO):
        value = metrics[key]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (numeric or value is None) and key != "recipe":
            rows.append((MetricInfo(key, key, key, ""), value, None))
    return rows
