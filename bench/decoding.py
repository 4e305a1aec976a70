"""Caption generation with the key/value cache vs re-running the whole sequence at every step.

    python bench/decoding.py            # 360 embeddings (the digits test split), 32 tokens, CPU

The decoder is :class:`alignkit.models.PrefixCaptioner` at its default size (dim 128, 2 blocks, 4
prefix vectors, a 60-word vocabulary), untrained; EOS is masked so every sequence runs the full
32 tokens (the worst case; trained captioners stop at about 15). Both rows run the same search over
the same log-probabilities, so they return the same ids ("value" = their checksum). Time is the
median of repeats after a warm-up; peak memory is beyond the inputs (see bench/_harness.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _harness import measure, table
from _harness import parser as bench_parser

from alignkit.models import PrefixCaptioner
from alignkit.nn import DecoderCache, beam_search, greedy_search

BOS, EOS = 1, 2


def _model(n: int, device: str) -> tuple[PrefixCaptioner, torch.Tensor]:
    torch.manual_seed(0)
    model = PrefixCaptioner(64, 60, max_length=32, dropout=0.0).to(device).eval()
    return model, torch.randn(n, 64, device=device)


def _search(model: PrefixCaptioner, embedding: torch.Tensor, beams: int, cached: bool) -> Callable[[], float]:
    def run() -> float:
        with torch.no_grad():
            prefix = model.prefix(embedding)
            cache = DecoderCache()

            def step(tokens: torch.Tensor, rows: torch.Tensor, parents: torch.Tensor | None) -> torch.Tensor:
                if not cached:
                    logits = model.decoder(tokens, prefix=prefix[rows])
                elif parents is None:
                    logits = model.decoder(tokens, prefix=prefix[rows], cache=cache)
                else:
                    cache.reorder(parents)
                    logits = model.decoder(tokens[:, -1:], cache=cache)
                logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
                logp[:, EOS] = -torch.inf  # every sequence runs to max_length
                return logp

            n = embedding.shape[0]
            if beams == 1:
                ids = greedy_search(step, n, BOS, EOS, 32, device=embedding.device)
            else:
                ids = beam_search(step, n, BOS, EOS, 32, beam_size=beams, device=embedding.device)[0]
            return float(ids.sum())

    return run


def cached(n: int, beams: int, device: str) -> Callable[[], float]:
    model, embedding = _model(n, device)
    return _search(model, embedding, beams, cached=True)


def recomputed(n: int, beams: int, device: str) -> Callable[[], float]:
    model, embedding = _model(n, device)
    return _search(model, embedding, beams, cached=False)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--n", type=int, default=360)
    args = parser.parse_args()
    print(f"# bench/decoding.py on {args.device} ({args.threads} threads), torch {torch.__version__}")
    for beams, label in ((1, "greedy"), (3, "beam search, 3 beams")):
        rows = [
            measure(
                "key/value cache (alignkit)",
                cached,
                {"n": args.n, "beams": beams},
                args.device,
                threads=args.threads,
            ),
            measure(
                "re-run the whole sequence each step",
                recomputed,
                {"n": args.n, "beams": beams},
                args.device,
                threads=args.threads,
            ),
        ]
        print(table(f"{label}: {args.n} captions × 32 tokens", rows, baseline=rows[0].name))


if __name__ == "__main__":
    main()
