"""The itm recipe and its formula pieces: hard-negative sampling (ALBEF), re-rank merge and re-ranked
recall against brute-force float64 references, config validation, and the recipe end to end via the CLI."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import alignkit.functional as AF
from alignkit.cli import main
from alignkit.recipes import load_config

# ------------------------------------------------------------------------------- hard negatives


def _softmax_excluding(sim: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Brute-force reference: p_ij = exp(s_ij) / Σ_{k ∉ E_i} exp(s_ik), a loop in float64."""
    b, m = sim.shape
    p = torch.zeros(b, m, dtype=torch.float64)
    for i in range(b):
        allowed = [j for j in range(m) if not exclude[i, j]]
        z = math.fsum(math.exp(float(sim[i, j])) for j in allowed)
        for j in allowed:
            p[i, j] = math.exp(float(sim[i, j])) / z
    return p


def _draws(sim: torch.Tensor, exclude: torch.Tensor | None, repeats: int, seed: int) -> torch.Tensor:
    """(repeats, B) draws, one batch of draws per repeat (stacked rows, one call)."""
    b = sim.shape[0]
    big_exclude = None if exclude is None else exclude.repeat(repeats, 1)
    g = torch.Generator().manual_seed(seed)
    return AF.sample_hard_negatives(sim.repeat(repeats, 1), big_exclude, generator=g).reshape(repeats, b)


def test_hard_negatives_never_pick_an_excluded_column() -> None:
    torch.manual_seed(1)
    sim = torch.randn(6, 9) * 4  # peaked: the excluded columns are often the most similar ones
    exclude = torch.rand(6, 9) < 0.4
    exclude[torch.arange(6), torch.arange(6)] = True
    exclude[3] = True  # a row with no negative at all
    exclude[4] = True
    exclude[4, 8] = False  # a row with exactly one
    draws = _draws(sim, exclude, 3000, seed=0)
    assert (draws[:, 3] == -1).all()
    assert (draws[:, 4] == 8).all()
    for i in (0, 1, 2, 5):
        assert not exclude[i, draws[:, i]].any(), i
    # default: the diagonal (the own pair) is excluded on a square matrix, even when it dominates
    sq = torch.randn(5, 5) + torch.eye(5) * 20
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([AF.sample_hard_negatives(sq, generator=g) for _ in range(300)])
    assert (draws != torch.arange(5)).all() and (draws >= 0).all()


def test_hard_negatives_follow_the_softmax_over_the_negatives() -> None:
    """Chi-square goodness of fit of 20,000 draws per row against the float64 reference; the same
    test rejects uniform sampling over the negatives (it can fail)."""
    torch.manual_seed(2)
    sim = torch.randn(4, 7, dtype=torch.float64) * 1.5
    exclude = torch.zeros(4, 7, dtype=torch.bool)
    exclude[torch.arange(4), torch.arange(4)] = True
    exclude[0, 5] = True  # a second positive (an identical caption)
    expected = _softmax_excluding(sim, exclude)
    n = 20000
    draws = _draws(sim, exclude, n, seed=3)
    for i in range(4):
        allowed = (~exclude[i]).nonzero().squeeze(1)
        counts = torch.bincount(draws[:, i], minlength=7)[allowed].double()
        assert int(counts.sum()) == n
        p = expected[i, allowed]
        assert stats.chisquare(counts.numpy(), (p * n).numpy()).pvalue > 1e-3, i
        uniform = torch.full_like(p, n / len(allowed))
        assert stats.chisquare(counts.numpy(), uniform.numpy()).pvalue < 1e-6, i  # the check has power


def test_hard_negatives_bad_input() -> None:
    with pytest.raises(ValueError, match="similarity must be square"):
        AF.sample_hard_negatives(torch.randn(3, 4))
    with pytest.raises(ValueError, match="exclude must be a bool tensor of shape"):
        AF.sample_hard_negatives(torch.randn(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="similarity must have shape"):
        AF.sample_hard_negatives(torch.randn(3))
    with pytest.raises(ValueError, match="finite"):
        AF.sample_hard_negatives(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))


# --------------------------------------------------------------------------------- re-ranking


def _brute_merge(candidates: torch.Tensor, scores: torch.Tensor) -> list[list[int]]:
    out = []
    k = scores.shape[1]
    for q in range(candidates.shape[0]):
        top = sorted(range(k), key=lambda p: (-float(scores[q, p]), p))  # stable: ties keep order
        out.append([int(candidates[q, p]) for p in top] + candidates[q, k:].tolist())
    return out


