"""Rates of BB-ANS and Bit-Swap against the VLB and against PNG / WebP / JPEG-XL lossless.

For each model and respacing: the VLB of the first n validation images, and for each codec the
net (effective) rate, the total rate (all words of the final message, initial bits included,
as a file holds them), the initial message size and how much of it the first batch used; then
the total rate projected to the 10,000-image CIFAR-10 test set coded at batch 16 (encode.py's
layout: Bit-Swap on one image's lanes with growing batches, BB-ANS on a whole batch's), and the sizes
of the same images under classical lossless codecs.

    python bench/rates.py                                   # demo digits model + fixture model
    python bench/rates.py --models digits --respacings digits=,vlb25 --counts 1,10,all
    python bench/rates.py --models fixture --respacings fixture=vlb100,vlb1000 --counts 1,2
    python bench/rates.py --models fixture-cifar --counts 16,64 --check     # CIFAR-shaped, batch 16

Rates are bits per dimension. rate_eff counts information (32 bits per tail word plus log2 of
every head lane), since whole words of a 1-image message are dominated by where the 64-bit
heads happen to stand; rate_total counts whole words.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import torch  # noqa: E402

import craystack as cs  # noqa: E402
from bits_back_diffusion.batch_schedule import GROWTH_MARGIN, BatchSchedule, encode_batch  # noqa: E402
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec, peak_deficit_bits  # noqa: E402
from bits_back_diffusion.classical import classical_rates  # noqa: E402
from bits_back_diffusion.codec import BitsBackCodec  # noqa: E402
from bits_back_diffusion.coding import Precisions, initial_message, message_bits  # noqa: E402
from bits_back_diffusion.decoder import pop_batches  # noqa: E402
from bits_back_diffusion.latent_model import DiffusionLatentModel  # noqa: E402
from bits_back_diffusion.vlb import batch_vlb  # noqa: E402
from improved_diffusion.script_util import create_gaussian_diffusion  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
FIXTURE = os.path.join(REPO, os.pardir, "shared", "fixtures")
SHARED_CIFAR = os.path.join(REPO, os.pardir, "shared", "data", "cifar10_jpeg_test.npz")
DEMO_RUN = os.path.join(REPO, "outputs", "pretrained", "digits")
CODECS = {"bbans": (BitsBackCodec, Precisions()), "bitswap": (BitSwapCodec, BITSWAP_PRECISIONS)}
DEFAULT_RESPACINGS = {"digits": ["", "vlb25"], "fixture": ["vlb100", "vlb1000"], "fixture-cifar": ["vlb100"]}
CIFAR_IMAGES, CIFAR_BATCH = 10_000, 16


@dataclass
class Bench:
    name: str
    model: torch.nn.Module
    model_cfg: dict
    diffusion_cfg: dict
    images: np.ndarray  # (N, C, H, W) levels
    num_levels: int
    batch: int


def load_fixture(cifar_images: int = 0) -> Bench:
    """The reference tiny CIFAR model with its two images, or (cifar_images > 0) with that many
    CIFAR-10 test images from ../shared/data at batch 16: CIFAR-shaped lanes, several batches."""
    from bits_back_diffusion.models import build_model, read_weights

    flags = json.load(open(os.path.join(FIXTURE, "tiny_cifar_vlb.json")))
    diffusion_cfg = dict(flags["diffusion"], num_levels=256)
    state = read_weights(os.path.join(FIXTURE, "tiny_cifar_vlb.pt"), "the reference fixture model")
    model, _ = build_model(flags["model"], diffusion_cfg, state, torch.device("cpu"))
    if cifar_images <= 0:
        images = np.load(os.path.join(FIXTURE, "tiny_cifar_vlb.npz"))["x_uint8"].astype(np.int64)
        return Bench("fixture", model.eval(), flags["model"], diffusion_cfg, images, 256, 2)
    if not os.path.isfile(SHARED_CIFAR):
        raise SystemExit(f"{SHARED_CIFAR} not found: the fixture-cifar model needs ../shared/data beside the repo")
    with np.load(SHARED_CIFAR) as data:
        images = data["images"][:cifar_images].transpose(0, 3, 1, 2).astype(np.int64)
    return Bench("fixture-cifar", model.eval(), flags["model"], diffusion_cfg, images, 256, CIFAR_BATCH)


def load_run(name: str, path: str) -> Bench:
    """A training run dir (its .hydra/config.yaml) and its validation set, through the loader
    every script uses (models.load_run_model)."""
    from bits_back_diffusion.data import build_dataset
    from bits_back_diffusion.models import ModelLoadError, load_run_model, run_dir_config

    try:
        loaded = load_run_model(path, torch.device("cpu"))
    except ModelLoadError as exc:
        raise SystemExit(str(exc)) from None
    saved = run_dir_config(os.path.dirname(loaded.checkpoint))
    ds = build_dataset(saved.data, "val")
    images = ds.get_batch(range(len(ds))).astype(np.int64)
    batch = int(saved.data.val.batch_size)
    return Bench(name, loaded.model, loaded.model_cfg, loaded.diffusion_cfg, images, ds.num_levels, batch)


def vlb_of(bench: Bench, diffusion, images: np.ndarray, seed: int = 0) -> float:
    """Mean total VLB (bits/dim) of `images` with the per-image noise of `seed`."""
    totals = []
    for start in range(0, len(images), bench.batch):
        x = torch.from_numpy(images[start:start + bench.batch] * (2.0 / (bench.num_levels - 1)) - 1.0).float()
        ids = list(range(start, start + len(x)))
        totals.append(batch_vlb(diffusion, bench.model, x, ids, seed=seed)["total_bpd"])
    return float(np.concatenate(totals).mean())


def run_codec(name: str, bench: Bench, diffusion, images: np.ndarray, check: bool) -> Dict[str, float]:
    """Encode like encode.py with its default layout: one initial message; bbans on lanes for a
    whole batch of `bench.batch` images, bitswap on one image's lanes with batches that grow."""
    cls, precisions = CODECS[name]
    codec = cls(DiffusionLatentModel(bench.model, diffusion, torch.device("cpu")), precisions,
                track=cls is BitSwapCodec)
    head = head_images(name, bench.batch)
    shape = (min(head, len(images)),) + images.shape[1:]
    lanes = int(np.prod(shape))
    start = initial_message(codec, shape, seed=0)
    words = len(cs.flatten(start)) / lanes  # head + tail words per lane
    schedule = BatchSchedule(bench.batch, grow=codec.shares_lanes)
    message, used_words, peak, done = start, 0, float("nan"), 0
    t0 = time.time()
    while done < len(images):
        size = schedule.next_size(len(images) - done, message)
        message, used = encode_batch(codec, message, images[done:done + size], schedule)
        if done == 0:
            used_words, borrowed_first = used, cs.empty_pops(message)
            if codec.trace is not None:
                trace = codec.trace.as_arrays()
                peak = peak_deficit_bits(trace["pop_bits"][0], trace["push_bits"][0], codec.trace.data_bits[0])
                peak /= size * int(np.prod(images.shape[1:]))
        done += size
    seconds = time.time() - t0
    if check:
        decoded = message
        ends = np.cumsum([0] + schedule.sizes)
        for batch in pop_batches(codec, message, schedule.sizes):  # the loop decode.py runs
            k, decoded = batch.index, batch.message
            if not np.array_equal(batch.images, images[ends[k]:ends[k + 1]]):
                raise SystemExit(f"{bench.name} {name}: batch {k} did not decode exactly")
        if not cs.message_equal(decoded, start):
            raise SystemExit(f"{bench.name} {name}: decoding did not restore the initial message")
    dims = images.size
    net_bits = message_bits(message) - message_bits(start)
    file_bits = 32.0 * len(cs.flatten(message))
    return {
        "rate_eff": net_bits / dims,
        "rate_total": file_bits / dims,
        "init_words": words,
        "used_bytes": 4.0 * used_words / lanes,
        "peak_bytes": peak / 8.0,
        "overhead_bytes": (file_bits - net_bits) / 8.0 / lanes,
        "borrowed_later": 4.0 * (cs.empty_pops(message) - borrowed_first) / lanes,
        "batches": len(schedule.sizes),
        "deficit_words": schedule.words_per_image / int(np.prod(images.shape[1:])),  # per lane per image
        "seconds": seconds,
    }


