"""Projected wall time of compressing CIFAR-10 (10k test images) and ImageNet-64 (50k validation
images) with the encode + decode check, from measured codec times and the model's FLOP count.

    python bench/projection.py --codec-json codec_speed.json          # codec times from bench/codec_speed.py
    python bench/projection.py --codec-json gpu.json --model-ms 9.5   # with a measured GPU model time

Every figure printed is a PROJECTION: model time per step is FLOPs / assumed throughput unless
--model-ms gives a measured one, the codec time per step is the measured CIFAR-10 one (scaled by
lanes for ImageNet-64: 12,288 dimensions per image instead of 3,072), and steps do not overlap
(the model waits for the codec and vice versa). Batches: images / batch plus the few extra small
batches Bit-Swap's growing schedule adds (1.5%, modelled in bench/rates.py).
"""
from __future__ import annotations

import argparse
import json

GFLOP_PER_IMAGE = {"cifar10": 16.8, "imagenet64": 79.5}  # one UNet forward pass (torch.utils.flop_counter)
IMAGES = {"cifar10": 10_000, "imagenet64": 50_000}
LANE_SCALE = {"cifar10": 1.0, "imagenet64": 4.0}
GROWTH_EXTRA = 1.015


def project(codec_s: float, model_s_cifar: float, dataset: str, steps: int, gpus: int, batch: int) -> float:
    """Hours for encode + decode check of the whole set on `gpus` data-parallel ranks (the model's
    time scales with its FLOPs per image, the codec's with the lanes)."""
    model_s = model_s_cifar * GFLOP_PER_IMAGE[dataset] / GFLOP_PER_IMAGE["cifar10"]
    batches = IMAGES[dataset] / batch * GROWTH_EXTRA
    seconds = 2 * batches * steps * (model_s + codec_s * LANE_SCALE[dataset]) / gpus
    return seconds / 3600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--codec-json", required=True, help="--json output of bench/codec_speed.py")
    parser.add_argument("--codec", default="bitswap")
    parser.add_argument("--threads", default="numba_2",
                        help="which measured codec column to use: numba_1, numba_2, or cuda (a GPU run)")
    parser.add_argument("--tflops", type=float, default=30.0,
                        help="assumed sustained fp32 TFLOP/s of the model on one GPU (H200 peak: ~67)")
    parser.add_argument("--model-ms", type=float, default=0.0, help="measured CIFAR-10 model ms per step at the batch")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    data = json.load(open(args.codec_json))
    rows = data["seconds_per_step"][args.codec]
    codec_s = (rows["encode"][args.threads] + rows["decode"][args.threads]) / 2
    measured = args.model_ms > 0
    model_s = args.model_ms / 1e3 if measured else args.batch * GFLOP_PER_IMAGE["cifar10"] / (args.tflops * 1e3)
    where = data.get("settings", {}).get("gpu") or "this CPU"
    print(f"PROJECTION, not a measurement. Codec ({args.codec}, {args.threads}): {1e3 * codec_s:.1f} ms per CIFAR-10 "
          f"step at batch {args.batch}, measured on {where}; model: {1e3 * model_s:.1f} ms per CIFAR-10 step "
          + ("(measured)" if measured else f"(assumed: {args.tflops:g} TFLOP/s, {GFLOP_PER_IMAGE['cifar10']} GFLOP/image)"))
    print("| data set | steps | 1 GPU (h) | 8 GPUs (h) |")
    print("|---|---|---|---|")
    for dataset in ("cifar10", "imagenet64"):
        for steps in (100, 1000, 4000):
            one = project(codec_s, model_s, dataset, steps, 1, args.batch)
            eight = project(codec_s, model_s, dataset, steps, 8, args.batch)
            print(f"| {dataset} ({IMAGES[dataset]:,}) | {steps} | {one:.1f} | {eight:.1f} |")


if __name__ == "__main__":
    main()
