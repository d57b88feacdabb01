"""Ablation of mission-area adaptation with a pretrained teacher on real cross-date imagery (dgsamples).

Each variant adapts the ImageNet student on the WorldView-2 map (20 Jun 2014) for ``--minutes`` with
:func:`mobilegeo_ros.train.adapt.adapt` (the recipe of ``mobilegeo adapt`` plus the variant's ``train.*`` values),
then measures it with the demo protocol, retrieval only (views rendered from WorldView-3, 6 Oct 2014), exactly as
``benchmarks/adapt_dgsamples.py`` and ``benchmarks/bench_teachers.py`` do. Variants (``--variants``):

* ``plain``: preset ``student-plain`` (CE on the heads, triplet, InfoNCE), no teacher;
* ``+KD``: plain + cross-distillation from ``--teacher`` (in-batch similarity distillation of its descriptor, cosine
  feature distillation of its map; the teachers have no classifier, so no logit KD);
* ``HD-CVGL``: ``mobilegeo adapt --teacher`` (preset ``student-hdcvgl``: step 1 inverse self-distillation, step 2
  adds the teacher's KD and UAPA);
* ``CSP-HD``: ``mobilegeo adapt`` as it is (HCD + PALW + CSDA), no teacher;
* ``CSP-HD +KD``: CSP-HD + the teacher's KD terms.

Per row: R@1/5/10, median retrieval error, steps done, the student's and the teacher's GFLOPs at 224 px, and the
mean over the logged steps of every weighted loss term (``weighted_<term>`` of metrics.jsonl), so the terms' scales
sit beside the result. Reference rows: ImageNet (untrained) and the teacher zero-shot.

Everything derived from dgsamples (the adapted weights included) stays under ``--out`` (default /tmp): its licence
forbids distributing derived products. A student distilled from ``geoembed-v3`` must not be shipped either (its
licence is unsettled: docs/training.md).

    .venv/bin/python benchmarks/ablate_adapt_teacher.py --teacher resnet50-thin --minutes 15 --views 300 --seed 1
    .venv/bin/python benchmarks/ablate_adapt_teacher.py --teacher xfeat-gem --minutes 0.5 --views 20 --rotations 1 \\
        --variants plain +KD --set max_steps=2   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_teachers import STUDENT_PX, base_config, retrieval_row, teacher_row  # noqa: E402
from mobilegeo_ros.geo import dgsamples  # noqa: E402
from mobilegeo_ros.model.flops import torch_flops  # noqa: E402
from mobilegeo_ros.model.weights import shipped_mobilenetv2_path  # noqa: E402
from mobilegeo_ros.train.adapt import ADAPT_TEACHER_RECIPE, adapt  # noqa: E402
from mobilegeo_ros.train.teachers import TEACHERS, ImageNetMobileNetV2Teacher  # noqa: E402

#: variant -> (train.* overrides of the adapt recipe, uses the teacher)
VARIANTS: dict[str, tuple[dict, bool]] = {
    "plain": ({"preset": "student-plain"}, False),
    "+KD": ({"preset": "student-plain", "kd_weight": 1.0, "feat_kd_weight": 1.0}, True),
    "HD-CVGL": (dict(ADAPT_TEACHER_RECIPE), True),
    "CSP-HD": ({}, False),
    "CSP-HD +KD": ({"kd_weight": 1.0, "feat_kd_weight": 1.0}, True),
}


def mean_weighted_terms(metrics: Path) -> dict[str, float]:
    """Mean over the logged steps of every ``weighted_<term>`` (over the lines that have it) → {term: mean}."""
    values: dict[str, list[float]] = {}
    for line in metrics.read_text().splitlines():
        for key, value in json.loads(line).items():
            if key.startswith("weighted_"):
                values.setdefault(key[len("weighted_"):], []).append(float(value))
    return {k: float(np.mean(v)) for k, v in values.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="resnet50-thin", choices=list(TEACHERS))
    ap.add_argument("--minutes", type=float, default=15.0, help="adaptation budget per variant")
    ap.add_argument("--views", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1, help="view seed (the training seed is the recipe's)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train.* override, every variant")
    ap.add_argument("--rotations", type=int, default=0,
                    help="gallery rotations (0 = the config's, 8: the protocol; 1 only for smoke runs)")
    ap.add_argument("--no-references", action="store_true", help="skip the ImageNet and teacher zero-shot rows")
    ap.add_argument("--out", default="/tmp/mobilegeo_ablate_adapt_teacher")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(2)
    out = Path(args.out)  # indexes cached in out/cache across invocations; each invocation adapts in its own run-*
    runs = out / f"run-{int(time.time())}"
    cfg = base_config(args.rotations or None)
    wv2 = dgsamples.scene("wv2")
    train_cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, pansharpen_with=str(wv2.pan)))
    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    student_gflops = torch_flops(ImageNetMobileNetV2Teacher(), STUDENT_PX) / 1e9
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    if not args.no_references:
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=str(shipped_mobilenetv2_path())))
        rows.append({"variant": "ImageNet (untrained)", **retrieval_row(out, "imagenet", c, args.views, args.seed),
                     "steps": 0, "terms": {}})
        t = teacher_row(args.teacher, out, cfg, args.views, args.seed, device)
        rows.append({"variant": f"teacher {args.teacher} (zero-shot)", **t, "steps": 0, "terms": {},
                     "teacher_GFLOPs": t["GFLOPs_224"]})
    teacher_gflops = None
    for name in args.variants:
        overrides, uses_teacher = VARIANTS[name]
        overrides = {**overrides, **({"teacher": args.teacher} if uses_teacher else {}), **extra}
        run_dir = runs / f"adapt-{name.replace(' ', '_').replace('+', 'plus')}"
        t0 = time.perf_counter()
        weights = adapt(wv2.mul, run_dir, train_cfg, minutes=args.minutes, overrides=overrides, progress=False)
        seconds = time.perf_counter() - t0
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        steps = json.loads(lines[-1])["step"] if lines else 0
        if uses_teacher and teacher_gflops is None:
            from mobilegeo_ros.train.teachers import load_teacher

            teacher_gflops = torch_flops(load_teacher(args.teacher), STUDENT_PX) / 1e9
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=str(weights)))
        rows.append({"variant": name, **retrieval_row(runs, f"adapted-{name}", c, args.views, args.seed),
                     "steps": steps, "adapt_s": seconds, "terms": mean_weighted_terms(run_dir / "metrics.jsonl"),
                     "teacher_GFLOPs": teacher_gflops if uses_teacher else None})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\nteacher {args.teacher}, {args.minutes:g} min per variant, {args.views} views, seed {args.seed}, "
          f"rotations {cfg.index.rotations}, device {device}; student {student_gflops:.2f} GFLOPs at 224 px\n")
    print("| variant | R@1 | R@5 | R@10 | median retrieval error | steps | teacher GFLOPs (× student) | "
          "mean weighted loss terms |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        tg = r.get("teacher_GFLOPs")
        cost = f"{tg:.2f} ({tg / student_gflops:.1f}×)" if tg else "–"
        terms = ", ".join(f"{k} {v:.3g}" for k, v in r["terms"].items()) or "–"
        print(f"| {r['variant']} | {r['R@1']:.1f} | {r['R@5']:.1f} | {r['R@10']:.1f} | {r['median_error_m']:.1f} m | "
              f"{r['steps']} | {cost} | {terms} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": args.teacher, "minutes": args.minutes, "views": args.views,
                                               "seed": args.seed, "rotations": cfg.index.rotations,
                                               "student_GFLOPs": student_gflops, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
