"""Results rows, Markdown/CSV/PNG report files, and the sourced reference numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.image
import pytest
from PIL import Image

from jepa.report import COLUMNS, PAPER_REFERENCES, build_results, write_report

RUNS = [
    {
        "name": "pixels",
        "kind": "baseline",
        "dataset": "fashion_mnist",
        "probe": {"top1": 0.81, "top5": 0.99},
        "knn": {"knn_top1": 0.84, "k": 20},
    },
    {
        "name": "ijepa-tiny",
        "dataset": "fashion_mnist",
        "probe_top1": 0.8512,
        "probe_top5": 0.995,
        "knn_top1": 0.83,
        "epochs": 2,
        "wall_time_s": 61.5,
        "images_per_s": 1950.2,
        "final_loss": 0.0123,
        "effective_rank": 41.7,
    },
]


def test_rows_order_kinds_and_percentages() -> None:
    rows = build_results(RUNS)
    assert [row["kind"] for row in rows] == ["measured", "baseline"] + ["reference"] * 3
    tiny, pixels = rows[0], rows[1]
    assert tiny["name"] == "ijepa-tiny" and tiny["probe_top1"] == pytest.approx(85.12)
    assert pixels["probe_top1"] == pytest.approx(81.0) and pixels["knn_top1"] == pytest.approx(84.0)
    assert pixels["epochs"] is None
    assert all(set(row) == set(COLUMNS) for row in rows)
    assert build_results(RUNS, references=[])[-1]["kind"] == "baseline"


def test_rows_reject_bad_records() -> None:
    with pytest.raises(ValueError, match="fraction"):
        build_results([{"name": "x", "probe_top1": 72.9}])  # percent passed as a fraction
    with pytest.raises(ValueError, match="kind"):
        build_results([{"name": "x", "kind": "reference"}])
    with pytest.raises(ValueError, match="name"):
        build_results([{"probe_top1": 0.5}])
    with pytest.raises(ValueError, match="source"):
        build_results([], references=[{"name": "unsourced", "probe_top1": 72.4}])


def test_paper_references_are_sourced() -> None:
    assert [r["probe_top1"] for r in PAPER_REFERENCES] == [72.9, 77.5, 79.3]
    assert all("2301.08243" in r["source"] for r in PAPER_REFERENCES)
    # The seed document's unsourced table stays out.
    assert not {72.4, 68.5, 74.7, 78.3} & {r["probe_top1"] for r in PAPER_REFERENCES}


def markdown_sections(text: str) -> tuple[str, str]:
    heading = "## Published reference numbers (not measured here)"
    assert text.count(heading) == 1
    measured, references = text.split(heading)
    return measured, references


def test_write_report_files(tmp_path: Path) -> None:
    rows = build_results(RUNS)
    curves = {"ijepa-tiny": ([0, 10, 20], [0.5, 0.1, 0.0123])}
    paths = write_report(rows, tmp_path / "report", loss_curves=curves)
    assert set(paths) == {"markdown", "csv", "png"}
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "results.csv",
        "results.md",
        "results.png",
    ]

    measured, references = markdown_sections(paths["markdown"].read_text())
    assert "ijepa-tiny" in measured and "pixels" in measured and "85.12" in measured
    assert measured.index("ijepa-tiny") < measured.index("pixels")
    for ref in PAPER_REFERENCES:
        assert ref["name"] not in measured
        assert ref["name"] in references and f"{ref['probe_top1']:.2f}" in references
    assert "2301.08243" in references and "ijepa-tiny" not in references

    with paths["csv"].open(newline="") as f:
        reader = csv.DictReader(f)
        table = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS
    assert [r["name"] for r in table] == ["ijepa-tiny", "pixels"] + [
        r["name"] for r in PAPER_REFERENCES
    ]
    assert float(table[0]["probe_top1"]) == pytest.approx(85.12)
    assert table[1]["epochs"] == "" and table[2]["kind"] == "reference"

    assert paths["png"].stat().st_size > 0
    with Image.open(paths["png"]) as image:
        assert image.format == "PNG"
        two_panels = image.size
    pixels = matplotlib.image.imread(paths["png"])
    assert pixels.ndim == 3 and pixels.std() > 0  # something was drawn

    one_panel = write_report(rows, tmp_path / "plain")["png"]
    with Image.open(one_panel) as image:
        assert image.size[0] < two_panels[0]


def test_write_report_without_runs(tmp_path: Path) -> None:
    paths = write_report(build_results([]), tmp_path)
    measured, references = markdown_sections(paths["markdown"].read_text())
    assert "No runs recorded" in measured and "I-JEPA ViT-H/14" in references
    with Image.open(paths["png"]) as image:
        image.verify()
