"""The bad-input matrix, through the real CLI: every user mistake gets exit status 2, one line naming the problem,
no traceback, and nothing written (no run directory, no output file). Each case runs in its own process, as a user
runs the command, a few at a time. Ctrl-C during a search gets one line saying how to continue it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from helpers import refused, yolo_dms
from ultralytics.nn import tasks as stock_tasks
from ultralytics.nn.tasks import ClassificationModel, DetectionModel
from ultralytics.utils import DEFAULT_CFG_DICT, SETTINGS

from yolo_dms import DMS, DMSError
from yolo_dms.search.settings import SearchSettings
from yolo_dms.tools.demo_data import make_dataset
from yolo_dms.core.model_io import load_supernet

IMGSZ = 64
TRAIN = ("epochs=1", f"imgsz={IMGSZ}", "batch=8", "workers=0", "device=cpu", "plots=False")


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A user's working directory, with a private Ultralytics settings directory whose runs go under it."""
    root = tmp_path_factory.mktemp("user")
    (root / "config" / "Ultralytics").mkdir(parents=True)
    settings = {**SETTINGS.defaults, **{f"{k}_dir": str(root / k) for k in ("weights", "datasets", "runs")}}
    (root / "config" / "Ultralytics" / "settings.json").write_text(json.dumps(settings))
    return root


@pytest.fixture(scope="module")
def env(place) -> dict[str, str]:
    """That user's environment, offline. Outside pytest (no PYTEST_CURRENT_TEST) Ultralytics writes runs under
    runs_dir, as it does for a user."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    return {**env, "YOLO_CONFIG_DIR": str(place / "config"), "YOLO_OFFLINE": "1"}


@pytest.fixture(scope="module")
def data(place) -> Path:
    return make_dataset(place / "data", n_train=16, n_val=4, imgsz=IMGSZ, seed=2)


def relabelled(data: Path, name: str, line) -> Path:
    """A copy of `data` whose every label line is `line(original line)` ('' leaves the label files empty)."""
    root = data.parent.parent / name
    for image in (data.parent / "images").rglob("*.png"):
        target = root / image.relative_to(data.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    for label in (data.parent / "labels").rglob("*.txt"):
        target = root / label.relative_to(data.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        lines = [line(row) for row in label.read_text().splitlines()]
        target.write_text("".join(f"{row}\n" for row in lines if row))
    config = yaml.safe_load(data.read_text())
    (root / "data.yaml").write_text(yaml.safe_dump({**config, "path": str(root)}))
    return root / "data.yaml"


def corrupt_checkpoints(where: Path) -> dict[str, Path]:
    """Files named .pt that are no checkpoint, each broken another way."""
    where.mkdir()
    real = where / "real.pt"
    torch.save({"model": DetectionModel("yolov8n.yaml", nc=3, verbose=False)}, real)
    raw = real.read_bytes()
    files = {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "text": b"model: yolov8n.yaml\n",
        "bad utf-8 in a pickle": b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",
        "missing module in a pickle": b"\x80\x02cno_such_module_xyz\nThing\nq\x00)\x81q\x01.",
        **{f"random bytes {seed}": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed),
                                                dtype=torch.uint8).numpy().tobytes() for seed in range(5)},
    }
    paths = {}
    for label, content in files.items():
        paths[label] = where / f"{label.replace(' ', '_')}.pt"
        paths[label].write_bytes(content)
    for label, content in {"a list": [1, 2], "a tensor": torch.zeros(3), "a string model": {"model": "x"}}.items():
        paths[label] = where / f"{label.replace(' ', '_')}.pt"
        torch.save(content, paths[label])
    paths["a directory"] = where / "folder.pt"
    paths["a directory"].mkdir()
    return paths


def files_under(root: Path) -> set[Path]:
    """What a refused command must not add to: every file, but Ultralytics' label caches and settings."""
    return {p for p in root.rglob("*") if p.suffix != ".cache" and "config" not in p.relative_to(root).parts}


