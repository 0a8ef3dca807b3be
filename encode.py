"""Lossless compression of a validation set with a diffusion model and bits-back coding.

    python encode.py data=digits                          # the demo: 297 digits on a 2-core CPU in 1.5-2 minutes
    python encode.py data=digits codec=bitswap            # Bit-Swap: few initial bits, a small real file
    python encode.py diffusion.timestep_respacing=vlb100  # CIFAR-10 with the public L_vlb model
    python encode.py hydra.run.dir=<run dir>              # resume an interrupted run
    mpiexec -n 2 python encode.py ...                     # one shard and one message per rank

The final message is written to <run dir>/compressed.bbd (compressed.rank<r>.bbd per MPI rank);
`python decode.py input=<file or run dir> output_dir=<dir>` restores the images from it.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, NamedTuple, Optional, Tuple

import hydra
import numpy as np
from omegaconf import DictConfig

from bits_back_diffusion import runtime
from bits_back_diffusion.run_dir import keep_earlier_outputs
from bits_back_diffusion.batch_check import alongside_threads, threads_restored, use_threads
from bits_back_diffusion.classical import classical_rates, classical_sizes, comparison_line
from bits_back_diffusion.codec_registry import build_codec
from bits_back_diffusion.coding import Precisions
from bits_back_diffusion.codec_checkpoints import device_meta
from bits_back_diffusion.compressed import encode_header, tiling_of, write_compressed
from bits_back_diffusion.container import DeviceInfo, check_header_size
from bits_back_diffusion.data import ImageSet, build_dataset, eval_indices, to_model_input
from bits_back_diffusion.data.folder import skipped_warning
from bits_back_diffusion.encoder import DatasetCoder, EncodePlan, gather_stats, rank_stats, summarize
from bits_back_diffusion.latent_model import DiffusionLatentModel
from bits_back_diffusion.models import LoadedModel, check_data_fits_model, load_model
from bits_back_diffusion.report import log_results_to_wandb, plot_curves, write_results
from bits_back_diffusion.vlb import batch_vlb
from bits_back_diffusion.sample_count import SampleCount, check_num_samples
from bits_back_diffusion.session import ScriptSession, script_session
from improved_diffusion import logger

runtime.register_resolvers()


def run(cfg: DictConfig, run_dir: Optional[str] = None) -> Dict[str, Any]:
    with script_session(cfg, run_dir) as session, threads_restored():
        return _encode(cfg, session)


def _encode(cfg: DictConfig, session: ScriptSession) -> Dict[str, Any]:
    rt = session.rt
    with session.checks():  # everything that can refuse the run comes before the run dir is written
        loaded, dataset, codec, precisions, plan, tiling, coder, count = _prepare(cfg, rt)
    respacing = loaded.diffusion_cfg.get("timestep_respacing") or ""
    batch_size, head_images, grow = plan.batch_size, plan.head_images, plan.grow
    encoded = coder.encode()
    decoded = coder.check(encoded) if cfg.check else None  # raises before a wrong file is written
    header = _file_header(cfg, rt, loaded, codec, precisions, plan, coder.batch_sizes, dataset, tiling, coder)
    path, size = write_compressed(rt.run_dir, header, encoded.message)
    gathered = gather_stats({**rank_stats(plan, encoded, decoded), "file": path, "file_bytes": size},
                            rt.run_dir, rt.rank, rt.world_size, show_progress=rt.is_main)
    if not rt.is_main:
        return {}
    results = {
        **summarize(gathered),
        "codec": codec.name, "steps": loaded.diffusion.num_timesteps, "respacing": respacing,
        **{k: v for k, v in vars(precisions).items()},
        "roundtrip_ok": all(s["roundtrip_ok"] for s in gathered) if cfg.check else None,
        "checked": bool(cfg.check), "world_size": rt.world_size,
        "check_alongside": all(s["check_alongside"] for s in gathered) if cfg.check else None,
        "model_path": loaded.checkpoint,
        "model_sha256": loaded.sha256, "batch_size": batch_size, "lane_images": head_images, "grow_batches": grow,
        "batch_size_requested": int(cfg.data.val.batch_size), **count.results(),
        "batch_schedule": [s["batches"] for s in gathered],  # per rank: [size, count] runs in coding order
        **_file_results(gathered, rt.run_dir, tiling),
    }
    if cfg.compare_classical:
        results["classical_bytes"], results["classical"] = _classical(dataset, int(cfg.evaluator.num_samples))
    keep_earlier_outputs(rt.run_dir, ("results.json", "codec_trace.npz", "codec_trace.png"), logger.log)
    images = _save_trace(rt.run_dir, encoded, np.asarray(loaded.diffusion.timestep_map),
                          plan.dims(coder.batch_sizes))
    write_results(rt.run_dir, results)
    vlb = f"{results['vlb']:.4f} bits/dim" if results["vlb"] is not None else "not computed: add evaluator.compute_vlb=true"
    logger.log(
        f"{results['samples']} images: VLB {vlb} | rate_effective {results['rate_effective']:.4f} | "
        f"rate_used {results['rate_used']:.4f} | rate_total {results['rate_total']:.4f} bits/dim | "
        f"roundtrip {'OK' if results['roundtrip_ok'] else 'not checked' if results['roundtrip_ok'] is None else 'FAILED'}"
        f" -> {rt.run_dir}/results.json"
    )
    if count.shortfall_warning:
        logger.log(count.shortfall_warning)
    logger.log(f"compressed: {results['compressed_bytes']} bytes in {', '.join(results['compressed_files'])}; "
               f"restore with: python decode.py input={results['decode_input']} output_dir=<dir>")
    dims = sum(s["dims"] for s in gathered)  # the last line: what each would store, in bytes
    logger.log(f"{results['samples']} images, stored: "
               + comparison_line(results["compressed_bytes"], dims, results.get("classical_bytes", {})))
    log_results_to_wandb(results, images)
    return results


class Prepared(NamedTuple):
    """What `_prepare` checked and built; coding starts from it."""
    loaded: LoadedModel
    dataset: ImageSet
    codec: Any
    precisions: Precisions
    plan: EncodePlan
    tiling: Any
    coder: DatasetCoder
    count: SampleCount


def _prepare(cfg: DictConfig, rt: runtime.Runtime) -> Prepared:
    """Model, data, codec, plan and coder, with every check that can refuse the run: settings,
    num_samples, data vs model, cutting pictures, and the run dir's checkpoints."""
    runtime.check_flags(cfg, ("check", "check_alongside", "compare_classical", "evaluator.compute_vlb",
                              "evaluator.clip_denoised", "codec.track"))
    save_interval, save_minutes = check_save_settings(cfg)
    stream_threads = alongside_threads(bool(cfg.check), bool(cfg.get("check_alongside", True)), rt.device)
    if stream_threads:  # before anything records the thread count (checkpoints, the file's header)
        use_threads(stream_threads)
    loaded = load_model(cfg, rt.device)
    dataset = build_dataset(cfg.data, "val")
    left_out = skipped_warning(dataset)
    if left_out:
        logger.log(left_out)
    check_data_fits_model(loaded, dataset.channels, dataset.image_size, dataset.num_levels)
    count = check_num_samples(cfg.evaluator.num_samples, len(dataset), rt.world_size)
    if count.shortfall_warning:
        logger.log(count.shortfall_warning)
    precisions = Precisions(int(cfg.codec.prior_prec), int(cfg.codec.latent_prec), int(cfg.codec.obs_prec))

    def make_codec(track: bool):
        latent_model = DiffusionLatentModel(loaded.model, loaded.diffusion, rt.device,
                                            bool(cfg.evaluator.clip_denoised), float(cfg.codec.likelihood_std_min))
        return build_codec(str(cfg.codec.name), latent_model, precisions, track=track,
                           backend=str(cfg.codec.get("backend", "numba")), coder=_coder_setting(cfg))

    codec = make_codec(bool(cfg.codec.track))
    check_codec = make_codec(False) if stream_threads else None  # the checker's own (batch_check)
    respacing = loaded.diffusion_cfg.get("timestep_respacing") or ""
    per_rank = len(eval_indices(dataset, count.requested, 0, rt.world_size))  # rank 0 has the most
    batch_size = coding_batch_size(cfg.data.val.batch_size, per_rank, rt.world_size)
    head_images, grow = lane_layout(codec, cfg.codec, batch_size, int(cfg.data.val.batch_size))
    meta = {
        "model_sha256": loaded.sha256, "codec": codec.name, "precisions": vars(precisions), "respacing": respacing,
        "steps": loaded.diffusion.num_timesteps, "batch_size": batch_size,
        "num_samples": int(cfg.evaluator.num_samples), "seed": int(cfg.seed), "world_size": rt.world_size,
        "clip_denoised": bool(cfg.evaluator.clip_denoised), "data": str(cfg.data.name),
        "lane_images": head_images, "grow_batches": grow, **device_meta(rt.device, codec.coder),
        "likelihood_std_min": float(cfg.codec.likelihood_std_min),
    }
    plan = EncodePlan.build(dataset, batch_size, count.requested, rt.rank, rt.world_size, meta, head_images, grow)
    tiling = tiling_of(dataset, count.requested)  # before coding: refuses cutting a picture
    layout = (f"batches growing to {batch_size} as the message fills" if grow
              else f"{len(plan.batch_sizes)} batches of {batch_size}")
    logger.log(f"{codec.name}: {plan.samples} images on rank {rt.rank}/{rt.world_size} in {layout}, lanes for "
               f"{head_images} image(s), {loaded.diffusion.num_timesteps} steps ({respacing or 'all'}), model {loaded.checkpoint}")

    def vlb_fn(x_levels: np.ndarray, ids) -> np.ndarray:
        x = to_model_input(x_levels, dataset.num_levels).to(rt.device)
        return batch_vlb(loaded.diffusion, loaded.model, x, ids, int(cfg.seed), bool(cfg.evaluator.clip_denoised))["total_bpd"]

    coder = DatasetCoder(codec, dataset, plan, rt.run_dir, save_interval, int(cfg.seed), rt.is_main,
                         vlb_fn if cfg.evaluator.compute_vlb else None, save_minutes, check_codec, stream_threads)
    coder.check_resume()
    # the file's header, drafted before coding so that what it would refuse is refused now; a growing
    # schedule's sizes follow the message, so full batches stand in (a few run lengths less)
    drafted = list(plan.batch_sizes) or [plan.batch_size] * (plan.samples // plan.batch_size) + (
        [plan.samples % plan.batch_size] if plan.samples % plan.batch_size else [])
    check_header_size(_file_header(cfg, rt, loaded, codec, precisions, plan, drafted, dataset, tiling, coder))
    return Prepared(loaded, dataset, codec, precisions, plan, tiling, coder, count)


