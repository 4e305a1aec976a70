"""``alignkit caption`` and alignkit.captioning: decoders trained on a real (small) clip run.

One clip run (default recipe, 20 epochs, ≈ 5 s) is shared by the module. Most tests train tiny
decoders for a few epochs (they check plumbing, files, resume and errors); the acceptance test trains
the default decoders and checks the issue's targets (digit-word accuracy: CapDec and DeCap ≥ 0.8,
ClipCap and CoCa ≥ 0.9) on the 360 test images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alignkit.captioning import (
    CaptionSettings,
    caption_images,
    evaluate_captions,
    fit_captioners,
    load_captioner,
    load_run,
    read_images,
)
from alignkit.cli import main
from alignkit.data import load_digits_captions
from alignkit.metrics import corpus_bleu
from alignkit.recipes import load_config, run_recipe

TINY = CaptionSettings(epochs=2, coca_epochs=2, dim=32, depth=1, num_heads=2, max_length=32)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clip")
    run_recipe(load_config(None, ["train.epochs=20"]), out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_fit(clip_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the clip run with tiny decoders for every method but iterative-beam (needs MiniLM)."""
    import shutil

    run = tmp_path_factory.mktemp("tiny") / "run"
    shutil.copytree(clip_run, run)
    methods = ["clipcap", "capdec", "decap", "iterative-memory", "coca"]
    return run, fit_captioners(run, methods, TINY, progress=False, searches=("greedy",))


def test_evaluate_captions_against_hand_counts() -> None:
    digits = load_digits_captions(0)
    rows = [0, 1, 2]
    truth = [digits.attribute_words(i) for i in rows]
    captions = [
        digits.all_captions[0][0],  # the dataset's own caption: every attribute it names is right
        f"a photo of the number {truth[1]['digit']}",  # right digit, no attribute
        "a photo of the number 7" if truth[2]["digit"] != "seven" else "a photo of the number 3",
    ]
    scores = evaluate_captions(captions, digits, rows)
    assert scores["digit_accuracy"] == pytest.approx(2 / 3)
    named = {"ink", "slant", "thickness", "height", "width"}  # template 0 names these 5 of the 7
    assert scores["attribute_accuracy"] == pytest.approx(len(named) / 7 / 3)
    assert scores["attribute_precision"] == 1.0  # everything mentioned is right
    refs = [digits.all_captions[i] for i in rows]
    assert scores["bleu4"] == pytest.approx(corpus_bleu(captions, refs))
    assert scores["mean_length"] == pytest.approx(
        np.mean([len(c.replace(",", " ,").replace("(", "( ").replace(")", " )").split()) for c in captions])
    )


def test_fit_writes_files_and_scores_every_method(tiny_fit: tuple[Path, dict]) -> None:
    run, metrics = tiny_fit
    base = run / "captions"
    for name in ("tokenizer.json", "settings.json", "metrics.json", "samples.json"):
        assert (base / name).is_file()
    for method in ("clipcap", "capdec", "decap", "coca"):
        assert (base / method / "checkpoints" / "best.json").is_file()
        assert (base / method / "metrics.jsonl").is_file()
    on_disk = json.loads((base / "metrics.json").read_text())
    assert on_disk["methods"] == json.loads(json.dumps(metrics["methods"]))
    assert on_disk["n_images"] == 360 and on_disk["settings"]["epochs"] == 2
    for method, searches in metrics["methods"].items():
        assert set(searches) == ({"beam"} if method == "iterative-memory" else {"greedy"})
        for scores in searches.values():
            for key in ("digit_accuracy", "attribute_accuracy", "bleu4"):
                assert 0.0 <= scores[key] <= 1.0
    # the memory baseline needs no training and already names the digit (the run is aligned)
    assert metrics["methods"]["iterative-memory"]["beam"]["digit_accuracy"] > 0.8
    samples = json.loads((base / "samples.json").read_text())
    assert set(samples) == set(metrics["methods"])
    run_obj = load_run(run)
    test = run_obj.digits.splits["test"]
    assert samples["clipcap"][0]["index"] == int(test[0])


def test_iterative_memory_returns_the_nearest_training_caption(tiny_fit: tuple[Path, dict]) -> None:
    run = load_run(tiny_fit[0])
    images = run.data.images[run.data.splits["test"][:5]]
    captions = caption_images(run, images, "iterative-memory")
    train = run.rows("train")
    emb_i = run.image_embeddings(images)
    emb_t = run.text_embeddings(run.data.text[train])
    for caption, e in zip(captions, emb_i, strict=True):
        scores = [float(e @ t) for t in emb_t]
        best = max(range(len(scores)), key=scores.__getitem__)
        assert caption == run.data.captions[int(train[best])]
    # descriptive rows only: no "a photo of the number" caption in the memory
    assert all(not run.data.captions[int(i)].startswith("a photo of") for i in train)
    assert len(train) < len(run.data.splits["train"])


