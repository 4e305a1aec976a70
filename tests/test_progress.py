"""alignkit.progress: the one progress display (a bar in a terminal, else a few flushed lines)."""

from __future__ import annotations

import io
import sys

import pytest

from alignkit.progress import Progress, track


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_outside_a_terminal_about_ten_and_the_last() -> None:
    out = io.StringIO()
    with Progress(20, "fit mlp/mse", unit="epoch", stream=out) as shown:
        assert shown.plain and not shown.drawing
        for e in range(1, 21):
            shown.update(loss=f"{e / 10:.4g}")
    lines = out.getvalue().splitlines()
    want = [f"fit mlp/mse: epoch {e}/20" for e in range(2, 21, 2)]
    assert [line.split(" loss ")[0] for line in lines] == want
    assert lines[-1].startswith("fit mlp/mse: epoch 20/20 loss 2 (") and lines[-1].endswith(" s)")
    assert "\r" not in out.getvalue()


def test_updates_of_several_units_print_when_they_cross_a_tenth_and_at_the_end() -> None:
    out = io.StringIO()
    with Progress(1797, "embedding with m", unit="texts", stream=out) as shown:
        for start in range(0, 1797, 512):
            shown.update(min(512, 1797 - start))
    counts = [line.split("texts ")[1].split(" (")[0] for line in out.getvalue().splitlines()]
    assert counts == ["512/1,797", "1,024/1,797", "1,536/1,797", "1,797/1,797"]


def test_disabled_prints_nothing_and_lines_zero_prints_only_the_callers_lines() -> None:
    out = io.StringIO()
    with Progress(5, "x", enabled=False, stream=out) as shown:
        shown.update(5)
        shown.line("no")
        shown.say("no")
    assert out.getvalue() == ""
    with Progress(5, "[1/2] tiny: ", unit="step", lines=0, stream=out) as shown:
        shown.update(5)
        shown.line("epoch 1/1 loss 0.5")  # a label ending in a space gets no ": "
    assert out.getvalue() == "[1/2] tiny: epoch 1/1 loss 0.5\n"


def test_a_terminal_gets_a_bar_and_no_plain_lines() -> None:
    pytest.importorskip("tqdm")
    term = _Terminal()
    with Progress(4, "fit linear/clip", unit="epoch", stream=term, leave=True) as shown:
        assert shown.drawing and not shown.plain
        shown.say("resumed after epoch 1/4")
        for _ in range(4):
            shown.update(loss="0.1")
        shown.line("not shown: the bar says it")
    text = term.getvalue()
    assert "fit linear/clip" in text and "\r" in text and "4/4" in text
    assert "fit linear/clip: resumed after epoch 1/4" in text
    assert "not shown" not in text


def test_track_counts_items_or_sizes_and_closes_when_left(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    assert list(track(range(3), 3, "batches", unit="batch")) == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("batches: batch 3/3 (")
    out.truncate(0)
    out.seek(0)
    seen = list(track(["ab", "cde"], 5, "rows", sizes=[2, 3], lines=1))
    assert seen == ["ab", "cde"] and out.getvalue().startswith("rows: 5/5 (")
    for item in track(range(10), 10, "never", enabled=False):
        if item == 2:
            break
    assert "never" not in out.getvalue()
