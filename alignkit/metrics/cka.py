"""Streaming CKA: exact linear CKA over any number of batches, and minibatch (unbiased) CKA.

* :class:`StreamingLinearCKA` — exact linear CKA of two representations streamed in batches:
  centred d×d scatter matrices are accumulated in float64, so memory is independent of N and the
  result equals :func:`alignkit.functional.cka` on the concatenated data.
* :class:`MultiLayerCKA` — the same for every (layer of model A, layer of model B) pair at once,
  each layer's own cross-product shared by all the pairs it takes part in.
* :class:`MinibatchCKA` — Nguyen, Raghu & Kornblith 2021's estimator: unbiased HSIC averaged over
  minibatches, for linear or RBF kernels.

All three merge across processes with ``torch.distributed`` (see :class:`Metric`), are not
differentiable (use :func:`alignkit.functional.cka` for a loss), and return float64 values.

    >>> import torch
    >>> from alignkit.metrics import StreamingLinearCKA
    >>> metric = StreamingLinearCKA()
    >>> for _ in range(100):
    ...     x = torch.randn(1000, 64); metric.update(x, x @ torch.randn(64, 32))
    >>> metric.compute()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import alignkit.functional as AF
from alignkit.functional._checks import (
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_same_device,
    check_same_rows,
    compute_dtype,
    shape_str,
)

# Private helpers of similarity.py, imported so that each formula and numerical convention lives
# once: _cross (d×d products in row chunks summed in float64), _column_mean (float64 column mean),
# _block_stats (kernel-matrix sums in row blocks), _upper_sq_distances / _rbf_sigma2 (Kornblith's RBF
# bandwidth from the median squared distance),
# _safe_ratio (num / sqrt(a·b), 0 when a or b ≤ 0), _check_pair (validation of an (x, y) pair).
from alignkit.functional.similarity import (
    _BLOCK_ELEMENTS,
    _block_stats,
    _check_pair,
    _column_mean,
    _cross,
    _rbf_sigma2,
    _safe_ratio,
    _upper_sq_distances,
    hsic_from_kernel_sums,
)
from alignkit.metrics.base import Metric

__all__ = ["MinibatchCKA", "MultiLayerCKA", "StreamingLinearCKA"]

_F64 = torch.float64
# Local row groups kept before they are merged into one (MultiLayerCKA). 1: every batch is folded into
# the running group at once. Keeping many small per-batch tensors alive between the large batch
# temporaries fragmented the CPU heap (measured: peak RSS 1.0 GiB instead of 0.39 GiB at N = 10⁶).
_MAX_GROUPS = 1


def _zero() -> Tensor:
    return torch.zeros((), dtype=_F64)


class _Batch:
    """One batch of one side, centred on its own mean: ``a = fl(x − m)`` with ``m`` the column mean
    rounded to the compute dtype. The difference of two numbers of the compute dtype is rounded
    relative to the *difference*, so ``a`` carries the centred values to full precision whatever the
    column means; the exact batch mean is ``m + Σa/n`` (float64)."""

    def __init__(self, x: Tensor, dtype: torch.dtype) -> None:
        n = x.shape[0]
        self.n = n
        xk = x.to(dtype)
        shift = xk.sum(0) / n  # column sums of the compute dtype are cascade sums in torch
        self.centred = xk - shift
        self.residual = self.centred.sum(0).to(_F64)  # Σ a, ~0
        self.mean = shift.to(_F64) + self.residual / n
        self.hi, self.lo = x.amax(0).to(_F64), x.amin(0).to(_F64)  # (faster than aminmax on CPU)

    def scatter(self, other: _Batch) -> Tensor:
        """``Σ (x − x̄)(y − ȳ)ᵀ`` over the batch, float64: ``AᵀB − (Σa)(Σb)ᵀ/n``."""
        return _cross(self.centred, other.centred) - torch.outer(self.residual, other.residual) / self.n


def _between(counts: Tensor, means_a: Tensor, means_b: Tensor) -> Tensor:
    """``Σ_g n_g (m_g − μ)(m'_g − μ')ᵀ`` for group counts (G,) and group means (G, d), (G, e), with
    μ, μ' the count-weighted means: the scatter of the group means (the parallel-axis term)."""
    total = counts.sum()
    da = means_a - (counts @ means_a) / total
    db = means_b - (counts @ means_b) / total
    return (da * counts[:, None]).mT @ db