def _file_header(cfg: DictConfig, rt: runtime.Runtime, loaded: LoadedModel, codec, precisions: Precisions,
                 plan: EncodePlan, batch_sizes, dataset: ImageSet, tiling, coder: DatasetCoder):
    """This rank's .bbd header for `batch_sizes` (the draft before coding, then the file's)."""
    return encode_header(loaded, codec.name, precisions, plan, batch_sizes, dataset.num_levels,
                         coder.initial_message_spec(), tiling, bool(cfg.evaluator.clip_denoised),
                         float(cfg.codec.likelihood_std_min), str(cfg.data.name), DeviceInfo.of(rt.device, codec.coder))


def _coder_setting(cfg: DictConfig) -> Optional[str]:
    """codec.coder, None for the device's default (null or absent)."""
    value = cfg.codec.get("coder", None)
    return None if value is None else str(value)


def check_save_settings(cfg: DictConfig) -> Tuple[int, float]:
    """(save_interval, save_minutes), refused unless both are positive."""
    interval, minutes = cfg.get("save_interval"), cfg.get("save_minutes", 10)
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"save_interval={interval!r} must be a positive number of images between codec checkpoints")
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes > 0:
        raise ValueError(f"save_minutes={minutes!r} must be a positive number of minutes between codec checkpoints")
    return interval, float(minutes)


