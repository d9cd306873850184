"""bench/docs.py: generated blocks are rewritten from run files, everything else is kept."""

from __future__ import annotations

import json
from pathlib import Path

from bench.docs import metrics_block, render, verdicts_block


def test_render_rewrites_named_blocks_only():
    text = (
        "intro 1.0\n<!-- generated:a -->\nold a\n<!-- /generated:a -->\nmiddle\n"
        "<!-- generated:b -->\nold b\n<!-- /generated:b -->\n"
    )
    out = render(text, {"a": lambda: "new a\n"})
    assert out == text.replace("old a", "new a")  # b has no source: kept as it was
    assert render(out, {"a": lambda: "new a\n"}) == out  # idempotent


def test_metric_table_and_verdicts_follow_the_numbers(tmp_path: Path):
    (tmp_path / "eval").mkdir()
    metrics = {
        "ae.latent_empty_frac": 0.2,
        "vae.latent_empty_frac": 0.3,
        "vae.elbo_nats": -137.123,
    }
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    table = metrics_block(tmp_path)
    assert "| `vae.elbo_nats` | -137.1 |" in table and table.count("\n") == 5
    assert "has no fewer gaps than the AE's: 30.0%" in verdicts_block(tmp_path)
    metrics["vae.latent_empty_frac"] = 0.1
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    assert "has fewer gaps than the AE's: 10.0%" in verdicts_block(tmp_path)
