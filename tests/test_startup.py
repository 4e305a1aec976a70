"""What keeps the command line quick to start: the parser imports no torch, training imports neither
``torch._dynamo`` nor scikit-learn, and the replacements for what used to import them give the same
results (the AdamW trajectory and state, the digits and their stratified split). No timings here:
``python bench/run.py --rows start-up`` times it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import alignkit.train.optim as optim_module
from alignkit.data.splits import holdout, stratified_holdout
from alignkit.train.optim import AdamW


def _modules_after(code: str) -> set[str]:
    """The top modules of interest imported by ``code`` run in a fresh interpreter."""
    watch = ("torch", "torch._dynamo", "sklearn", "scipy", "matplotlib", "alignkit.report")
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {watch!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_parser_and_every_commands_help_import_no_torch() -> None:
    """``alignkit --help`` and ``--help`` of every command and sub-command (walked from the parser,
    so a new command is covered) print their help and import no torch."""
    code = (
        "import argparse, contextlib, io\n"
        "from alignkit.cli import _parser, main\n"
        "def commands(parser, path):\n"
        "    yield path\n"
        "    for action in parser._actions:\n"
        "        if isinstance(action, argparse._SubParsersAction):\n"
        "            for name, sub in action.choices.items():\n"
        "                yield from commands(sub, [*path, name])\n"
        "paths = list(commands(_parser(), []))\n"
        "for path in paths:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        main([*path, '--help'])\n"
        "    assert out.getvalue().startswith('usage: alignkit'), (path, out.getvalue()[:200])\n"
        "names = {p[0] for p in paths if p}\n"
        "assert {'caption', 'train', 'fit', 'measure', 'search', 'config'} <= names, names\n"
        "print(len(paths), file=__import__('sys').stderr)\n"
    )
    assert _modules_after(code) == set()


def test_training_imports_neither_dynamo_nor_sklearn() -> None:
    code = (
        "import tempfile, torch\n"
        "from torch import nn\n"
        "from alignkit.data import load_digits_captions\n"
        "from alignkit.train import Trainer\n"
        "d = load_digits_captions(seed=0)\n"
        "class S(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.lin = nn.Linear(64, 10)\n"
        "    def training_step(self, batch):\n"
        "        x, y = batch\n"
        "        return {'loss': nn.functional.cross_entropy(self.lin(x), y)}\n"
        "x = torch.from_numpy(d.images.reshape(-1, 64)); y = torch.from_numpy(d.labels)\n"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    t = Trainer(S(), (x, y), epochs=1, batch_size=256, lr=1e-2, out_dir=out, progress=False,\n"
        "                grad_clip=1.0, checkpoint_every=2)\n"
        "    t.fit()\n"
        "    Trainer(S(), (x, y), epochs=2, batch_size=256, lr=1e-2, out_dir=out, progress=False,\n"
        "            resume=True).fit()\n"
    )
    assert _modules_after(code) == {"torch"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))


def _run(
    opt_class: type, model: nn.Module, steps: int, state: dict | None = None, seed: int = 0
) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = opt_class(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=0.05,
        betas=(0.8, 0.9),
    )
    if state is not None:
        opt.load_state_dict(state)
    calls: list[int] = []
    opt.register_step_pre_hook(lambda *_: calls.append(0))
    opt.register_step_post_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=g)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert calls == [0, 1] * steps  # each hook once per step
    return opt


@pytest.mark.parametrize("dynamo_loaded", [False, True])
def test_adamw_is_torch_adamw(dynamo_loaded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths (torch._dynamo imported or not) take torch's steps exactly, and the state dicts load
    into each other."""
    monkeypatch.setattr(optim_module, "_compiling_possible", lambda: dynamo_loaded)
    for torch_class in (torch.optim.Adam, torch.optim.AdamW):  # hooks their step: ours must not call it
        torch_class([nn.Parameter(torch.zeros(1))])
    ours, theirs = _model(), _model()
    opt_ours = _run(AdamW, ours, 4)
    opt_theirs = _run(torch.optim.AdamW, theirs, 4)
    assert isinstance(opt_ours, torch.optim.AdamW)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    mine, reference = opt_ours.state_dict(), opt_theirs.state_dict()
    assert mine["param_groups"] == reference["param_groups"]
    for key, value in reference["state"].items():
        for name, tensor in value.items():
            assert torch.equal(mine["state"][key][name], tensor)
    # resume each from the other's state: still the same trajectory
    resumed_ours, resumed_theirs = _model(), _model()
    resumed_ours.load_state_dict(theirs.state_dict())
    resumed_theirs.load_state_dict(ours.state_dict())
    _run(AdamW, resumed_ours, 3, reference, seed=1)
    _run(torch.optim.AdamW, resumed_theirs, 3, mine, seed=1)
    for a, b in zip(resumed_ours.parameters(), resumed_theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def test_adamw_zero_grad_and_grad_mode() -> None:
    model = _model()
    opt = _run(AdamW, model, 1)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with torch.enable_grad():
        model(torch.randn(2, 5)).sum().backward()
        opt.step()
        assert torch.is_grad_enabled()  # the step's no-grad region is restored


def test_sklearn_digits_file_is_load_digits() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from alignkit.data.digits import _sklearn_digits

    bunch = sklearn_datasets.load_digits()
    images, target = _sklearn_digits()
    assert images.dtype == bunch.images.dtype and np.array_equal(images, bunch.images)
    assert target.dtype == bunch.target.dtype and np.array_equal(target, bunch.target)


def test_stratified_holdout_is_train_test_split() -> None:
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, k = int(rng.integers(20, 300)), int(rng.integers(2, 7))
        labels = rng.integers(0, k, n)
        labels[: 2 * k] = np.repeat(np.arange(k), 2)  # every class has two or more rows
        fraction, seed = float(rng.uniform(0.1, 0.6)), int(rng.integers(0, 10_000))
        index = rng.permutation(n) + 7
        expected = model_selection.train_test_split(
            index, test_size=fraction, stratify=labels, random_state=seed
        )
        rest, held = stratified_holdout(index, labels, fraction, seed)
        assert np.array_equal(rest, expected[0]) and np.array_equal(held, expected[1])


def test_holdout_of_an_integer_size_is_train_test_split() -> None:
    """``holdout(index, n_test, seed, labels)`` = ``train_test_split(index, test_size=n_test, stratify=labels,
    random_state=seed)``, with and without labels (PairedEmbeddings.split peels its parts off with it)."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(1)
    for _ in range(60):
        n, k = int(rng.integers(20, 300)), int(rng.integers(2, 7))
        labels = rng.integers(0, k, n)
        labels[: 2 * k] = np.repeat(np.arange(k), 2)
        n_test, seed = int(rng.integers(k, n - k)), int(rng.integers(0, 10_000))
        index = rng.permutation(n) + 3
        for stratify in (None, labels):
            expected = model_selection.train_test_split(
                index, test_size=n_test, stratify=stratify, random_state=seed
            )
            rest, held = holdout(index, n_test, seed, stratify)
            assert np.array_equal(rest, expected[0]) and np.array_equal(held, expected[1])
    with pytest.raises(ValueError, match="n_test must be an integer"):
        holdout(np.arange(5), 5, 0)
    with pytest.raises(ValueError, match="n_test=1 of N=6"):
        holdout(np.arange(6), 1, 0, np.array([0, 0, 1, 1, 2, 2]))


def test_digit_captions_and_paired_splits_import_no_sklearn() -> None:
    code = (
        "import numpy as np\n"
        "from alignkit.measure import digit_captions\n"
        "from alignkit.data.paired import PairedEmbeddings\n"
        "assert len(digit_captions(50)) == 50\n"
        "x = np.arange(80.0).reshape(40, 2)\n"
        "PairedEmbeddings(x, -x, labels=[0, 1] * 20).split((0.5, 0.25, 0.25), seed=1)\n"
        "PairedEmbeddings(x, -x).split((0.7, 0.3), seed=2)\n"
    )
    assert "sklearn" not in _modules_after(code)


def test_stratified_holdout_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        stratified_holdout(np.arange(10), np.array([0] * 9 + [1]), 0.3, 0)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_holdout(np.arange(10), np.array([0, 1] * 5), 1.0, 0)
    with pytest.raises(ValueError, match="labels must have shape"):
        stratified_holdout(np.arange(10), np.arange(9), 0.3, 0)
