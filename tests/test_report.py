"""Tests of alignkit.report (plots, report.html), alignkit.recipes.compare and the report / compare commands.

The run directories are synthetic (random embeddings with the contract's keys); one test writes
``metrics.jsonl`` with the real :class:`alignkit.train.Trainer` so the loss-curve reader follows its format.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from matplotlib.image import imread
from safetensors.torch import save_file
from torch import nn

from alignkit.cli import compare as compare_command
from alignkit.cli import report as report_command
from alignkit.cli._common import parse_overrides
from alignkit.recipes.compare import COLUMNS, compare, markdown_table
from alignkit.report import (
    cka_heatmap,
    cka_matrix,
    embedding_projection,
    image_text_similarity,
    loss_curves,
    pca_project,
    write_plots,
    write_report,
)
from alignkit.report.labels import METRICS as METRIC_LIST
from alignkit.report.labels import chance_level, metric_rows

METRICS = {
    "recipe": "clip",
    "zero_shot_accuracy": 0.9321,
    "i2t_recall@1": 0.4183,
    "i2t_recall@5": 0.7712,
    "i2t_recall@10": 0.8834,
    "t2i_recall@1": 0.4027,
    "t2i_recall@5": 0.7561,
    "t2i_recall@10": 0.8745,
    "median_rank": 2.0,
    "cka_linear": 0.6612,
    "mutual_knn": 0.3142,
    "alignment": 0.5218,
    "uniformity": -2.8763,
    "seconds": 41.27,
    "epochs": 3,
}


def _records() -> list[dict[str, Any]]:
    """Records in the Trainer's format (see Trainer._run_epoch)."""
    out: list[dict[str, Any]] = []
    step = 0
    for epoch in (1, 2, 3):
        for _ in range(3):
            step += 1
            loss = 3.0 / step
            out.append(
                {
                    "type": "step",
                    "step": step,
                    "epoch": epoch,
                    "loss": loss,
                    "lr": 1e-3,
                    "samples_per_s": 99.0,
                }
            )
        out.append(
            {
                "type": "epoch",
                "epoch": epoch,
                "step": step,
                "train_loss": 3.0 / (step - 1),
                "val_loss": 2.0 / epoch,
                "val_zero_shot_accuracy": 0.3 * epoch,
                "monitor": "val_loss",
                "best": True,
            }
        )
    return out


def _embeddings(n: int = 40, e: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    image_tower = torch.randn(n, 12, generator=g)
    text_tower = torch.randn(n, 16, generator=g) + 0.5 * image_tower.repeat(1, 2)[:, :16]
    image = nn.functional.normalize(image_tower[:, :e] + torch.randn(n, e, generator=g) * 0.1, dim=-1)
    text = nn.functional.normalize(image + 0.3 * torch.randn(n, e, generator=g), dim=-1)
    return {
        "image": image,
        "text": text,
        "labels": labels.long(),
        "class_text": nn.functional.normalize(torch.randn(10, e, generator=g), dim=-1),
        "image_tower": image_tower,
        "text_tower": text_tower,
    }


def _make_run(root: Path, name: str = "clip", metrics: dict[str, Any] | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        "recipe: clip\nseed: 0\ntrain:\n  epochs: 3\n  lr: 0.003\n  batch_size: 128\nloss:\n  name: clip\n",
        encoding="utf-8",
    )
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in _records())
    (run / "metrics.json").write_text(json.dumps(metrics or METRICS), encoding="utf-8")
    save_file(_embeddings(), str(run / "embeddings_test.safetensors"))
    return run


def _bare_run(root: Path, name: str, metrics: dict[str, Any]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return run


def _png(path: Path) -> np.ndarray:
    assert path.is_file(), path
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01  # something was drawn
    return pixels


# ---------------------------------------------------------------------------------------- references


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(a[k] * b[k] for k in range(len(a)))
    na = math.sqrt(sum(v * v for v in a))
    nb = math.sqrt(sum(v * v for v in b))
    return dot / (na * nb)


def _pca_reference(x: np.ndarray, dim: int) -> np.ndarray:
    """Covariance by loops, eigenvectors by numpy, largest-|loading| positive."""
    n, d = x.shape
    mean = [sum(x[i, j] for i in range(n)) / n for j in range(d)]
    xc = np.array([[x[i, j] - mean[j] for j in range(d)] for i in range(n)])
    cov = np.zeros((d, d))
    for a in range(d):
        for b in range(d):
            cov[a, b] = sum(xc[i, a] * xc[i, b] for i in range(n))
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dim]
    comps = vectors[:, order].T
    for k in range(dim):
        if comps[k, np.argmax(np.abs(comps[k]))] < 0:
            comps[k] = -comps[k]
    return xc @ comps.T


