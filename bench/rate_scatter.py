"""Net rate against the VLB with the Monte Carlo scatter of both taken out.

One encode of a dataset is one draw of the latents, one VLB evaluation one draw of the noise: on the
297 demo digits each scatters by a few tenths of a percent, as much as the gap being measured. This
encodes the same images in several random orders (different batches, so different latents) and
evaluates the VLB with several noise seeds, then prints both means with their standard errors.

    python bench/rate_scatter.py                                  # demo model, bitswap, 5 orders, 3 seeds
    python bench/rate_scatter.py --codec bbans --orders 3 --respacing vlb25
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rates  # noqa: E402  (bench/rates.py: loading the demo model, encoding like encode.py)
import torch  # noqa: E402

from improved_diffusion.script_util import create_gaussian_diffusion  # noqa: E402


def mean_sem(values: List[float]) -> tuple:
    values = np.asarray(values, dtype=np.float64)
    sem = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(sem)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=rates.DEMO_RUN, help="training run dir with .hydra/config.yaml")
    parser.add_argument("--codec", default="bitswap", choices=sorted(rates.CODECS))
    parser.add_argument("--respacing", default="", help="'' = all steps")
    parser.add_argument("--orders", type=int, default=5, help="random image orders to encode")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds for the VLB")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.seeds < 1:
        raise SystemExit("--orders and --seeds must be at least 1")
    torch.set_grad_enabled(False)
    bench = rates.load_run("demo", args.run)
    diffusion = create_gaussian_diffusion(**dict(bench.diffusion_cfg, timestep_respacing=args.respacing))
    coded = []
    for order in range(args.orders):
        perm = np.random.default_rng(order + 1).permutation(len(bench.images))
        result = rates.run_codec(args.codec, bench, diffusion, bench.images[perm], check=False)
        coded.append(result["rate_eff"])
        print(f"  order {order + 1}: rate_eff {result['rate_eff']:.4f}", file=sys.stderr, flush=True)
    vlbs = []
    for seed in range(args.seeds):
        vlbs.append(rates.vlb_of(bench, diffusion, bench.images, seed))
        print(f"  noise seed {seed}: VLB {vlbs[-1]:.4f}", file=sys.stderr, flush=True)
    rate, rate_sem = mean_sem(coded)
    vlb, vlb_sem = mean_sem(vlbs)
    steps = f"{diffusion.num_timesteps} of {bench.diffusion_cfg['steps']}"
    print("| model | steps | images | codec | rate_eff (mean ± s.e., orders) | VLB (mean ± s.e., seeds) | rate/VLB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {os.path.basename(os.path.normpath(args.run))} | {steps} | {len(bench.images)} | {args.codec} | "
          f"{rate:.4f} ± {rate_sem:.4f} ({args.orders}) | {vlb:.4f} ± {vlb_sem:.4f} ({args.seeds}) | {rate / vlb:.4f} |")


if __name__ == "__main__":
    main()
