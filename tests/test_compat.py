"""The oldest Ultralytics that pyproject.toml admits, installed beside the newest: a search, the stock load of its
outputs and the exactness contract hold there too (the newest is what the rest of the suite runs on).

The oldest version is read from pyproject.toml's requirement and installed with `pip --target` into a cache
directory (reused on later runs); every check runs in a subprocess whose PYTHONPATH puts it before the venv's
Ultralytics. In CI (`CI=true`) a failed install fails the test; elsewhere it skips (offline).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import run_without_yolo_dms, yolo_dms

from yolo_dms.tools.demo_data import make_dataset

ROOT = Path(__file__).resolve().parents[1]
IMGSZ = 64
EXACTNESS_CASES = (  # tests/test_exactness.py: forward, YAML rebuild and GFLOPs per family; C3k2 forced at m scale
    "test_pruned_model_is_exact and (yolov8n.yaml-0 or yolo11n.yaml-0 or yolo26n.yaml-0)"
    " or test_large_scales_rebuild_and_count_exactly and yolo11m"
    " or test_full_supernet_counts_match_stock_model"
)
EXACTNESS_COUNT = 7


def oldest_supported() -> str:
    """The lower bound of the `ultralytics>=X,<Y` requirement in pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"ultralytics>=([0-9.]+),<([0-9.]+)"', text)
    assert found, "pyproject.toml must pin ultralytics as >=oldest,<next-minor"
    return found.group(1)


@pytest.fixture(scope="module")
def oldest(tmp_path_factory) -> tuple[str, dict[str, str]]:
    """The oldest admitted Ultralytics, installed once under the temp directory, and an environment that uses it
    (with its own settings directory: an older version rewrites the settings file of a newer one)."""
    version = oldest_supported()
    target = Path(tempfile.gettempdir()) / f"yolo-dms-ultralytics-{version}"
    if not (target / ".installed").exists():  # installed into a staging directory, renamed once complete
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(staging)]
        proc = subprocess.run([*cmd, f"ultralytics=={version}"], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            shutil.rmtree(staging)
            message = f"could not install ultralytics=={version}: {(proc.stderr or proc.stdout).strip()[-800:]}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        (staging / ".installed").touch()
        try:
            staging.rename(target)
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(staging)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "YOLO_CONFIG_DIR": str(tmp_path_factory.mktemp("ultralytics-config")),
        "YOLO_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", "import ultralytics as u; print('ULTRALYTICS', u.__version__, u.__file__)"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"ULTRALYTICS {version} {target / 'ultralytics' / '__init__.py'}" in proc.stdout, proc.stdout
    return version, env


def test_search_and_stock_load_on_the_oldest_ultralytics(oldest, tmp_path, monkeypatch):
    version, env = oldest
    data = make_dataset(tmp_path / "data", n_train=16, n_val=8, imgsz=IMGSZ, seed=0)
    proc = yolo_dms(
        "search", "model=yolo26n.yaml", f"data={data}", "epochs=1", f"imgsz={IMGSZ}", "batch=8", "workers=0",
        "device=cpu", "plots=False", f"project={tmp_path / 'runs'}", "name=dms", cwd=tmp_path, env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"Ultralytics {version}" in output
    run = tmp_path / "runs" / "dms"
    assert "DMS search done" in output and (run / "pruned.pt").exists() and (run / "searched.yaml").exists()

    for key in ("PYTHONPATH", "YOLO_CONFIG_DIR"):  # the stock process runs on the oldest version too
        monkeypatch.setenv(key, env[key])
    code = f"""
        import numpy as np, ultralytics
        from ultralytics import YOLO
        from ultralytics.cfg import entrypoint
        print("ULTRALYTICS", ultralytics.__version__)
        model = YOLO({str(run / 'pruned.pt')!r})
        assert type(model.model).__name__ == "DetectionModel", type(model.model)
        print("PRUNED_PARAMS", sum(p.numel() for p in model.model.parameters()))  # before predict fuses it
        print("YAML_PARAMS", sum(p.numel() for p in YOLO({str(run / 'searched.yaml')!r}).model.parameters()))
        print("PREDICTED", len(model.predict(np.full(({IMGSZ}, {IMGSZ}, 3), 127, np.uint8), imgsz={IMGSZ})))
        entrypoint("yolo train model={run / 'pruned.pt'} data={data} epochs=1 imgsz={IMGSZ} batch=8 workers=0 "
                   "device=cpu plots=False project={tmp_path / 'runs'} name=finetune")
    """
    proc = run_without_yolo_dms(code, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert f"ULTRALYTICS {version}" in output and "PREDICTED 1" in output
    pruned_params = re.search(r"PRUNED_PARAMS (\d+)", output).group(1)
    assert f"YAML_PARAMS {pruned_params}" in output  # searched.yaml builds the pruned model, whatever its name
    transferred = re.search(r"Transferred (\d+)/(\d+) items", output)
    assert transferred and transferred.group(1) == transferred.group(2), output[-4000:]
    assert (tmp_path / "runs" / "finetune" / "weights" / "last.pt").exists()


def test_exactness_on_the_oldest_ultralytics(oldest):
    """tests/test_exactness.py's forward, YAML-rebuild and GFLOPs checks, run on the oldest version."""
    _, env = oldest
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_exactness.py"),
         "-k", EXACTNESS_CASES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert re.search(rf"\b{EXACTNESS_COUNT} passed\b", output), output[-2000:]