def _linear_cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """HSIC with explicit Gram matrices and centring matrix H (Kornblith et al. 2019)."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k = np.array([[float(np.dot(x[i], x[j])) for j in range(n)] for i in range(n)])
    lmat = np.array([[float(np.dot(y[i], y[j])) for j in range(n)] for i in range(n)])
    kc, lc = h @ k @ h, h @ lmat @ h
    return float((kc * lc).sum() / math.sqrt((kc * kc).sum() * (lc * lc).sum()))


# --------------------------------------------------------------------------------------------- plots


def test_loss_curves_plots_the_logged_values(tmp_path: Path) -> None:
    records = _records()
    out = tmp_path / "loss.png"
    fig = loss_curves(records, path=out, title="run")
    pixels = _png(out)
    assert pixels.shape[1] > 2 * pixels.shape[0]  # three panels side by side
    left, losses, scores = fig.axes[:3]
    step_line = left.lines[0]
    assert list(step_line.get_xdata()) == list(range(1, 10))
    np.testing.assert_allclose(step_line.get_ydata(), [3.0 / s for s in range(1, 10)])
    epoch_marks = left.lines[1]
    np.testing.assert_allclose(epoch_marks.get_ydata(), [1.5, 0.6, 3.0 / 8])
    # losses and scores on separate axes; the best-epoch stars are in the legend
    labels = [line.get_label() for line in losses.lines]
    assert labels == ["val_loss", "new best val_loss (best.json saved)"]
    np.testing.assert_allclose(losses.lines[0].get_ydata(), [2.0, 1.0, 2.0 / 3])
    legend = [t.get_text() for t in losses.get_legend().get_texts()]
    assert "new best val_loss (best.json saved)" in legend
    assert [line.get_label() for line in scores.lines] == ["val_zero_shot_accuracy"]
    np.testing.assert_allclose(scores.lines[0].get_ydata(), [0.3, 0.6, 0.9])
    assert scores.get_ylim()[1] < 1.0  # scaled to the scores, not to the losses
    # every panel has a legend; without validation scores the figure has two panels
    assert all(ax.get_legend() is not None for ax in fig.axes)
    only_loss = [{k: v for k, v in r.items() if k != "val_zero_shot_accuracy"} for r in records]
    assert len(loss_curves(only_loss).axes) == 2


def test_loss_curves_reads_a_real_trainer_log(tmp_path: Path) -> None:
    from alignkit.train import Trainer

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
            x, y = batch
            return {"loss": ((self.lin(x).squeeze(-1) - y) ** 2).mean()}

    x, y = torch.randn(32, 3), torch.randn(32)
    trainer = Trainer(
        Tiny(),
        (x, y),
        epochs=2,
        lr=1e-2,
        batch_size=8,
        out_dir=tmp_path,
        evaluate=lambda m: {"val_loss": float(((m.lin(x).squeeze(-1) - y) ** 2).mean())},
        log_every=1,
        progress=False,
    )
    result = trainer.fit()
    fig = loss_curves(tmp_path / "metrics.jsonl", path=tmp_path / "curves.png")
    _png(tmp_path / "curves.png")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [r["loss"] for r in result.steps])
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), [r["val_loss"] for r in result.epochs])


def test_loss_curves_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="records hold no step record"):
        loss_curves([{"type": "resume", "step": 3}])
    with pytest.raises(ValueError, match=r"records: metrics log .* does not exist"):
        loss_curves(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="records must be a sequence"):
        loss_curves({"step": 1, "loss": 2.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dpi"):
        loss_curves(_records(), dpi=1)


def test_image_text_similarity_matches_loop_reference(tmp_path: Path) -> None:
    emb = _embeddings(n=40)
    out = tmp_path / "sim.png"
    fig = image_text_similarity(emb["image"], emb["text"], emb["labels"], samples=40, path=out)
    pixels = _png(out)
    assert abs(pixels.shape[0] - pixels.shape[1]) < 0.5 * pixels.shape[0]  # roughly square
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert shown.shape == (40, 40)
    labels = emb["labels"].tolist()
    order = sorted(range(40), key=lambda i: (labels[i], i))  # all rows, sorted by digit
    image, text = emb["image"].double().tolist(), emb["text"].double().tolist()
    for r in range(40):
        for c in range(40):
            ref = _cos(image[order[r]], text[order[c]])
            assert shown[r, c] == pytest.approx(ref, abs=1e-6)
    # one tick per digit block, at its centre (4 items per digit here), legible at any size
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(d) for d in range(10)]
    np.testing.assert_allclose(ax.get_yticks(), [4 * d + 1.5 for d in range(10)])
    np.testing.assert_allclose(ax.get_xticks(), [4 * d + 1.5 for d in range(10)])
    big = image_text_similarity(*(_embeddings(n=400)[k] for k in ("image", "text", "labels")), samples=400)
    assert len(big.axes[0].get_xticklabels()) == 10


def test_image_text_similarity_sample_is_stratified_and_sorted() -> None:
    emb = _embeddings(n=100)
    fig = image_text_similarity(emb["image"], emb["text"], emb["labels"], samples=20, seed=3)
    ax = fig.axes[0]
    assert [int(t.get_text()) for t in ax.get_yticklabels()] == list(range(10))
    np.testing.assert_allclose(ax.get_yticks(), [2 * d + 0.5 for d in range(10)])  # 2 per digit
    # a batch of two items, fp16 input
    two = image_text_similarity(emb["image"][:2].half(), emb["text"][:2].half(), emb["labels"][:2])
    shown = np.asarray(two.axes[0].images[0].get_array())
    assert shown.shape == (2, 2) and np.isfinite(shown).all()


def test_image_text_similarity_bad_input() -> None:
    emb = _embeddings(n=20)
    with pytest.raises(ValueError, match="image and text must have the same number of rows"):
        image_text_similarity(emb["image"], emb["text"][:10], emb["labels"])
    with pytest.raises(ValueError, match="joint dimension"):
        image_text_similarity(emb["image"], emb["text"][:, :4], emb["labels"])
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        image_text_similarity(emb["image"], emb["text"], emb["labels"].float())
    with pytest.raises(ValueError, match="labels must have N=20"):
        image_text_similarity(emb["image"], emb["text"], emb["labels"][:5])
    with pytest.raises(ValueError, match="samples"):
        image_text_similarity(emb["image"], emb["text"], emb["labels"], samples=1)
    bad = emb["image"].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="image has 1 non-finite"):
        image_text_similarity(bad, emb["text"], emb["labels"])


def test_zero_rows_do_not_make_nan() -> None:
    emb = _embeddings(n=20)
    image = emb["image"].clone()
    image[3] = 0.0
    fig = image_text_similarity(image, emb["text"], emb["labels"], samples=20)
    assert np.isfinite(np.asarray(fig.axes[0].images[0].get_array())).all()
    assert torch.isfinite(pca_project(torch.zeros(5, 3))).all()


def test_pca_project_matches_reference() -> None:
    x = torch.randn(30, 5, dtype=torch.float64) * torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    z = pca_project(x, 2)
    assert z.shape == (30, 2) and z.dtype == torch.float64
    np.testing.assert_allclose(z.numpy(), _pca_reference(x.numpy(), 2), atol=1e-9)
    z3 = pca_project(x, 3)
    np.testing.assert_allclose(z3.numpy(), _pca_reference(x.numpy(), 3), atol=1e-9)
    # batch of 1 and 2
    assert torch.equal(pca_project(x[:1], 2), torch.zeros(1, 2, dtype=torch.float64))
    z2 = pca_project(x[:2], 2)
    assert z2.shape == (2, 2)
    assert float(z2[0, 0]) == pytest.approx(-float(z2[1, 0]))
    assert float((x[0] - x[1]).norm()) == pytest.approx(float((z2[0] - z2[1]).norm()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pca_project_half_precision(dtype: torch.dtype) -> None:
    x = torch.randn(40, 6) * torch.tensor([4.0, 2.0, 1.0, 0.5, 0.3, 0.1])
    low = pca_project(x.to(dtype), 2)
    assert low.dtype == dtype and torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), pca_project(x, 2), atol=0.1, rtol=0.05)


def test_pca_project_bad_input() -> None:
    with pytest.raises(ValueError, match=r"dim must be an integer in \[1, 3\]"):
        pca_project(torch.randn(10, 3), 4)
    with pytest.raises(ValueError, match=r"x must have shape \(N, d\)"):
        pca_project(torch.randn(10), 1)
    with pytest.raises(ValueError, match="x must be a floating-point tensor"):
        pca_project(torch.ones(4, 3, dtype=torch.long), 2)


def test_embedding_projection_draws_both_modalities(tmp_path: Path) -> None:
    emb = _embeddings(n=40)
    out = tmp_path / "proj.png"
    fig = embedding_projection(emb["image"], emb["text"], emb["labels"], pairs=5, path=out)
    _png(out)
    ax = fig.axes[0]
    images, texts = ax.collections[:2]
    both = torch.cat([emb["image"], emb["text"]]).double().numpy()
    ref = _pca_reference(both, 2)
    np.testing.assert_allclose(images.get_offsets(), ref[:40], atol=1e-5)
    np.testing.assert_allclose(texts.get_offsets(), ref[40:], atol=1e-5)
    assert images.get_paths()[0] is not texts.get_paths()[0]  # circles vs crosses
    pair_lines = [line for line in ax.lines if line.get_label().startswith("_")]
    assert len(pair_lines) == 5
    colours = images.get_facecolors()
    same = [i for i in range(40) if emb["labels"][i] == emb["labels"][0]]
    other = next(i for i in range(40) if emb["labels"][i] != emb["labels"][0])
    assert all(np.allclose(colours[i], colours[0]) for i in same)
    assert not np.allclose(colours[other], colours[0])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[-3:] == ["image (●)", "caption (×)", "image — its caption"]
    assert legend[:10] == [f"digit {d}" for d in range(10)]
    with pytest.raises(ValueError, match="pairs"):
        embedding_projection(emb["image"], emb["text"], emb["labels"], pairs=-1)
    # a large split is subsampled (class-stratified, same items for both modalities)
    big = _embeddings(n=400)
    fig = embedding_projection(big["image"], big["text"], big["labels"], max_points=50)
    images, texts = fig.axes[0].collections[:2]
    assert len(images.get_offsets()) == len(texts.get_offsets()) == 50
    assert "50 of 400 items" in fig.axes[0].get_title()


def test_cka_matrix_matches_reference(tmp_path: Path) -> None:
    emb = _embeddings(n=30)
    named = {k: emb[k] for k in ("image_tower", "text_tower", "image", "text")}
    m = cka_matrix(named)
    assert m.shape == (4, 4) and m.dtype == torch.float64
    for i, a in enumerate(named.values()):
        for j, b in enumerate(named.values()):
            ref = _linear_cka_reference(a.double().numpy(), b.double().numpy())
            assert float(m[i, j]) == pytest.approx(ref, abs=1e-9)
    out = tmp_path / "cka.png"
    fig = cka_heatmap(named, path=out)
    _png(out)
    assert len(fig.axes[0].texts) == 16
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(named)
    with pytest.raises(ValueError, match="same number of rows"):
        cka_matrix({"a": torch.randn(10, 3), "b": torch.randn(9, 3)})
    with pytest.raises(ValueError, match="non-empty mapping"):
        cka_matrix({})
    with pytest.raises(ValueError, match=r"representations\['a'\] must have at least 2"):
        cka_matrix({"a": torch.randn(1, 3)})


def test_write_plots_writes_every_plot(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    plots = write_plots(run, samples=20, dpi=60)
    assert set(plots) == {"loss_curves", "similarity", "projection", "cka"}
    for name, path in plots.items():
        assert path.parent == run / "plots" and path.suffix == ".png", name
        _png(path)
    assert not [p for p in (run / "plots").iterdir() if p.name.startswith(".")]  # no temp file left
    (run / "metrics.jsonl").unlink()
    (run / "embeddings_test.safetensors").unlink()
    assert write_plots(run) == {}


# -------------------------------------------------------------------------------------- report.html


def test_write_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    path = write_report(run, dpi=60)
    assert path == run / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.count('<img alt="') == 4
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    # labelled metrics in the shared order, with ↑/↓ and the chance level on N = 40 rows
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=\"dir\">([^<]*)</td><td class=\"num\">([^<]*)</td>"
                      r"<td class=\"num chance\">([^<]*)</td><td><code>([^<]+)</code>", page)
    keys = [r[4] for r in rows]
    assert keys == [k for k in (m.key for m in METRIC_LIST) if k in METRICS]
    by_key = {r[4]: r for r in rows}
    assert by_key["i2t_recall@5"][:4] == ("image→text R@5", "↑ higher", "0.771", "0.125")  # 5/40
    assert by_key["median_rank"][1:4] == ("↓ lower", "2", "20.5")  # rank as an integer, (N+1)/2
    assert by_key["zero_shot_accuracy"][2:4] == ("0.932", "0.100")
    assert by_key["uniformity"][1:4] == ("↓ lower", "-2.876", "")
    assert by_key["epochs"][1:4] == ("", "3", "")
    assert "N=40" in page
    for text in ("train.lr", "0.003", "train.batch_size", "128", "loss.name"):
        assert text in page
    assert "no retrieval examples" in page  # synthetic labels are not the digits' test split
    assert "All recipes compared" not in page
    # the embedded images decode to the PNGs on disk
    import base64

    first = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert first is not None
    assert base64.b64decode(first.group(1)) == (run / "plots" / "loss_curves.png").read_bytes()


def test_write_report_without_optional_files(tmp_path: Path) -> None:
    run = _bare_run(tmp_path, "bare", {"zero_shot_accuracy": 0.5, "median_rank": 7})
    page = write_report(run).read_text(encoding="utf-8")
    assert "<img" not in page
    assert "config.yaml is missing" in page and "embeddings_test.safetensors is missing" in page
    assert ">0.500<" in page and ">7<" in page


def test_write_report_missing_metrics_json(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match=r"has no metrics\.json"):
        write_report(run)
    assert not (run / "report.html").exists()
    with pytest.raises(ValueError, match="is not a directory"):
        write_report(tmp_path / "missing")
    (run / "metrics.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=r"metrics\.json: not valid JSON"):
        write_report(run)


def test_write_report_bad_embeddings_file(tmp_path: Path) -> None:
    run = _make_run(tmp_path)
    save_file(
        {"image": torch.randn(5, 3), "text": torch.randn(5, 3)}, str(run / "embeddings_test.safetensors")
    )
    with pytest.raises(ValueError, match="missing tensor 'labels'"):
        write_report(run)


# ------------------------------------------------------------------------------------------ compare

FAKE_METRICS = {
    "clip": {**METRICS, "recipe": "clip"},
    "byol": {
        **METRICS,
        "recipe": "byol",
        "zero_shot_accuracy": 0.71234,
        "i2t_recall@1": 0.15678,
        "median_rank": 9.5,
        "uniformity": -1.23456,
        "seconds": 12.34,
    },
}


@pytest.fixture
def fake_recipes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path, dict[str, Any]]]:
    calls: list[tuple[str, Path, dict[str, Any]]] = []

    def run_recipe(config: dict[str, Any], out_dir: Any, progress: bool = True) -> dict[str, Any]:
        name = config["recipe"]
        calls.append((name, Path(out_dir), dict(config["overrides"])))
        metrics = FAKE_METRICS.get(name, {"recipe": name, "zero_shot_accuracy": 0.25})
        run = Path(out_dir)
        run.mkdir(parents=True, exist_ok=True)
        if name != "nofile":  # metrics.json only: the reports then hold no plot (fast)
            (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
        return dict(metrics)

    def load_config(path: Any, overrides: list[str]) -> dict[str, Any]:
        # the real signature: a YAML path (None: defaults) and "key=value" overrides ("recipe=NAME" first)
        parsed = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in overrides)}
        name = Path(path).stem if path is not None else parsed.pop("recipe")
        return {"recipe": name, "train": {"epochs": 10, "lr": 0.01}, "overrides": parsed}

    module = types.ModuleType("alignkit.recipes")
    module.run_recipe = run_recipe  # type: ignore[attr-defined]
    module.load_config = load_config  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "alignkit.recipes", module)
    return calls


def test_compare_table_has_one_row_per_recipe_with_exact_numbers(
    tmp_path: Path, fake_recipes: list[Any]
) -> None:
    out = tmp_path / "cmp"
    table = compare(["clip", "byol"], out, {"seed": 1})
    assert [c[0] for c in fake_recipes] == ["clip", "byol"]
    assert [c[1] for c in fake_recipes] == [out / "clip", out / "byol"]
    assert all(c[2] == {"seed": 1} for c in fake_recipes)
    stored = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert stored == table
    assert [r["recipe"] for r in stored["rows"]] == ["clip", "byol"]
    for row in stored["rows"]:
        for key, _, _ in COLUMNS:
            assert row[key] == FAKE_METRICS[row["recipe"]][key], (row["recipe"], key)
    md = (out / "compare.md").read_text(encoding="utf-8").splitlines()
    assert len(md) == 4
    header = [c.strip() for c in md[0].strip("|").split("|")]
    assert header == [
        "objective",
        "zero-shot acc",
        "i2t R@1",
        "i2t R@5",
        "t2i R@1",
        "median rank",
        "CKA",
        "mutual kNN",
        "alignment",
        "uniformity",
        "seconds",
    ]
    clip = [c.strip() for c in md[2].strip("|").split("|")]
    byol = [c.strip() for c in md[3].strip("|").split("|")]
    assert clip == [
        "clip",
        "0.932",
        "0.418",
        "0.771",
        "0.403",
        "2.0",
        "0.661",
        "0.314",
        "0.522",
        "-2.876",
        "41.3",
    ]
    assert byol == [
        "byol",
        "0.712",
        "0.157",
        "0.771",
        "0.403",
        "9.5",
        "0.661",
        "0.314",
        "0.522",
        "-1.235",
        "12.3",
    ]
    assert markdown_table(table) == (out / "compare.md").read_text(encoding="utf-8")
    # each run's report carries the comparison, its own row highlighted
    page = (out / "byol" / "report.html").read_text(encoding="utf-8")
    assert "All recipes compared" in page
    assert '<tr class="current"><td><a href="report.html">byol</a></td>' in page
    assert '<td><a href="../clip/report.html">clip</a></td>' in page
    html_page = (out / "compare.html").read_text(encoding="utf-8")
    assert '<a href="byol/report.html">byol</a>' in html_page and ">0.712<" in html_page


def test_compare_uses_returned_metrics_and_epochs_scale(tmp_path: Path, fake_recipes: list[Any]) -> None:
    table = compare(["nofile"], tmp_path / "c", epochs_scale=0.25, reports=False)
    assert fake_recipes[0][2] == {"train.epochs": 2}  # round(10 · 0.25) = 2 (banker's rounding of 2.5)
    row = table["rows"][0]
    assert row["zero_shot_accuracy"] == 0.25 and row["median_rank"] is None
    assert row["seconds"] is not None and row["seconds"] >= 0  # measured when not reported
    assert "| nofile | 0.250 | — |" in (tmp_path / "c" / "compare.md").read_text(encoding="utf-8")


def test_compare_bad_input(tmp_path: Path, fake_recipes: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="recipes must be distinct"):
        compare(["clip", "clip"], tmp_path)
    with pytest.raises(ValueError, match="recipes must be a non-empty list"):
        compare([], tmp_path)
    with pytest.raises(ValueError, match="recipes must be a non-empty list"):
        compare("clip", tmp_path)
    with pytest.raises(ValueError, match="epochs_scale must be a finite number > 0"):
        compare(["clip"], tmp_path, epochs_scale=0.0)
    with pytest.raises(ValueError, match="overrides must be a mapping"):
        compare(["clip"], tmp_path, ["a=1"])  # type: ignore[arg-type]
    assert fake_recipes == []
    monkeypatch.setitem(sys.modules, "alignkit.recipes", None)
    with pytest.raises(ValueError, match=r"compare needs alignkit\.recipes\.run_recipe"):
        compare(["clip"], tmp_path)


# --------------------------------------------------------------------------------------- report_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit")
    sub = parser.add_subparsers(dest="command", required=True)
    report_command.add_command(sub)
    compare_command.add_command(sub)
    return parser


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path)
    args = _parser().parse_args(["report", str(run), "--samples", "20", "--dpi", "50"])
    assert args.func(args) == 0
    assert "report.html" in capsys.readouterr().out
    assert (run / "report.html").is_file()
    bad = _parser().parse_args(["report", str(tmp_path / "nope")])
    with pytest.raises(ValueError, match="is not a directory"):
        bad.func(bad)
    (run / "metrics.json").unlink()
    bad = _parser().parse_args(["report", str(run)])
    with pytest.raises(ValueError, match=r"metrics\.json"):
        bad.func(bad)


def test_cli_report_out_json_quiet_and_links_from_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _make_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics = {"n_seeds": 1, "seeds": [0], "mean": metrics, "sd": {k: 0.0 for k in metrics}}  # a seed page
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "seed-0").mkdir()
    pages = tmp_path / "pages"
    pages.mkdir()
    args = _parser().parse_args(["report", str(run), "-o", str(pages / "r.html"), "--samples", "8", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out) == {"report": str(pages / "r.html")}
    assert not (run / "report.html").exists()  # -o replaces the default page, it does not add one
    text = (pages / "r.html").read_text()
    assert f'href="../{run.name}/seed-0/report.html"' in text
    quiet = _parser().parse_args(["report", str(run), "--quiet", "--samples", "8"])
    assert quiet.func(quiet) == 0 and capsys.readouterr().out == ""
    assert 'href="seed-0/report.html"' in (run / "report.html").read_text()
    for argv, match in [
        (["-o", str(pages / "r.png")], r"must end in \.html"),
        (["-o", str(tmp_path / "nowhere" / "r.html")], "does not exist"),
        (["--samples", "0"], "--samples must be an integer"),
        (["--dpi", "x"], "--dpi must be an integer"),
    ]:
        bad = _parser().parse_args(["report", str(run), *argv])
        with pytest.raises(ValueError, match=match):
            bad.func(bad)


def test_cli_compare(tmp_path: Path, fake_recipes: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--recipes", "clip,byol", "-o", str(out), "--epochs-scale", "0.5"]
    argv += ["--set", "lr=0.01", "a=2"]  # --set and KEY=VALUE positionals together
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    assert [c[2] for c in fake_recipes] == [{"lr": 0.01, "a": 2, "train.epochs": 5}] * 2
    printed = capsys.readouterr()
    assert "| clip | 0.932 |" in printed.out and "| byol | 0.712 |" in printed.out
    assert "[1/2] clip: training" in printed.err and "[2/2] byol: done in" in printed.err  # says where it is
    assert (out / "compare.json").is_file() and (out / "clip" / "report.html").is_file()
    quiet = _parser().parse_args(["compare", "--recipes", "clip", "-o", str(out), "--quiet", "--json"])
    assert quiet.func(quiet) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["rows"][0]["recipe"] == "clip" and printed.err == ""
    default = _parser().parse_args(["compare"])
    assert default.recipes == "clip,byol,supcon,joint,binder,disentangled" and default.out == "runs/compare"


def test_parse_overrides() -> None:
    assert parse_overrides(["a.b=3", "name=x", "flag=true", "lr=1e-3", "empty="]) == {
        "a.b": 3,
        "name": "x",
        "flag": True,
        "lr": 0.001,  # a string for YAML 1.1 (no dot), converted
        "empty": "",
    }
    with pytest.raises(ValueError, match="must look like KEY=VALUE"):
        parse_overrides(["novalue"])


# ------------------------------------------------------------------------------------- labels.py


def test_chance_levels_match_enumeration() -> None:
    """Every closed-form chance level against an exhaustive enumeration of random rankings."""
    import itertools
    import statistics

    for n in (5, 6):
        # the own item's rank is uniform on 1..n under a random ranking: enumerate the permutations
        ranks = [perm.index(0) + 1 for perm in itertools.permutations(range(n))]
        for k in (1, 5, 10):
            ref = sum(r <= k for r in ranks) / len(ranks)
            assert chance_level(f"i2t_recall@{k}", n) == pytest.approx(ref)
            assert chance_level(f"t2i_recall@{k}", n) == pytest.approx(ref)
        assert chance_level("median_rank", n) == pytest.approx(statistics.median(ranks))
        assert chance_level("i2t_map", n) == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
        # mutual k-NN: overlap of two independent random k-subsets of the n − 1 other rows
        k = 2
        subsets = list(itertools.combinations(range(n - 1), k))
        overlap = [len(set(a) & set(b)) / k for a in subsets for b in subsets]
        assert chance_level("mutual_knn", n, k=k) == pytest.approx(sum(overlap) / len(overlap))
    assert chance_level("zero_shot_accuracy", 360, n_classes=10) == pytest.approx(0.1)
    assert chance_level("cka_linear", 360) is None and chance_level("nope", 360) is None


def test_metric_rows_order_and_extras() -> None:
    rows = metric_rows({"uniformity": -1.0, "recipe": "x", "zz_extra": 2.0, "i2t_recall@1": 0.5}, n_test=10)
    assert [(i.key, v, c) for i, v, c in rows] == [
        ("i2t_recall@1", 0.5, pytest.approx(0.1)),
        ("uniformity", -1.0, None),
        ("zz_extra", 2.0, None),
    ]
    assert rows[0][0].arrow == "↑" and rows[1][0].arrow == "↓" and rows[2][0].arrow == ""


# ------------------------------------------------------------------------- retrieval examples, links


def _digits_run(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run whose embeddings follow the real test split of the captioned digits (data.seed 0):
    image i = text i = a random unit vector, so every query's own item is its nearest."""
    from alignkit.data import load_digits_captions

    digits = load_digits_captions(seed=0)
    test = digits.splits["test"]
    n = len(test)
    g = torch.Generator().manual_seed(1)
    image = nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1)
    text = nn.functional.normalize(image + 0.05 * torch.randn(n, 16, generator=g), dim=-1)
    emb = {
        "image": image,
        "text": text,
        "labels": torch.as_tensor(digits.labels[test], dtype=torch.long),
        "class_text": nn.functional.normalize(torch.randn(10, 16, generator=g), dim=-1),
        "image_tower": torch.randn(n, 12, generator=g),
        "text_tower": torch.randn(n, 8, generator=g),
    }
    run = root / "digits"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("recipe: clip\ndata:\n  seed: 0\n", encoding="utf-8")
    (run / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    save_file(emb, str(run / "embeddings_test.safetensors"))
    return run, emb


def test_retrieval_examples_show_the_nearest_captions(tmp_path: Path) -> None:
    from alignkit.data import load_digits_captions
    from alignkit.report import retrieval_examples_html

    _, emb = _digits_run(tmp_path)
    section = retrieval_examples_html(emb, 0, queries=4, caption_queries=3, top=5)
    digits = load_digits_captions(seed=0)
    captions = [digits.captions[i] for i in digits.splits["test"]]
    lists = re.findall(r'alt="test image (\d+)".*?<ol class="top">(.*?)</ol>', section)
    assert len(lists) == 4
    image, text = emb["image"].tolist(), emb["text"].tolist()
    for query, items in lists:
        q = int(query)
        shown = re.findall(
            r'<li class="(hit|near|miss)">(.) (.*?) <span class="sim">([0-9.-]+)</span>', items
        )
        ref = sorted(range(len(text)), key=lambda j: -_cos(image[q], text[j]))[:5]  # loop reference
        assert [html_unescape(t) for _, _, t, _ in shown] == [captions[j] for j in ref]
        cosines = [_cos(image[q], text[j]) for j in ref]
        assert [float(s) for *_, s in shown] == pytest.approx(cosines, abs=1e-3)
        assert ref[0] == q and shown[0][:2] == ("hit", "✓")  # own caption first (image ≈ text)
        for (css, sign, _, _), j in zip(shown[1:], ref[1:], strict=True):
            same = bool(emb["labels"][j] == emb["labels"][q])
            want = ("near", "≈") if same else ("miss", "✗")
            assert (css, sign) == (("hit", "✓") if captions[j] == captions[q] else want)
    # caption → images: each row's thumbnails are the loop reference's top 5 images of the query
    # caption, ✓ exactly on the own image and on images whose caption is identical
    rows = re.findall(r"<tr><td>([^<]*)</td><td class=\"num\">\d</td><td>(.*?)</td></tr>", section)
    assert len(rows) == 3
    for caption, cells in rows:
        found = re.findall(r'class="thumb (\w+)" alt=". test image (\d+)"', cells)
        thumbs = [(css, int(j)) for css, j in found]
        q = thumbs[0][1]  # image ≈ text: the own image comes first
        assert captions[q] == html_unescape(caption)
        ref = sorted(range(len(image)), key=lambda j: -_cos(text[q], image[j]))[:5]
        assert [j for _, j in thumbs] == ref
        assert [css == "hit" for css, _ in thumbs] == [captions[j] == captions[q] for j in ref]
    # exactly 3: the 3 caption queries (caption_queries=3) each find their own image, and in this
    # seeded split none of the other 4 images in each top 5 has the identical caption
    assert section.count('class="thumb hit"') == 3
    digits_shown = re.findall(r'<td class="num">(\d)</td>', section)
    assert len(set(digits_shown[:4])) == 4  # image queries of distinct digits
    shuffled = dict(emb, labels=emb["labels"].roll(1))
    with pytest.raises(ValueError, match="does not match the embeddings"):
        retrieval_examples_html(shuffled, 0)


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


class _Refs:
    """Every ``src`` / ``href`` of a page (html.parser)."""

    def __init__(self, page: str) -> None:
        from html.parser import HTMLParser

        self.images: list[str] = []
        self.links: list[str] = []
        outer = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                found = dict(attrs)
                if tag == "img":
                    outer.images.append(str(found.get("src")))
                if tag == "a":
                    outer.links.append(str(found.get("href")))

        Parser().feed(page)


def _assert_references_exist(page: Path) -> _Refs:
    """Every image of the page decodes to a PNG (data URI) or exists as a file; every link exists."""
    import base64

    refs = _Refs(page.read_text(encoding="utf-8"))
    for src in refs.images:
        if src.startswith("data:image/png;base64,"):
            assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n"), page
        else:
            assert (page.parent / src).is_file(), (page, src)
    for href in refs.links:
        assert not href.startswith(("http:", "https:", "//")), href
        assert (page.parent / href.split("#")[0]).is_file(), (page, href)
    return refs


def test_report_and_comparison_reference_only_existing_files(tmp_path: Path) -> None:
    from alignkit.report import write_comparison_page

    run, _ = _digits_run(tmp_path)
    other = _make_run(tmp_path, "byol", FAKE_METRICS["byol"])
    table = {
        "columns": [{"key": k, "title": t} for k, t, _ in COLUMNS],
        "rows": [
            {"recipe": name, "run_dir": str(path), **{k: FAKE_METRICS[name].get(k) for k, _, _ in COLUMNS}}
            for name, path in (("clip", run), ("byol", other))
        ],
    }
    # compare.json in the parent: each report carries the table with links to both reports
    (tmp_path / "compare.json").write_text(json.dumps(table), encoding="utf-8")
    for r in (run, other):
        write_report(r, dpi=50)
    page = write_comparison_page(tmp_path, table, dpi=50)
    refs = _assert_references_exist(page)
    assert sorted(refs.links) == ["byol/report.html", "digits/report.html"]
    assert len(refs.images) == 1 and (tmp_path / "compare.png").is_file()
    text = page.read_text(encoding="utf-8")
    assert ">2<" in text and ">9.5<" in text and "2.0000" not in text  # ranks as integers
    body = re.findall(r"<tr>(<td.*?)</tr>", text)
    clip, byol = (re.findall(r'<td class="num( best)?">([^<]+)</td>', row) for row in body)
    # clip wins every column but seconds (byol 12.3 s, lower is better); ties mark both rows
    tied = {"i2t_recall@5", "t2i_recall@1", "cka_linear", "mutual_knn", "alignment"}
    keys = [k for k, _, _ in COLUMNS]
    assert [b == " best" for b, _ in clip] == [k != "seconds" for k in keys]
    assert [b == " best" for b, _ in byol] == [k in tied or k == "seconds" for k in keys]
    assert [v for _, v in byol][4] == "9.5" and [v for _, v in clip][4] == "2"
    report = run / "report.html"
    refs = _assert_references_exist(report)
    assert sorted(refs.links) == ["../byol/report.html", "report.html"]
    assert len(refs.images) == 3 + 4 + 3 * 5  # 3 plots (no metrics.jsonl), 4 queries, 3 × top 5
    assert "Retrieval examples" in report.read_text(encoding="utf-8")
    _assert_references_exist(other / "report.html")
