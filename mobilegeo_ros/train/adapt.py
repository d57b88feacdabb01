"""Mission-area adaptation: distil the student on synthetic drone views of the user's own orthophoto, on a CPU.

``mobilegeo adapt --map ORTHO.tif --out RUN_DIR`` is :func:`adapt`: one :func:`mobilegeo_ros.train.loop.train` run
with the preset ``student-csphd`` (HCD self-distillation weighted by PALW, CSDA view weights, triplet + InfoNCE),
over locations covering the whole map (a mission map is known in advance, so all of it is training ground; the
queries the node will see are live camera frames of another day, not these renders), started from the
weights configured in ``model.weights`` or, by default, from ImageNet (not from the shipped student: the
measurements below start from ImageNet, and starting from the student is not measured yet), with a recipe sized
for a laptop CPU. Every recipe value is a hypothesis and a config value
(``train.*``), measured by ``benchmarks/adapt_dgsamples.py``:

* ``freeze_stages: 2``: stages 1-2 (low-level filters) stay as initialised: they hold half the backward time at
  224 px on a CPU (measured 2.0 s vs 4.4 s per 16-pair step on 2 cores) and keep the ImageNet edges;
* ``lr: 1e-4``, ``warmup_frac: 0.05``: a fine-tune, not a training from scratch (the MEAN 1e-3 forgets ImageNet);
* ``max_time_s``: the wall-time budget (``--minutes``); the cosine schedule spans ``max_steps`` planned for it;
* ``spacing_m: 30``: locations every 30 m, so neighbouring classes overlap by 75 % at 120 m tiles (hard negatives);
* ``pairing: index``: each view is paired with the tile the index holds for it (nearest pyramid size and gallery
  rotation, views with the field of view of the node's central square), so the network learns the residual
  rotation/scale the node faces, not full invariance; measured on dgsamples (5 min): ``location`` pairing lost
  7.5 points of R@1 against ImageNet, see docs/training.md;
* ``ce_weight: 0.1``: every location is a class (~900 on 1 km²) seen a few times in minutes, so the classifiers
  are weak teachers; 0.1 as MEAN weighs its classification terms; the metric losses carry the adaptation;
* ``freeze_bn_stats: true``: BatchNorm running statistics stay those of the init. The map is the gallery's date and
  sensor, the live frames are not: statistics moved to the map's renders hurt the other date (re-estimating them on
  the map's tiles alone, "AdaBN", cost 10 points of R@1 on dgsamples);
* ``wise_alpha: 0.5``: the written student is the WiSE-FT midpoint of the init and the fine-tuned weights
  (:mod:`mobilegeo_ros.train.wise_ft`); the fine-tuned end stays in ``student_finetuned.safetensors``.

Measured (``benchmarks/adapt_dgsamples.py --minutes 15 --views 300 --seed 1 --compare``, which prints the midpoint
and the fine-tuned end; dgsamples: map WV2 June, views from WV3 October, retrieval
only; 15-minute budget on 2 CPU cores, 390 steps in ~10 min), recall@1 and median retrieval error:

============================  =====================  =====================
weights                       120 views, seed 0      300 views, seed 1
============================  =====================  =====================
ImageNet (untrained)          71.7 %, 42.4 m         76.3 %, 43.4 m
fine-tuned end (wise 1.0)     80.0 %, 29.1 m         75.0 %, 28.2 m
WiSE-FT midpoint (default)    78.3 %, 31.2 m         78.3 %, 31.8 m
============================  =====================  =====================

The fine-tuned end's R@1 gain did not survive the larger fresh view set; the midpoint gained on both. Both cut
the median retrieval error by about a quarter to a third.

With a teacher (``mobilegeo adapt --teacher NAME``, :data:`ADAPT_TEACHER_RECIPE`): HD-CVGL on the user's map. The
same recipe with the preset ``student-hdcvgl`` and one of the pretrained teachers of
:mod:`mobilegeo_ros.train.teachers` (frozen, eval mode, on the training device): step 1 inverse self-distillation,
then (after ``step1_frac`` of the planned steps or of the time budget) cross-distillation (in-batch similarity
distillation from the teacher's descriptor replacing logit KD, as it has no classifier for the map's locations;
cosine feature distillation on the teacher's map) and UAPA, beside triplet + InfoNCE and CE. Not measured yet:
``benchmarks/ablate_adapt_teacher.py`` makes the table (docs/training.md). A GPU, when torch sees one, is used
(``train.device: auto``); the planned steps are still sized for the CPU and the time budget.

Outputs (in ``RUN_DIR``, as any training run): ``student.safetensors`` (the node's ``model.weights``),
``metrics.jsonl``, ``config.yaml``, and ``adapt.yaml``: a config file with ``model.weights`` set, ready for
``mobilegeo build-index --config`` and the node's ``config_file``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from mobilegeo_ros.config import Config, ConfigError, to_dict

#: The adaptation recipe (train.* overrides of the student-csphd preset); see the module docstring.
ADAPT_RECIPE: dict[str, Any] = {
    "preset": "student-csphd", "data_format": "ortho", "splits": [1.0, 0.0, 0.0], "spacing_m": 30.0,
    "views": 54, "freeze_stages": 2, "lr": 1e-4, "warmup_frac": 0.05, "batch_size": 16, "epochs": 1000,
    "eval_views": 0, "log_every": 5, "dropout": 0.1, "pairing": "index", "ce_weight": 0.1, "freeze_bn_stats": True,
    "wise_alpha": 0.5,
}

#: ``adapt --teacher``: HD-CVGL on the map (train.* overrides on top of :data:`ADAPT_RECIPE`; the teacher's name is
#: added as ``train.teacher``). kd_weight weighs the similarity distillation (the teachers have no classifier).
ADAPT_TEACHER_RECIPE: dict[str, Any] = {
    "preset": "student-hdcvgl", "sd_weight": 1.0, "two_step": True, "kd_weight": 1.0, "feat_kd_weight": 1.0,
    "feat_kd_distance": "cosine", "uapa_weight": 1.0,
}

#: Optimizer steps planned per minute of budget on 2 CPU cores at 224 px (measured ~2.3 s per 16-pair step with
#: rendering); the schedule is laid out for this many steps and training stops at the time budget either way.
STEPS_PER_MINUTE_CPU = 26


def adapt(map_path: str | Path, run_dir: str | Path, cfg: Config | None = None, minutes: float = 15.0,
          init_weights: str | Path | None = None, overrides: dict[str, Any] | None = None,
          progress: bool = True, teacher: str | None = None) -> Path:
    """Adapt the student to the orthophoto ``map_path``; returns the path of ``RUN_DIR/student.safetensors``.

    ``cfg``: the core config (map reading, rendering, model input); its ``model.weights`` (empty: ImageNet) is the
    starting point unless ``init_weights`` is given. ``minutes``: wall-time budget. ``overrides``: further
    ``train.*`` values (e.g. ``{"max_steps": 20}`` in tests). ``teacher``: a name of
    :data:`mobilegeo_ros.train.teachers.TEACHERS`: HD-CVGL with that teacher (:data:`ADAPT_TEACHER_RECIPE`).
    """
    from mobilegeo_ros.train.run_config import run_config_from_dict
    from mobilegeo_ros.train.loop import train

    if minutes <= 0:
        raise ConfigError(f"--minutes {minutes:g}: the adaptation needs a positive time budget")
    map_path = Path(map_path)
    if not map_path.is_file():
        raise ConfigError(f"--map {str(map_path)!r} does not exist")
    cfg = cfg or Config()
    start = init_weights or cfg.model.weights or ""  # "" = ImageNet: the measured start (see the module docstring)
    with_teacher = {**ADAPT_TEACHER_RECIPE, "teacher": teacher} if teacher else {}
    recipe = {**ADAPT_RECIPE, **with_teacher, "data_root": str(map_path), "init_weights": str(start),
              "max_time_s": 60.0 * minutes,
              "max_steps": max(1, int(math.ceil(minutes * STEPS_PER_MINUTE_CPU))), **(overrides or {})}
    core = {k: v for k, v in to_dict(cfg).items() if k != "node"}
    run_dir = Path(run_dir)
    train(run_config_from_dict({**core, "train": recipe}), run_dir, resume=False, progress=progress)
    weights = run_dir / "student.safetensors"
    core["model"]["weights"] = str(weights.resolve())
    (run_dir / "adapt.yaml").write_text(
        "# Written by mobilegeo adapt: the config of the adapted student (build the index with it).\n"
        + yaml.safe_dump(core, sort_keys=False))
    return weights


__all__ = ["ADAPT_RECIPE", "ADAPT_TEACHER_RECIPE", "STEPS_PER_MINUTE_CPU", "adapt"]
