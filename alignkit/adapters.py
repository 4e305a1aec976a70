"""Maps from one embedding space to another, learned from paired rows: ``alignkit fit`` / ``transform``.

A typical use is moving a vector index to a new embedding model without re-embedding the corpus:
embed a few thousand documents with both models, fit a map old → new on those pairs, and apply it to
the rest of the old index::

    from alignkit.adapters import Adapter, fit_adapter
    adapter, report = fit_adapter(old_vectors, new_vectors)   # mlp / clip, from the ridge solution
    print(report.format_table())   # new-model queries searching the held-out mapped rows: R@1/10, MRR,
                                   # overlap with native top-10, hubness; keep-old / before / after / native
    adapter.save("adapter.safetensors")
    mapped = Adapter.load("adapter.safetensors")(old_index)   # (N, d_old) → (N, d_new)

Methods (``method`` × ``objective``):

* ``"procrustes"`` (``"mse"`` | ``"cosine"``) — orthogonal Procrustes with centring and an optional
  isotropic scale, in closed form from one SVD (Schönemann 1966; with scale: Gower & Dijksterhuis 2004).
  Preserves angles and distances of the centred source; the right choice when both spaces hold the
  same geometry up to rotation (Smith et al. 2017, Conneau et al. 2018 for word vectors).
* ``"linear"`` — an affine map. ``"mse"``: closed-form ridge regression (``ridge="auto"``: chosen on
  the training pairs by generalised cross-validation, or K-fold with ``ridge_cv="kfold:K"``);
  ``"cosine"`` | ``"clip"`` | ``"info_nce"``: AdamW from the ridge solution, minimising the objective,
  then re-centred on the target mean.
* ``"mlp"`` — the affine map plus a :class:`~alignkit.nn.ProjectionHead` residual (its last layer
  starts at zero, so training starts at the ridge solution), trained with any objective, with early
  stopping on the validation split.

With ``objective != "mse"`` the adapter L2-normalises its input rows first (embeddings compared by
cosine), and its output is meant to be compared by cosine too. Closed forms can be refined with
unpaired rows of both spaces (iterative Procrustes on CSLS mutual nearest neighbours).

Held-out rows are only measured, never used to choose anything; iterative fits take their
validation rows out of the training rows; closed forms use every training pair.

The default (``"mlp"`` + ``"clip"``) is the method with the best mean rank and mean R@1 on the
*validation* index of ``experiments/migration.py`` (real models, n = 100, 500, 2,000, 5,000 pairs):
best at three of the four sizes, third at n = 500 (0.4 points behind ridge by GCV). Closed-form ridge
(``method="linear"``, ``objective="mse"``) is the fast, deterministic alternative, 0–3 points behind.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import alignkit.functional as AF
from alignkit.functional._checks import (
    EPS,
    check_choice,
    check_features,
    check_int,
    check_positive,
    check_same_device,
    check_same_rows,
    shape_str,
)
from alignkit.functional.regression import RIDGE_GRID, procrustes_fit, ridge_fit, ridge_gcv, ridge_kfold
from alignkit.io import atomic_write, load_safetensors, sha256_tensors
from alignkit.losses.contrastive import CLIPLoss, InfoNCELoss
from alignkit.nn.heads import ACTIVATIONS, ProjectionHead
from alignkit.progress import Progress

__all__ = [
    "DEFAULT_OBJECTIVE",
    "METHODS",
    "MIN_TEST_ROWS",
    "OBJECTIVES",
    "RIDGE_GRID",
    "Adapter",
    "FitReport",
    "fit_adapter",
    "ridge_gcv",
    "ridge_kfold",
    "split_rows",
]

METHODS = ("procrustes", "linear", "mlp")
OBJECTIVES = ("mse", "cosine", "clip", "info_nce")
_CLOSED_FORM_OBJECTIVES = {"procrustes": ("mse", "cosine")}
#: The objective :func:`fit_adapter` uses for each method when none is given.
DEFAULT_OBJECTIVE = {"mlp": "clip", "linear": "mse", "procrustes": "mse"}
_FORMAT = "alignkit.adapter"
_VERSION = 1
_META_KEY = "alignkit_adapter"
_DIGEST_KEY = "alignkit_adapter_sha256"  # sha256_tensors(weights, header=config JSON)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_TRANSFORM_BLOCK = 65536


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------------------------------
# The adapter module


class Adapter(nn.Module):
    """A learned map from a source embedding space (d_s) to a target space (d_t).

    ``forward(x)`` computes, for rows ``x`` (N, d_s)::

        u = x / ‖x‖                       (only when normalize_input, i.e. a cosine-type objective)
        z = (u − μ_s) / σ_s               (source centring and scale, buffers)
        h = W z + b  [+ MLP(z)]            (linear part; "mlp" adds a ProjectionHead residual)
        y = σ_t · h + μ_t                  (back to the target space, buffers)

    Procrustes and ridge fits store ``σ_s = σ_t = 1`` and put the whole map in ``W`` (for Procrustes
    ``W = c·Rᵀ`` with ``R`` semi-orthogonal and ``c`` the isotropic scale); gradient fits standardise
    both sides (σ = root-mean-square of the centred coordinates) so that training is scale-free.

    Args:
        method: ``"procrustes"`` | ``"linear"`` | ``"mlp"`` (what was fitted; ``"mlp"`` adds ``head``).
        source_dim: d_s > 0.
        target_dim: d_t > 0.
        normalize_input: L2-normalise input rows first (zero rows stay zero, no NaN).
        hidden_dim: MLP hidden width (``"mlp"`` only); ``None``: ``min(2048, max(64, 2·max(d_s, d_t)))``.
        num_layers: Linear layers of the MLP (≥ 2, ``"mlp"`` only).
        activation: MLP activation, one of :data:`alignkit.nn.heads.ACTIVATIONS`.
        dtype: parameter dtype, float32 or float64.
        info: extra JSON-serialisable provenance stored with the weights (objective, scale, …).

    ``forward(x (N, d_s)) → (N, d_t)``, computed in the adapter's dtype and returned in ``x``'s dtype
    (fp16 / bf16 input is computed in float32 and cast back). Cost: O(N·d_s·d_t) time (plus
    O(N·h·(d_s + d_t)) for the MLP), O(N·(d_t + h)) memory.

    :meth:`save` writes safetensors weights with the configuration as JSON in the file's metadata;
    :meth:`load` rebuilds the adapter and validates the file.
    """

    def __init__(
        self,
        method: str,
        source_dim: int,
        target_dim: int,
        *,
        normalize_input: bool = False,
        hidden_dim: int | None = None,
        num_layers: int = 2,
        activation: str = "gelu",
        dtype: torch.dtype = torch.float32,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice(method, "method", METHODS)
        check_int(source_dim, "source_dim", 1)
        check_int(target_dim, "target_dim", 1)
        if not isinstance(normalize_input, bool):
            raise ValueError(f"normalize_input must be a bool, got {normalize_input!r}")
        check_choice(dtype, "dtype", tuple(_DTYPES.values()))
        self.method = method
        self.source_dim = source_dim
        self.target_dim = target_dim
        self.normalize_input = normalize_input
        self.info: dict[str, Any] = dict(info or {})
        self.register_buffer("source_mean", torch.zeros(source_dim, dtype=dtype))
        self.register_buffer("source_scale", torch.ones((), dtype=dtype))
        self.register_buffer("target_mean", torch.zeros(target_dim, dtype=dtype))
        self.register_buffer("target_scale", torch.ones((), dtype=dtype))
        self.linear = nn.Linear(source_dim, target_dim, dtype=dtype)
        self.head: ProjectionHead | None = None
        self.hidden_dim: int | None = None
        self.num_layers: int | None = None
        self.activation: str | None = None
        if method == "mlp":
            if hidden_dim is None:
                hidden_dim = min(2048, max(64, 2 * max(source_dim, target_dim)))
            check_int(hidden_dim, "hidden_dim", 1)
            check_int(num_layers, "num_layers", 2, what=" (an MLP has at least one hidden layer)")
            check_choice(activation, "activation", ACTIVATIONS)
            self.hidden_dim, self.num_layers, self.activation = hidden_dim, num_layers, activation
            self.head = ProjectionHead(
                source_dim, target_dim, hidden_dim=hidden_dim, num_layers=num_layers, activation=activation
            ).to(dtype)
            last = self.head.layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)  # the residual starts at 0: training starts at the linear map
            nn.init.zeros_(last.bias)

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the module (stored as JSON by :meth:`save`)."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "method": self.method,
            "source_dim": self.source_dim,
            "target_dim": self.target_dim,
            "normalize_input": self.normalize_input,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "activation": self.activation,
            "dtype": str(self.source_mean.dtype).removeprefix("torch."),
            "info": self.info,
        }

    def _prepare(self, x: Tensor) -> Tensor:
        """``z = (normalize?(x) − μ_s) / σ_s`` in the adapter's dtype."""
        z = x.to(self.source_mean.dtype)
        if self.normalize_input:
            z = F.normalize(z, dim=-1, eps=EPS)
        return (z - self.source_mean) / self.source_scale

    def _core(self, z: Tensor) -> Tensor:
        """The trainable part on standardised input: ``W z + b (+ MLP(z))``."""
        h = self.linear(z)
        if self.head is not None:
            h = h + self.head(z)
        return h

    def forward(self, x: Tensor) -> Tensor:
        check_features(x, "x")
        if x.shape[1] != self.source_dim:
            raise ValueError(
                f"x must have shape (N, {self.source_dim}) (the adapter's source_dim), got {shape_str(x)}"
            )
        check_same_device(("x", x), ("adapter", self.source_mean))
        y = self._core(self._prepare(x)) * self.target_scale + self.target_mean
        return y.to(x.dtype)

    @torch.no_grad()
    def transform(self, x: Tensor, chunk_size: int = _TRANSFORM_BLOCK) -> Tensor:
        """``forward`` without gradients, in blocks of ``chunk_size`` rows (O(chunk_size·d) memory)."""
        check_features(x, "x")
        check_int(chunk_size, "chunk_size", 1)
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self(block) for block in x.split(chunk_size)])
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, source_dim={self.source_dim}, target_dim={self.target_dim}, "
            f"normalize_input={self.normalize_input}"
        )

    # ---------------------------------------------------------------------------------------------
    # files

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the weights as ``.safetensors`` with :attr:`config` as JSON in its metadata, and the
        SHA-256 of configuration and weights (:func:`alignkit.io.sha256_tensors`) that :meth:`load` checks.

        Atomic: the bytes go to a temporary file in the destination directory, are synced, and the
        file is renamed over ``path`` with ``os.replace`` (a reader sees the old or the new file).
        """
        file = _adapter_path(path)
        directory = file.parent if str(file.parent) else Path(".")
        if not directory.is_dir():
            raise ValueError(f"{file}: directory {directory} does not exist")
        from safetensors.torch import save

        try:
            config = json.dumps(self.config, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as err:
            raise ValueError(f"adapter info must be JSON-serialisable ({_one_line(err)})") from None
        tensors = {name: t.detach().cpu().contiguous().clone() for name, t in self.state_dict().items()}
        digest = sha256_tensors(tensors, header=config.encode("utf-8"))
        blob = save(tensors, metadata={"format": "pt", _META_KEY: config, _DIGEST_KEY: digest})
        with atomic_write(file) as out:
            out.write(blob)

    @classmethod
    def load(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Adapter:
        """Read an adapter written by :meth:`save` (in eval mode, on ``map_location``).

        Raises:
            ValueError: one line naming the file when it is missing, not a safetensors file (header and
                sizes checked before reading, :func:`alignkit.io.load_safetensors`), a safetensors file
                that is not an alignkit adapter (no ``alignkit_adapter`` metadata, e.g. an embeddings
                file), its configuration and tensors do not agree (checked on the ``meta`` device, so
                huge declared dimensions allocate nothing), or its SHA-256 does not match (a flipped
                byte) or is missing.
        """
        file = _adapter_path(path)
        if not file.exists() and not file.is_symlink():
            raise ValueError(f"{file}: no such adapter file")
        tensors, metadata = load_safetensors(file)
        if _META_KEY not in metadata:
            raise ValueError(
                f"{file}: not an alignkit adapter (no {_META_KEY!r} metadata; it holds tensors "
                f"{sorted(tensors)[:5]}); write one with `alignkit fit` or Adapter.save"
            )
        try:
            config = json.loads(metadata[_META_KEY])
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{file}: adapter metadata is not valid JSON ({_one_line(err)})") from None
        try:
            with torch.device("meta"):  # shapes only: a hostile configuration allocates nothing
                adapter = cls._from_config(config, file)
        except (RuntimeError, OverflowError, MemoryError) as err:  # sizes beyond what torch can describe
            raise ValueError(
                f"{file}: adapter configuration declares impossible sizes ({_one_line(err)})"
            ) from None
        expected = adapter.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ValueError(
                f"{file}: adapter tensors do not match its configuration "
                f"(missing {missing}, unexpected {extra})"
            )
        for name, tensor in tensors.items():
            want = expected[name]
            if tensor.shape != want.shape:
                raise ValueError(
                    f"{file}: tensor {name!r} has shape {shape_str(tensor)}, the configuration needs "
                    f"{shape_str(want)}"
                )
            if not tensor.is_floating_point() or not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{file}: tensor {name!r} is not a finite floating-point tensor")
        digest = metadata.get(_DIGEST_KEY)
        if digest is None:
            raise ValueError(
                f"{file}: adapter has no SHA-256 digest ({_DIGEST_KEY!r} metadata; written by an older "
                "alignkit); re-run `alignkit fit` to write a checked one"
            )
        if sha256_tensors(tensors, header=metadata[_META_KEY].encode("utf-8")) != digest:
            raise ValueError(f"{file}: adapter is corrupt (SHA-256 mismatch of configuration and weights)")
        adapter = adapter.to_empty(device="cpu")
        adapter.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
        return adapter.to(map_location).eval()

    @classmethod
    def _from_config(cls, config: object, file: Path) -> Adapter:
        if not isinstance(config, dict) or config.get("format") != _FORMAT:
            raise ValueError(f"{file}: adapter metadata does not describe an {_FORMAT} (got {config!r:.80})")
        if config.get("version") != _VERSION:
            raise ValueError(
                f"{file}: adapter format version {config.get('version')!r}, this alignkit reads {_VERSION}"
            )
        dtype = _DTYPES.get(config.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise ValueError(
                f"{file}: adapter dtype must be one of {tuple(_DTYPES)}, got {config.get('dtype')!r}"
            )
        info = config.get("info", {})
        if not isinstance(info, dict):
            raise ValueError(f"{file}: adapter info must be a JSON object, got {type(info).__name__}")
        kwargs: dict[str, Any] = {"normalize_input": config.get("normalize_input"), "dtype": dtype}
        if config.get("method") == "mlp":
            kwargs.update(
                hidden_dim=config.get("hidden_dim"),
                num_layers=config.get("num_layers"),
                activation=config.get("activation"),
            )
        try:
            return cls(
                config.get("method"), config.get("source_dim"), config.get("target_dim"), info=info, **kwargs
            )  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"{file}: invalid adapter configuration: {_one_line(err)}") from None


def _adapter_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    file = Path(path)
    if file.suffix.lower() != ".safetensors":
        raise ValueError(f"{file}: an adapter file must end in .safetensors, got {file.suffix or '(none)'!r}")
    return file


# --------------------------------------------------------------------------------------------------
# The report

# Held-out rows below this are flagged: a 95% interval on R@1 is then wider than about ±7 points.
MIN_TEST_ROWS = 200


def _wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` measured on ``n`` trials."""
    if n <= 0:
        return (0.0, 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class FitReport:
    """What :func:`fit_adapter` measured, the way a migrated index is used.

    The ``n_test`` held-out pairs (never seen by the fit, never used to choose anything) form an
    index: their old rows are mapped (``after``) and the *new* model's rows of the same items search
    it as queries (:func:`alignkit.search.evaluate_migration`). ``retrieval`` holds four columns —
    ``keep_old`` (old rows searching the old index: not migrating), ``before`` (new queries on the
    unmapped old index; ``None`` when the widths differ), ``after`` (new queries on the mapped index)
    and ``native`` (new queries on the new index: the upper bound, perfect by construction for these
    self-queries) — each with ``recall@1``, ``recall@10``, ``mrr``, ``overlap@10`` (share of the top-10
    shared with native retrieval), ``hub_share`` and ``k_skew``. With ``test_fraction=0`` they are
    measured on the training pairs (``evaluated_on == "train"``: optimistic, flagged in ``warnings``).

    ``recall_at_1_before`` / ``recall_at_1_after`` repeat the R@1 of those columns;
    ``recall_at_1_interval`` is the 95% Wilson interval of ``recall_at_1_after`` over the n_test queries.
    ``n_train`` pairs fitted the map; ``n_val`` validation pairs (iterative methods only) chose the
    epoch; closed forms use every training pair (``n_val = 0``). ``objective_*``: the fitted objective
    on each split (mean squared error per coordinate, mean ``1 − cos``, or the contrastive loss, whose
    value depends on the number of rows). ``ridge``: the relative ridge strength used (chosen by
    generalised cross-validation on the training pairs when ``ridge_selected_by == "gcv"``, by K-fold
    cross-validation on them when it is ``"K-fold"``; ``"given"``: passed by the caller).
    ``refined_pairs``: mutual-nearest-neighbour pairs added by each refinement round.
    """

    method: str
    objective: str
    source_dim: int
    target_dim: int
    n_train: int
    n_val: int
    n_test: int
    evaluated_on: str
    retrieval: dict[str, dict[str, float] | None]
    recall_at_1_before: float | None
    recall_at_1_after: float
    recall_at_1_interval: tuple[float, float]
    objective_train: float
    objective_val: float | None
    objective_test: float | None
    ridge: float | None
    ridge_selected_by: str | None
    mean_restored: bool
    refined_pairs: list[int]
    csls_k: int
    epochs: int
    best_epoch: int | None
    temperature: float | None
    warnings: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``None`` for "n/a")."""
        out = asdict(self)
        out["recall_at_1_interval"] = list(self.recall_at_1_interval)
        return out

    def format_table(self) -> str:
        """The report printed by ``alignkit fit``."""
        from alignkit.search import format_migration_table

        def num(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        if self.epochs:
            fitted = (
                f"{self.n_train} pairs + {self.n_val} validation, {self.epochs} epochs "
                f"(kept {self.best_epoch})"
            )
        else:
            fitted = f"closed form on all {self.n_train} training pairs"
        where = f"{self.n_test} held-out rows" if self.evaluated_on == "held-out" else "the training rows"
        extras = []
        if self.ridge is not None:
            how = {"gcv": " (GCV)", "given": ""}.get(self.ridge_selected_by or "given")
            how = f" by {self.ridge_selected_by} CV" if how is None else how
            extras.append(f"ridge {self.ridge:.3g}{how}")
        if self.mean_restored:
            extras.append("target mean restored")
        if self.refined_pairs:
            extras.append(f"refined {len(self.refined_pairs)}× on {self.refined_pairs[-1]} mutual-NN pairs")
        if self.csls_k:
            extras.append(f"CSLS k={self.csls_k}")
        lo, hi = self.recall_at_1_interval
        lines = [
            f"{self.method} / {self.objective}: {self.source_dim} → {self.target_dim} dims, {fitted}, "
            f"{self.seconds:.2f} s" + (f" ({', '.join(extras)})" if extras else ""),
            f"new-model queries searching {where} (keep old = old model on both sides)",
            format_migration_table(self.retrieval),
            f"R@1 after: {num(self.recall_at_1_after)}, 95% interval [{lo:.3f}, {hi:.3f}]",
        ]
        parts = [f"train {num(self.objective_train)}"]
        if self.objective_val is not None:
            parts.append(f"validation {num(self.objective_val)}")
        if self.objective_test is not None:
            parts.append(f"held-out {num(self.objective_test)}")
        lines.append(f"objective {self.objective}: " + ", ".join(parts))
        if self.temperature is not None:
            lines.append(f"temperature {self.temperature:.4g}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Fitting


def split_rows(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The (kept, split-off) row indices of a seeded random split, each sorted.

    :func:`fit_adapter` uses it twice: ``split_rows(n, test_fraction, seed)`` for (train, held-out),
    then, for iterative methods, ``split_rows(n_train, val_fraction, seed + 1)`` for (fit,
    validation) positions within the training rows.
    ``n_val = round(n·val_fraction)``, at least 1 and at most ``n − 1`` when ``val_fraction > 0``;
    rows are drawn by ``torch.randperm`` with a generator seeded by ``seed`` (deterministic).
    Cost: O(n).
    """
    check_int(n, "n", 1)
    _check_fraction(val_fraction)
    check_int(seed, "seed", 0)
    n_val = 0 if val_fraction == 0 else min(max(1, round(n * val_fraction)), n - 1)
    if val_fraction > 0 and n_val < 1:
        raise ValueError(
            f"val_fraction={val_fraction} needs at least 2 rows (one to fit, one to hold out), got {n}"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def _check_fraction(value: object, name: str = "val_fraction") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    if not (0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _rms(xc: Tensor) -> Tensor:
    """Root-mean-square of centred coordinates; 1 for constant data (no division by zero)."""
    value = xc.square().mean().sqrt()
    return torch.where(value > 0, value, torch.ones_like(value))


def _ridge_selection(value: object) -> int:
    """``ridge_cv`` → 0 for ``"gcv"``, else the number of folds of ``"kfold"`` (5) / ``"kfold:K"``."""
    if value == "gcv":
        return 0
    if isinstance(value, str) and value.startswith("kfold"):
        rest = value[len("kfold") :]
        if rest == "":
            return 5
        if rest.startswith(":") and rest[1:].isdigit() and int(rest[1:]) >= 2:
            return int(rest[1:])
    raise ValueError(f"ridge_cv must be 'gcv', 'kfold' or 'kfold:K' with K ≥ 2 folds, got {value!r}")


def _objective_fn(objective: str, criterion: nn.Module | None) -> Callable[[Tensor, Tensor], Tensor]:
    """``loss(pred, target)`` in the target space for ``objective``."""
    if objective == "mse":
        return F.mse_loss
    if objective == "cosine":
        return AF.marginal_cosine_loss
    assert criterion is not None
    return criterion


def _fit_closed(adapter: Adapter, xp: Tensor, yp: Tensor, ridge: float, scale: bool) -> None:
    """Set the adapter to the closed form (Procrustes or ridge) on prepared rows ``xp``, ``yp``."""
    x64, y64 = xp.double(), yp.double()
    with torch.no_grad():
        if adapter.method == "procrustes":
            weight, mu_x, mu_y, c = procrustes_fit(x64, y64, scale)
            adapter.info["scale"] = c
        else:
            weight, mu_x, mu_y = ridge_fit(x64, y64, ridge)
        adapter.source_mean.copy_(mu_x)
        adapter.source_scale.fill_(1.0)
        adapter.target_mean.copy_(mu_y)
        adapter.target_scale.fill_(1.0)
        adapter.linear.weight.copy_(weight.T)
        adapter.linear.bias.zero_()


@torch.no_grad()
def _restore_mean(adapter: Adapter, x: Tensor, yp: Tensor) -> None:
    """Re-centre (and re-scale) the outputs on the target's training mean after a cosine-type fit.

    Cosine and contrastive objectives are blind to a shift shared by every row, so training drifts
    away from the target's mean direction (for an anisotropic model, mean cosine ≈ 0.8 between any
    two rows) and a few mapped rows become hubs. With ``h`` the core's outputs on the training rows,
    the affine correction ``y' = a·(y − mean(y)) + mean(Y)``, ``a = rms(Yᶜ) / rms(yᶜ)``, is folded into
    the output buffers: ``σ_t ← a·σ_t``, ``μ_t ← mean(Y) − a·σ_t·mean(h)``.
    """
    h = adapter._core(adapter._prepare(x))
    mean_h = h.mean(0)
    mapped_rms = _rms((h - mean_h) * adapter.target_scale)
    target_rms = _rms(yp.to(h.dtype) - yp.to(h.dtype).mean(0))
    a = target_rms / mapped_rms
    new_scale = a * adapter.target_scale
    adapter.target_mean.copy_(yp.to(h.dtype).mean(0) - new_scale * mean_h)
    adapter.target_scale.copy_(new_scale)


def _mutual_pairs(mapped: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Rows (i, j) that are each other's CSLS nearest neighbour (Conneau et al. 2018, refinement)."""
    kk = min(k, mapped.shape[0], target.shape[0])
    fwd = AF.csls_retrieve(mapped, target, k=kk, topk=1).indices[:, 0]
    bwd = AF.csls_retrieve(target, mapped, k=kk, topk=1).indices[:, 0]
    rows = torch.arange(mapped.shape[0], device=mapped.device)
    keep = bwd[fwd] == rows
    return rows[keep], fwd[keep]


def fit_adapter(
    source: Tensor,
    target: Tensor,
    method: str = "mlp",
    objective: str | None = None,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    hidden_dim: int | None = None,
    num_layers: int = 2,
    batch_size: int = 1024,
    temperature: float = 0.07,
    ridge: float | str = "auto",
    ridge_cv: str = "gcv",
    scale: bool = True,
    patience: int = 10,
    restore_mean: bool = True,
    unpaired_source: Tensor | None = None,
    unpaired_target: Tensor | None = None,
    refine_iters: int = 3,
    csls_k: int = 0,
    progress: bool = True,
) -> tuple[Adapter, FitReport]:
    """Learn a map ``source (N, d_s) → target (N, d_t)`` from paired rows and judge it as an index.

    Row i of ``source`` and row i of ``target`` embed the same item. Three kinds of rows:

    * held-out (``test_fraction``, seeded, :func:`split_rows`): never seen by the fit and never used
      to choose anything; the report searches them (:class:`FitReport`, native new-model queries on
      the mapped rows);
    * validation (``val_fraction`` of the rest, seed + 1): only for iterative fits (gradient methods),
      which keep the epoch with the lowest validation objective;
    * training: everything else. Closed forms (procrustes, linear + mse) use *every* training pair
      and choose ``ridge="auto"`` by generalised cross-validation on them (:func:`ridge_gcv`).

    Methods (the default, ``"mlp"`` + ``"clip"``, won ``experiments/migration.py`` — real models,
    n = 100, 500, 2,000, 5,000 pairs — by mean rank and mean R@1 on its validation index; closed-form
    ridge, ``"linear"`` + ``"mse"`` with ``ridge="auto"``, is within 0–3 points for a fraction of the
    time and the best closed form; Procrustes trails both from n = 500 on):

    * ``"procrustes"`` (objective ``"mse"`` or ``"cosine"``): with centred training rows Xᶜ, Yᶜ and the
      SVD ``XᶜᵀYᶜ = UΣVᵀ``, ``R = UVᵀ`` (d_s × d_t) and ``c = tr Σ / ‖Xᶜ‖_F²`` (``scale=True``, else 1)::

          f(x) = c·(x − μ_x) R + μ_y

      Schönemann 1966, "A generalized solution of the orthogonal Procrustes problem"
      (Psychometrika); isotropic scale: Gower & Dijksterhuis 2004, "Procrustes Problems". R is
      semi-orthogonal: ``RRᵀ = I`` for d_s ≤ d_t and ``RᵀR = I`` for d_s > d_t (the projection
      maximising ``tr(RᵀXᶜᵀYᶜ)``); computed by :func:`~alignkit.functional.procrustes_fit`. ``"cosine"``
      first L2-normalises the rows of both sides (Conneau et al. 2018, "Word Translation Without
      Parallel Data").
    * ``"linear"`` + ``"mse"``: ridge regression ``W = (XᶜᵀXᶜ + λI)⁻¹XᶜᵀYᶜ``, ``λ = ridge·tr(XᶜᵀXᶜ)/d_s``
      (Hoerl & Kennard 1970), intercept unpenalised; ``ridge=0``: the minimum-norm least-squares
      solution; ``ridge="auto"``: chosen over :data:`RIDGE_GRID` on the training pairs by GCV
      (``ridge_cv="gcv"``) or K-fold cross-validation (``ridge_cv="kfold:K"``) — plain least squares
      collapses when n ≈ d.
    * ``"linear"`` with ``"cosine"`` / ``"clip"`` / ``"info_nce"``, and ``"mlp"`` with any objective:
      both sides are standardised (centred, divided by their coordinates' RMS; rows L2-normalised
      first for non-mse objectives), the linear part starts at the ridge solution, and AdamW
      (Loshchilov & Hutter 2019) minimises the objective over shuffled minibatches of ``batch_size``
      rows for up to ``epochs`` epochs, stopping after ``patience`` epochs without validation
      improvement. "clip" is :class:`~alignkit.losses.CLIPLoss` (Radford et al. 2021, learnable
      temperature), "info_nce" :class:`~alignkit.losses.InfoNCELoss` (van den Oord et al. 2018),
      "cosine" mean ``1 − cos``. "mlp" adds a :class:`~alignkit.nn.ProjectionHead` residual whose last
      layer starts at zero. After a non-mse fit, ``restore_mean`` re-centres the outputs on the
      target's training mean (and matches its spread): those objectives cannot see a shift shared by
      all rows, and an index that lost the target's mean direction grows hubs.

    Semi-supervised refinement (closed forms only): with ``unpaired_source`` (e.g. the whole old
    index) and ``unpaired_target`` (any new-model embeddings), each of ``refine_iters`` rounds maps
    the unpaired source rows, takes the pairs that are mutual nearest neighbours under CSLS (k = 10)
    and refits on the training pairs plus those (iterative Procrustes as in Conneau et al. 2018;
    Artetxe et al. 2017, "Learning bilingual word embeddings with (almost) no bilingual data").

    Deterministic for a given ``seed`` on a given device and torch build (the global RNG is untouched).

    Args:
        source: (N, d_s) source (old-model) embeddings.
        target: (N, d_t) target (new-model) embeddings of the same N items; d_t may differ.
        method: ``"mlp"`` (default) | ``"linear"`` | ``"procrustes"``.
        objective: ``"mse"`` | ``"cosine"`` | ``"clip"`` | ``"info_nce"`` (procrustes: mse or cosine);
            ``None``: the method's default, :data:`DEFAULT_OBJECTIVE` (mlp → clip, linear and
            procrustes → mse, their closed forms).
        test_fraction: held-out fraction in [0, 1); 0 measures on the training rows (flagged).
        val_fraction: validation fraction of the training rows for iterative fits, in [0, 1);
            ignored by closed forms; 0 monitors the training objective (no early stopping).
        seed: split / initialisation / shuffling seed (≥ 0).
        epochs: maximum epochs of gradient training (≥ 1; closed forms ignore it).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW decoupled weight decay (≥ 0).
        hidden_dim: MLP hidden width (``None``: ``min(2048, max(64, 2·max(d_s, d_t)))``).
        num_layers: MLP Linear layers (≥ 2).
        batch_size: rows per step (≥ 1; contrastive objectives use the batch as negatives).
        temperature: initial (clip) or fixed (info_nce) softmax temperature (> 0).
        ridge: relative ridge strength ≥ 0 of the closed form and of the gradient fits' start, or
            ``"auto"`` (chosen on the training pairs by ``ridge_cv``).
        ridge_cv: how ``ridge="auto"`` chooses: ``"gcv"`` (default; generalised cross-validation,
            closed form from one SVD, :func:`ridge_gcv`) or ``"kfold"`` / ``"kfold:K"`` (K-fold
            cross-validation on the training pairs, K = 5 by default, :func:`ridge_kfold`).
        scale: fit Procrustes' isotropic scale ``c`` (else ``c = 1``).
        patience: epochs without validation improvement before stopping (≥ 1).
        restore_mean: re-centre a non-mse gradient fit's outputs on the target mean.
        unpaired_source: (U_s, d_s) extra source rows with no pair, for refinement.
        unpaired_target: (U_t, d_t) extra target rows with no pair, for refinement.
        refine_iters: refinement rounds (≥ 0) when both unpaired sets are given.
        csls_k: > 0 scores the report's "before" / "after" searches with CSLS of this k.
        progress: show progress of gradient fits on stderr: a tqdm bar in a terminal, else about
            ten flushed lines (``fit mlp/clip: epoch 10/100 loss … monitored …``).

    Returns:
        ``(adapter, report)``: the :class:`Adapter` (eval mode, on the input's device, float64 if
        either input is float64 else float32) and a :class:`FitReport`.

    Cost: closed forms O(N·d_s·(d_s + d_t) + d_s³) time (GCV adds one SVD of the training rows);
    each refinement round O(U_s·U_t·d_t) for the CSLS mutual-neighbour search, in blocks. Gradient
    fits add O(epochs·N·(d_s·d_t + h·(d_s + d_t))) and, for contrastive objectives, O(batch_size²)
    logits per step. The report searches the held-out rows four times: O(N_test²·(d_s + d_t)) time,
    O(block·N_test) memory.

    Example:
        >>> adapter, report = fit_adapter(old, new, method="linear", ridge="auto")
        >>> print(report.format_table())
    """
    check_features(source, "source")
    check_features(target, "target")
    check_same_rows(source, target, "source", "target")
    check_same_device(("source", source), ("target", target))
    check_choice(method, "method", METHODS)
    if objective is None:
        objective = DEFAULT_OBJECTIVE[method]
    check_choice(objective, "objective", OBJECTIVES)
    allowed = _CLOSED_FORM_OBJECTIVES.get(method)
    if allowed is not None and objective not in allowed:
        raise ValueError(
            f"objective must be one of {allowed} for method={method!r} (a closed form), got {objective!r}; "
            "use method='linear' or 'mlp' for contrastive objectives"
        )
    _check_fraction(test_fraction, "test_fraction")
    _check_fraction(val_fraction, "val_fraction")
    check_int(seed, "seed", 0)
    check_int(epochs, "epochs", 1)
    check_positive(lr, "lr")
    check_positive(weight_decay, "weight_decay", allow_zero=True)
    if hidden_dim is not None:
        check_int(hidden_dim, "hidden_dim", 1)
    check_int(num_layers, "num_layers", 2, what=" (an MLP has at least one hidden layer)")
    check_int(batch_size, "batch_size", 1)
    check_positive(temperature, "temperature")
    if objective == "clip" and temperature < 0.01:
        raise ValueError(
            f"temperature must be ≥ 0.01 for objective='clip' (CLIP's scale ≤ 100), got {temperature}"
        )
    if ridge != "auto":
        if isinstance(ridge, str):
            raise ValueError(f"ridge must be a finite number >= 0 or 'auto', got {ridge!r}")
        check_positive(ridge, "ridge", allow_zero=True)
    folds = _ridge_selection(ridge_cv)
    for flag, value in (("scale", scale), ("restore_mean", restore_mean)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be a bool, got {value!r}")
    check_int(patience, "patience", 1)
    check_int(refine_iters, "refine_iters", 0)
    check_int(csls_k, "csls_k", 0)
    closed_form = method == "procrustes" or (method == "linear" and objective == "mse")
    refining = unpaired_source is not None or unpaired_target is not None
    if refining:
        if unpaired_source is None or unpaired_target is None:
            raise ValueError("refinement needs both unpaired_source and unpaired_target")
        check_features(unpaired_source, "unpaired_source")
        check_features(unpaired_target, "unpaired_target")
        if unpaired_source.shape[1] != source.shape[1] or unpaired_target.shape[1] != target.shape[1]:
            raise ValueError(
                f"unpaired_source / unpaired_target must have widths {source.shape[1]} / {target.shape[1]}, "
                f"got {shape_str(unpaired_source)} and {shape_str(unpaired_target)}"
            )
        if not closed_form:
            raise ValueError(
                f"refinement with unpaired rows needs a closed-form fit (procrustes, or linear with mse), "
                f"got method={method!r}, objective={objective!r}"
            )
    n = source.shape[0]
    if test_fraction > 0 and n < 2:
        raise ValueError(
            f"source and target need at least 2 rows with test_fraction={test_fraction} (one to fit, one to "
            f"hold out), got source {shape_str(source)}"
        )

    start = time.perf_counter()
    dtype = torch.float64 if torch.float64 in (source.dtype, target.dtype) else torch.float32
    device = source.device
    x, y = source.detach().to(dtype), target.detach().to(dtype)
    train_idx, test_idx = (i.to(device) for i in split_rows(n, test_fraction, seed))
    val_idx = train_idx[:0]
    if not closed_form and val_fraction > 0 and len(train_idx) >= 2:
        keep, held = split_rows(len(train_idx), val_fraction, seed + 1)
        train_idx, val_idx = train_idx[keep.to(device)], train_idx[held.to(device)]
    d_s, d_t = x.shape[1], y.shape[1]
    normalize = objective != "mse"
    xp = F.normalize(x, dim=-1, eps=EPS) if normalize else x
    yp = F.normalize(y, dim=-1, eps=EPS) if normalize else y

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = Adapter(
            method,
            d_s,
            d_t,
            normalize_input=normalize,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            dtype=dtype,
            info={"objective": objective},
        ).to(device)
    info = adapter.info

    selected_by: str | None = None
    chosen: float | None = None
    if method != "procrustes":
        if ridge == "auto":  # relative strength: the same choice for the standardised gradient start
            if folds:
                chosen, _ = ridge_kfold(xp[train_idx], yp[train_idx], folds=folds, seed=seed)
                selected_by = f"{folds}-fold"
            else:
                chosen, _ = ridge_gcv(xp[train_idx], yp[train_idx])
                selected_by = "gcv"
        else:
            chosen, selected_by = float(ridge), "given"
        info["ridge"] = chosen

    criterion: nn.Module | None = None
    epochs_run, best_epoch = 0, None
    refined: list[int] = []
    mean_restored = False
    if closed_form:
        _fit_closed(adapter, xp[train_idx], yp[train_idx], chosen or 0.0, scale)
        if refining and refine_iters > 0:
            assert unpaired_source is not None and unpaired_target is not None
            us = unpaired_source.detach().to(device=device, dtype=dtype)
            ut = unpaired_target.detach().to(device=device, dtype=dtype)
            utp = F.normalize(ut, dim=-1, eps=EPS) if normalize else ut
            usp = F.normalize(us, dim=-1, eps=EPS) if normalize else us
            for _ in range(refine_iters):
                rows, cols = _mutual_pairs(adapter.transform(us), ut, k=10)
                refined.append(len(rows))
                _fit_closed(
                    adapter,
                    torch.cat([xp[train_idx], usp[rows]]),
                    torch.cat([yp[train_idx], utp[cols]]),
                    chosen or 0.0,
                    scale,
                )
            info["refined_pairs"] = refined
    else:
        with torch.no_grad():
            x64, y64 = xp[train_idx].double(), yp[train_idx].double()
            weight, mu_x, mu_y = ridge_fit(x64, y64, chosen or 0.0)
            sx, sy = _rms(x64 - mu_x), _rms(y64 - mu_y)  # the ridge map in standardised units: W·σ_s/σ_t
            adapter.source_mean.copy_(mu_x)
            adapter.source_scale.copy_(sx)
            adapter.target_mean.copy_(mu_y)
            adapter.target_scale.copy_(sy)
            adapter.linear.weight.copy_((weight * sx / sy).T)
            adapter.linear.bias.zero_()
        if objective == "clip":
            criterion = CLIPLoss(init_temperature=temperature).to(device=device, dtype=dtype)
        elif objective == "info_nce":
            criterion = InfoNCELoss(temperature=temperature)
        epochs_run, best_epoch = _train(
            adapter,
            criterion,
            objective,
            xp,
            yp,
            train_idx,
            val_idx,
            seed=seed,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            patience=patience,
            progress=progress,
        )
        info.update(epochs=epochs_run, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
        if isinstance(criterion, CLIPLoss):
            info["temperature"] = criterion.temperature.temperature
        elif criterion is not None:
            info["temperature"] = temperature
        if restore_mean and objective != "mse":
            _restore_mean(adapter, x[train_idx], yp[train_idx])
            mean_restored = True
            info["mean_restored"] = True

    adapter.eval()
    loss_fn = _objective_fn(objective, criterion)
    eval_idx = test_idx if len(test_idx) else train_idx
    warnings: list[str] = []
    if not len(test_idx):
        warnings.append("test_fraction=0: measured on the training pairs (optimistic)")
    elif len(test_idx) < MIN_TEST_ROWS:
        lo, hi = _wilson(0.5, len(test_idx))
        warnings.append(
            f"only {len(test_idx)} held-out rows (< {MIN_TEST_ROWS}): R@1 is uncertain by up to "
            f"±{(hi - lo) / 2:.2f}, and retrieval among so few rows is easier than in a full index"
        )
    from alignkit.search import evaluate_migration

    with torch.no_grad():

        def objective_on(rows: Tensor) -> float | None:
            return float(loss_fn(adapter.transform(x[rows]), y[rows])) if len(rows) else None

        objective_train = objective_on(train_idx)
        assert objective_train is not None
        mapped = adapter.transform(x[eval_idx])
        columns = evaluate_migration(x[eval_idx], y[eval_idx], mapped, csls_k=csls_k)
        after = columns["after"]
        assert after is not None
        before = columns["before"]
        r1 = after["recall@1"]
        report = FitReport(
            method=method,
            objective=objective,
            source_dim=d_s,
            target_dim=d_t,
            n_train=len(train_idx),
            n_val=len(val_idx),
            n_test=len(test_idx),
            evaluated_on="held-out" if len(test_idx) else "train",
            retrieval=columns,
            recall_at_1_before=None if before is None else before["recall@1"],
            recall_at_1_after=r1,
            recall_at_1_interval=_wilson(r1, len(eval_idx)),
            objective_train=objective_train,
            objective_val=objective_on(val_idx),
            objective_test=objective_on(test_idx),
            ridge=chosen,
            ridge_selected_by=selected_by,
            mean_restored=mean_restored,
            refined_pairs=refined,
            csls_k=csls_k,
            epochs=epochs_run,
            best_epoch=best_epoch,
            temperature=info.get("temperature"),
            warnings=warnings,
            seconds=time.perf_counter() - start,
        )
    return adapter, report



def _train(
    adapter: Adapter,
    criterion: nn.Module | None,
    objective: str,
    xp: Tensor,
    yp: Tensor,
    train_idx: Tensor,
    val_idx: Tensor,
    *,
    seed: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    patience: int,
    progress: bool,
) -> tuple[int, int]:
    """AdamW on the adapter's core (and the criterion's temperature); returns (epochs run, best epoch)."""
    with torch.no_grad():
        z = (xp - adapter.source_mean) / adapter.source_scale  # xp is already row-normalised if needed
        t = (yp - adapter.target_mean) / adapter.target_scale
    sy, my = adapter.target_scale, adapter.target_mean
    loss_fn = _objective_fn(objective, criterion)

    def loss_of(rows: Tensor) -> Tensor:
        h = adapter._core(z[rows])
        if objective == "mse":  # in standardised units: the original MSE divided by σ_t² (same argmin)
            return F.mse_loss(h, t[rows])
        return loss_fn(h * sy + my, yp[rows])

    groups = [{"params": [p for p in adapter.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    if criterion is not None and any(p.requires_grad for p in criterion.parameters()):
        groups.append({"params": [p for p in criterion.parameters() if p.requires_grad], "weight_decay": 0.0})
    from alignkit.train.optim import AdamW  # torch's AdamW, without importing torch._dynamo (1-2 s)

    optimizer = AdamW(groups, lr=lr)
    generator = torch.Generator().manual_seed(seed + 1)
    n_train = len(train_idx)
    n_batches = max(1, math.ceil(n_train / batch_size))

    def evaluate(rows: Tensor) -> float:
        adapter.eval()
        with torch.no_grad():
            value = float(loss_of(rows))
        adapter.train()
        return value

    monitor = val_idx if len(val_idx) else train_idx
    best = evaluate(monitor)
    best_epoch, best_state = 0, _snapshot(adapter, criterion)
    since_best = 0
    epoch = 0
    adapter.train()
    # a bar in a terminal, else about ten flushed lines ``fit mlp/clip: epoch 10/100 loss … monitored …``
    with Progress(epochs, f"fit {adapter.method}/{objective}", unit="epoch", enabled=progress) as shown:
        for epoch in range(1, epochs + 1):
            order = train_idx[torch.randperm(n_train, generator=generator).to(train_idx.device)]
            for rows in order.tensor_split(n_batches):
                loss = loss_of(rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            value = evaluate(monitor)
            shown.update(loss=f"{float(loss.detach()):.4g}", monitored=f"{value:.4g}")
            if value < best:
                best, best_epoch, best_state, since_best = value, epoch, _snapshot(adapter, criterion), 0
            elif len(val_idx):
                since_best += 1
                if since_best >= patience:
                    break
    adapter.load_state_dict(best_state[0])
    if criterion is not None:
        criterion.load_state_dict(best_state[1])
    adapter.eval()
    return epoch, best_epoch


def _snapshot(adapter: Adapter, criterion: nn.Module | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    def clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: value.detach().clone() for name, value in state.items()}

    return clone(adapter.state_dict()), (clone(criterion.state_dict()) if criterion is not None else {})
