"""``alignkit train`` on users' data and encoders, end to end through the CLI (issue: "your data,
your encoders"): two embedding files, an image folder + captions CSV, text pairs with a local
Hugging Face model, a user module by import path, the ViT tower; and the one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from alignkit.cli import main
from alignkit.train.checkpoint import load_checkpoint

FAST = ["train.epochs=3", "train.batch_size=32", "model.embed_dim=16", "model.image_width=32"]


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    out = tmp_path / name
    assert main(["train", "--out", str(out), "--no-report", *FAST, *overrides]) == 0
    return json.loads((out / "metrics.json").read_text())


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]  # (model loading may draw a progress bar before it)
    assert last.startswith("alignkit train: error: "), err
    return last


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 pairs of (32-d, 24-d) views of one 8-d signal; labels; groups of 3 rows sharing an item."""
    root = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    z = rng.standard_normal((100, 8)).repeat(3, axis=0)  # 3 rows per item: a group
    a = z @ rng.standard_normal((8, 32)) + 0.3 * rng.standard_normal((300, 32))
    b = z @ rng.standard_normal((8, 24)) + 0.3 * rng.standard_normal((300, 24))
    np.save(root / "a.npy", a.astype(np.float32))
    np.save(root / "b.npy", b.astype(np.float16))  # float16 on disk, read memory-mapped
    np.save(root / "labels.npy", (z[:, 0] > 0).astype(np.int64))
    np.save(root / "groups.npy", np.arange(300) // 3)
    np.save(root / "c.npy", (a[:, :8] + 0.1 * rng.standard_normal((300, 8))).astype(np.float32))
    return root


def _emb_args(root: Path) -> list[str]:
    return [
        "data.source=embeddings",
        f"data.a={root / 'a.npy'}",
        f"data.b={root / 'b.npy'}",
        f"data.labels={root / 'labels.npy'}",
        f"data.groups={root / 'groups.npy'}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["clip", "siglip", "supcon", "joint", "byol"])
def test_embeddings_source_trains_every_recipe(tmp_path: Path, embeddings: Path, recipe: str) -> None:
    choice = ["recipe=clip", "loss.contrastive=siglip"] if recipe == "siglip" else [f"recipe={recipe}"]
    metrics = _train(tmp_path, recipe, *choice, *_emb_args(embeddings))
    n = 60  # 20 % of 300 rows, whole groups
    assert metrics["recipe"] == choice[0].removeprefix("recipe=")
    assert "zero_shot_accuracy" not in metrics  # labels but no class prompts: no zero-shot
    assert metrics["i2t_recall@10_grouped"] >= metrics["i2t_recall@10"]  # 3 correct rows per query
    assert metrics["i2t_recall@10"] > 1.5 * 10 / n  # above chance (10 / n) after 3 epochs
    assert -1.0 <= metrics["cka_unbiased"] <= 1.0
    # the objective that ran: SigLIP's loss owns a learned bias (init −10), CLIP's loss has none
    run = tmp_path / recipe
    config = yaml.safe_load((run / "config.yaml").read_text())
    if recipe in ("clip", "siglip"):
        assert config["loss"]["contrastive"] == recipe
    weights = load_checkpoint(run / "checkpoints" / "last.json").model
    bias = [name for name in weights if name.endswith("logit_bias")]
    if recipe == "siglip":
        assert len(bias) == 1
        assert float(weights[bias[0]]) != -10.0  # trained, not the initial value
    else:
        assert bias == []


def test_embeddings_source_bad_input(
    tmp_path: Path, embeddings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "short.npy", np.zeros((10, 24), np.float32))
    base = ["train", "--out", str(tmp_path / "r"), *FAST, "data.source=embeddings"]
    err = _error(capsys, [*base, f"data.a={embeddings / 'a.npy'}", f"data.b={tmp_path / 'short.npy'}"])
    assert "300" in err and "10" in err
    err = _error(capsys, [*base, f"data.a={embeddings / 'a.npy'}"])
    assert "data.b" in err
    both = [f"data.a={embeddings / 'a.npy'}", f"data.b={embeddings / 'b.npy'}"]
    err = _error(capsys, [*base, "recipe=supcon", *both])
    assert "labels" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 digit images written as 16×16 PNGs with Pillow, and a captions CSV naming each digit."""
    root = tmp_path_factory.mktemp("images")
    (root / "img").mkdir()
    digits = load_digits()
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = ["file,caption,label,ink"]
    for i in range(120):
        pixels = (digits.images[i] / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").resize((16, 16)).save(root / "img" / f"{i}.png")
        label, ink = int(digits.target[i]), "heavy" if digits.images[i].sum() > 300 else "light"
        rows.append(f"img/{i}.png,a {ink} handwritten {words[label]},{words[label]},{ink}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _pairs_args(root: Path) -> list[str]:
    return [
        "data.source=pairs",
        f"data.table={root / 'captions.csv'}",
        "data.column_a=file",
        "data.column_b=caption",
        "data.label_column=label",
        "data.image_size=16",
        "data.prompts=a handwritten {}",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("tower", ["cnn", "vit"])
def test_image_folder_with_captions(tmp_path: Path, image_folder: Path, tower: str) -> None:
    metrics = _train(tmp_path, tower, *_pairs_args(image_folder), f"model.image_tower={tower}")
    assert 0.0 <= metrics["zero_shot_accuracy"] <= 1.0  # labels + prompts: zero-shot is reported
    assert "i2t_recall@1_grouped" in metrics  # identical captions form groups
    report = tmp_path / tower
    assert (report / "embeddings_test.safetensors").is_file()


@pytest.mark.slow
def test_binder_with_a_third_modality_file(tmp_path: Path, embeddings: Path) -> None:
    extra = f"data.extras={{c: {embeddings / 'c.npy'}}}"
    metrics = _train(tmp_path, "binder", "recipe=binder", *_emb_args(embeddings), extra)
    assert metrics["image_to_profile_recall@10"] > 10 / 60  # bound to the anchor: above chance
    # emergent: text and the third modality never met in training; they meet through the anchor
    # (seeds 0 and 1 gave R@10 0.65 and 0.58; chance 10/60 = 0.17)
    assert metrics["text_to_profile_recall@10"] > 2 * 10 / 60


@pytest.mark.slow
def test_disentangled_with_a_factor_column(tmp_path: Path, image_folder: Path) -> None:
    metrics = _train(
        tmp_path,
        "dis",
        "recipe=disentangled",
        *_pairs_args(image_folder),
        "data.extra_columns=[ink]",
        "data.extra_types={ink: label}",
        "data.attribute=ink",
        "train.probe_iterations=20",
    )
    probes = {k: v for k, v in metrics.items() if k.startswith("probe_")}
    assert set(probes) == {f"probe_{a}_from_{b}" for a in ("digit", "ink") for b in ("digit", "ink")}
    assert all(0.0 <= v <= 1.0 for v in probes.values())
    assert probes["probe_digit_from_digit"] > 3 * 0.1  # the digit is read from its own part (chance 0.1)


def test_pairs_bad_input(tmp_path: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--out", str(tmp_path / "r"), *FAST, "data.source=pairs"]
    base.append(f"data.table={image_folder / 'captions.csv'}")
    err = _error(capsys, [*base, "data.column_a=file", "data.column_b=nope"])
    assert "nope" in err and "caption" in err  # names the missing column and the available ones
    escape = tmp_path / "escape.csv"
    escape.write_text("file,caption\n../../etc/passwd.png,x\nimg/1.png,y\n", encoding="utf-8")
    columns = ["data.column_a=file", "data.column_b=caption"]
    err = _error(capsys, [*base[:-1], f"data.table={escape}", *columns, "data.type_a=image"])
    assert "outside" in err or "escap" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not an image")
    (broken / "t.csv").write_text("file,caption\nx.png,a\nx.png,b\n", encoding="utf-8")
    err = _error(capsys, [*base[:-1], f"data.table={broken / 't.csv'}", *columns])
    assert "x.png" in err


@pytest.fixture(scope="module")
def text_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Query–document text pairs as JSONL (words in the tiny BERT's vocabulary)."""
    root = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    words = ["a", "the", "digit", "three", "seven", "heavy", "light", "thin", "one", "two", "top", "left"]
    lines = []
    for _ in range(80):
        q = " ".join(rng.choice(words, 3))
        lines.append(json.dumps({"query": q, "document": q + " " + " ".join(rng.choice(words, 2))}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["false", "true"])
def test_text_pairs_with_a_local_hf_model(
    tmp_path: Path, text_pairs: Path, tiny_bert: Path, finetune: str
) -> None:
    metrics = _train(
        tmp_path,
        f"hf{finetune}",
        "data.source=pairs",
        f"data.table={text_pairs / 'pairs.jsonl'}",
        "data.column_a=query",
        "data.column_b=document",
        "model.tower_a=hf",
        f"model.tower_a_path={tiny_bert}",
        f"model.tower_a_finetune={finetune}",
        "model.tower_b=hf",
        f"model.tower_b_path={tiny_bert}",
        "model.tower_b_pooling=cls",
    )
    chance = 10 / 16  # R@10 over 16 test rows
    if finetune == "false":  # frozen random BERT features + trained heads: the words still match
        assert metrics["i2t_recall@10"] > chance
        return
    # fine-tuned: the backbone's weights moved (gradients reached it through the batches of token ids)
    from safetensors.torch import load_file

    trained = load_file(next((tmp_path / "hftrue" / "checkpoints").glob("last.*.model.safetensors")))
    before = load_file(tiny_bert / "model.safetensors")["embeddings.word_embeddings.weight"]
    after = trained["model.tower_a.model.embeddings.word_embeddings.weight"]
    assert not torch.equal(before, after)


def test_model_directory_without_weights(
    tmp_path: Path, text_pairs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "config.json").write_text("{}", encoding="utf-8")
    err = _error(
        capsys,
        [
            "train", "--out", str(tmp_path / "r"), *FAST, "data.source=pairs",
            f"data.table={text_pairs / 'pairs.jsonl'}", "data.column_a=query", "data.column_b=document",
            "model.tower_a=hf", f"model.tower_a_path={empty}",
        ],
    )
    assert str(empty) in err
    err = _error(
        capsys,
        [
            "train", "--out", str(tmp_path / "r"), *FAST, "data.source=pairs",
            f"data.table={text_pairs / 'pairs.jsonl'}", "data.column_a=query", "data.column_b=document",
            "model.tower_b=sentence-transformers", f"model.tower_b_path={tmp_path / 'nowhere'}",
        ],
    )
    assert "nowhere" in err


_USER_TOWER = '''
import torch
from torch import nn


class Tower(nn.Module):
    def __init__(self, d_in, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.Tanh())
        self.out_dim = width

    def forward(self, x):
        return self.net(x)


def build(d_in=32, width=16):
    return Tower(d_in, width)
'''


@pytest.mark.slow
def test_user_module_by_import_path(
    tmp_path: Path, embeddings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mytowers.py").write_text(_USER_TOWER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(package))
    metrics = _train(
        tmp_path,
        "import",
        *_emb_args(embeddings),
        "model.tower_a=import",
        "model.tower_a_path=mytowers:build",
        "model.tower_a_finetune=true",
        "model.tower_a_kwargs={d_in: 32, width: 12}",
    )
    assert metrics["i2t_recall@10"] > 0.5
    sys.modules.pop("mytowers", None)
