"""Regenerate README's results tables from fresh runs, printing each with the command that made it.

    python scripts/readme_tables.py                    # demo, compare (3 seeds), captioning, performance
    python scripts/readme_tables.py --seeds 1 --skip-bench
    python scripts/readme_tables.py --quick            # a smoke run: 1 epoch, 2 recipes, tiny decoders

Every number comes from the ``alignkit`` command shown above its table (run as a subprocess of
this interpreter, into ``--out``, default ``runs/readme``); paste the tables into README.md. The
performance section prints the benchmark scripts' own output. Nothing here is timed or tuned on
the test split: the tables are the commands' test-split results.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: README's captioning rows: method → (label, what it was trained on)
CAPTION_ROWS = (
    ("clipcap", "ClipCap", "image embeddings"),
    ("capdec", "CapDec", "text only (noise)"),
    ("decap", "DeCap", "text only (memory)"),
    ("iterative-memory", "iterative, caption memory", "—"),
    ("iterative-beam", "iterative, CapDec's beams", "text only"),
    ("coca", "CoCa", "images, own tower"),
)


def _run(argv: list[str]) -> str:
    """Run ``alignkit ARGV`` (or a script) with this interpreter; echo the command; return stdout."""
    script = argv[0].endswith(".py")
    command = [sys.executable, *argv] if script else [sys.executable, "-m", "alignkit", *argv]
    shown = ("python " if script else "alignkit ") + shlex.join(argv)
    print(f"\n$ {shown}", flush=True)
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"readme_tables: `{shown}` failed with exit code {done.returncode}")
    return done.stdout


def demo_table(out: Path, overrides: list[str]) -> str:
    from safetensors import safe_open

    metrics = json.loads(_run(["demo", "-o", str(out / "demo"), "--quiet", "--json", *overrides]))
    with safe_open(str(out / "demo" / "embeddings_test.safetensors"), framework="pt") as f:
        rows = int(f.get_slice("image").get_shape()[0])
    r = metrics
    return (
        "| zero-shot accuracy | image→text R@1 / R@5 / R@10 | text→image R@1 | median rank | chance R@1 |\n"
        "|---|---|---|---|---|\n"
        f"| **{r['zero_shot_accuracy']:.3f}** | {r['i2t_recall@1']:.3f} / {r['i2t_recall@5']:.3f} / "
        f"{r['i2t_recall@10']:.3f} | {r['t2i_recall@1']:.3f} | {r['median_rank']:g} | {1 / rows:.3f} |\n"
        f"\n({rows} test images; epochs: {r['epochs']}; {r['seconds']:.1f} s including evaluation)"
    )


def compare_table(out: Path, recipes: str, seeds: int, overrides: list[str]) -> str:
    argv = ["compare", "--recipes", recipes, "-o", str(out / "compare"), "--quiet", *overrides]
    if seeds > 1:
        argv += ["--seeds", str(seeds)]
    _run(argv)
    return (out / "compare" / "compare.md").read_text(encoding="utf-8").rstrip()


def caption_table(out: Path, settings: list[str]) -> str:
    _run(["caption", str(out / "demo"), "--fit", "--quiet", *settings])
    metrics = json.loads((out / "demo" / "captions" / "metrics.json").read_text(encoding="utf-8"))
    lines = [
        "| method | trained on | digit-word accuracy | attribute accuracy | attribute precision | BLEU-4 |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for method, label, trained in CAPTION_ROWS:
        scores = metrics["methods"].get(method, {}).get("beam")
        if scores is None:
            continue
        keys = ("digit_accuracy", "attribute_accuracy", "attribute_precision", "bleu4")
        text = ["—" if scores.get(k) is None or scores[k] != scores[k] else f"{scores[k]:.3f}" for k in keys]
        lines.append(f"| {label} | {trained} | " + " | ".join(text) + " |")
    train = ", ".join(f"{k} {v:.0f} s" for k, v in metrics.get("train_seconds", {}).items())
    seconds = f"{metrics['seconds']:.0f} s in all"
    lines.append(f"\n({metrics['n_images']} test images; decoder training: {train}; {seconds})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default="runs/readme", help="where the runs go (default runs/readme)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per recipe in the comparison (default 3)")
    parser.add_argument("--skip-bench", action="store_true", help="leave out the performance section")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 2 recipes, tiny decoders")
    args = parser.parse_args(argv)
    out = Path(args.out)
    quick = ["train.epochs=1"] if args.quick else []
    recipes = "clip,byol" if args.quick else "clip,byol,supcon,joint,binder,disentangled"
    tiny = ["epochs=1", "coca_epochs=1", "dim=32", "depth=1", "num_heads=2"] if args.quick else []
    seeds = 1 if args.quick else args.seeds
    sections = [
        ("Demo (README: The main job)", demo_table(out, quick)),
        ("Comparison (README: The main job)", compare_table(out, recipes, seeds, quick)),
        ("Captioning (README: Decoding)", caption_table(out, tiny)),
    ]
    if not args.skip_bench:
        for script in ("bench/losses.py", "bench/metrics.py", "bench/decoding.py"):
            sections.append((f"Performance: {script}", _run([script]).rstrip()))
    for title, table in sections:
        print(f"\n## {title}\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
