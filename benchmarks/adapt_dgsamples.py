"""Mission-area adaptation on real imagery: does ``mobilegeo adapt`` on the map improve localizing another date?

Adapts the student on the dgsamples WorldView-2 map (20 Jun 2014, the satellite gallery) for ``--minutes`` with the
recipe of :mod:`mobilegeo_ros.train.adapt` (overridable with ``--set key=value``), then runs the demo protocol
(:func:`mobilegeo_ros.demo.run_demo`: views rendered from WorldView-3, 6 Oct 2014, any heading, IMU attitude and
altitude priors) with retrieval only (``refine.enabled false``: the number that adaptation changes) and, with
``--refine``, with refinement, for the adapted student (and its fine-tuned end, when the recipe writes a WiSE-FT
blend), each ``--wise`` blend, each ``--compare`` model (``imagenet``, ``shipped``) and each ``--weights`` file.
Prints one table row per model: recall@1/5/10, fix rate, median error, >50 m fixes. ``--minutes 0`` skips the
adaptation (evaluate given weights only). 120 views carry a few points of noise: confirm on a second ``--seed``.

Everything derived from dgsamples (the adapted weights included) stays under ``--out`` (default /tmp): its licence
forbids distributing derived products.

    .venv/bin/python benchmarks/adapt_dgsamples.py --minutes 15 --views 120 --compare imagenet
    .venv/bin/python benchmarks/adapt_dgsamples.py --minutes 0 --views 300 --seed 1 --weights s2=RUN/student.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilegeo_ros.config import Config  # noqa: E402
from mobilegeo_ros.demo import run_demo  # noqa: E402
from mobilegeo_ros.geo import dgsamples  # noqa: E402
from mobilegeo_ros.model.weights import default_student_weights, shipped_mobilenetv2_path  # noqa: E402
from mobilegeo_ros.train.adapt import adapt  # noqa: E402
from mobilegeo_ros.train.wise_ft import interpolate_weights  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="adaptation budget (0 = no adaptation: only "
                                                                "evaluate the --compare and --weights models)")
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="start weights (default: ImageNet, as mobilegeo adapt)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train.* recipe override")
    ap.add_argument("--compare", nargs="*", default=["imagenet"], choices=["imagenet", "shipped"])
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                    help="also evaluate this weights file (repeatable)")
    ap.add_argument("--wise", type=float, nargs="*", default=[], metavar="ALPHA",
                    help="also evaluate these WiSE-FT interpolations of the fine-tuned end with the init")
    ap.add_argument("--refine", action="store_true", help="also run with geometric refinement (slower)")
    ap.add_argument("--out", default="/tmp/mobilegeo_adapt_dgsamples")
    args = ap.parse_args(argv)

    out = Path(args.out)
    run_dir = out / f"run-{int(time.time())}"
    wv2 = dgsamples.scene("wv2")
    cfg = Config()
    cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, pansharpen_with=str(wv2.pan)))
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    models = {}
    if args.minutes > 0:
        t = time.perf_counter()
        weights = adapt(wv2.mul, run_dir, cfg, minutes=args.minutes, init_weights=args.init, overrides=overrides)
        steps = sum(1 for _ in open(run_dir / "metrics.jsonl"))
        print(f"adapted in {time.perf_counter() - t:.0f} s ({steps} log lines): {weights}", flush=True)
        models["adapted"] = str(weights)
        finetuned = run_dir / "student_finetuned.safetensors"  # written when the recipe's wise_alpha < 1
        if finetuned.is_file():
            models["adapted, fine-tuned end"] = str(finetuned)
        for alpha in args.wise:
            models[f"adapted, WiSE-FT {alpha:g}"] = str(interpolate_weights(
                args.init, finetuned if finetuned.is_file() else weights, alpha,
                run_dir / f"wise-{alpha:g}.safetensors"))
    for item in args.weights:
        name, _, path = item.rpartition("=")
        models[name or Path(path).stem] = path
    if "imagenet" in args.compare:
        models["imagenet"] = str(shipped_mobilenetv2_path())
    if "shipped" in args.compare and default_student_weights():
        models["shipped student"] = str(default_student_weights())
    print("| model | refine | R@1 | R@5 | R@10 | fix rate | median err (fixes) | fixes > 50 m | within 2σ |")
    print("|---|---|---|---|---|---|---|---|---|")
    for refine in ([False, True] if args.refine else [False]):
        for name, w in models.items():
            c = Config()
            c = dataclasses.replace(c, model=dataclasses.replace(c.model, weights=w),
                                    refine=dataclasses.replace(c.refine, enabled=refine))
            slug = re.sub(r"[^A-Za-z0-9.]+", "_", name)
            s = json.loads(run_demo(out / f"demo-{slug}-{refine}", c, n_views=args.views, seed=args.seed,
                                    cache_dir=out / "cache", progress=False, log=lambda *a: None).read_text())
            print(f"| {name} | {'on' if refine else 'off'} | {s['recall@1']:.1f} | {s['recall@5']:.1f} | "
                  f"{s['recall@10']:.1f} | {100 * s['fix_rate']:.0f} % | {s['median_error_m']:.1f} m | "
                  f"{s['wrong_confident_fixes']} | {100 * s['within_2sigma_fraction']:.0f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
