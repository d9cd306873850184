"""bench/docs.py: generated blocks are rendered from the committed results only, everything else
is kept, and the check fails on a stale or hand-edited block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench import docs, run_capture

REPO = Path(__file__).resolve().parents[2]


def test_render_rewrites_named_blocks_only():
    text = (
        "intro 1.0\n<!-- generated:a -->\nold a\n<!-- /generated:a -->\nmiddle\n"
        "<!-- generated:b -->\nold b\n<!-- /generated:b -->\n"
    )
    out = docs.render(text, {"a": lambda: "new a\n"})
    assert out == text.replace("old a", "new a")  # b has no source: kept as it was
    assert docs.render(out, {"a": lambda: "new a\n"}) == out  # idempotent


def test_metric_table_and_verdicts_follow_the_numbers():
    metrics = {"ae.latent_empty_frac": 0.2, "vae.latent_empty_frac": 0.3, "vae.elbo_nats": -137.123}
    run = {"metrics": metrics}
    table = run_capture.metrics_block(run)
    assert "| `vae.elbo_nats` | -137.1 |" in table and table.count("\n") == 5
    assert "has no fewer gaps than the AE's: 30.0%" in run_capture.verdicts_block(run)
    metrics["vae.latent_empty_frac"] = 0.1
    assert "has fewer gaps than the AE's: 10.0%" in run_capture.verdicts_block(run)


def test_unknown_and_unclosed_blocks_are_reported():
    text = "<!-- generated:nope -->\nx\n<!-- /generated:nope -->\n<!-- generated:metrics -->\n"
    assert docs.problems(text) == [
        "unknown generated block 'nope'",
        "generated block 'metrics' is not closed",
    ]


def test_script_output_becomes_markdown():
    text = "machine: x\nload 1\n\n| a | b |\n| - | - |\n| 1 | 2 |\n\nlast line\n"
    assert docs.as_markdown(text) == (
        "```\nmachine: x\nload 1\n```\n\n| a | b |\n| - | - |\n| 1 | 2 |\n\n```\nlast line\n```\n"
    )


def test_a_missing_result_renders_how_to_make_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(docs, "RESULTS", tmp_path)
    text = docs.render_block("latency")
    assert "python -m bench.latency --run artifacts" in text and "Not measured yet" in text
    assert "--binarized RUN --capture" in docs.render_block("binarized")
    (tmp_path / "latency.json").write_text(json.dumps({"not": "a latency result"}))
    with pytest.raises(KeyError):  # a result file the renderer cannot read fails loudly
        docs.render_block("latency")


def copy_pages(tmp_path: Path) -> Path:
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    return tmp_path


def test_the_committed_pages_match_the_committed_results(tmp_path: Path):
    root = copy_pages(tmp_path)
    assert docs.main(["--check", "--root", str(root)]) == 0


def test_the_check_fails_on_a_hand_edited_block(tmp_path: Path, capsys: pytest.CaptureFixture):
    root = copy_pages(tmp_path)
    page = root / "docs" / "benchmarks" / "index.md"
    text = page.read_text()
    start = text.index("<!-- generated:benchmarks-index -->")
    edited = text[:start] + text[start:].replace("|", "| 1.0", 1)  # one figure typed in
    page.write_text(edited)
    assert docs.main(["--check", "--root", str(root)]) == 1
    assert "docs/benchmarks/index.md" in capsys.readouterr().err
    assert page.read_text() == edited  # --check writes nothing
    assert docs.main(["--root", str(root)]) == 0  # rewriting restores the block
    assert page.read_text() == text