class MultiLayerCKA(Metric):
    """Exact linear CKA between every layer of one model and every layer of another, streamed.

    For layers a_1..a_p (N, d_i) and b_1..b_q (N, e_j) of the same N inputs, accumulates in float64
    the centred scatter ``W = Σ_batches Σ (x − x̄_g)(y − ȳ_g)ᵀ`` of every layer with itself and of
    every pair, plus, per group g of rows (a batch, or several merged), its row count ``n_g`` and
    column means ``x̄_g``. At :meth:`compute` the centred products are exact sums of small numbers —
    no ``S − N·μμᵀ`` cancellation (Chan, Golub & LeVeque 1979's pairwise update)::

        C_xy = W_xy + Σ_g n_g (x̄_g − μ_x)(ȳ_g − μ_y)ᵀ,   μ = Σ_g n_g x̄_g / N

    (columns that were constant over all rows set to exactly 0, as in :func:`alignkit.functional.cka`)
    and

        CKA(a_i, b_j) = ‖C_ab‖_F² / (‖C_aa‖_F · ‖C_bb‖_F)

    (Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations
    Revisited", linear CKA in feature space) through
    :func:`alignkit.functional.cka_from_cross_covariance` — equal to ``AF.cka(a_i, b_j)`` on the
    concatenated batches, also when the column means dwarf the spread (10⁶× in the tests). Each
    batch is centred on its own mean before its products are taken (in row chunks summed in
    float64). Each new batch is then folded into the process's running group (the groups' mean
    scatter moves into ``W``), so the state stays bounded; across processes the groups are
    concatenated, one per process.

    Args:
        num_a: number of layers of the first model (≥ 1).
        num_b: number of layers of the second model (≥ 1).
        sync_on_compute, process_group: see :class:`Metric`.

    Cost: O(n·(Σd_i² + Σe_j² + Σd_i·Σe_j)) time per batch of n rows; state memory
    O(Σd_i² + Σe_j² + Σd_i·Σe_j) float64, independent of N. Compute: O(p·q·(d² + e²)) per process
    merged.
    """

    n: Tensor

    def __init__(
        self, num_a: int, num_b: int, *, sync_on_compute: bool = True, process_group: Any | None = None
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute, process_group=process_group)
        check_int(num_a, "num_a", 1)
        check_int(num_b, "num_b", 1)
        self.num_a, self.num_b = num_a, num_b
        self._setup([f"a{i}" for i in range(num_a)], [f"b{j}" for j in range(num_b)])

    def _setup(self, sides_a: list[str], sides_b: list[str]) -> None:
        self._sides_a, self._sides_b = sides_a, sides_b
        self.add_state("n", torch.zeros((), dtype=torch.int64), "sum")
        self.add_state("group_counts", [], "cat")  # (G,) float64 rows per group
        for side in (*sides_a, *sides_b):
            self.add_state(f"{side}_means", [], "cat")  # (G, d) group means
            self.add_state(f"{side}_gram", _zero(), "sum")  # within-group scatter
            self.add_state(f"{side}_max", torch.tensor(-torch.inf, dtype=_F64), "max")
            self.add_state(f"{side}_min", torch.tensor(torch.inf, dtype=_F64), "min")
        for sa in sides_a:
            for sb in sides_b:
                self.add_state(f"{sa}_{sb}_cross", _zero(), "sum")

    def extra_repr(self) -> str:
        return f"num_a={self.num_a}, num_b={self.num_b}"

    def _check_batch(self, named: list[tuple[str, str, Tensor]]) -> None:
        for _, name, t in named:
            check_features(t, name, finite=False)
        first_name, first = named[0][1], named[0][2]
        for _, name, t in named[1:]:
            check_same_rows(first, t, first_name, name)
        check_same_device(*((name, t) for _, name, t in named))
        for side, name, t in named:
            width = self._tensor(f"{side}_max")
            if width.dim() == 1 and width.shape[0] != t.shape[1]:
                raise ValueError(
                    f"{name} must keep the width of the earlier updates, {width.shape[0]} columns, "
                    f"got shape {shape_str(t)}"
                )
        for _, name, t in named:
            check_features(t, name)  # finiteness last

    @torch.no_grad()
    def _accumulate(
        self, named_a: list[tuple[str, str, Tensor]], named_b: list[tuple[str, str, Tensor]]
    ) -> None:
        self._check_batch([*named_a, *named_b])
        self._place(*((name, t) for _, name, t in (*named_a, *named_b)))
        dtype = compute_dtype(*(t for _, _, t in (*named_a, *named_b)))
        batches = {side: _Batch(t, dtype) for side, _, t in (*named_a, *named_b)}
        n = named_a[0][2].shape[0]
        self.n = self.n + n
        self.group_counts.append(torch.tensor([float(n)], dtype=_F64, device=self.device))
        for side, b in batches.items():
            getattr(self, f"{side}_means").append(b.mean[None])
            setattr(self, f"{side}_gram", self._tensor(f"{side}_gram") + b.scatter(b))
            setattr(self, f"{side}_max", torch.maximum(self._tensor(f"{side}_max"), b.hi))
            setattr(self, f"{side}_min", torch.minimum(self._tensor(f"{side}_min"), b.lo))
        for sa, _, _ in named_a:
            for sb, _, _ in named_b:
                name = f"{sa}_{sb}_cross"
                setattr(self, name, self._tensor(name) + batches[sa].scatter(batches[sb]))
        if len(self.group_counts) > _MAX_GROUPS:
            self._merge_groups()

    def _merge_groups(self) -> None:
        """Replace the local groups by one: their means' scatter moves into the within-group sums."""
        counts = torch.cat(self.group_counts)
        means = {side: torch.cat(getattr(self, f"{side}_means")) for side in (*self._sides_a, *self._sides_b)}
        for side, m in means.items():
            setattr(self, f"{side}_gram", self._tensor(f"{side}_gram") + _between(counts, m, m))
            setattr(self, f"{side}_means", [(counts @ m / counts.sum())[None]])
        for sa in self._sides_a:
            for sb in self._sides_b:
                name = f"{sa}_{sb}_cross"
                setattr(self, name, self._tensor(name) + _between(counts, means[sa], means[sb]))
        self.group_counts = [counts.sum()[None]]

    def update(self, features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> None:
        """Accumulate one batch: ``features_a[i]`` (n, d_i) and ``features_b[j]`` (n, e_j), same n rows.

        Widths must stay the same across updates; fp16/bf16 input is computed in float32.
        """
        named_a = self._named(features_a, "features_a", self._sides_a)
        named_b = self._named(features_b, "features_b", self._sides_b)
        self._accumulate(named_a, named_b)

    @staticmethod
    def _named(features: Sequence[Tensor], name: str, sides: list[str]) -> list[tuple[str, str, Tensor]]:
        if isinstance(features, Tensor) or not isinstance(features, Sequence):
            raise ValueError(
                f"{name} must be a list of {len(sides)} (n, d) tensors, got {type(features).__name__}"
            )
        if len(features) != len(sides):
            raise ValueError(f"{name} must hold {len(sides)} tensors (one per layer), got {len(features)}")
        return [(side, f"{name}[{i}]", t) for i, (side, t) in enumerate(zip(sides, features, strict=True))]

    def _cat(self, name: str) -> Tensor:
        value = self._state(name)
        return torch.cat(value) if isinstance(value, list) else value

    def _check_computable(self) -> None:
        if int(self.n) == 0:
            raise ValueError(f"{type(self).__name__}.compute() needs at least one update (N = 0)")

    def _compute(self) -> Tensor:
        """(num_a, num_b) float64 matrix of linear CKA values."""
        self._check_computable()
        counts = self._cat("group_counts")
        means = {s: self._cat(f"{s}_means") for s in (*self._sides_a, *self._sides_b)}
        varying = {s: (self._tensor(f"{s}_max") != self._tensor(f"{s}_min")).to(_F64) for s in means}

        def centred(name: str, sa: str, sb: str) -> Tensor:
            c = self._tensor(name) + _between(counts, means[sa], means[sb])
            return c * torch.outer(varying[sa], varying[sb])

        grams = {s: centred(f"{s}_gram", s, s) for s in means}
        out = torch.empty(len(self._sides_a), len(self._sides_b), dtype=_F64, device=self.device)
        for i, sa in enumerate(self._sides_a):
            for j, sb in enumerate(self._sides_b):
                cab = centred(f"{sa}_{sb}_cross", sa, sb)
                out[i, j] = AF.cka_from_cross_covariance(grams[sa], grams[sb], cab)
        return out

    def compute(self) -> Tensor:
        """(num_a, num_b) float64 tensor, entry (i, j) the linear CKA of layer a_i with layer b_j."""
        return super().compute()  # type: ignore[no-any-return]


class StreamingLinearCKA(MultiLayerCKA):
    """Exact linear CKA of x (N, d_x) and y (N, d_y) accumulated over batches of rows.

    Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations
    Revisited" (ICML), in feature space::

        CKA = ‖C_xy‖_F² / (‖C_xx‖_F · ‖C_yy‖_F),   C_xy = Σ_i (x_i − μ_x)(y_i − μ_y)ᵀ

    with the centred products accumulated in float64 on the input's device as within-batch scatter
    plus the scatter of the batch means (see :class:`MultiLayerCKA`; no large sums cancel), then
    :func:`alignkit.functional.cka_from_cross_covariance`. Equal to ``AF.cka(X, Y)`` on the
    concatenated batches, whatever the split and the column means (to ~1e-15 for float64 input,
    ~1e-8 for float32).

    States: ``n``, ``x_gram``, ``y_gram``, ``x_y_cross`` (``"sum"``: within-group scatter),
    ``group_counts``, ``x_means``, ``y_means`` (``"cat"``: rows and column means of each process's
    running group), ``x_max``, ``x_min``, ``y_max``, ``y_min`` (constant-column detection).

    Args:
        sync_on_compute, process_group: see :class:`Metric`.

    Cost per batch of n rows: O(n·(d_x + d_y)²) time; memory O((d_x + d_y)²) float64, independent of
    N. Compute: O(d_x² + d_y² + d_x·d_y).

    Example::

        metric = StreamingLinearCKA()
        for images, _ in loader:
            metric.update(model_a(images), model_b(images))
        print(float(metric.compute()))
    """

    def __init__(self, *, sync_on_compute: bool = True, process_group: Any | None = None) -> None:
        Metric.__init__(self, sync_on_compute=sync_on_compute, process_group=process_group)
        self.num_a = self.num_b = 1
        self._setup(["x"], ["y"])

    def extra_repr(self) -> str:
        return ""

    def update(self, x: Tensor, y: Tensor) -> None:
        """Accumulate one batch: x (n, d_x) and y (n, d_y) of the same n samples (widths fixed)."""
        self._accumulate([("x", "x", x)], [("y", "y", y)])

    def compute(self) -> Tensor:
        """Scalar float64 tensor in [0, 1]: linear CKA of all rows seen (0 if a side has zero variance)."""
        return super().compute()[0, 0]


class MinibatchCKA(Metric):
    """Minibatch CKA: unbiased HSIC averaged over minibatches (Nguyen, Raghu & Kornblith 2021).

    Nguyen, Raghu & Kornblith 2021, "Do Wide and Deep Networks Learn the Same Things? Uncovering How
    Neural Network Representations Vary with Width and Depth" (ICLR), eq. 3::

        CKA_mb = mean_b HSIC₁(K_b, L_b) / sqrt(mean_b HSIC₁(K_b, K_b) · mean_b HSIC₁(L_b, L_b))

    with ``K_b``, ``L_b`` the kernel matrices of minibatch b and HSIC₁ the unbiased estimator of Song,
    Smola, Gretton, Bedo & Borgwardt 2012 ("Feature Selection via Dependence Maximization", JMLR);
    with ``K̃``, ``L̃`` the kernels with zeroed diagonal::

        HSIC₁(K, L) = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3))

    Unlike exact CKA on all rows this is an estimate, but unbiased HSIC does not depend on the
    minibatch size, so averaging over many minibatches converges (and costs O(B²) per batch, not
    O(N²)). For one minibatch it equals ``AF.cka(x, y, kernel, unbiased=True, threshold)``.

    States (``"sum"``): ``hsic_xy``, ``hsic_xx``, ``hsic_yy`` (float64 sums of HSIC₁) and ``count``.

    Args:
        kernel: ``"linear"`` (``K = XXᵀ``, the paper's) | ``"rbf"``
            (``K_ij = exp(−‖x_i − x_j‖² / (2σ²))``, σ = threshold·sqrt(median squared distance)
            within the minibatch, as Kornblith et al.'s notebook).
        threshold: RBF bandwidth as a fraction of the median distance (> 0; rbf only).
        sync_on_compute, process_group: see :class:`Metric`.

    Cost per minibatch of B rows: O(B²·(d_x + d_y)) time, O(B·min(B, 4M/B)) memory in row blocks
    (rbf: plus the B(B−1)/2 distances for the median). State: four scalars.
    """

    hsic_xy: Tensor
    hsic_xx: Tensor
    hsic_yy: Tensor
    count: Tensor

    def __init__(
        self,
        kernel: str = "linear",
        threshold: float = 1.0,
        *,
        sync_on_compute: bool = True,
        process_group: Any | None = None,
    ) -> None:
        super().__init__(sync_on_compute=sync_on_compute, process_group=process_group)
        check_choice(kernel, "kernel", ("linear", "rbf"))
        check_positive(threshold, "threshold")
        self.kernel, self.threshold = kernel, float(threshold)
        for name in ("hsic_xy", "hsic_xx", "hsic_yy"):
            self.add_state(name, _zero(), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.int64), "sum")

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}" + (f", threshold={self.threshold}" if self.kernel == "rbf" else "")

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor) -> None:
        """Add one minibatch: x (B, d_x), y (B, d_y), the same B ≥ 4 samples (B may vary)."""
        dtype, _ = _check_pair(x, y, min_rows=4, why=" per minibatch (unbiased HSIC divides by B(B−3))")
        self._place(("x", x), ("y", y))
        hxy, hxx, hyy = _unbiased_hsic(x.to(dtype), y.to(dtype), self.kernel, self.threshold)
        self.hsic_xy = self.hsic_xy + hxy
        self.hsic_xx = self.hsic_xx + hxx
        self.hsic_yy = self.hsic_yy + hyy
        self.count = self.count + 1

    def _compute(self) -> Tensor:
        if int(self.count) == 0:
            raise ValueError("MinibatchCKA.compute() needs at least one update (no minibatch seen)")
        c = float(self.count)
        return _safe_ratio(self.hsic_xy / c, self.hsic_xx / c, self.hsic_yy / c).clamp(-1, 1)

    def compute(self) -> Tensor:
        """Scalar float64 tensor in [−1, 1] (0 when a side has zero variance)."""
        return super().compute()  # type: ignore[no-any-return]


