"""Regenerate README's results tables from fresh runs, and write them between README's markers.

    python bench/readme_tables.py                 # every table (≈ 20 min on 2 CPU cores)
    python bench/readme_tables.py demo compare    # some of them
    python bench/readme_tables.py --print-only    # print, leave README alone

Tables (each between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in README.md):

* ``demo``: ``alignkit demo`` (the clip recipe, seed 0) on the test split, each similarity with its
  chance level and permutation null;
* ``compare``: ``alignkit compare --seeds 3`` (every recipe, seeds 0–2, mean ± sd; a column's best is
  marked only when its 95 % interval overlaps no other recipe's);
* ``caption``: ``alignkit caption runs/readme/demo --fit`` (every decoder trained on the demo run);
* ``itm``: ``alignkit train --config configs/itm.yaml --seeds 3`` (R@K with and without re-ranking).

The performance table has its own command, ``make bench`` (``bench/run.py``).
Runs go to ``runs/readme/``; each table says which command made it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from alignkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "readme"
TABLES = ("demo", "compare", "caption", "itm")


def _cell(value: object, digits: int = 3) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return "—"
    return f"{value:.{digits}f}"


def demo_table() -> str:
    out = RUNS / "demo"
    assert main(["demo", "-o", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    n = 360
    null = m.get("null", {})

    def with_null(key: str) -> str:
        z = null.get(key)
        if not z:
            return _cell(m.get(key))
        spread = f"{_cell(z['null_mean'])} ± {_cell(z['null_sd'])}"
        return f"{_cell(m.get(key))} (null {spread}, p {_cell(z['p_value'])})"

    def recalls(suffix: str = "") -> str:
        return " / ".join(_cell(m.get(f"i2t_recall@{k}{suffix}")) for k in (1, 5, 10))

    chance_recalls = " / ".join(_cell(k / n) for k in (1, 5, 10))
    rows = [
        ("zero-shot accuracy, unseen prompts", _cell(m.get("zero_shot_accuracy")), "0.100"),
        ("zero-shot accuracy, seen template", _cell(m.get("zero_shot_accuracy_seen_template")), "0.100"),
        ("image→text R@1 / R@5 / R@10 (own caption)", recalls(), chance_recalls),
        ("image→text R@1 / R@5 / R@10 (any identical caption)", recalls("_grouped"), "—"),
        ("image→text R@1 against its null", with_null("i2t_recall@1"), _cell(1 / n)),
        ("text→image R@1", _cell(m.get("t2i_recall@1")), _cell(1 / n)),
        ("median rank (image→text)", _cell(m.get("median_rank"), 0), _cell((n + 1) / 2, 1)),
        ("linear CKA, biased", with_null("cka_linear"), "—"),
        ("linear CKA, unbiased", with_null("cka_unbiased"), "0"),
        ("mutual 10-NN", with_null("mutual_knn"), _cell(10 / (n - 1))),
    ]
    lines = [
        "Made by `python bench/readme_tables.py demo` (= `alignkit demo`, seed 0; test split, 360 images; "
        f"{m.get('epochs')} epochs, {m.get('seconds', 0):.1f} s of training and evaluation). The null is "
        "the metric with the captions' rows shuffled (50 permutations; mean ± sd, p-value).",
        "",
        "| metric | value | chance |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
    ]
    return "\n".join(lines) + "\n"


def compare_table() -> str:
    out = RUNS / "compare"
    assert main(["compare", "-o", str(out), "--seeds", "3", "--quiet"]) == 0
    table = (out / "compare.md").read_text()
    binder = json.loads((out / "binder" / "metrics.json").read_text())
    emergent, sd = binder["mean"]["text_to_profile_recall@1"], binder["sd"]["text_to_profile_recall@1"]
    n_test = 360
    return (
        "Made by `python bench/readme_tables.py compare` (= `alignkit compare --seeds 3`: every recipe "
        "with its default config, seeds 0, 1, 2, the same split; mean ± sd over the seeds; seconds "
        "include evaluation):\n\n" + table + "\nIn the binder runs, captions and a second modality (the "
        "images' ink profiles) were each bound only to the images; caption → profile retrieval, never "
        f"trained, reaches R@1 {emergent:.3f} ± {sd:.3f} (chance {1 / n_test:.3f}): ImageBind's emergent "
        "alignment.\n"
    )


def caption_table() -> str:
    demo = RUNS / "demo"
    if not (demo / "metrics.json").is_file():
        demo_table()
    assert main(["caption", str(demo), "--fit", "--quiet"]) == 0
    from alignkit.cli.caption import format_table

    metrics = json.loads((demo / "captions" / "metrics.json").read_text())
    return (
        "Made by `python bench/readme_tables.py caption` (= `alignkit caption runs/readme/demo --fit` on "
        "the demo run; every decoder trained once, default settings; 360 test images):\n\n"
        + format_table(metrics)
    )


def itm_table() -> str:
    out = RUNS / "itm"
    assert main(["train", "--config", str(ROOT / "configs" / "itm.yaml"), "-o", str(out), "--seeds", "3",
                 "--quiet", "--no-report"]) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    n = 360

    def cell(key: str) -> str:
        if key not in m["mean"]:
            return "—"
        return f"{_cell(m['mean'][key])} [{_cell(m['low'][key])}, {_cell(m['high'][key])}]"

    rows = []
    for name, label in (("i2t", "image→text"), ("t2i", "text→image")):
        for k in (1, 5):
            keys = [f"{name}_recall@{k}", f"{name}_recall@{k}_rerank", f"{name}_recall@{k}_rerank_sum"]
            rows.append(f"| {label} R@{k} | " + " | ".join(cell(x) for x in keys) + f" | {_cell(k / n)} |")
    for name, label in (("i2t", "image→text"), ("t2i", "text→image")):
        keys = [f"{name}_recall@1_grouped{tag}" for tag in ("", "_rerank", "_rerank_sum")]
        rows.append(f"| {label} R@1, any identical caption | " + " | ".join(cell(x) for x in keys) + " | — |")
    top_k = int(m["mean"].get("itm_top_k", 16))
    return (
        "Made by `python bench/readme_tables.py itm` (= `alignkit train --config configs/itm.yaml "
        f"--seeds 3`: seeds {', '.join(str(s) for s in m['seeds'])}; {n} test rows; mean and 95 % Student-t "
        f"interval over the seeds; chance = K/{n} for the strict R@K). The own partner is among the "
        f"{top_k} re-ranked candidates for {cell('i2t_recall@k_candidates')} of the image queries and "
        f"{cell('t2i_recall@k_candidates')} of the caption queries (the re-ranking ceiling).\n\n"
        "| R@K (test split) | contrastive | re-ranked by the matcher | matcher + contrastive | chance |\n"
        "|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def write_readme(tables: dict[str, str], readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text(encoding="utf-8")
    for name, body in tables.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n).*?(<!-- /table:{name} -->)", re.S)
        if not pattern.search(text):
            print(f"README has no <!-- table:{name} --> marker; printed only", file=sys.stderr)
            continue
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
    readme.write_text(text, encoding="utf-8")


def run(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tables", nargs="*", help=f"which tables: {', '.join(TABLES)} (default all)")
    parser.add_argument("--print-only", action="store_true", help="print the tables, leave README alone")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tables) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    makers = {"demo": demo_table, "compare": compare_table, "caption": caption_table, "itm": itm_table}
    tables = {name: makers[name]() for name in (args.tables or TABLES)}
    for name, body in tables.items():
        print(f"<!-- table:{name} -->\n{body}")
    if not args.print_only:
        write_readme(tables)
    return tables


if __name__ == "__main__":
    run()