def coding_batch_size(requested: Any, images_per_rank: int, world_size: int) -> int:
    """data.val.batch_size, cut to the images a rank codes: BB-ANS keeps ANS lanes for a whole
    batch in the message, so a batch larger than the data would only store random bits."""
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"data.val.batch_size={requested!r} must be a positive number of images")
    if requested <= images_per_rank:
        return requested
    where = "per rank" if world_size > 1 else "to code"
    logger.log(f"WARNING: data.val.batch_size={requested} exceeds the {images_per_rank} image(s) {where}; "
               f"coding in batches of {images_per_rank} (ANS lanes for at most {images_per_rank} images)")
    return images_per_rank


def _file_results(gathered, run_dir: str, tiling) -> Dict[str, Any]:
    """The .bbd files in results.json: their paths, total size, and what to pass to decode.py."""
    files = [s["file"] for s in gathered]
    size = sum(s["file_bytes"] for s in gathered)
    dims = sum(s["dims"] for s in gathered)
    out = {"compressed_files": files, "compressed_bytes": size, "rate_file": 8.0 * size / dims,
           "decode_input": files[0] if len(files) == 1 else run_dir}
    if tiling is not None:
        out["tiling"] = {"pictures": len(tiling.images), "tiles": tiling.num_tiles, "tile_size": tiling.tile_size}
    return out