def test_refit_reuses_trained_decoders_and_refuses_other_settings(tiny_fit: tuple[Path, dict]) -> None:
    run, _ = tiny_fit
    log = (run / "captions" / "clipcap" / "metrics.jsonl").read_text()
    again = fit_captioners(run, ["clipcap"], None, progress=False, searches=("greedy",))
    assert (run / "captions" / "clipcap" / "metrics.jsonl").read_text() == log  # not retrained
    assert set(again["methods"]) >= {"clipcap", "coca"}  # merged with the earlier methods
    with pytest.raises(ValueError, match="trained with other settings"):
        fit_captioners(run, ["clipcap"], CaptionSettings(epochs=3), progress=False)
    model, tokenizer, settings = load_captioner(load_run(run), "clipcap")
    assert settings == TINY and len(tokenizer) > 40 and not model.training


def test_an_interrupted_decoder_is_finished_not_reused(clip_run: Path, tmp_path: Path) -> None:
    """A fit killed after epoch 1 of 3 leaves best.json behind; the next fit resumes it to the end."""
    import shutil

    from alignkit.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(clip_run, run)
    settings = CaptionSettings(epochs=1, dim=32, depth=1, num_heads=2)
    fit_captioners(run, ["decap"], settings, progress=False, searches=("greedy",))
    # pretend the run asked for 3 epochs and was killed after the first
    from alignkit.captioning import _read_decoder_json, _write_decoder_json

    settings_file = run / "captions" / "settings.json"
    _write_decoder_json(settings_file, {**_read_decoder_json(settings_file), "epochs": 3})
    with pytest.raises(ValueError, match="stopped after 1 of 3 epochs"):
        load_captioner(load_run(run), "decap")
    three = CaptionSettings(epochs=3, dim=32, depth=1, num_heads=2)
    fit_captioners(run, ["decap"], three, progress=False, searches=("greedy",))
    last = load_checkpoint(run / "captions" / "decap" / "checkpoints" / "last.json", verify=False)
    assert last.state["epoch"] == 3
    epochs = [
        json.loads(line)["epoch"]
        for line in (run / "captions" / "decap" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("type") == "epoch"
    ]
    assert epochs == [1, 2, 3]  # epoch 1 was not repeated
    assert load_captioner(load_run(run), "decap")[2] == three


def test_retraining_the_run_makes_its_decoders_stale(
    tiny_fit: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decoders, scores and the report record the run's weights digest; after retraining the run
    (other weights) they are refused or retrained, never reused."""
    import shutil

    from alignkit.captioning import stale_reason
    from alignkit.report import write_report
    from alignkit.train.checkpoint import checkpoint_digest

    run = tmp_path / "run"
    shutil.copytree(tiny_fit[0], run)
    before = checkpoint_digest(run / "checkpoints" / "best.json")
    source = json.loads((run / "captions" / "source.json").read_text())
    assert source == {"checkpoint": "checkpoints/best.json", "digest": before}
    assert tiny_fit[1]["checkpoint_digest"] == before
    assert stale_reason(load_run(run)) is None
    run_recipe(load_config(None, ["train.epochs=3"]), run, progress=False)  # retrain: other weights
    after = checkpoint_digest(run / "checkpoints" / "best.json")
    assert after != before
    with pytest.raises(ValueError, match=r"comes from other weights .*the run was retrained since.*--fit"):
        load_captioner(load_run(run), "clipcap")
    page = write_report(run).read_text(encoding="utf-8")
    assert "Not shown" in page and "the run was retrained since" in page and after[:16] in page
    log = run / "captions" / "coca" / "metrics.jsonl"
    assert log.is_file()
    fit_captioners(run, ["clipcap"], TINY, progress=True, searches=("greedy",))
    assert "comes from other weights" in capsys.readouterr().err  # said, not silent
    assert not log.exists()  # the stale decoders are gone, not mixed with the new one
    fresh = json.loads((run / "captions" / "metrics.json").read_text())
    assert fresh["checkpoint_digest"] == after and set(fresh["methods"]) == {"clipcap"}
    assert load_captioner(load_run(run), "clipcap")[2] == TINY
    assert "Captioning from the joint space" in write_report(run).read_text(encoding="utf-8")
    # a captions/ directory from before digests were recorded is not trusted either
    (run / "captions" / "source.json").unlink()
    with pytest.raises(ValueError, match="records no source checkpoint"):
        load_captioner(load_run(run), "clipcap")


def test_one_method_refit_keeps_the_other_samples(tiny_fit: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_fit[0], run)
    fit_captioners(run, ["decap"], None, progress=False, searches=("greedy",))
    samples = json.loads((run / "captions" / "samples.json").read_text())
    assert set(samples) == set(tiny_fit[1]["methods"])


def test_decap_and_capdec_see_what_their_method_says(
    tiny_fit: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeCap decodes the memory projection of the image; CapDec/ClipCap the image embedding itself."""
    import alignkit.functional as AF

    run = load_run(tiny_fit[0])
    images = run.data.images[run.data.splits["test"][:3]]
    seen: dict[str, torch.Tensor] = {}
    model, _, _ = load_captioner(run, "decap")
    original = type(model).generate

    def spy(self, embedding, *args, **kwargs):
        seen["query"] = embedding
        return original(self, embedding, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    caption_images(run, images, "decap", "greedy")
    memory = run.text_embeddings(run.data.text[run.rows("train")])
    expected = AF.memory_projection(run.image_embeddings(images), memory, 0.01)
    assert torch.allclose(seen["query"], expected, atol=1e-6)
    caption_images(run, images, "capdec", "greedy")
    assert torch.allclose(seen["query"], run.image_embeddings(images), atol=1e-6)


def test_read_images_and_bad_images(tmp_path: Path) -> None:
    digits = load_digits_captions(0)
    good = tmp_path / "x.npy"
    np.save(good, digits.images[:4])
    assert read_images(good).shape == (4, 8, 8)
    flat = tmp_path / "flat.npy"
    np.save(flat, digits.images[:4].reshape(4, 64))
    assert torch.equal(read_images(flat), read_images(good))
    raw = tmp_path / "raw.npy"
    np.save(raw, digits.images[:4] * 16)
    with pytest.raises(ValueError, match="digits by 16"):
        read_images(raw)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 7, 7)))
    with pytest.raises(ValueError, match=r"shape \(N, 8, 8\)"):
        read_images(wrong)
    objects = tmp_path / "obj.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy"):
        read_images(objects)
    with pytest.raises(ValueError, match="no such file"):
        read_images(tmp_path / "missing.npz")