def _unbiased_hsic(x: Tensor, y: Tensor, kernel: str, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """HSIC₁(K, L), HSIC₁(K, K), HSIC₁(L, L) of one minibatch (float64 scalars).

    Kernel sums come from similarity.py's ``_block_stats`` (zeroed diagonal, row blocks) and are
    combined by :func:`alignkit.functional.similarity.hsic_from_kernel_sums` (normalised estimates:
    minibatches of different sizes are averaged).
    """
    n = x.shape[0]
    # Centre (no rescaling: the linear kernel's HSIC scales with it, and batches are averaged).
    xc, yc = x - _column_mean(x), y - _column_mean(y)
    sqx = sqy = sigx = sigy = None
    if kernel == "rbf":
        sqx, sqy = xc.square().sum(1), yc.square().sum(1)
        sigx = _rbf_sigma2(xc, _upper_sq_distances(xc, sqx), threshold)
        sigy = _rbf_sigma2(yc, _upper_sq_distances(yc, sqy), threshold)
    rows = max(1, _BLOCK_ELEMENTS // n)
    s_kl = s_kk = s_ll = torch.zeros((), dtype=_F64, device=x.device)
    r_parts, q_parts = [], []
    for start in range(0, n, rows):
        kl, kk, ll, r, q = _block_stats(
            xc, sqx, sigx, yc, sqy, sigy, start=start, stop=min(start + rows, n), kernel=kernel, unbiased=True
        )
        s_kl, s_kk, s_ll = s_kl + kl, s_kk + kk, s_ll + ll
        r_parts.append(r)
        q_parts.append(q)
    r, q = torch.cat(r_parts), torch.cat(q_parts)
    return (
        hsic_from_kernel_sums(s_kl, r, q, n, True),
        hsic_from_kernel_sums(s_kk, r, r, n, True),
        hsic_from_kernel_sums(s_ll, q, q, n, True),
    )