def test_rerank_merge_against_brute_force() -> None:
    torch.manual_seed(3)
    sim = torch.randn(8, 30, dtype=torch.float64)
    candidates = sim.topk(12, dim=1).indices
    for scores in (torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8, 5)).double()):  # ties
        assert AF.rerank_top_k(candidates, scores).tolist() == _brute_merge(candidates, scores)
    # the contrastive scores themselves leave the ranking unchanged
    same = sim.gather(1, candidates[:, :5])
    assert torch.equal(AF.rerank_top_k(candidates, same), candidates)
    with pytest.raises(ValueError, match="scores must have shape"):
        AF.rerank_top_k(candidates, torch.randn(8, 13))
    with pytest.raises(ValueError, match="candidates must be an int64"):
        AF.rerank_top_k(candidates.float(), torch.randn(8, 5))


def _brute_recall(
    sim: torch.Tensor, k: int, scores_full: torch.Tensor, q_ids: list[int], g_ids: list[int], big_k: int
) -> float:
    """Over the whole gallery: the merged key is (1, matcher) for the contrastive top k, (0, contrastive)
    otherwise; rank = 1 + #{negatives whose key ≥ the best positive's key} (ties count against)."""
    hits = 0
    for q in range(sim.shape[0]):
        top = set(sim[q].topk(k).indices.tolist())
        keys = [
            (1, float(scores_full[q, j])) if j in top else (0, float(sim[q, j])) for j in range(sim.shape[1])
        ]
        pos = [j for j in range(sim.shape[1]) if g_ids[j] == q_ids[q]]
        best = max(keys[j] for j in pos)
        rank = 1 + sum(1 for j in range(sim.shape[1]) if g_ids[j] != q_ids[q] and keys[j] >= best)
        hits += rank <= big_k
    return hits / sim.shape[0]


@pytest.mark.parametrize("grouped", [False, True])
def test_reranked_recall_against_brute_force(grouped: bool) -> None:
    torch.manual_seed(4)
    q, g, k = 25, 25, 8
    sim = torch.randn(q, g, dtype=torch.float64)
    sim[torch.arange(q), torch.arange(g)] += 1.0  # the own partner is often, not always, in the top k
    ids = torch.randint(0, 8, (g,)) if grouped else torch.arange(g)
    matcher_full = torch.randn(q, g, dtype=torch.float64)
    candidates = sim.topk(k, dim=1).indices
    scores = matcher_full.gather(1, candidates)
    got = AF.reranked_recall_at_k(candidates, scores, ids, ids, k=(1, 3, k))
    for big_k in (1, 3, k):
        want = _brute_recall(sim, k, matcher_full, ids.tolist(), ids.tolist(), big_k)
        assert got[f"recall@{big_k}"] == pytest.approx(want, abs=1e-12)
    # scores = the contrastive similarities: the contrastive Recall@K of recall_at_k (no ties here)
    x = torch.nn.functional.normalize(torch.randn(q, 6, dtype=torch.float64), dim=1)
    y = torch.nn.functional.normalize(x + 0.8 * torch.randn(g, 6, dtype=torch.float64), dim=1)
    cos = x @ y.T
    cand = cos.topk(k, dim=1).indices
    same = AF.reranked_recall_at_k(cand, cos.gather(1, cand), ids, ids, k=(1, 3))
    positives = None
    if grouped:
        from alignkit.data.splits import group_positives

        positives = group_positives(ids)
    ref = AF.recall_at_k(x, y, k=(1, 3), positives=positives)
    assert same == pytest.approx({f"recall@{r}": float(ref[f"recall@{r}"]) for r in (1, 3)}, abs=1e-12)


def test_reranked_recall_bad_input() -> None:
    cand = torch.zeros(3, 4, dtype=torch.long)
    ids = torch.arange(3)
    with pytest.raises(ValueError, match=r"k must be integers in \[1, 2\]"):
        AF.reranked_recall_at_k(cand, torch.randn(3, 2), ids, ids, k=5)
    with pytest.raises(ValueError, match="query_ids must be a 1-D tensor"):
        AF.reranked_recall_at_k(cand, torch.randn(3, 2), torch.arange(4), ids, k=1)
    with pytest.raises(ValueError, match="candidates must index"):
        AF.reranked_recall_at_k(cand + 5, torch.randn(3, 2), ids, ids, k=1)


