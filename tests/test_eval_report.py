"""report.json structure, the Markdown table, and the PNGs."""

import json

import pytest

from dsctl.errors import UserError
from dsctl.eval.report import load_report, markdown_table, merge_reports, plot_report_files, write_report

METRICS = {"pretrain": {"greedy": 0.0, "pass@1": 0.05, "val_ppl": 31.2},
           "sft": {"greedy": 0.4, "pass@1": 0.35, "cons@4": 0.5}}


def test_report_json_maps_checkpoint_to_metric_to_value_with_settings(tmp_path):
    written = write_report(tmp_path, METRICS, {"samples": 4, "seed": 0}, {"sft": {"note": 1}}, title="t")
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"metrics", "comparisons", "settings", "details"}
    assert report["metrics"] == METRICS
    assert report["settings"] == {"samples": 4, "seed": 0}
    assert [p.name for p in written] == ["report.json", "report.md", "report.png"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_has_a_row_per_metric_and_dashes_for_missing():
    table = markdown_table(METRICS).splitlines()
    assert table[0] == "| metric | pretrain | sft |"
    assert [row.split("|")[1].strip() for row in table[2:]] == ["greedy", "pass@1", "val_ppl", "cons@4"]
    assert table[-1] == "| cons@4 | – | 0.500 |"
    assert "| val_ppl | 31.2 | – |" in table


def test_plot_from_several_reports_prefixes_clashing_labels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, m in ((a, METRICS), (b, {"sft": {"greedy": 0.5}, "grpo": {"greedy": 0.6}})):
        d.mkdir()
        write_report(d, m, {})
    merged = merge_reports([("a", load_report(a)), ("b", load_report(b))])
    assert list(merged) == ["pretrain", "a/sft", "b/sft", "grpo"]
    out = plot_report_files([a, b / "report.json"], tmp_path / "cmp.png", names=["a", "b"])
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_load_report_refuses_a_directory_without_a_report(tmp_path):
    with pytest.raises(UserError, match="no report.json"):
        load_report(tmp_path)
