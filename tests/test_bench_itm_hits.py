"""bench/itm_hits.py on a tiny ``alignkit train --config configs/itm.yaml --seeds 2`` run: the printed
per-seed R@1 hit counts of the three rankings equal those in each seed's metrics.json, the contrastive hit
set is the one a float64 ranking of the saved test embeddings gives, and a metrics.json that disagrees
stops the script with a message.

A few-step itm run on the digits scores 0–1 hits of 360 by every ranking, where a wrong count could hide.
So the fixture trains the tiny run through the CLI, then gives each seed's evaluated checkpoint
informative projections — ridge maps fitted on the test rows (a fixture, not a model: pooled ViT tokens
→ a fixed random projection of the captions, captions → those image embeddings) and a matcher head scaled
×5 — saves it in place and re-evaluates the seed with the recipe's own ``evaluate_run``, so metrics.json is
again the evaluation of the checkpoint: tens to a hundred and more hits, different per ranking and seed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

import alignkit.functional as AF
from alignkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "train.epochs=1", "data.train_subset=32", "train.batch_size=32", "train.null_permutations=0",
    "model.image_width=32", "model.embed_dim=16", "loss.itm_top_k=8",
]
LINE = re.compile(r"seed (\d+): contrastive (\d+), matcher (\d+), matcher \+ contrastive (\d+) of (\d+)")


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_itm_hits", ROOT / "bench" / "itm_hits.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HITS = _script()


@torch.no_grad()
def _informative(seed_dir: Path, data: object) -> None:
    from alignkit.recipes import build_system, load_config
    from alignkit.recipes.evaluate import evaluate_run
    from alignkit.train.checkpoint import load_checkpoint, save_checkpoint

    config = load_config(seed_dir / "config.yaml")
    system = build_system(config, data)
    manifest = seed_dir / "checkpoints" / f"{config['train']['evaluate_checkpoint']}.json"
    checkpoint = load_checkpoint(manifest)
    checkpoint.load_into(system)
    system.eval()
    rows = data.splits["test"]
    text = data.text[rows]
    pooled = system.vit.forward_tokens(data.images[rows]).mean(1)
    code = text @ torch.randn(text.shape[1], 16, generator=torch.Generator().manual_seed(0))
    for layer, x, y in ((system.proj_image, pooled, code), (system.proj_text, text, None)):
        if y is None:  # the captions → the image embeddings just fitted
            y = torch.nn.functional.normalize(system.proj_image(pooled), dim=1)
        w, mu_x, mu_y = AF.ridge_fit(x, y, 1e-3)
        layer.weight.copy_(w.T)
        layer.bias.copy_(mu_y - mu_x @ w)
    system.clip.log_scale.fill_(math.log(20.0))
    head = [m for m in system.matcher.modules() if isinstance(m, torch.nn.Linear)][-1]
    head.weight.mul_(5.0)
    save_checkpoint(manifest, system, state=checkpoint.state)
    evaluate_run(system, data, seed_dir, "itm", epochs=config["train"]["epochs"], null_permutations=0)


@pytest.fixture(scope="module")
def itm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alignkit.recipes import load_data

    out = tmp_path_factory.mktemp("itm-hits") / "run"
    config = str(ROOT / "configs" / "itm.yaml")
    argv = ["train", "--config", config, "--out", str(out), "--seeds", "2", "--no-report", "-q", *TINY]
    assert main(argv) == 0
    data = load_data()
    for seed in (0, 1):
        _informative(out / f"seed-{seed}", data)
    return out


@pytest.mark.slow
def test_printed_hit_counts_equal_each_seeds_metrics(
    itm_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert HITS.main([str(itm_run)]) == 0
    printed = capsys.readouterr().out
    found = {int(m[1]): [int(x) for x in m.groups()[1:]] for m in LINE.finditer(printed)}
    assert sorted(found) == [0, 1], printed
    counts = []
    for seed, (*hits, n) in found.items():
        saved = json.loads((itm_run / f"seed-{seed}" / "metrics.json").read_text())
        assert n == 360
        assert hits == [round(saved[key] * n) for key in HITS.KEYS], (seed, hits)
        counts += hits
    # the fixture does what it is for: every count far from 0 and the rankings' counts different
    assert min(counts) >= 10 and len(set(counts)) >= 4, counts
    assert "hit queries shared by seeds 0&1" in printed


@pytest.mark.slow
def test_contrastive_hits_are_the_float64_first_ranks_of_the_saved_embeddings(itm_run: Path) -> None:
    """Independent of the script's rank capture: query i is a strict hit when its own caption scores
    above every other one by float64 cosine of the embeddings the run saved. Queries within 1e-6 of a
    tie (identical captions, and rounding-level near-ties) are left out of the comparison."""
    from safetensors.torch import load_file

    from alignkit.recipes import load_data

    seed_dir = itm_run / "seed-1"
    result = HITS.seed_hits(seed_dir, load_data())
    emb = load_file(str(seed_dir / "embeddings_test.safetensors"))
    image, text = (torch.nn.functional.normalize(emb[k].double(), dim=1) for k in ("image", "text"))
    cos = image @ text.T
    n = len(cos)
    own = cos.diagonal().clone()
    cos.fill_diagonal_(-math.inf)
    margin = own - cos.amax(1)
    clear_hits = set((margin > 1e-6).nonzero().squeeze(1).tolist())
    clear_misses = set((margin < -1e-6).nonzero().squeeze(1).tolist())
    assert len(clear_hits) >= 10 and len(clear_hits) + len(clear_misses) >= n - 120
    assert clear_hits <= result["contrastive"]
    assert not clear_misses & result["contrastive"]
    assert result["n"] == n and result["exact_ties"] > 0


@pytest.mark.slow
def test_a_metrics_json_that_disagrees_stops_the_script(
    itm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(itm_run / "seed-0", copy / "seed-0")
    path = copy / "seed-0" / "metrics.json"
    saved = json.loads(path.read_text())
    saved["i2t_recall@1_rerank_sum"] += 1 / 360
    path.write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match=r"i2t_recall@1_rerank_sum \d+/360 in metrics.json, \d+ here"):
        HITS.main([str(copy)])
    assert HITS.main([str(tmp_path / "empty")]) == 2
    assert "has no seed-*/ directories" in capsys.readouterr().err