def test_every_user_mistake_gets_one_line_status_2_and_writes_nothing(place, env, data):
    inputs = place / "inputs"
    inputs.mkdir()
    classifier = inputs / "classifier.pt"
    torch.save({"model": ClassificationModel("yolov8n-cls.yaml", nc=3, verbose=False)}, classifier)
    supernet = inputs / "supernet.pt"  # as a search saves it: with its settings
    searched = load_supernet("yolov8n.yaml", nc=3)
    searched.dms_settings = SearchSettings()
    torch.save({"model": searched}, supernet)
    plain = inputs / "plain.pt"
    torch.save({"model": load_supernet("yolov8n.yaml", nc=3).model}, plain)
    a_file = inputs / "a_file.txt"
    a_file.write_text("not a directory")
    empty = inputs / "empty"
    (empty / "images").mkdir(parents=True)
    no_images = inputs / "no_images.yaml"
    no_images.write_text(f"path: {empty}\ntrain: images\nval: images\nnames: {{0: a}}\n")
    out_of_range = relabelled(data, "out_of_range", lambda row: "9" + row[row.index(" "):])
    malformed = relabelled(data, "malformed", lambda row: "garbage here")
    too_many_columns = relabelled(data, "too_many_columns", lambda row: row + " 0.5 0.5 0.5")
    unlabelled = relabelled(data, "unlabelled", lambda row: "")
    d, search = f"data={data}", ("search", "model=yolov8n.yaml")
    cases: dict[tuple[str, ...], str] = {
        # models
        ("search", f"model={inputs / 'missing.pt'}", d): "does not exist",
        ("search", "model=nosuch.yaml", d): "does not exist",
        ("search", f"model={inputs}", d): "is a directory",
        ("search", f"model={a_file}", d): ".yaml or .pt",
        ("search", f"model={classifier}", d): "cannot be used: Classification dataset",  # detection data
        ("search", f"model={supernet}", d): "is a search checkpoint",
        ("search", "model=yolov8-rtdetr.yaml", d): "RTDETRDecoder",
        ("search", "model=yolo26n-depth.yaml", d): (  # Ultralytics 8.4.0 has no depth models
            "is a depth model; DMS searches the tasks" if hasattr(stock_tasks, "DepthModel") else "does not exist"),
        # budgets and settings
        (*search, d, "target=1.5"): "target must lie in (0, 1]",
        (*search, d, "target=0"): "target must lie in (0, 1]",
        (*search, d, "target=0.5", "gflops=1"): "give one budget",
        (*search, d, "gflops=500"): "above the supernet",
        (*search, d, "gflops=0.001"): "smallest structure",
        (*search, d, "epochz=3"): "did you mean epochs",
        (*search, d, f"distill_model={plain}"): (  # Ultralytics 8.4.0 has no distillation
            "distill_model= is not supported" if "distill_model" in DEFAULT_CFG_DICT else "unknown argument"),
        (*search, d, "compile=True"): "compile= is not supported",
        (*search, d, "cfg=nosuch-recipe"): "neither a file nor a packaged recipe",
        # image sizes and devices
        (*search, d, "imgsz=0"): "imgsz=0 is not an image size",
        (*search, d, "imgsz=-64"): "imgsz=-64 is not an image size",
        (*search, d, "imgsz=[0,64]"): "is not an image size",
        (*search, d, "imgsz=big"): "not a valid image size",
        # data
        (*search, f"data={inputs / 'missing.yaml'}"): "does not exist",
        (*search, f"data={no_images}"): "no train images",
        (*search, f"data={out_of_range}"): "Label class 9 exceeds dataset class count",
        (*search, f"data={malformed}"): "has no usable train labels",
        (*search, f"data={too_many_columns}"): "has no usable train labels",
        (*search, f"data={unlabelled}"): "no labelled objects",
        ("search", "model=yolov8n-seg.yaml", d): "has no usable train labels for the segment task",
        ("search", "model=yolo11n-obb.yaml", d): "has no usable train labels for the obb task",
        ("search", "model=yolov8n-pose.yaml", d): "kpt_shape",
        # places that cannot be written
        (*search, d, "project=/sys/dms"): "cannot write to '/sys/dms",
        (*search, d, f"project={a_file}/runs"): "is a file, not a directory",
        ("expand", "model=yolov8n.yaml", "out=/sys/supernet.yaml"): "cannot write to '/sys'",
        ("expand", "model=yolov8n.yaml", f"out={a_file}/supernet.yaml"): "is a file, not a directory",
        # other modes
        ("export", f"model={plain}"): "not a yolo-dms search checkpoint",
        ("export", f"model={supernet}", "out=/sys/export"): "cannot write to '/sys/export'",
        ("search", "resume=True", f"project={place / 'none'}"): "no search checkpoint to resume",
        ("info",): "info needs model=",
        ("info", "model=yolov8n.yaml", "imgsz=0"): "is not an image size",
        ("frobnicate",): "unknown mode",
        ("search", "model"): "not of the form key=value",
    }
    if not torch.cuda.is_available():
        cases[(*search, d, "device=0")] = "Invalid CUDA 'device=0'"
    for label, path in corrupt_checkpoints(inputs / "corrupt").items():  # every mode reads them alike: a few
        message = "holds no Ultralytics model" if label.startswith("a ") else "not a readable checkpoint"
        message = "is a directory" if label == "a directory" else message
        modes = ("search", "info", "export") if label in {"truncated", "bad utf-8 in a pickle", "a list"} else ("info",)
        for mode in modes:
            cases[(mode, f"model={path}", *((d,) if mode == "search" else ()))] = message
    before = files_under(place)
    def run(args: tuple[str, ...]):  # a search case's own arguments come after the small run's, and win
        return yolo_dms(*((args[0], *TRAIN, *args[1:]) if args[0] == "search" else args), cwd=place, env=env)

    with ThreadPoolExecutor(3) as pool:
        procs = dict(zip(cases, pool.map(run, cases)))
    failures = []
    for args, message in cases.items():
        try:
            refused(procs[args], message)
        except AssertionError as e:
            failures.append(f"{' '.join(args)}: {e}"[:1500])
    assert not failures, "\n".join(failures)
    assert files_under(place) == before  # refused commands leave nothing behind
    assert not (place / "runs").exists()