def _classical(dataset, num_samples: int) -> Tuple[Dict[str, int], Dict[str, float]]:
    """PNG / WebP / JPEG-XL lossless on the same images, per image and as one mosaic: (bytes, bits/dim)."""
    ids = eval_indices(dataset, num_samples, 0, 1)
    images = np.stack([dataset[int(i)] for i in ids])
    sizes = classical_sizes(images)
    return sizes, classical_rates(images, sizes)


def lane_layout(codec, codec_cfg: DictConfig, batch_size: int,
                requested_batch: Optional[int] = None) -> Tuple[int, bool]:
    """(images' worth of ANS lanes in the message, whether batches grow): a codec that shares lanes
    (bitswap) takes codec.lane_images and codec.grow_batches; bbans needs one lane per dimension
    of a full batch. EncodePlan.build checks the range."""
    if not getattr(codec, "shares_lanes", False):
        return batch_size, False
    lanes = int(codec_cfg.get("lane_images") or 1)
    if requested_batch is not None and batch_size < lanes <= requested_batch:
        lanes = batch_size  # the batch was cut to the data (coding_batch_size): so are the lanes
    return lanes, bool(codec_cfg.get("grow_batches", True))


def _save_trace(run_dir: str, encoded, timesteps: np.ndarray, dims: int) -> Dict[str, str]:
    """With codec.track=true: bits popped/pushed per step (npz) and their plot (PNG), per dimension
    of all coded images."""
    if "pop_bits" not in encoded.arrays:
        return {}
    pop, push = encoded.arrays["pop_bits"], encoded.arrays["push_bits"]
    np.savez(os.path.join(run_dir, "codec_trace.npz"), timesteps=timesteps, **encoded.arrays)
    png = plot_curves(
        os.path.join(run_dir, "codec_trace.png"), timesteps,
        {"popped (posterior)": pop.sum(0) / dims, "pushed (prior)": push.sum(0) / dims,
         "net": (push.sum(0) - pop.sum(0)) / dims},
        "original timestep t", "bits/dim per step", "bits-back traffic per step",
    )
    return {"codec_trace": png}


@hydra.main(config_path="config", config_name="encode", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


def _decode_alias(argv: list) -> Optional[int]:
    """`encode.py mode=decode ...` (an old spelling) is refused: `mode` is the launcher group
    (`+mode=submitit`), and decoding is decode.py's."""
    if not any(a.lstrip("+").startswith("mode=decode") for a in argv):
        return None
    rest = " ".join(a for a in argv if not a.lstrip("+").startswith("mode=decode"))
    print("encode.py: error: `encode.py mode=decode` is no longer supported (`mode` selects the launcher: "
          f"+mode=submitit); decode with: python decode.py {rest or 'input=<file or run dir> output_dir=<dir>'}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    code = _decode_alias(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    main()
