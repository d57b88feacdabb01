"""Mission-area adaptation on real imagery: does ``mobilegeo adapt`` on the map improve localizing another date?

Adapts the student on the dgsamples WorldView-2 map (20 Jun 2014, the satellite gallery) for ``--minutes`` with the
recipe of :mod:`mobilegeo_ros.train.adapt` (overridable with ``--set key=value``), then runs the demo protocol
(:func:`mobilegeo_ros.demo.run_demo`: views rendered from WorldView-3, 6 Oct 2014, any heading, IMU attitude and
altitude priors) with retrieval only (``refine.enabled false``: the number that adaptation changes) and, with
``--refine``, with refinement, for the adapted student and for each ``--compare`` model (``imagenet``, ``shipped``).
Prints one table row per model: recall@1/5/10, fix rate, median error, >50 m fixes.

Everything derived from dgsamples (the adapted weights included) stays under ``--out`` (default /tmp): its licence
forbids distributing derived products.

    .venv/bin/python benchmarks/adapt_dgsamples.py --minutes 15 --views 120 --compare imagenet
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", default=None, help="start weights (default: the shipped student, else ImageNet)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train.* recipe override")
    ap.add_argument("--compare", nargs="*", default=["imagenet"], choices=["imagenet", "shipped"])
    ap.add_argument("--refine", action="store_true", help="also run with geometric refinement (slower)")
    ap.add_argument("--out", default="/tmp/mobilegeo_adapt_dgsamples")
    args = ap.parse_args(argv)

    out = Path(args.out)
    run_dir = out / f"run-{int(time.time())}"
    wv2 = dgsamples.scene("wv2")
    cfg = Config()
    cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, pansharpen_with=str(wv2.pan)))
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    t = time.perf_counter()
    weights = adapt(wv2.mul, run_dir, cfg, minutes=args.minutes, init_weights=args.init, overrides=overrides)
    steps = sum(1 for _ in open(run_dir / "metrics.jsonl"))
    print(f"adapted in {time.perf_counter() - t:.0f} s ({steps} log lines): {weights}", flush=True)
    models = {"adapted": str(weights)}
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
            s = json.loads(run_demo(out / f"demo-{name.replace(' ', '_')}-{refine}", c, n_views=args.views,
                                    seed=args.seed, cache_dir=out / "cache", progress=False,
                                    log=lambda *a: None).read_text())
            print(f"| {name} | {'on' if refine else 'off'} | {s['recall@1']:.1f} | {s['recall@5']:.1f} | "
                  f"{s['recall@10']:.1f} | {100 * s['fix_rate']:.0f} % | {s['median_error_m']:.1f} m | "
                  f"{s['wrong_confident_fixes']} | {100 * s['within_2sigma_fraction']:.0f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
