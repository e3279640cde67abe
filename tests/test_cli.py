"""`yolo-dms expand`, `info`, `version` and every mode's `help` through the real console script."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import ultralytics
from helpers import yolo_dms
from ultralytics.cfg import DEFAULT_CFG_PATH
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

from yolo_dms.cli import COMMANDS, listed, main
from yolo_dms.search.settings import DEFAULTS_FILE, SearchSettings
from yolo_dms.usage import (
    BENCHMARK,
    DEMO,
    EXPAND,
    EXPORT,
    INFO,
    NOT_SEARCH_ARGUMENTS,
    SEARCH_TRAIN_SECTIONS,
    documented_arguments,
)


def test_expand_writes_a_wider_deeper_stock_yaml(tmp_path):
    out = tmp_path / "big.yaml"
    proc = yolo_dms("expand", "model=yolov8n.yaml", "width=1.5", "depth=2", f"out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    big, base = DetectionModel(str(out), verbose=False), DetectionModel("yolov8n.yaml", verbose=False)
    assert get_flops(big, 320) > 2 * get_flops(base, 320)
    widths = [m.conv.out_channels for m in big.model[:2]]
    assert widths == [24, 48]  # 16 and 32 channels times 1.5
    assert [len(big.model[i].m) for i in (2, 4)] == [2, 4]  # 1 and 2 blocks times 2
    refused = yolo_dms("expand", "model=yolov8n.yaml", "width=0.5", cwd=tmp_path)
    assert refused.returncode == 2 and "at least 1" in refused.stderr


def test_info_reports_ultralytics_totals(tmp_path):
    proc = yolo_dms("info", "model=yolov8n.yaml", "imgsz=640", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    model = DetectionModel("yolov8n.yaml", verbose=False)
    params = sum(p.numel() for p in model.parameters())
    assert f"{get_flops(model, 640):.4g} GFLOPs, {params:,} parameters" in proc.stdout
    assert "C2f" in proc.stdout and "Detect" in proc.stdout


def test_search_help_lists_every_argument_with_its_default_and_meaning(tmp_path):
    proc = yolo_dms("search", "help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    documented = {a.name: a for a in documented_arguments(DEFAULTS_FILE) if a.section == "dms"}
    assert set(documented) == SearchSettings.names()  # every DMS setting has a default and a meaning in one place
    stock = [a for a in documented_arguments(DEFAULT_CFG_PATH) if a.section in SEARCH_TRAIN_SECTIONS]
    assert {"epochs", "batch", "lr0", "mosaic", "conf"} <= {a.name for a in stock}
    for argument in [*documented.values(), *stock]:
        if argument.name not in NOT_SEARCH_ARGUMENTS:
            assert argument.meaning, argument.name
            assert re.search(rf"^  {argument.name}={re.escape(argument.default)} +{re.escape(argument.meaning)}$",
                             proc.stdout, re.MULTILINE), argument.name


@pytest.mark.parametrize("mode", sorted(COMMANDS))
def test_every_mode_answers_help_with_its_arguments(mode, capsys):
    assert main([mode, "help"]) == 0
    text = capsys.readouterr().out
    tables = {"export": EXPORT, "expand": EXPAND, "info": INFO, "demo": DEMO, "benchmark": BENCHMARK}
    for name, meaning in tables.get(mode, {}).items():
        meaning = meaning if isinstance(meaning, str) else meaning[1]
        assert re.search(rf"^  {name}=.*?  {re.escape(meaning)}$", text, re.MULTILINE), name


def test_version_names_yolo_dms_ultralytics_and_torch(tmp_path):
    proc = yolo_dms("version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = [f"yolo-dms {version('yolo-dms')}", f"ultralytics {ultralytics.__version__}", f"torch {torch.__version__}"]
    assert set(expected) <= set(lines)


def test_readme_table_gives_the_meanings_help_prints():
    """The README's table of DMS settings says what `yolo-dms search help` says (both from cfg/default.yaml)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| [^|]* \| (.*) \|$", readme, re.MULTILINE))
    documented = {a.name: a.meaning for a in documented_arguments(DEFAULTS_FILE) if a.section == "dms"}
    assert {name: rows.get(name) for name in documented} == documented


@pytest.mark.parametrize("script, argv, message", [
    ("paper_claim.py", [], "give data=<data.yaml>"),
    ("finetune_rate.py", ["data=d.yaml"], "give benchmark=<a finished benchmark's out> and model=<its starting .pt>"),
    ("plot_against_stock.py", ["benchmark=b.csv", "colour=red"], "unknown argument 'colour'"),
])
def test_measurement_scripts_refuse_bad_arguments_in_one_line(script, argv, message):
    """The `tools/` scripts behind docs/BENCHMARKS.md answer a missing or unknown argument as `yolo-dms` does."""
    proc = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "tools" / script), *argv],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_listed_reads_one_value_or_several():
    assert listed("yolov8n,yolo11n") == ["yolov8n", "yolo11n"]
    assert listed((0, 1)) == ["0", "1"] and listed(2) == ["2"]