def test_odd_imgsz_is_rounded_as_yolo_train_rounds_it_and_a_run_too_short_to_refine_says_so(place, env, data):
    """imgsz=70 trains at 96 (Ultralytics' warning says so); 16 images at batch 16 for one epoch leave no batch
    for the refine phase, which the log warns about instead of reporting '0 batches at the fitted structure'."""
    proc = yolo_dms("search", "model=yolov8n.yaml", f"data={data}", *TRAIN, "imgsz=70", "batch=16", "name=rounded",
                    cwd=place, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "updating to [96]" in output
    assert "no refine phase: refine=0.2 of 1 batches is less than one batch" in output, output[-3000:]
    (run,) = place.rglob("rounded")
    assert json.loads((run / "search.json").read_text())["budget"]["imgsz"] == 96


def test_the_python_api_raises_dms_errors_for_the_same_mistakes(data, tmp_path):
    with pytest.raises(DMSError, match="does not exist"):
        DMS(tmp_path / "nope.pt")  # at once, as YOLO("nope.pt") fails
    with pytest.raises(DMSError, match="imgsz=0 is not an image size"):
        DMS("yolov8n.yaml").search(data=str(data), imgsz=0, project=str(tmp_path))
    with pytest.raises(DMSError, match="cannot write to"):
        DMS("yolov8n.yaml").search(data=str(data), project="/sys/dms")
    assert not any(tmp_path.iterdir())


def test_ctrl_c_says_where_last_pt_is_and_export_of_it_writes_what_a_search_writes(place, env, data):
    args = ("search", "model=yolov8n.yaml", f"data={data}", "epochs=30", *TRAIN[1:], "name=interrupted")
    exe = Path(sys.executable).with_name("yolo-dms")
    proc = subprocess.Popen([str(exe), *args], cwd=place, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while not list(place.rglob("interrupted/weights/last.pt")) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    (last,) = place.rglob("interrupted/weights/last.pt")
    line = stderr.strip().splitlines()[-1]
    assert f"resume={last}" in line and f"export model={last}" in line, line
    exported = yolo_dms("export", f"model={last}", cwd=place, env=env)  # what the line offers, as the search writes
    assert exported.returncode == 0, exported.stderr[-3000:]
    run = last.parent.parent
    assert {"searched.yaml", "pruned.pt", "search.json", "structure.png", "search.png"} <= {p.name for p in run.iterdir()}
    summary = json.loads((run / "search.json").read_text())
    assert summary["total_iterations"] == 60 and summary["fit_factor"] != 1.0  # fitted at export, and said so
