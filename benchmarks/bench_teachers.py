"""Zero-shot teacher table on the cross-date dgsamples retrieval: which pretrained teacher is worth distilling?

Each named teacher of :mod:`mobilegeo_ros.train.teachers` (and the shipped student, for the FLOPs ratio) embeds the
WorldView-2 map (20 Jun 2014, the satellite gallery: the demo's tiles and gallery rotations) and drone views rendered
from WorldView-3 (6 Oct 2014; any heading, tilt, 100-150 m, photometric changes) with the demo's protocol
(:func:`mobilegeo_ros.demo.run_demo`, retrieval only: ``refine.enabled false``), exactly as
``benchmarks/adapt_dgsamples.py`` measures a student. The teachers see the views through the student's preprocessing
(224 px) and then their own conversion, as in ``mobilegeo adapt --teacher``. Per row: R@1/5/10, median retrieval
error, GFLOPs of one 224 px image (``torch.utils.flop_counter``: convolutions and matrix products; ALIKED's
deformable convolutions are not counted, so its figure is a lower bound), parameters, and CPU images/s at batch 1
(``--threads`` torch threads).

Everything derived from dgsamples (indexes, reports) stays under ``--out`` (default /tmp): its licence forbids
distributing derived products.

    .venv/bin/python benchmarks/bench_teachers.py --views 300 --seed 1
    .venv/bin/python benchmarks/bench_teachers.py --views 20 --teachers imagenet-mbv2 xfeat-gem --rotations 1  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import Config  # noqa: E402
from mobilegeo_ros.demo import run_demo  # noqa: E402
from mobilegeo_ros.model.flops import torch_flops, torch_images_per_s, torch_params  # noqa: E402
from mobilegeo_ros.train.teachers import TEACHERS, TeacherEmbeddingModel, load_teacher  # noqa: E402

STUDENT_PX = 224


def retrieval_row(out: Path, name: str, cfg: Config, views: int, seed: int, model=None) -> dict:
    """The demo protocol, retrieval only, for ``cfg.model`` or ``model`` → the summary's recall and errors."""
    c = dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, enabled=False))
    slug = re.sub(r"[^A-Za-z0-9.]+", "_", name)
    s = json.loads(run_demo(out / f"demo-{slug}-s{seed}", c, n_views=views, seed=seed, cache_dir=out / "cache",
                            progress=False, log=lambda *a: None, model=model).read_text())
    return {"R@1": s["recall@1"], "R@5": s["recall@5"], "R@10": s["recall@10"],
            "median_error_m": s["median_error_m"], "index_vectors": s["index_vectors"]}


def base_config(rotations: int | None) -> Config:
    cfg = Config()
    if rotations:
        cfg = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, rotations=rotations))
    return cfg


def teacher_row(name: str, out: Path, cfg: Config, views: int, seed: int, device: str) -> dict:
    """Zero-shot retrieval, FLOPs, parameters and CPU speed of one named teacher."""
    teacher = load_teacher(name)
    cost = {"GFLOPs_224": torch_flops(teacher, STUDENT_PX) / 1e9, "params_M": torch_params(teacher) / 1e6,
            "cpu_img_s": torch_images_per_s(teacher, STUDENT_PX)}
    if device != "cpu":
        teacher = teacher.to(device)
    row = retrieval_row(out, f"teacher-{name}", cfg, views, seed, TeacherEmbeddingModel(teacher, STUDENT_PX))
    return {"model": name, **row, **cost, "teacher_px": teacher.input_px, "dim": teacher.dim}


def student_row(out: Path, cfg: Config, views: int, seed: int, weights: str, label: str) -> dict:
    """A ``mobilenetv2_gem`` weights file (``""`` = the shipped default) on the same protocol."""
    from mobilegeo_ros.train.teachers import ImageNetMobileNetV2Teacher

    c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, weights=weights))
    net = ImageNetMobileNetV2Teacher()  # the deployed network's architecture: same FLOPs and speed
    return {"model": label, **retrieval_row(out, label, c, views, seed),
            "GFLOPs_224": torch_flops(net, STUDENT_PX) / 1e9, "params_M": torch_params(net) / 1e6,
            "cpu_img_s": torch_images_per_s(net, STUDENT_PX), "teacher_px": STUDENT_PX, "dim": 1280}


def format_rows(rows: list[dict], reference_gflops: float | None) -> str:
    head = "| model | R@1 | R@5 | R@10 | median retrieval error | GFLOPs (224 px) | × student FLOPs | params (M) | " \
           "CPU img/s (b1) |\n|---|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        ratio = f"{r['GFLOPs_224'] / reference_gflops:.1f}×" if reference_gflops else "–"
        lines.append(f"| {r['model']} | {r['R@1']:.1f} | {r['R@5']:.1f} | {r['R@10']:.1f} | "
                     f"{r['median_error_m']:.1f} m | {r['GFLOPs_224']:.2f} | {ratio} | {r['params_M']:.2f} | "
                     f"{r['cpu_img_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=300, help="WV3 views (the issue asks >= 300, 2 seeds)")
    ap.add_argument("--seed", type=int, default=1, help="view seed")
    ap.add_argument("--teachers", nargs="*", default=list(TEACHERS), help=f"subset of {list(TEACHERS)}")
    ap.add_argument("--no-student", action="store_true", help="skip the shipped student's row")
    ap.add_argument("--rotations", type=int, default=0,
                    help="gallery rotations of the index (0 = the config's, 8: the protocol; 1 only for smoke runs)")
    ap.add_argument("--device", default="auto", help="auto (cuda when torch sees one) | cpu | cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the img/s column)")
    ap.add_argument("--out", default="/tmp/mobilegeo_bench_teachers")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    out = Path(args.out)
    cfg = base_config(args.rotations or None)
    rows = []
    t0 = time.perf_counter()
    if not args.no_student:
        rows.append(student_row(out, cfg, args.views, args.seed, "", "shipped student (mobilenetv2_gem)"))
        print(format_rows(rows[-1:], None), flush=True)
    for name in args.teachers:
        rows.append(teacher_row(name, out, cfg, args.views, args.seed, device))
        print(format_rows(rows[-1:], None).splitlines()[-1], flush=True)
    reference = rows[0]["GFLOPs_224"] if not args.no_student else None
    print(f"\n{args.views} views, seed {args.seed}, rotations {cfg.index.rotations}, device {device}, "
          f"{time.perf_counter() - t0:.0f} s\n")
    print(format_rows(rows, reference))
    if args.json:
        Path(args.json).write_text(json.dumps({"views": args.views, "seed": args.seed,
                                               "rotations": cfg.index.rotations, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
