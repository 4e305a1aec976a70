"""The ``repa`` recipe: a small SiT trained by flow matching on the digits, with REPA.

:class:`~alignkit.models.SiT` (patch embedding, adaLN-Zero blocks conditioned on time and class,
velocity prediction on the linear interpolant) on the 8×8 digits scaled to [−1, 1], plus
``loss.repa_weight`` · REPA (Yu et al. 2024) between the tokens after block ``loss.repa_depth`` —
projected by a Linear-SiLU-Linear-SiLU-Linear head of width ``model.projector_dim`` (``null``: linear)
— and a frozen target encoder's patch tokens (resampled to the SiT's token count by
:func:`~alignkit.models.resample_tokens`). ``loss.repa_weight: 0`` is the baseline.

``model.target_encoder``:

* ``simclr`` (default): :func:`~alignkit.models.generative.digit_target_encoder`, a small CNN trained
  by SimCLR on the training images **without labels or captions**, cached; 4×4 grid of 64-d tokens;
* a run directory of ``alignkit train`` (any recipe with an image tower): that run's image tower
  output (N, W) is used as one token per image, broadcast over the SiT's grid by the resampling.

Per epoch the validator records ``val_loss`` (flow matching with fixed t and noise) and ``val_fd``
(FD of one sample per validation image, with its label, against the validation images, in the
features of the cached digit classifier :class:`~alignkit.metrics.GenerationJudge`) and draws a
per-class grid of samples from fixed noise into ``RUN/generation/epoch_NNN.png``. The test report
(``metrics.json``) holds FD, class accuracy, precision and recall against the test split, with the
references FD(training images) and FD(uniform noise).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from alignkit.recipes.systems.base import RecipeSystem

if TYPE_CHECKING:
    from alignkit.recipes.data import RecipeData

__all__ = ["REPASystem"]

#: Samples per class in the grids of the report.
GRID_COLUMNS = 10


def _target_tokens(spec: str, images: Tensor, train_rows: Tensor, epochs: int) -> Tensor:
    """(N, T', d) frozen target tokens for every row."""
    if spec == "simclr":
        from alignkit.models.generative import digit_target_encoder

        encoder, _ = digit_target_encoder(images[train_rows], epochs=epochs)
        with torch.no_grad():
            return encoder.tokens(images)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"config key 'model.target_encoder' must be 'simclr' or the directory of an alignkit train "
            f"run, got {spec!r}"
        )
    from alignkit.captioning import load_run

    run = load_run(path)
    with torch.no_grad():
        feats = run.system.image_features(images)
    if feats.dim() == 2:
        feats = feats[:, None, :]  # one token per image; resample_tokens broadcasts it over the grid
    return feats.float()


