"""Every ```python block in README.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert BLOCKS, "README.md should show at least one python example"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "readme"})


# ------------------------------------------------------------------------------------------------
# "Bring your own data": every command of the section runs on files made here with those names

_SECTION = README.read_text().split("## Bring your own data", 1)[-1].split("\n## ", 1)[0]
COMMANDS = [
    line.strip()
    for block in re.findall(r"```bash\n(.*?)```", _SECTION, flags=re.S)
    for line in block.splitlines()
    if line.strip().startswith("alignkit train ")
]
_FAST = ["train.epochs=2", "train.batch_size=32", "model.embed_dim=16", "model.image_width=32"]


def _make_files(root: Path, tiny_bert: Path) -> None:
    import json
    import shutil

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    z = rng.standard_normal((60, 6)).repeat(5, axis=0)  # 5 captions per image: groups of 5
    np.save(root / "image_emb.npy", (z @ rng.standard_normal((6, 48))).astype(np.float32))
    text = z @ rng.standard_normal((6, 32)) + 0.2 * rng.standard_normal((300, 32))
    np.save(root / "text_emb.npy", text.astype(np.float32))
    np.save(root / "image_ids.npy", np.arange(300) // 5)
    (root / "photos").mkdir()
    rows = ["file,caption,label"]
    for i in range(60):
        colour = ["red", "green", "blue"][i % 3]
        pixels = np.zeros((20, 20, 3), np.uint8)
        pixels[..., i % 3] = 200
        pixels[rng.integers(0, 20, 30), rng.integers(0, 20, 30)] = 255
        Image.fromarray(pixels, mode="RGB").save(root / "photos" / f"{i:03d}.jpg")
        rows.append(f"photos/{i:03d}.jpg,a {colour} square with white dots,{colour}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    words = ["a", "the", "digit", "three", "seven", "heavy", "light", "thin", "one", "two", "top", "left"]
    lines = []
    for _ in range(60):
        q = " ".join(rng.choice(words, 3))
        lines.append(json.dumps({"query": q, "document": q + " " + " ".join(rng.choice(words, 2))}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copytree(tiny_bert, root / "models" / "my-bert")


def test_readme_has_bring_your_own_data_commands() -> None:
    assert len(COMMANDS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(COMMANDS)))
def test_readme_bring_your_own_data(
    index: int, tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import shlex

    from alignkit.cli import main

    _make_files(tmp_path, tiny_bert)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(COMMANDS[index])[1:]
    assert main([argv[0], "--no-report", *argv[1:], *_FAST]) == 0
    out = Path(argv[argv.index("--out") + 1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["i2t_recall@1"] <= 1.0
