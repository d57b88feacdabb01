"""Step function behind `mobilegeo eval`: embed the query and gallery images of a cross-view dataset with a model and
write the University-1652 retrieval metrics (:func:`~.retrieval_metrics.retrieval_metrics`) for both tasks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mobilegeo_ros.util.files import atomic_write_text


def evaluate_retrieval(data: str, data_format: str, out_dir: str | Path, *, config: str | None = None,
                       weights: str = "", altitude: str = "150", split: str = "test", views: int | None = None,
                       drone_map: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Recall@1/5/10, Recall@top1% and AP for drone2sat and sat2drone, written to ``out_dir/metrics.json``.

    ``data``: a University-1652 or SUES-200 root, or a GeoTIFF for ``data_format == "ortho"`` (synthetic drone
    views of ``split``, ``views`` per location, optionally rendered from ``drone_map``, a second image of the area).
    ``config``: a training preset or YAML (model, render and train geometry; default ``student-plain``);
    ``weights`` overrides ``model.weights``; ``altitude``: the SUES-200 altitude folder. One line per task goes to
    ``log``. Returns the metrics dict.
    """
    from mobilegeo_ros.eval.retrieval_metrics import retrieval_metrics
    from mobilegeo_ros.model import load_model
    from mobilegeo_ros.train import datasets as D
    from mobilegeo_ros.train.run_config import load_run_config

    run = load_run_config(config or "student-plain", {"data_root": data, "data_format": data_format})
    model_cfg = run.core.model
    if weights:
        model_cfg.weights = weights
    model = load_model(model_cfg)
    if data_format == "ortho":
        from mobilegeo_ros.geo.raster import read_orthophoto
        from mobilegeo_ros.train.loop import ortho_data_config

        drone = read_orthophoto(drone_map, run.core.map) if drone_map else None
        dataset = D.SyntheticOrtho(read_orthophoto(data, run.core.map), split, ortho_data_config(run),
                                   run.core.render, seed=run.train.seed, drone_ortho=drone)
        tasks = {task: dataset.retrieval_task(task, views) for task in D.TASKS}
    elif data_format == "university1652":
        tasks = {task: D.university1652_task(data, task) for task in D.TASKS}
    else:
        tasks = {task: D.sues200_task(data, altitude, task) for task in D.TASKS}
    result: dict = {"model": model.identity(), "data": data, "format": data_format}
    for task, (query, gallery) in tasks.items():
        qf = model.embed([query.image(i) for i in range(len(query))])
        gf = model.embed([gallery.image(i) for i in range(len(gallery))])
        m = result[task] = retrieval_metrics(qf, query.labels, gf, gallery.labels)
        log(f"{task}: R@1 {m['recall@1']:.2f}  R@5 {m['recall@5']:.2f}  R@10 {m['recall@10']:.2f}  "
            f"R@top1% {m['recall@top1%']:.2f}  AP {m['AP']:.2f}  ({m['queries']} queries, {m['gallery']} gallery)")
    atomic_write_text(Path(out_dir) / "metrics.json", json.dumps(result, indent=2))
    return result


__all__ = ["evaluate_retrieval"]