class REPASystem(RecipeSystem):
    """The ``repa`` recipe (see the module docstring)."""

    recipe = "repa"

    def __init__(self, cfg: Mapping[str, Any], data: RecipeData) -> None:
        super().__init__()
        from alignkit.models import REPARegularizer, SiT

        m, loss = cfg["model"], cfg["loss"]
        images = data.images
        if not isinstance(images, Tensor) or images.dim() != 3 or data.labels is None:
            raise ValueError("recipe 'repa' needs the digits: (N, H, W) images with class labels")
        self.size = int(images.shape[-1])
        self.num_classes = int(data.labels.max()) + 1
        self.sit = SiT(
            input_size=self.size, patch_size=m["patch_size"], in_channels=1, width=m["width"],
            depth=m["depth"], num_heads=m["num_heads"], num_classes=self.num_classes,
            class_dropout=m["class_dropout"],
        )  # fmt: skip
        self.repa_depth = loss["repa_depth"]
        self.sampler = {"steps": m["sample_steps"], "method": m["sampler"], "cfg_scale": m["cfg_scale"]}
        self.reg: REPARegularizer | None = None
        if loss["repa_weight"] > 0:
            tokens = _target_tokens(
                m["target_encoder"], images.float(), data.splits["train"], m["target_epochs"]
            )
            self.register_buffer("targets", tokens, persistent=False)
            self.reg = REPARegularizer(
                self.sit, SiT.block_name(self.repa_depth), target_dim=tokens.shape[-1],
                hidden_dim=m["projector_dim"], weight=loss["repa_weight"], source_dim=m["width"],
            )  # fmt: skip
        self._judges: dict[str, Any] = {}

    # -- training ---------------------------------------------------------------------------------
    def batch(self, data: RecipeData, rows: Tensor) -> list[Tensor]:
        x = data.images[rows].float()[:, None] * 2 - 1  # [0, 1] → [−1, 1]
        return [x, data.labels[rows].long(), rows.long()]

    def training_step(self, batch: Sequence[Tensor]) -> dict[str, Any]:
        from alignkit.models import flow_matching_loss

        x, y, rows = batch
        fm = flow_matching_loss(self.sit, x, y)
        out: dict[str, Any] = {"fm_loss": fm.detach()}
        loss = fm
        if self.reg is not None:
            r = self.reg.loss(self.targets[rows.to(self.targets.device)])
            out["repa_loss"] = r.detach()
            loss = loss + r
        out["loss"] = loss
        return out

    def validation_loss(self, batch: Sequence[Tensor]) -> Tensor:
        from alignkit.models import flow_matching_loss

        x, y, _ = batch
        gen = torch.Generator(device=x.device).manual_seed(0)
        t = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        value = flow_matching_loss(self.sit, x, y, t=t, noise=noise)
        if self.reg is not None:
            self.reg._tokens = None  # the hook captured this forward; no alignment loss here
        return value

    # -- the RecipeSystem interface (a generative model has no text side) --------------------------
    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """The SiT's representation of clean images: mean token after block ``repa_depth`` at t = 0,
        null class, (N, width)."""
        x = images.float().reshape(len(images), 1, self.size, self.size).to(self._device()) * 2 - 1
        t = torch.zeros(len(x), device=x.device)
        y = torch.full((len(x),), self.sit.null_class, device=x.device, dtype=torch.long)
        return self.sit.hidden(x, t, y, self.repa_depth).mean(1)

    def encode_text(self, text: Tensor) -> Tensor:
        raise ValueError("the repa recipe is a generative model of images; it has no text side")

    def image_features(self, images: Tensor) -> Tensor:
        return self.encode_image(images)

    def _device(self) -> torch.device:
        return next(self.sit.parameters()).device

    # -- generation and its evaluation ------------------------------------------------------------
    @torch.no_grad()
    def generate(self, labels: Tensor, seed: int = 0) -> Tensor:
        """(N,) labels → (N, H, W) samples in [0, 1] (the configured sampler, fixed seed)."""
        from alignkit.models import sample_flow

        out = sample_flow(self.sit, labels.to(self._device()), seed=seed, **self.sampler)
        return ((out[:, 0] + 1) / 2).clamp(0, 1).cpu()

    def _judge(self, data: RecipeData, reference: str) -> Any:
        """The cached digit classifier (trained on the training split) with ``reference``'s images."""
        from alignkit.metrics.generation import GenerationJudge

        if "test" not in self._judges:
            s, x, y = data.splits, data.images.float(), data.labels.long()
            self._judges["test"] = GenerationJudge.from_digits(
                x[s["train"]], y[s["train"]], x[s["test"]], y[s["test"]]
            )
        if reference not in self._judges:
            base = self._judges["test"]
            rows = data.splits[reference]
            reference_images = data.images[rows].float()
            self._judges[reference] = GenerationJudge(base.classifier, reference_images, base.test_accuracy)
        return self._judges[reference]

    def _grid(self, path: Path, title: str) -> None:
        from alignkit.report.generation import digit_grid

        labels = torch.arange(self.num_classes).repeat_interleave(GRID_COLUMNS)
        samples = self.generate(labels, seed=12345)
        samples = samples.reshape(self.num_classes, GRID_COLUMNS, self.size, self.size)
        digit_grid(samples, path, title=title)

    def make_validator(
        self, data: RecipeData, out_dir: str | os.PathLike[str] | None
    ) -> Callable[[nn.Module], dict[str, float]]:
        """Per epoch: ``val_loss`` (fixed t and noise), ``val_fd`` against the validation images, and a
        grid of samples into ``out_dir/generation/epoch_NNN.png`` (rank 0)."""
        from alignkit.recipes.evaluate import VALIDATION_ROWS
        from alignkit.recipes.systems.base import to_device
        from alignkit.report.generation import GENERATION_DIR

        rows = data.splits["val"][:VALIDATION_ROWS]
        gen_dir = None if out_dir is None else Path(out_dir) / GENERATION_DIR

        def evaluate(system: nn.Module) -> dict[str, float]:
            device = self._device()
            batch = [to_device(t, device) for t in self.batch(data, rows)]
            loss = float(self.validation_loss(batch))
            labels = data.labels[rows].long()
            fd = self._judge(data, "val").score(self.generate(labels, seed=1), labels)["fd"]
            if gen_dir is not None:
                epoch = len(list(gen_dir.glob("epoch_*.png"))) + 1 if gen_dir.is_dir() else 1
                self._grid(gen_dir / f"epoch_{epoch:03d}.png", f"epoch {epoch}")
            return {"val_loss": loss, "val_fd": float(fd)}

        return evaluate

    def evaluate_run(
        self, data: RecipeData, run_dir: str | os.PathLike[str], recipe: str, epochs: int, start: float | None
    ) -> dict[str, Any]:
        """Test-split generation metrics into ``metrics.json``, the final grid and the FD curve into
        ``RUN/generation/``."""
        from alignkit.io import atomic_write, json_safe
        from alignkit.report.generation import GENERATION_DIR, fd_curve
        from alignkit.train import read_metrics

        run = Path(run_dir)
        was_training = self.training
        self.eval()
        try:
            judge = self._judge(data, "test")
            labels = data.labels[data.splits["test"]].long()
            scores = judge.score(self.generate(labels, seed=0), labels)
            train_rows = data.splits["train"][: len(labels)]
            ref = judge.score(data.images[train_rows].float(), data.labels[train_rows])
            noise = torch.rand(len(labels), self.size, self.size, generator=torch.Generator().manual_seed(0))
            noise_fd = judge.score(noise)["fd"]
            gen_dir = run / GENERATION_DIR
            self._grid(gen_dir / "samples.png", "end of training")
        finally:
            self.train(was_training)
        if (run / "metrics.jsonl").is_file():
            fd_curve(read_metrics(run / "metrics.jsonl"), gen_dir / "fd_curve.png")
        result: dict[str, Any] = {
            "recipe": recipe,
            "epochs": int(epochs),
            "fd": scores["fd"],
            "class_accuracy": scores["accuracy"],
            "precision": scores["precision"],
            "recall": scores["recall"],
            "fd_train_images": ref["fd"],
            "fd_uniform_noise": noise_fd,
            "judge_test_accuracy": judge.test_accuracy,
            "repa_weight": self.reg.weight if self.reg is not None else 0.0,
            "repa_depth": self.repa_depth,
            "seconds": float(time.perf_counter() - start) if start is not None else 0.0,
        }
        text = (
            f"{len(labels)} samples (one per test image, with its label; {self.sampler['method']}, "
            f"{self.sampler['steps']} steps, guidance {self.sampler['cfg_scale']:g}) against the test "
            f"digits in a digit classifier's features (test accuracy {judge.test_accuracy:.3f}): "
            f"FD {scores['fd']:.2f} "
            f"(training images: {ref['fd']:.2f}; uniform noise: {noise_fd:.1f}), class accuracy "
            f"{scores['accuracy']:.3f}, precision {scores['precision']:.3f}, recall {scores['recall']:.3f}."
        )
        gen_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(gen_dir / "summary.json", "w") as f:
            summary = {"text": text, **{k: v for k, v in result.items() if k != "seconds"}}
            f.write(json.dumps(summary, indent=1))
        clean = json_safe(result)
        with atomic_write(run / "metrics.json", "w") as f:
            f.write(json.dumps(clean, indent=2) + "\n")
        return result
