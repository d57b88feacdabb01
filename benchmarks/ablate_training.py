"""Training ablation: plain vs +self-distillation vs +cross-distillation vs +UAPA (HD-CVGL) vs CSP-HD and CSP-HD with
each part removed, trained with the same data, steps and seed, measured on a held-out split and a domain-shift pair.

Data (licence-clean, made here): a synthetic town (:func:`mobilegeo_ros.geo.synthetic.write_synthetic_geotiff`),
``--map-px`` wide at 0.5 m; locations every ``spacing`` m are classes; the west 60 % trains, the east 40 % (no
shared ground, :func:`mobilegeo_ros.train.datasets.split_locations`) is the test split. Domain shift: the same test
locations with the drone views rendered from the same town "on another date"
(:func:`mobilegeo_ros.geo.synthetic.season_shift`, amount 1) while the gallery stays the original map.

Rows: ImageNet (no training), the teacher (open_nsfw ResNet-50-thin + head; trained first, it is what
cross-distillation distils from), and the student variants (4-stage MobileNetV2 + heads, ``train.*`` overrides):

====================  ==================================================================================
plain                 CE on every head + triplet + InfoNCE (student-plain)
+SD                   + inverse self-distillation (FISD/HCD, constant weight 1)
+SD+KD                + two-step cross-distillation from the teacher (logit KD + feature KD), no UAPA
HD-CVGL               + UAPA (student-hdcvgl: the MobileGeo recipe)
CSP-HD                HCD weighted by PALW + CSDA (student-csphd)
CSP-HD -PALW          HCD at constant weight 1 + CSDA
CSP-HD -CSDA          HCD + PALW, equal drone/satellite CE weights
CSP-HD -HCD           CSDA only (no hierarchical term, so no PALW either)
====================  ==================================================================================

Columns: D→S R@1 and AP (University-1652 computation) on the held-out split and on the domain-shift pair, FLOPs
(torch.utils.flop_counter, 2·MAC, at the deploy input), parameters of the deployed network, and images/s (torch,
batch 1, this machine). Every student variant deploys the same network, so FLOPs, params and images/s are equal
across them by construction.

    .venv/bin/python benchmarks/ablate_training.py                 # ~25 min on 2 CPU cores (defaults)
    .venv/bin/python benchmarks/ablate_training.py --steps 400 --device cuda   # a real run on a GPU machine

Small CPU budgets make differences of a few points noise (one seed); the command is the reproducible artefact.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import ModelConfig  # noqa: E402
from mobilegeo_ros.eval.retrieval_metrics import retrieval_metrics  # noqa: E402
from mobilegeo_ros.geo.raster import read_orthophoto  # noqa: E402
from mobilegeo_ros.geo.synthetic import write_synthetic_geotiff  # noqa: E402
from mobilegeo_ros.model.flops import torch_flops, torch_images_per_s, torch_params  # noqa: E402
from mobilegeo_ros.model.mobilenetv2_gem import MobileNetV2GeM  # noqa: E402
from mobilegeo_ros.model.weights import shipped_mobilenetv2_path  # noqa: E402
from mobilegeo_ros.train.run_config import load_run_config  # noqa: E402
from mobilegeo_ros.train.datasets import SyntheticOrtho  # noqa: E402
from mobilegeo_ros.train.loop import build_network, evaluate_ortho, ortho_data_config, train  # noqa: E402

VARIANTS: dict[str, dict] = {
    "plain": {"preset": "student-plain"},
    "+SD": {"preset": "student-plain", "sd_weight": 1.0},
    # MSE feature distillation: what these rows of docs/training.md were measured with (the default is now cosine)
    "+SD+KD": {"preset": "student-hdcvgl", "uapa_weight": 0.0, "feat_kd_distance": "mse"},
    "HD-CVGL": {"preset": "student-hdcvgl", "feat_kd_distance": "mse"},
    "CSP-HD": {"preset": "student-csphd"},
    "CSP-HD -PALW": {"preset": "student-csphd", "palw": False},
    "CSP-HD -CSDA": {"preset": "student-csphd", "csda": False},
    "CSP-HD -HCD": {"preset": "student-csphd", "sd_weight": 0.0, "palw": False},
}


def images_per_s(module: torch.nn.Module, input_px: int) -> float:
    """Batch-1 CPU images/s of ``module`` in eval mode (20 timed passes after 3)."""
    return torch_images_per_s(module.eval(), input_px, n=20, warmup=3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per variant (and for the teacher)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input-px", type=int, default=128, help="training and evaluation input side")
    ap.add_argument("--map-px", type=int, default=1600, help="synthetic map width (height = half), 0.5 m pixels")
    ap.add_argument("--views", type=int, default=8, help="drone views per location")
    ap.add_argument("--eval-views", type=int, default=4, help="drone views per test location")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    work = Path(args.out or tempfile.mkdtemp(prefix="ablate_training_"))
    work.mkdir(parents=True, exist_ok=True)
    w, h = args.map_px, args.map_px // 2
    map_tif = write_synthetic_geotiff(work / "map.tif", w, h, 0.5, seed=args.seed)
    shifted_tif = write_synthetic_geotiff(work / "map_other_date.tif", w, h, 0.5, seed=args.seed, season=1.0)
    base = {"model": {"input_px": args.input_px},
            "render": {"altitude_m": [40.0, 60.0], "max_tilt_deg": 10.0, "hfov_deg": 60.0},
            "train": {"data_root": str(map_tif), "tile_size_m": 60.0, "spacing_m": 30.0, "views": args.views,
                      "splits": [0.6, 0.0, 0.4], "batch_size": args.batch, "max_steps": args.steps, "epochs": 1000,
                      "eval_views": 0, "log_every": 10, "teacher_input_px": args.input_px, "seed": args.seed,
                      "device": args.device}}

    def run_config(extra: dict):
        path = work / "ablation.yaml"
        path.write_text(yaml.safe_dump({**base, "train": {**base["train"], **extra}}))
        return load_run_config(str(path))

    probe = run_config({})
    gallery_map = read_orthophoto(map_tif, probe.core.map)
    test_same = SyntheticOrtho(gallery_map, "test", ortho_data_config(probe), probe.core.render, seed=args.seed)
    test_shift = SyntheticOrtho(gallery_map, "test", ortho_data_config(probe), probe.core.render, seed=args.seed,
                                drone_ortho=read_orthophoto(shifted_tif, probe.core.map))
    train_classes = SyntheticOrtho(gallery_map, "train", ortho_data_config(probe), probe.core.render).num_classes
    print(f"training ablation: synthetic map {w // 2}×{h // 2} m, {train_classes} train / {test_same.num_classes} "
          f"test locations, {args.views} views each, {args.steps} steps × {args.batch} pairs, input {args.input_px} "
          f"px, seed {args.seed}", flush=True)

    rows = []

    def measure(name: str, embedder, flops: int, params: int, ips: float, seconds: float) -> None:
        same = evaluate_ortho(embedder, test_same, args.eval_views, args.input_px, torch.device("cpu"))["drone2sat"]
        shift = evaluate_ortho(embedder, test_shift, args.eval_views, args.input_px, torch.device("cpu"))["drone2sat"]
        rows.append({"variant": name, "R@1": same["recall@1"], "AP": same["AP"], "shift R@1": shift["recall@1"],
                     "shift AP": shift["AP"], "GFLOPs": flops / 1e9, "params M": params / 1e6, "img/s": ips,
                     "train s": seconds})
        print(f"  {name}: R@1 {same['recall@1']:.1f} AP {same['AP']:.1f} | shift R@1 {shift['recall@1']:.1f} "
              f"AP {shift['AP']:.1f} ({seconds:.0f} s)", flush=True)

    imagenet = MobileNetV2GeM(ModelConfig(input_px=args.input_px, weights=str(shipped_mobilenetv2_path())))
    net = imagenet.module
    s_flops, s_params, s_ips = torch_flops(net, args.input_px), torch_params(net), images_per_s(net, args.input_px)
    measure("ImageNet (untrained)", _Embedder(net), s_flops, s_params, s_ips, 0.0)

    teacher_dir = work / "teacher"
    needs_teacher = any(VARIANTS[v]["preset"] == "student-hdcvgl" for v in args.variants)
    if needs_teacher:
        t = time.perf_counter()
        train(run_config({"preset": "teacher"}), teacher_dir, progress=False)
        tnet = build_network(run_config({"preset": "teacher"}), train_classes)
        from mobilegeo_ros.model.weights import load_state_dict_file

        tnet.load_state_dict(load_state_dict_file(teacher_dir / "model.safetensors"))
        tnet.eval()
        backbone_flops = torch_flops(tnet, args.input_px)
        measure("teacher (ResNet-50-thin)", tnet, backbone_flops, torch_params(tnet), images_per_s(tnet, args.input_px),
                time.perf_counter() - t)
    for name in args.variants:
        extra = dict(VARIANTS[name])
        if extra["preset"] == "student-hdcvgl":
            extra["teacher_checkpoint"] = str(teacher_dir / "model.safetensors")
        t = time.perf_counter()
        run_dir = work / name.replace(" ", "_").replace("+", "p")
        train(run_config(extra), run_dir, progress=False)
        model = MobileNetV2GeM(ModelConfig(input_px=args.input_px, weights=str(run_dir / "student.safetensors")))
        measure(name, _Embedder(model.module), s_flops, s_params, s_ips, time.perf_counter() - t)

    print()
    print("| variant | R@1 | AP | domain-shift R@1 | domain-shift AP | GFLOPs | params (M) | img/s (torch, b1) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['R@1']:.1f} | {r['AP']:.1f} | {r['shift R@1']:.1f} | {r['shift AP']:.1f} | "
              f"{r['GFLOPs']:.2f} | {r['params M']:.2f} | {r['img/s']:.0f} |")
    print(f"total {time.perf_counter() - t0:.0f} s; work folder {work}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


class _Embedder(torch.nn.Module):
    """``embed()`` of a deployable MobileNetV2GeMNet for :func:`evaluate_ortho` (it calls ``net.embed``)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.net(x), dim=1)


if __name__ == "__main__":
    sys.exit(main())