def test_cli_captions_images_and_the_test_split(
    tiny_fit: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = tiny_fit
    digits = load_digits_captions(0)
    images = tmp_path / "digits.npy"
    np.save(images, digits.images[:3])
    assert (
        main(["caption", str(run), "--images", str(images), "--method", "iterative-memory"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["0", "1", "2"]
    assert (
        main(
            [
                "caption",
                str(run),
                "--method",
                "coca",
                "--search",
                "greedy",
                "--limit",
                "4",
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and set(rows[0]) == {"index", "caption", "reference"}
    assert rows[0]["index"] == int(digits.splits["test"][0])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/nonexistent/run"], "is not a run directory"),
        (["{run}", "--images", "{tmp}/missing.npy"], "no such file"),
        (["{run}", "--method", "gpt"], "invalid choice"),
        (["{run}", "--beam-size", "0"], "--beam-size must be in [1, 256]"),
        (["{run}", "epochs=3"], "KEY=VALUE decoder settings only apply with --fit"),
        (["{run}", "--fit", "--methods", "clipcap,gpt"], "unknown method 'gpt'"),
        (["{run}", "--fit", "--set", "mapping=lstm"], "settings.mapping must be one of"),
        (["{run}", "--fit", "nope=1"], "unknown caption setting"),
        (
            ["{run}", "--fit", "--set", "dropout=abc"],
            "settings.dropout must be a number in [0, 1)",
        ),
        (["{run}", "--fit", "--images", "x.npy"], "--fit trains and scores on the digits"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(
    tiny_fit: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    argv = [a.format(run=tiny_fit[0], tmp=tmp_path) for a in argv]
    try:
        code = main(["caption", *argv])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_without_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.yaml").write_text("recipe: clip\n")
    assert main(["caption", str(tmp_path)]) == 2
    assert "no checkpoints/best.json" in capsys.readouterr().err


def test_report_has_the_captioning_section(tiny_fit: tuple[Path, dict]) -> None:
    from alignkit.report.html import write_report

    html = write_report(tiny_fit[0]).read_text()
    assert "Captioning from the joint space" in html and "iterative-memory" in html and "BLEU-4" in html


def test_iterative_beam_picks_the_nearest_beam(tiny_fit: tuple[Path, dict]) -> None:
    """Re-ranking: of the decoder's beams, the caption whose MiniLM → joint embedding is nearest wins."""
    from alignkit.data import encode_texts

    run = load_run(tiny_fit[0])
    images = run.data.images[run.data.splits["test"][:3]]
    model, tokenizer, settings = load_captioner(run, "iterative-beam")
    chosen = caption_images(run, images, "iterative-beam")
    ids, _ = model.beams(run.image_embeddings(images), settings.candidates, settings.max_length)
    for i, caption in enumerate(chosen):
        beams = tokenizer.batch_decode(ids[i])
        assert caption in beams
        emb = run.text_embeddings(encode_texts(beams))
        sims = emb @ run.image_embeddings(images[i : i + 1])[0]
        assert caption == beams[int(sims.argmax())]


@pytest.mark.slow
def test_default_decoders_reach_the_targets(clip_run: Path, tmp_path: Path) -> None:
    """The issue's aims on the 360 test images, default settings, beam search."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(clip_run, run)
    metrics = fit_captioners(run, ["clipcap", "capdec", "decap", "coca"], progress=False, searches=("beam",))
    digit = {m: s["beam"]["digit_accuracy"] for m, s in metrics["methods"].items()}
    assert digit["capdec"] >= 0.8 and digit["decap"] >= 0.8, digit
    assert digit["clipcap"] >= 0.9 and digit["coca"] >= 0.9, digit
