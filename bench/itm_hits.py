"""Which test queries each seed of an ``itm --seeds N`` run gets right at R@1, per ranking.

    python bench/itm_hits.py runs/readme/itm      # the run bench/readme_tables.py itm makes

For every ``RUN/seed-S/`` it loads the checkpoint the run evaluated (``train.evaluate_checkpoint``),
re-runs the recipe's own re-ranked evaluation (``ITMSystem.extra_metrics``) and the contrastive
retrieval of the run's evaluation (``recall_at_k`` on the test embeddings), and records each query's
strict R@1 hit by the contrastive logit (the ranks ``recall_at_k`` computes), the matcher alone and
matcher + contrastive (the score matrices handed to ``alignkit.functional.reranked_recall_at_k``). It
prints per seed the R@1 hit count of each ranking (each checked equal to the seed's ``metrics.json``:
the script exits with a message where one differs), the within-query spread of the two terms, the
number of queries whose own item ties exactly with another candidate by matcher + contrastive
(identical captions score identically; a tie is never a strict hit: ties count against), and for
each ranking how many hit queries the seeds share. Equal counts with different query sets are a
coincidence; equal sets would point at a constant. ``tests/test_bench_itm_hits.py`` runs it on a tiny
run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

NAMES = ("contrastive", "matcher", "matcher + contrastive")
#: each ranking's strict image → text R@1 in a run's metrics.json
KEYS = ("i2t_recall@1", "i2t_recall@1_rerank", "i2t_recall@1_rerank_sum")


def _ranks(candidates: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """(Q,) strict 1-based rank of query q's own item (gallery index q), ties counted against; k + 1
    when it is not among the candidates."""
    k = scores.shape[1]
    own = candidates[:, :k] == torch.arange(len(candidates))[:, None]
    best = scores.masked_fill(~own, -torch.inf).amax(1, keepdim=True)
    rank = 1 + ((scores >= best) & ~own).sum(1)
    return torch.where(own.any(1), rank, torch.full_like(rank, k + 1))


def seed_hits(seed_dir: Path, data: object) -> dict[str, object]:
    """The hit sets and figures of one seed's run directory (see the module docstring).

    Every hit set is read from the computation that made the seed's ``metrics.json``, not recomputed
    beside it: the re-ranked ones from the (candidates, scores) the recipe hands to
    ``reranked_recall_at_k``, the contrastive one from the per-query ranks of the run's own
    ``recall_at_k(image, text)`` call on the test embeddings (``alignkit.recipes.evaluate.evaluate_split``),
    captured from its rank engine. Each count is checked against ``metrics.json`` (exit with a message
    if one differs). A contrastive ranking rebuilt from the candidates' ``(matcher + contrastive) −
    matcher`` would be off by float32 rounding, which turns near-ties of an untrained model into false
    hits or misses."""
    import alignkit.functional
    import alignkit.functional.retrieval as retrieval
    from alignkit.recipes import build_system, load_config
    from alignkit.train.checkpoint import load_checkpoint

    config = load_config(seed_dir / "config.yaml")
    system = build_system(config, data)
    which = config["train"]["evaluate_checkpoint"]
    load_checkpoint(seed_dir / "checkpoints" / f"{which}.json", verify=False).load_into(system)
    system.eval()
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    ranks: list[torch.Tensor] = []
    original = alignkit.functional.reranked_recall_at_k
    engine = retrieval._blocked_ranks

    def spy(candidates, scores, query_ids, gallery_ids, k=(1, 5)):  # type: ignore[no-untyped-def]
        calls.append((candidates, scores, query_ids))
        return original(candidates, scores, query_ids, gallery_ids, k=k)

    def rank_spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        ranks.append(engine(*args, **kwargs))
        return ranks[-1]

    alignkit.functional.reranked_recall_at_k = spy
    retrieval._blocked_ranks = rank_spy
    try:
        with torch.no_grad():
            metrics = system.extra_metrics(data)
            emb = system.embed(data, data.splits["test"])  # as evaluate_split, which made metrics.json
            contrastive_r1 = alignkit.functional.recall_at_k(emb["image"].float(), emb["text"].float(), k=1)
    finally:
        alignkit.functional.reranked_recall_at_k = original
        retrieval._blocked_ranks = engine
    strict = [c for c in calls if torch.equal(c[2], torch.arange(len(c[2])))]
    # per direction and id set: matcher, matcher + contrastive, ceiling; the strict set comes first
    i2t_matcher, i2t_sum = strict[0], strict[1]
    cand, matcher, _ = i2t_matcher
    summed = i2t_sum[1]
    n = len(cand)
    if len(ranks) != 1 or ranks[0].shape != (n,):
        raise SystemExit(f"{seed_dir}: recall_at_k did not rank {n} queries once (the rank engine changed?)")
    out: dict[str, object] = {"n": n, "contrastive": set((ranks[0] == 1).nonzero().squeeze(1).tolist())}
    for name, scores in ((NAMES[1], matcher), (NAMES[2], summed)):
        out[name] = set((_ranks(cand, scores) == 1).nonzero().squeeze(1).tolist())
    own = cand == torch.arange(n)[:, None]
    best = summed.masked_fill(~own, -torch.inf).amax(1, keepdim=True)
    out["exact_ties"] = int((((summed == best) & ~own).any(1) & own.any(1)).sum())
    contrastive = summed - matcher  # logit_scale·cos of the candidates (up to float32 rounding): spread only
    out["spread"] = (float(matcher.std(1).mean()), float(contrastive.std(1).mean()))
    out["logit_scale"] = float(system.clip.logit_scale.detach())
    saved = json.loads((seed_dir / "metrics.json").read_text())
    here = {"i2t_recall@1": contrastive_r1["recall@1"]} | metrics
    for key, name in zip(KEYS, NAMES, strict=True):
        hits = len(out[name])
        if round(saved[key] * n) != hits or round(here[key] * n) != hits:
            raise SystemExit(f"{seed_dir}: {key} {saved[key] * n:.0f}/{n} in metrics.json, {hits} here")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an itm run made with --seeds N (RUN/seed-S/ each)")
    args = parser.parse_args(argv)
    seeds = sorted(args.run.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    if not seeds:
        print(f"{args.run} has no seed-*/ directories (train with --seeds N)", file=sys.stderr)
        return 2
    from alignkit.recipes import load_config, load_data

    first = load_config(seeds[0] / "config.yaml")
    if first["recipe"] != "itm" or first["data"]["source"] != "digits":
        print(f"{args.run} is not an itm run on the digits", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    data = load_data(first["data"]["seed"], first["data"]["text_model"])
    results = {int(s.name.split("-")[1]): seed_hits(s, data) for s in seeds}
    print("image → text, strict R@1 on the test split (hits of n queries):")
    for seed, r in results.items():
        parts = ", ".join(f"{name} {len(r[name])}" for name in NAMES)
        m_sd, c_sd = r["spread"]
        print(
            f"  seed {seed}: {parts} of {r['n']} (each equal to metrics.json); "
            f"logit_scale {r['logit_scale']:.2f}; within-query sd of the matcher logit {m_sd:.3f}, of "
            f"logit_scale·cos {c_sd:.3f}; by matcher + contrastive, own item tied exactly by another "
            f"candidate (never a strict hit) in {r['exact_ties']} queries"
        )
    for name in NAMES:
        sets = [r[name] for r in results.values()]
        pairs = [
            f"{a}&{b}: {len(results[a][name] & results[b][name])}"
            for i, a in enumerate(results)
            for b in list(results)[i + 1 :]
        ]
        common = set.intersection(*sets)
        sizes = statistics.mean(len(s) for s in sets)
        shared = f"{', '.join(pairs)}; by all {len(common)}"
        print(f"  {name}: hit queries shared by seeds {shared} (mean hits {sizes:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