# ------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["model.image_tower=mlp"], r"'model\.image_tower' must be 'vit'"),
        (["model.fusion_heads=3"], r"'model\.fusion_heads' must divide model\.image_width = 64"),
        (["loss.itm_top_k=0"], r"'loss\.itm_top_k' must be an integer ≥ 1"),
        (["loss.itm_topk=4"], r"unknown config key 'loss\.itm_topk'.*did you mean 'loss\.itm_top_k'"),
        (["loss.itm_negative_temperature=0"], r"'loss\.itm_negative_temperature' must be a number > 0"),
        (["model.tower_b=hf"], r"'model\.tower_b' must be 'auto' or 'sentence-transformers'"),
        (
            ["data.source=embeddings", "data.a=a.npy", "data.b=b.npy"],
            r"cannot train on data\.source 'embeddings': its matcher fuses image patch tokens with caption "
            r"token sequences, and embedding files hold one pooled vector per row",
        ),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_config(None, ["recipe=itm", *overrides])


def test_embeddings_source_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pooled embedding files have no token axis for the matcher: refused before any file is read."""
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", np.zeros((40, 8), np.float32))
    out = tmp_path / "run"
    code = main([
        "train", "--out", str(out), "recipe=itm", "data.source=embeddings",
        f"data.a={tmp_path / 'a.npy'}", f"data.b={tmp_path / 'b.npy'}",
    ])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("alignkit train: error: recipe 'itm' cannot train on data.source 'embeddings'")
    assert not out.exists()


def test_config_defaults() -> None:
    c = load_config(Path(__file__).resolve().parent.parent / "configs" / "itm.yaml")
    assert c == load_config(None, ["recipe=itm"])  # the shipped file says what the recipe's defaults are
    assert c["recipe"] == "itm" and c["model"]["image_tower"] == "vit"
    assert c["loss"]["itm_top_k"] == 16 and c["loss"]["itm_weight"] == 1.0


# ------------------------------------------------------------------------------------- system


@pytest.fixture(scope="module")
def digits() -> object:
    from alignkit.recipes import load_data

    return load_data()


def test_caption_tokens_pool_to_the_sentence_embeddings(digits: object) -> None:
    """MiniLM's sentence embedding is the masked mean of its token embeddings, normalised: the cached
    tokens must give back ``data.text`` row for row (right rows, right mask)."""
    from alignkit.recipes.data import caption_tokens

    tokens, padding = caption_tokens(digits.captions)
    assert tokens.shape[:2] == padding.shape and tokens.shape[0] == len(digits.captions)
    assert not padding[:, 0].any()  # [CLS] is never padding
    keep = (~padding).float()[:, :, None]
    pooled = torch.nn.functional.normalize((tokens * keep).sum(1) / keep.sum(1), dim=1)
    torch.testing.assert_close(pooled, digits.text, atol=1e-5, rtol=0)


def test_training_step_never_draws_an_identical_caption(digits: object, monkeypatch) -> None:
    from alignkit.recipes import build_system
    from alignkit.recipes.systems.itm import caption_groups

    groups = caption_groups(digits)
    train = digits.splits["train"]
    counts = torch.bincount(groups[train])
    rows = train[counts[groups[train]] >= 2][:24]  # only rows whose caption repeats in the batch
    assert len(torch.unique(groups[rows])) < len(rows)
    config = load_config(None, ["recipe=itm", "model.image_width=32", "model.embed_dim=16"])
    system = build_system(config, digits)
    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = AF.sample_hard_negatives

    def spy(sim, exclude=None, generator=None):
        out = original(sim, exclude, generator=generator)
        drawn.append((exclude, out))
        return out

    monkeypatch.setattr(AF, "sample_hard_negatives", spy)
    for _ in range(5):
        out = system.training_step(system.batch(digits, rows))
        out["loss"].backward()
    assert len(drawn) == 10  # per image and per text, each step
    g = groups[rows]
    for exclude, picked in drawn:
        assert torch.equal(exclude, g[:, None] == g[None, :])
        ok = picked >= 0
        assert (g[picked[ok]] != g[ok]).all()
    grads = [p.grad for p in system.matcher.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(gr.abs().sum()) > 0 for gr in grads)  # the matching loss trains the matcher
    assert system.vit.patch_embed.weight.grad is not None


def _rank(scores: list[float], positive: int) -> int:
    """1-based rank of ``scores[positive]``, every other score ≥ it counted against (a plain loop)."""
    return 1 + sum(1 for j, x in enumerate(scores) if j != positive and x >= scores[positive])


def test_reranked_metrics_match_a_float64_pair_by_pair_reference(digits: object, monkeypatch) -> None:
    """``extra_metrics`` against a loop: each query's top k by float64 cosine, each (query, candidate)
    pair scored by the matcher alone, then R@K by the matcher logit and by matcher logit +
    ``logit_scale``·cos (BLIP's sum); the score matrices handed to ``reranked_recall_at_k`` are
    compared entry by entry too. The matcher's head is scaled so that its logits spread as much as the
    contrastive ones within a query: a sum that dropped either term, added a constant or mis-scaled a
    term fails. Test rows with a caption of their own (no exact ties at the k-th place)."""
    import dataclasses

    import alignkit.functional
    from alignkit.recipes import build_system
    from alignkit.recipes.systems.base import normalize

    test = digits.splits["test"]
    seen: dict[str, int] = {}
    for i in test.tolist():
        seen[digits.captions[i]] = seen.get(digits.captions[i], 0) + 1
    rows = torch.tensor([i for i in test.tolist() if seen[digits.captions[i]] == 1][:48])
    data = dataclasses.replace(digits, splits={**digits.splits, "test": rows})
    torch.manual_seed(0)
    small = ["model.image_width=32", "model.embed_dim=16", "loss.itm_top_k=8"]
    config = load_config(None, ["recipe=itm", *small])
    system = build_system(config, data).eval()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = alignkit.functional.reranked_recall_at_k

    def spy(candidates, scores, *args, **kwargs):
        calls.append((candidates.clone(), scores.clone()))
        return original(candidates, scores, *args, **kwargs)

    monkeypatch.setattr(alignkit.functional, "reranked_recall_at_k", spy)
    with torch.no_grad():
        system.clip.log_scale.fill_(math.log(20.0))
        head = [m for m in system.matcher.modules() if isinstance(m, torch.nn.Linear)][-1]
        head.weight.mul_(20.0)
        got = system.extra_metrics(data)

        tokens = system.vit.forward_tokens(data.images[rows])
        image = normalize(system.proj_image(tokens.mean(1))).double()
        text = normalize(system.proj_text(data.text[rows])).double()
        cos = image @ text.T
        n, k, scale = len(rows), 8, float(system.clip.logit_scale)
        text_tokens, padding = system.tokens[rows], system.padding[rows]

        def matcher(i: int, t: int) -> float:
            return float(system.match_logits(tokens[i : i + 1], text_tokens[t : t + 1], padding[t : t + 1]))

        assert len(calls) == 6  # per direction: matcher, matcher + contrastive, the ceiling
        spread = []
        for d, name in enumerate(("i2t", "t2i")):
            sim = cos if name == "i2t" else cos.T
            cands, alone, summed = [], [], []
            for q in range(n):
                cand = sorted(range(n), key=lambda j: -float(sim[q, j]))[:k]
                pairs = [(q, j) if name == "i2t" else (j, q) for j in cand]
                m = [matcher(i, t) for i, t in pairs]
                c = [scale * float(sim[q, j]) for j in cand]
                cands.append(cand)
                alone.append(m)
                summed.append([x + y for x, y in zip(m, c, strict=True)])
                spread.append((statistics.pstdev(m), statistics.pstdev(c)))
            for (cand, score), want in zip(calls[3 * d : 3 * d + 2], (alone, summed), strict=True):
                assert cand.tolist() == cands
                want = torch.tensor(want, dtype=torch.float64)
                torch.testing.assert_close(score.double(), want, atol=1e-4, rtol=0)
            for tag, scores in (("rerank", alone), ("rerank_sum", summed)):
                pairs = enumerate(zip(scores, cands, strict=True))
                ranks = [_rank(s, c.index(q)) if q in c else k + 1 for q, (s, c) in pairs]
                for x in (1, 5):
                    want = sum(r <= x for r in ranks) / n
                    assert got[f"{name}_recall@{x}_{tag}"] == pytest.approx(want, abs=1e-12), (name, tag, x)
            ceiling = sum(q in c for q, c in enumerate(cands)) / n
            assert got[f"{name}_recall@k_candidates"] == pytest.approx(ceiling, abs=1e-12)
    matcher_sd, contrastive_sd = (statistics.mean(x) for x in zip(*spread, strict=True))
    assert 0.5 < matcher_sd / contrastive_sd < 2  # within a query, the two terms spread alike


# --------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_itm_recipe_end_to_end_via_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main([
        "train", "--config", str(Path(__file__).resolve().parent.parent / "configs" / "itm.yaml"),
        "--out", str(out), "train.epochs=2", "data.train_subset=64", "train.batch_size=32",
        "train.null_permutations=0", "model.image_width=32", "loss.itm_top_k=8",
    ])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == "itm" and metrics["itm_top_k"] == 8
    for d in ("i2t", "t2i"):
        for k in (1, 5):
            for key in (f"{d}_recall@{k}", f"{d}_recall@{k}_rerank", f"{d}_recall@{k}_rerank_sum",
                        f"{d}_recall@{k}_grouped", f"{d}_recall@{k}_grouped_rerank"):
                assert 0.0 <= metrics[key] <= 1.0, key
        # re-ranking only permutes the top k: R@k is the candidates' recall, and R@K ≤ that ceiling
        assert metrics[f"{d}_recall@5_rerank"] <= metrics[f"{d}_recall@k_candidates"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("type") == "step"]
    assert steps and all(math.isfinite(r["loss_itm"]) and 0 <= r["itm_accuracy"] <= 1 for r in steps)
    printed = capsys.readouterr().out
    assert "image→text R@1, re-ranked" in printed  # the results table, chance beside it
    html = (out / "report.html").read_text()
    assert "text→image R@5, any of the group, re-ranked (+ contrastive)" in html


# ------------------------------------------------------------------------------ kill and resume

RESUME_SCRIPT = """
import sys
import time

import alignkit.train
from alignkit.recipes.systems.itm import ITMSystem


class MidEpochCheckpoints(alignkit.train.Trainer):
    # the recipe checkpoints at epoch ends only (Trainer's default 1000 steps); every 3 steps puts
    # one in the middle of an epoch of 4 steps
    def __init__(self, *args, **kwargs):
        kwargs["checkpoint_every"] = 3
        super().__init__(*args, **kwargs)


def main(pause, argv):
    alignkit.train.Trainer = MidEpochCheckpoints
    original = ITMSystem.training_step

    def slow(self, batch):
        time.sleep(pause)
        return original(self, batch)

    ITMSystem.training_step = slow
    from alignkit.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), sys.argv[2:]))
