"""What users bring, through the real CLI: stock names resolved through their own Ultralytics settings (offline),
checkpoints saved by Ultralytics 8.1 to 8.3 (tests/fixtures, made by tools/make_fixtures.py), the project's own
pruned.pt and searched.yaml, resume after a finished search, and rectangular image sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import OLDEST_ULTRALYTICS, refused, stock_gflops, yolo_dms
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import SETTINGS
from ultralytics.utils.torch_utils import get_flops

from yolo_dms.core.model_io import write_checkpoint
from yolo_dms.tools.demo_data import make_dataset

IMGSZ = 64
TRAIN = ("epochs=1", f"imgsz={IMGSZ}", "batch=4", "workers=0", "device=cpu", "plots=False")
FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("*.pt"))


def succeeded(proc) -> None:
    assert proc.returncode == 0, (proc.args, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.args


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> dict[str, Path]:
    """A user's own Ultralytics settings (a private YOLO_CONFIG_DIR): yolov8n.pt in weights_dir, a coco8 folder
    under datasets_dir, runs under runs_dir; and an empty working directory."""
    root = tmp_path_factory.mktemp("user")
    dirs = {name: root / name for name in ("config", "weights", "datasets", "runs", "cwd")}
    for path in dirs.values():
        path.mkdir()
    write_checkpoint(DetectionModel("yolov8n.yaml", verbose=False), dirs["weights"] / "yolov8n.pt")
    make_dataset(dirs["datasets"] / "coco8", n_train=8, n_val=4, imgsz=IMGSZ)  # coco8's layout, procedural images
    settings = {**SETTINGS.defaults, **{f"{k}_dir": str(dirs[k]) for k in ("weights", "datasets", "runs")}}
    (dirs["config"] / "Ultralytics").mkdir()  # Ultralytics reads $YOLO_CONFIG_DIR/Ultralytics/settings.json
    (dirs["config"] / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    return dirs


@pytest.fixture(scope="module")
def offline(home) -> dict[str, str]:
    """The environment of that user, offline. Outside pytest (no PYTEST_CURRENT_TEST), Ultralytics writes runs
    under runs_dir as it does for a user, so resume=True finds them there."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return {**env, "YOLO_CONFIG_DIR": str(home["config"]), "YOLO_OFFLINE": "1"}


@pytest.fixture(scope="module")
def stock_search(home, offline) -> Path:
    """`yolo-dms search model=yolov8n.pt data=coco8.yaml` from an empty directory; its run directory."""
    proc = yolo_dms("search", "model=yolov8n.pt", "data=coco8.yaml", "target=0.5", *TRAIN, cwd=home["cwd"], env=offline)
    succeeded(proc)
    # 8.4.0 puts a relative project= (the search's `dms`) under the working directory, later versions under runs_dir
    (run,) = {p.parent for p in home["cwd" if OLDEST_ULTRALYTICS else "runs"].rglob("pruned.pt")}
    return run


def test_stock_names_resolve_through_the_weights_and_datasets_directories(home, offline, stock_search):
    written = [home["cwd"] / "dms"] if OLDEST_ULTRALYTICS else []  # the run itself, on 8.4.0
    assert list(home["cwd"].iterdir()) == written, "nothing is downloaded or written into the working directory"
    pruned = YOLO(str(stock_search / "pruned.pt")).model
    assert len(pruned.names) == 80 and pruned.names[0] == "person"  # the class names of Ultralytics' coco8.yaml
    assert stock_gflops(pruned, IMGSZ) <= 0.5 * stock_gflops(DetectionModel("yolov8n.yaml", verbose=False), IMGSZ)
    args = yaml.safe_load((stock_search / "args.yaml").read_text())
    assert Path(args["model"]) == home["weights"] / "yolov8n.pt"
    reference = params(YOLO(str(home["weights"] / "yolov8n.pt")).model)
    for name in ("yolov8n.pt", "yolov8n"):
        proc = yolo_dms("info", f"model={name}", cwd=home["cwd"], env=offline)
        succeeded(proc)
        assert f"{reference:,} parameters" in proc.stdout


