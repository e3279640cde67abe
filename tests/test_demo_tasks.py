"""`yolo-dms demo task=...`: the end-to-end demo of a non-detection task at tiny settings (its table scored by the
task's own metric, its ONNX exports matching PyTorch), and the one line a wrong task gets."""

from __future__ import annotations

import re

import pytest

from yolo_dms.cli import main
from yolo_dms.tools.demo import run_demo

TINY = {"epochs": 1, "search_epochs": 1, "finetune_epochs": 1, "imgsz": 64, "n_train": 8, "n_val": 4}


@pytest.fixture(scope="module")
def segment_demo(tmp_path_factory) -> tuple[str, object]:
    out = tmp_path_factory.mktemp("demo") / "segment"
    return run_demo(task="segment", out=str(out), **TINY), out


def table_rows(summary: str) -> dict[str, list[str]]:
    """The summary's table rows by model name, each as its cells after the name."""
    rows = [line.strip("|").split("|") for line in summary.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_segment_demo_table_is_scored_by_mask_map_and_onnx_matches_pytorch(segment_demo):
    summary, out = segment_demo
    rows = table_rows(summary)
    assert rows["model"][2:4] == ["mask mAP50-95", "mask mAP50"]
    assert list(rows)[1:] == ["yolov8n-seg (trained)", "DMS pruned (after search)", "DMS fine-tuned"]
    for name in ("yolov8n-seg (trained)", "DMS fine-tuned"):
        assert float(rows[name][-1]) <= 1e-3, rows[name]  # max abs ONNX - PyTorch over boxes and prototypes
    baseline, pruned = (float(rows[name][0]) for name in ("yolov8n-seg (trained)", "DMS pruned (after search)"))
    assert pruned <= 0.5 * baseline
    assert (out / "summary.md").read_text().strip() == summary.strip()
    assert (out / "finetune" / "weights" / "best.onnx").is_file()


def test_demo_refuses_an_unknown_task_in_one_line(capsys, tmp_path):
    assert main(["demo", "task=foo", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"yolo-dms demo: error: demo task must be one of detect, segment, pose, obb, classify, "
                        r"got 'foo'", err), err
    assert not any(tmp_path.iterdir())  # refused before anything was generated
