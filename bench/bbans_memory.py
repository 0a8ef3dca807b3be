"""Peak memory of one BB-ANS encode + decode check on the CIFAR-shaped fixture (issue 14, item 8).

BB-ANS decode pops every latent with its prior before it can give the posterior bits back, so it
keeps something per step and image until the batch ends; this bench shows how much. It codes the
first `--images` CIFAR-10 test images of ../shared/data with the tiny fixture model (one batch of
`--images` lanes, like encode.py's bbans layout), decodes them, checks the roundtrip, and prints
the peak resident set size of the process (run it under `/usr/bin/time -v` for the kernel's view).

    python bench/bbans_memory.py --images 16 --respacing vlb1000
    /usr/bin/time -v python bench/bbans_memory.py --images 16 --respacing vlb1000 --backend numpy
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torch  # noqa: E402

import craystack as cs  # noqa: E402
from bits_back_diffusion.codec import BitsBackCodec  # noqa: E402
from bits_back_diffusion.coding import Precisions, initial_message  # noqa: E402
from bits_back_diffusion.latent_model import DiffusionLatentModel  # noqa: E402
from improved_diffusion.script_util import create_gaussian_diffusion  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rates import load_fixture  # noqa: E402


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def watch_tapes() -> list:
    """The PriorTapes decode fills from now on (none before the compact tape existed)."""
    try:
        from bits_back_diffusion.bbans_tape import PriorTape
    except ImportError:
        return []
    tapes, init = [], PriorTape.__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        tapes.append(self)

    PriorTape.__init__ = remember
    return tapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="CIFAR-10 test images, coded as one batch")
    parser.add_argument("--respacing", default="vlb1000")
    parser.add_argument("--backend", default="numba", choices=["numba", "numpy"])
    args = parser.parse_args()
    if args.images < 1:
        raise SystemExit("--images must be at least 1")

    torch.set_num_threads(1)
    bench = load_fixture(args.images)
    diffusion = create_gaussian_diffusion(**dict(bench.diffusion_cfg, timestep_respacing=args.respacing))
    codec = BitsBackCodec(DiffusionLatentModel(bench.model, diffusion, torch.device("cpu")), Precisions(),
                          backend=args.backend)
    images = bench.images
    warm = create_gaussian_diffusion(**dict(bench.diffusion_cfg, timestep_respacing="2"))
    warm_codec = BitsBackCodec(DiffusionLatentModel(bench.model, warm, torch.device("cpu")), Precisions(),
                               backend=args.backend)
    warm_start = initial_message(warm_codec, images[:1].shape, seed=0)
    warm_codec.decode(warm_codec.encode(warm_start, images[:1]), 1)  # compile the kernels before measuring
    start = initial_message(codec, images.shape, seed=0)
    tapes = watch_tapes()
    before = peak_rss_mib()

    t0 = time.time()
    message = codec.encode(start, images)
    t1 = time.time()
    after_encode = peak_rss_mib()
    decoded, x = codec.decode(message, len(images))
    t2 = time.time()
    if not np.array_equal(x, images) or not cs.message_equal(decoded, start):
        raise SystemExit("BB-ANS decode did not restore the images and the initial message")

    steps, dims = codec.lm.num_steps, int(np.prod(images.shape[1:]))
    kept = tapes[-1].peak_nbytes if tapes else None
    print(f"bbans {args.backend} {args.respacing}: {len(images)} images x {dims} dims x {steps} steps")
    print(f"encode {t1 - t0:.1f} s, decode {t2 - t1:.1f} s, roundtrip OK")
    print(f"peak RSS MiB: after warm-up {before:.0f}, after encode {after_encode:.0f}, "
          f"after decode {peak_rss_mib():.0f}")
    if kept is None:
        kept = len(images) * steps * dims * (8 + 8 + 8 + 4)  # float64 mean, std; int64 index; float32 latent
        print("(no PriorTape: the former lists of float64 priors, int64 indices and float32 latents)")
    if kept:
        print(f"decode kept {kept / 2**20:.1f} MiB = {kept / (len(images) * steps):.0f} B per image per step "
              f"({kept / (len(images) * steps * dims):.2f} B per dim per step)")


if __name__ == "__main__":
    main()
