"""Search recipes (`cfg=`): every shipped recipe is valid, and the command line wins over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import yolo_dms

from yolo_dms.search.run import split_arguments
from yolo_dms.search.settings import SearchSettings

RECIPES = sorted((Path(__file__).parents[1] / "cfg" / "search").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_is_a_valid_search(recipe):
    dms, train = split_arguments({"cfg": str(recipe), "model": "yolov8n.yaml", "data": "coco8.yaml"})
    SearchSettings.from_arguments(dms)  # raises on a bad DMS setting; split_arguments checked the rest
    assert "cfg" not in train


def test_command_line_overrides_the_recipe_and_its_budget(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("resource: params\ntarget: 0.4\nepochs: 7\nrefine: 0.1\n")
    dms, train = split_arguments({"cfg": str(recipe), "model": "m.yaml", "epochs": 3, "gflops": 2.0})
    settings = SearchSettings.from_arguments(dms)
    assert train["epochs"] == 3 and settings.refine == 0.1
    assert settings.resource == "gflops" and settings.gflops == 2.0 and settings.target is None
    dms, _ = split_arguments({"cfg": str(recipe), "model": "m.yaml", "latency": 3.5})  # every kind of budget
    settings = SearchSettings.from_arguments(dms)
    assert settings.resource == "latency" and settings.latency == 3.5 and settings.target is None


def test_missing_recipe_is_one_line(tmp_path):
    proc = yolo_dms("search", "cfg=nowhere.yaml", "model=yolov8n.yaml", "data=coco8.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cfg file 'nowhere.yaml' does not exist" in proc.stderr and "Traceback" not in proc.stderr
