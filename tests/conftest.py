from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Two CPU cores in CI: keep each test single-threaded and deterministic.
torch.set_num_threads(int(os.environ.get("ALIGNKIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Tiny random-initialised Hugging Face models saved to disk (no download), shared by the tests that
# load users' models by path.

_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "digit", "three", "seven", "heavy"]
_WORDS += ["light", "thin", "one", "two", "top", "left", "##s", "##ish"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(_WORDS) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer(vocab=str(vocab))
    assert tokenizer("a heavy threes")["input_ids"] == [2, 5, 10, 8, 17, 3]  # the vocabulary is used
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64,
    )
    transformers.ViTModel(config).save_pretrained(directory)
    return directory


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` imported as a module (the experiments are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def experiment() -> object:
    """:func:`load_experiment`, for tests that import an experiment script."""
    return load_experiment
