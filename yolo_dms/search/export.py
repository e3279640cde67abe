"""`yolo-dms export`: a search checkpoint (finished, or stopped by patience, `time=` or Ctrl-C) to everything the
search itself writes at its end: `searched.yaml`, `pruned.pt`, `search.json` and the plots."""

from __future__ import annotations

from pathlib import Path

from yolo_dms.core.export import ExportResult, export_searched
from yolo_dms.core.fit import fit_structure
from yolo_dms.core.imgsz import checked_imgsz, model_stride
from yolo_dms.core.model_io import check_writable, load_search_checkpoint
from yolo_dms.search.session import SearchSession
from yolo_dms.search.summary import write_search_outputs


def export_checkpoint(path: str | Path, out: str | Path | None = None, imgsz: int | None = None) -> ExportResult:
    """Export from any search checkpoint, fitted under the budget it was searching for.

    A structure the search already fitted is exported as it is (the same pruned.pt the search wrote); one stopped
    before its fit is fitted by the search's own rule (`fit.fit_structure`), and the fit is reported. Output
    goes to `out`, by default the checkpoint's run directory (`runs/detect/dms/<name>/`), whose `search.csv`
    (if the search got that far) gives `search.png`.
    """
    supernet, _ = load_search_checkpoint(path, "export takes runs/detect/dms/<name>/weights/last.pt of a search")
    path = Path(path)
    directory = Path(out) if out else (path.parent.parent if path.parent.name == "weights" else path.parent)
    check_writable(directory)
    args = getattr(supernet, "args", None)
    saved_imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    imgsz = checked_imgsz(imgsz or saved_imgsz or 640, model_stride(supernet))  # one side, as the search trained
    supernet.eval()
    state = getattr(supernet, "search_state", None) or {}
    session = SearchSession()  # the search's resource model and budget (its backend, on this machine's device)
    session.prepare(supernet, imgsz, None)
    settings, resources, budget = session.settings, session.resources, session.budget
    fit = state.get("fit")
    if not fit:
        stopped = fit_structure(supernet, resources, budget, settings.resource)
        stopped.log()
        fit = stopped.record()
    result = export_searched(supernet, directory, imgsz)
    write_search_outputs(directory, supernet, resources, settings, budget, result, fit, state.get("source", str(path)),
                         state.get("total_iterations"), state.get("structure_lr"))
    return result