def test_names_that_cannot_be_resolved_offline_get_one_line(home, offline):
    cwd = home["cwd"]
    missing_weights = yolo_dms("info", "model=yolov8s.pt", cwd=cwd, env=offline)
    refused(missing_weights, "'yolov8s.pt'", str(cwd), str(home["weights"]), "offline")
    missing_data = yolo_dms("search", "model=yolov8n.pt", "data=coco128.yaml", *TRAIN, cwd=cwd, env=offline)
    refused(missing_data, "coco128", str(home["datasets"]), "offline")
    no_yaml = yolo_dms("search", "model=yolov8n.pt", "data=nosuch.yaml", *TRAIN, cwd=cwd, env=offline)
    refused(no_yaml, "'nosuch.yaml' does not exist")
    assert all(path.name == "dms" and OLDEST_ULTRALYTICS for path in cwd.iterdir())  # 8.4.0: stock_search's run


def test_resume_refuses_dms_settings_and_finished_searches(home, offline, stock_search):
    cwd = home["cwd"]
    refused(yolo_dms("search", "resume=True", "target=0.3", cwd=cwd, env=offline), "target=0.3", "start a new search")
    refused(yolo_dms("search", "resume=True", cwd=cwd, env=offline), str(stock_search), "has finished")
    last = stock_search / "weights" / "last.pt"
    refused(yolo_dms("search", f"resume={last}", cwd=cwd, env=offline), "has finished", f"export model={last}")


def test_info_takes_a_rectangular_image_size(tmp_path):
    proc = yolo_dms("info", "model=yolov8n.yaml", "imgsz=[640,480]", cwd=tmp_path)
    succeeded(proc)
    gflops = get_flops(DetectionModel("yolov8n.yaml", verbose=False), [640, 480])
    assert f"total at imgsz=[640, 480]: {gflops:.4g} GFLOPs" in proc.stdout


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=8, n_val=4, imgsz=IMGSZ, seed=3)


def search(model: str | Path, data: Path, out: Path, name: str) -> Path:
    """Search from `model` for one epoch; the run directory."""
    # widths of 8 channels leave little to prune, and Detect's fixed box branch is most of the cost
    succeeded(yolo_dms("search", f"model={model}", f"data={data}", "target=0.98", *TRAIN, f"project={out}",
                       f"name={name}", cwd=out))
    return out / name


@pytest.mark.parametrize("checkpoint", FIXTURES, ids=lambda p: p.stem.removeprefix("yolov8-"))
def test_every_mode_takes_checkpoints_from_older_ultralytics(checkpoint, tiny_data, tmp_path):
    stock = YOLO(str(checkpoint)).model  # as Ultralytics 8.4 reads it
    info = yolo_dms("info", f"model={checkpoint}", cwd=tmp_path)
    succeeded(info)
    assert f"{params(stock):,} parameters" in info.stdout and "SPPF" in info.stdout and "Detect" in info.stdout

    big = tmp_path / "big.yaml"
    succeeded(yolo_dms("expand", f"model={checkpoint}", "width=2", f"out={big}", cwd=tmp_path))
    expanded = DetectionModel(str(big), verbose=False)
    assert expanded.yaml["nc"] == len(stock.names) and params(expanded) > params(stock)

    refused(yolo_dms("export", f"model={checkpoint}", cwd=tmp_path), "not a yolo-dms search checkpoint")
    run = search(checkpoint, tiny_data, tmp_path, "search")
    data_names = yaml.safe_load(tiny_data.read_text())["names"]
    assert YOLO(str(run / "pruned.pt")).model.names == data_names  # the dataset's classes, as `yolo train` does
    succeeded(yolo_dms("export", f"model={run / 'weights' / 'last.pt'}", f"out={tmp_path / 'again'}", cwd=tmp_path))
    assert (tmp_path / "again" / "searched.yaml").is_file() and (tmp_path / "again" / "pruned.pt").is_file()


def test_every_mode_takes_the_projects_own_outputs(stock_search, tiny_data, tmp_path):
    """pruned.pt and searched.yaml of the stock-name search: info, expand, and a new search from pruned.pt."""
    pruned, searched = stock_search / "pruned.pt", stock_search / "searched.yaml"
    for output in (pruned, searched):
        info = yolo_dms("info", f"model={output}", cwd=tmp_path)
        succeeded(info)
        assert f"{params(YOLO(str(pruned)).model):,} parameters" in info.stdout
        succeeded(yolo_dms("expand", f"model={output}", "width=1.5", f"out={tmp_path / 'big.yaml'}", cwd=tmp_path))
    assert (search(pruned, tiny_data, tmp_path, "again") / "pruned.pt").is_file()