"""

#: 64 training rows in batches of 16: 4 steps an epoch, 12 in all; dropout on, so the RNG states matter,
#: and the hard negatives are drawn from the global generator (ALBEF's multinomial) at every step
RESUME_ARGS = [
    "--no-report", "-q", "recipe=itm", "train.epochs=3", "data.train_subset=64", "train.batch_size=16",
    "train.null_permutations=0", "model.image_width=32", "model.embed_dim=16", "model.dropout=0.1",
    "loss.itm_top_k=4", "train.log_every=1",
]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL after a checkpoint taken inside epoch 2, ``--resume`` in a fresh process: the same
    step losses (hard-negative draws included), epoch records, final weights and test metrics as an
    uninterrupted run, float for float."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from alignkit.train import load_checkpoint, read_metrics

    script = tmp_path / "itm_train.py"
    script.write_text(RESUME_SCRIPT)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start(out: Path, pause: float, *extra: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(script), str(pause), "train", "--out", str(out), *RESUME_ARGS, *extra]
        return subprocess.Popen(argv, env=env)

    reference = start(ref, 0.0)  # uninterrupted, alongside (one thread each)
    proc = start(killed, 0.3)
    last = killed / "checkpoints" / "last.json"

    def mid_epoch() -> dict | None:
        try:
            state = json.loads(last.read_text())["state"]
        except (OSError, ValueError, KeyError):
            return None
        return state if state["epoch"] >= 1 and state["batch_in_epoch"] > 0 else None

    deadline = time.monotonic() + 240
    while mid_epoch() is None:
        assert proc.poll() is None, "the training process ended before a mid-epoch checkpoint"
        assert time.monotonic() < deadline, "no mid-epoch checkpoint within the deadline"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed, not finished
    state = load_checkpoint(last).state  # a complete, digest-checked checkpoint
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 2 and state["step"] == 6  # inside epoch 2
    assert not (killed / "metrics.json").exists()

    assert start(killed, 0.0, "--resume").wait(timeout=300) == 0
    assert reference.wait(timeout=300) == 0

    def records(out: Path, kind: str) -> list[dict]:
        return [
            {k: v for k, v in r.items() if k != "samples_per_s"}
            for r in read_metrics(out / "metrics.jsonl")
            if r["type"] == kind
        ]

    steps, ref_steps = records(killed, "step"), records(ref, "step")
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert steps == ref_steps  # every loss part, the matcher's accuracy and the lr, exactly
    assert records(killed, "epoch") == records(ref, "epoch")
    assert [r["step"] for r in records(killed, "resume")] == [6]
    final = load_checkpoint(killed / "checkpoints" / "last.json").model
    expected = load_checkpoint(ref / "checkpoints" / "last.json").model
    assert final.keys() == expected.keys() and any(k.startswith("matcher.") for k in final)
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (killed, ref))
    metrics.pop("seconds"), ref_metrics.pop("seconds")
    assert "i2t_recall@1_rerank_sum" in metrics and metrics == ref_metrics
