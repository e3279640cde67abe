"""Search recipes (`cfg=`): every packaged recipe is valid, is found by name from anywhere (also after a regular,
non-editable install), and the command line wins over it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import yolo_dms

from yolo_dms.search.run import split_arguments
from yolo_dms.search.settings import RECIPES_DIR, SearchSettings

RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
REPO = Path(__file__).parents[1]


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
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cfg 'nowhere.yaml' is neither a file nor a packaged recipe; recipes: coco-long," in proc.stderr


def test_recipe_by_name_or_file(tmp_path):
    recipe = RECIPES_DIR / "pretrained-short.yaml"
    by_name, _ = split_arguments({"cfg": "pretrained-short", "model": "m.yaml"})
    with_suffix, _ = split_arguments({"cfg": "pretrained-short.yaml", "model": "m.yaml"})
    copy = tmp_path / "mine.yaml"
    shutil.copy(recipe, copy)
    by_file = split_arguments({"cfg": str(copy), "model": "m.yaml"})
    assert by_name == with_suffix == by_file[0] and by_file[1]["epochs"] == yaml.safe_load(recipe.read_text())["epochs"]


def test_recipe_by_name_after_a_regular_install(tmp_path):
    """`cfg=pretrained-short` from a directory outside the repository, with yolo-dms installed from its wheel (not
    editable): the recipes must travel as package data."""
    source = tmp_path / "source"  # built from a copy: the build leaves nothing in the repository
    shutil.copytree(REPO / "yolo_dms", source / "yolo_dms", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    wheel = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    site = tmp_path / "site"
    install = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                              *map(str, (tmp_path / "dist").glob("yolo_dms-*.whl"))], capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import yolo_dms; from yolo_dms.search.run import split_arguments; print(yolo_dms.__file__); "
        "print(split_arguments({'cfg': 'pretrained-short', 'model': 'yolov8n.yaml', 'data': 'coco8.yaml'})[1])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, train = proc.stdout.strip().splitlines()[-2:]
    assert Path(where).is_relative_to(site)  # the installed copy, not this checkout
    recipe = yaml.safe_load((RECIPES_DIR / "pretrained-short.yaml").read_text())
    assert all(f"'{k}': {v!r}" in train for k, v in recipe.items() if k not in SearchSettings.names())