def head_images(codec: str, batch: int) -> int:
    """Images' worth of lanes encode.py gives each codec at this batch size (codec.lane_images)."""
    return 1 if CODECS[codec][0].shares_lanes else batch


def projected_total(codec: str, rate_eff: float, overhead_bytes: float) -> float:
    """rate_total for the CIFAR-10 test set at batch 16: what a file holds beyond the net
    information (overhead_bytes per lane, one lane per dimension of the message head: the initial
    bits used and the final heads' slack) is paid once, spread over all images. The head holds
    16 images' lanes for bbans, one image's for bitswap (whose growing batches borrow nothing
    after the first image)."""
    return rate_eff + 8.0 * overhead_bytes * head_images(codec, CIFAR_BATCH) / CIFAR_IMAGES


def projected_batches(codec: str, rate_eff: float, deficit_words: float) -> int:
    """Batches encode.py would need for the CIFAR-10 test set at batch 16 (625 at fixed size).
    Growing batches (bitswap) take b images once the tail holds b x GROWTH_MARGIN x the deficit per
    image; the tail starts with the first image's deficit and gains rate_eff bits per dimension
    per image coded (a model of `BatchSchedule`, with this run's deficit and rate)."""
    if not CODECS[codec][0].shares_lanes:
        return -(-CIFAR_IMAGES // CIFAR_BATCH)
    need = max(deficit_words, 1.0 / 3072) * GROWTH_MARGIN
    done, batches = 0, 0
    while done < CIFAR_IMAGES:
        tail = deficit_words + done * max(rate_eff, 0.0) / 32.0  # words per lane
        size = 1 if done == 0 else max(1, min(CIFAR_BATCH, CIFAR_IMAGES - done, int(tail // need)))
        done += size
        batches += 1
    return batches


def parse_counts(text: str, available: int) -> List[int]:
    counts = []
    for item in text.split(","):
        n = available if item.strip() == "all" else int(item)
        counts.append(min(n, available))
    return sorted(set(counts))


def parse_respacings(items: List[str]) -> Dict[str, List[str]]:
    out = dict(DEFAULT_RESPACINGS)
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--respacings takes model=resp1,resp2 (e.g. fixture=vlb100,vlb1000), got {item!r}")
        out[name] = value.split(",")
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="digits,fixture",
                        help="comma list of: digits (outputs/pretrained/digits), fixture, fixture-cifar (the "
                             "fixture model on --cifar-images CIFAR-10 test images of ../shared/data, batch 16), "
                             "or name=<run dir>")
    parser.add_argument("--cifar-images", type=int, default=64, help="images for fixture-cifar")
    parser.add_argument("--respacings", nargs="*", default=[], help="model=resp1,resp2 ('' = all steps)")
    parser.add_argument("--counts", default="1,10,all", help="numbers of validation images ('all' = every one)")
    parser.add_argument("--max-images", type=int, default=0, help="cap on 'all' (0: no cap)")
    parser.add_argument("--codecs", default="bbans,bitswap")
    parser.add_argument("--check", action="store_true", help="also decode and compare (doubles the time)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    respacings = parse_respacings(args.respacings)
    rows, classic, notes = [], [], []
    for item in args.models.split(","):
        name, _, path = item.partition("=")
        if name == "fixture" and not path:
            bench = load_fixture()
            notes.append("fixture: the reference model's own 2 CIFAR images (random weights, not a trained model)")
        elif name == "fixture-cifar" and not path:
            bench = load_fixture(args.cifar_images)
            notes.append("fixture-cifar: the same random-weight model on CIFAR-10 test images decoded from JPEG "
                         "(../shared/data), batch 16: CIFAR-shaped lanes over several batches, not CIFAR-10 rates")
        else:
            path = path or DEMO_RUN
            if not os.path.isdir(path):
                notes.append(f"{name}: {path} not found, skipped (train it with: python train.py +experiment=digits)")
                continue
            bench = load_run(name, path)
        images = bench.images[: args.max_images] if args.max_images > 0 else bench.images
        counts = parse_counts(args.counts, len(images))
        for n in counts:
            classic.append((bench.name, n, classical_rates(images[:n])))
        for respacing in respacings.get(name, [""]):
            diffusion = create_gaussian_diffusion(**dict(bench.diffusion_cfg, timestep_respacing=respacing))
            steps = f"{diffusion.num_timesteps} of {bench.diffusion_cfg['steps']} ({respacing or 'all'})"
            for n in counts:
                vlb = vlb_of(bench, diffusion, images[:n])
                for codec in args.codecs.split(","):
                    result = run_codec(codec, bench, diffusion, images[:n], args.check)
                    rows.append((bench.name, steps, n, vlb, codec, result))
                    print(f"  {bench.name} {steps} n={n} {codec}: {result['rate_eff']:.4f} vs VLB {vlb:.4f} "
                          f"({result['seconds']:.0f}s)", file=sys.stderr, flush=True)
    print_tables(rows, classic, notes)


def print_tables(rows, classic, notes) -> None:
    print("| model | steps | images | VLB | codec | batches | rate_eff | eff/VLB | rate_total | start B/lane "
          "| used B/lane | peak B/lane | borrowed later B/lane | file overhead B/lane | CIFAR-10 10k@16 rate_total "
          "| projected − rate_eff | CIFAR-10 batches |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, steps, n, vlb, codec, r in rows:
        peak = "" if np.isnan(r["peak_bytes"]) else f"{r['peak_bytes']:.1f}"
        projected = projected_total(codec, r["rate_eff"], r["overhead_bytes"])
        print(f"| {name} | {steps} | {n} | {vlb:.4f} | {codec} | {r['batches']} | {r['rate_eff']:.4f} | "
              f"{r['rate_eff'] / vlb:.4f} | {r['rate_total']:.3f} | {4 * r['init_words']:.0f} | {r['used_bytes']:.1f} | "
              f"{peak} | {r['borrowed_later']:.2f} | {r['overhead_bytes']:.1f} | {projected:.3f} | "
              f"{projected - r['rate_eff']:.4f} | {projected_batches(codec, r['rate_eff'], r['deficit_words'])} |")
    print("\n| model | images | PNG | WebP | JPEG-XL | PNG mosaic | WebP mosaic | JPEG-XL mosaic |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, rates in classic:
        cells = [rates.get(f"{codec}_{how}") for how in ("per_image", "mosaic") for codec in ("png", "webp", "jpegxl")]
        print(f"| {name} | {n} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in cells) + " |")
    print(
        "\nrate_eff: net information added (bits/dim); rate_total: all words of the final message over these "
        "images (what a file holds, header aside); start B/lane: the initial message per lane (random head and "
        "tail for bbans; a bare head for bitswap, whose pops borrow generator words a file does not store); used "
        "B/lane: initial tail bytes the first batch consumed plus generator bytes it borrowed; peak B/lane: the "
        "most the Bit-Swap encoder was behind; file overhead B/lane: file bits minus net information, per lane "
        "(the initial bits used, the final heads' slack); borrowed later: generator bytes per lane borrowed "
        "after the first batch (growing batches should keep this at 0). Lanes: one per dimension of the "
        "message head, which holds a whole batch for bbans and one image for bitswap (batches of 1, then "
        "growing as the message fills). The projection spreads the overhead over the "
        f"{CIFAR_IMAGES} CIFAR-10 test images coded at batch {CIFAR_BATCH}: rate_eff + 8 x overhead x "
        f"(images per head: {CIFAR_BATCH} for bbans, 1 for bitswap) / {CIFAR_IMAGES}; CIFAR-10 batches: how "
        "many batches (model calls per step) that takes, modelled from this run's rate and deficit per image "
        f"({-(-CIFAR_IMAGES // CIFAR_BATCH)} at a fixed batch). Classical codecs store each image as its own "
        "file (per image) or all images as one picture (mosaic); K < 256 levels are stored as raw 8-bit values "
        "(bits_back_diffusion.classical)."
    )
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
