"""Lossless compression of a validation set with a diffusion model and bits-back coding.

    python encode.py data=digits                          # the demo: 297 digits on a CPU in about 6 minutes
    python encode.py data=digits codec=bitswap            # Bit-Swap: few initial bits, a small real file
    python encode.py diffusion.timestep_respacing=vlb100  # CIFAR-10 with the public L_vlb model
    python encode.py hydra.run.dir=<run dir>              # resume an interrupted run
    mpiexec -n 2 python encode.py ...                     # one shard and one message per rank
    python encode.py mode=decode input=<run dir>/compressed.bbd output_dir=<dir>   # = decode.py

The final message is written to <run dir>/compressed.bbd (compressed.rank<r>.bbd per MPI rank);
`python decode.py input=<file or run dir> output_dir=<dir>` restores the images from it.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, Optional, Tuple

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bits_back_diffusion import runtime
from bits_back_diffusion.classical import classical_rates
from bits_back_diffusion.codec import Precisions, build_codec
from bits_back_diffusion.compressed import encode_header, tiling_of, write_compressed
from bits_back_diffusion.data import build_dataset, eval_indices, to_model_input
from bits_back_diffusion.encoder import DatasetCoder, EncodePlan, gather_stats, rank_stats, summarize
from bits_back_diffusion.latent_model import DiffusionLatentModel
from bits_back_diffusion.models import check_data_fits_model, load_model
from bits_back_diffusion.report import log_results_to_wandb, plot_curves, write_results
from bits_back_diffusion.vlb import batch_vlb
from bits_back_diffusion.session import script_session
from improved_diffusion import logger

runtime.register_resolvers()


def run(cfg: DictConfig, run_dir: Optional[str] = None) -> Dict[str, Any]:
    with script_session(cfg, run_dir) as rt:
        return _encode(cfg, rt)


def _encode(cfg: DictConfig, rt: runtime.Runtime) -> Dict[str, Any]:
    loaded = load_model(cfg, rt.device)
    dataset = build_dataset(cfg.data, "val")
    check_data_fits_model(loaded, dataset.channels, dataset.image_size, dataset.num_levels)
    precisions = Precisions(int(cfg.codec.prior_prec), int(cfg.codec.latent_prec), int(cfg.codec.obs_prec))
    latent_model = DiffusionLatentModel(loaded.model, loaded.diffusion, rt.device, bool(cfg.evaluator.clip_denoised),
                                        float(cfg.codec.likelihood_std_min))
    codec = build_codec(str(cfg.codec.name), latent_model, precisions, track=bool(cfg.codec.track))
    respacing = loaded.diffusion_cfg.get("timestep_respacing") or ""
    batch_size = int(cfg.data.val.batch_size)
    head_images, grow = lane_layout(codec, cfg.codec, batch_size)
    meta = {
        "model_sha256": loaded.sha256, "codec": codec.name, "precisions": vars(precisions), "respacing": respacing,
        "steps": loaded.diffusion.num_timesteps, "batch_size": batch_size,
        "num_samples": int(cfg.evaluator.num_samples), "seed": int(cfg.seed), "world_size": rt.world_size,
        "clip_denoised": bool(cfg.evaluator.clip_denoised), "data": str(cfg.data.name),
        "lane_images": head_images, "grow_batches": grow,
    }
    plan = EncodePlan.build(dataset, batch_size, int(cfg.evaluator.num_samples), rt.rank, rt.world_size, meta,
                            head_images, grow)
    tiling = tiling_of(dataset, int(cfg.evaluator.num_samples))  # before coding: refuses cutting a picture
    layout = (f"batches growing to {batch_size} as the message fills" if grow
              else f"{len(plan.batch_sizes)} batches of {batch_size}")
    logger.log(f"{codec.name}: {plan.samples} images on rank {rt.rank}/{rt.world_size} in {layout}, lanes for "
               f"{head_images} image(s), {loaded.diffusion.num_timesteps} steps ({respacing or 'all'}), model {loaded.checkpoint}")

    def vlb_fn(x_levels: np.ndarray, ids) -> np.ndarray:
        x = to_model_input(x_levels, dataset.num_levels).to(rt.device)
        return batch_vlb(loaded.diffusion, loaded.model, x, ids, int(cfg.seed), bool(cfg.evaluator.clip_denoised))["total_bpd"]

    coder = DatasetCoder(codec, dataset, plan, rt.run_dir, int(cfg.save_interval), int(cfg.seed), rt.is_main,
                         vlb_fn if cfg.evaluator.compute_vlb else None)
    encoded = coder.encode()
    decoded = coder.decode(encoded) if cfg.check else None  # raises before a wrong file is written
    header = encode_header(loaded, codec.name, precisions, plan, dataset.num_levels, coder.initial_message_spec(),
                           tiling, bool(cfg.evaluator.clip_denoised), float(cfg.codec.likelihood_std_min),
                           {"data": str(cfg.data.name), "seed": int(cfg.seed), "device": rt.device.type,
                            "torch_threads": torch.get_num_threads()})
    path, size = write_compressed(rt.run_dir, header, encoded.message)
    gathered = gather_stats({**rank_stats(plan, encoded, decoded), "file": path, "file_bytes": size})
    if not rt.is_main:
        return {}
    results = {
        **summarize(gathered),
        "codec": codec.name, "steps": loaded.diffusion.num_timesteps, "respacing": respacing,
        **{k: v for k, v in vars(precisions).items()},
        "roundtrip_ok": all(s["roundtrip_ok"] for s in gathered) if cfg.check else None,
        "checked": bool(cfg.check), "world_size": rt.world_size, "model_path": loaded.checkpoint,
        "model_sha256": loaded.sha256, "batch_size": batch_size, "lane_images": head_images, "grow_batches": grow,
        "batch_schedule": [s["batches"] for s in gathered],  # per rank: [size, count] runs in coding order
        **_file_results(gathered, rt.run_dir, tiling),
    }
    if cfg.compare_classical:
        results["classical"] = _classical(dataset, int(cfg.evaluator.num_samples))
    images = _save_trace(rt.run_dir, encoded, np.asarray(loaded.diffusion.timestep_map), plan.dims())
    write_results(rt.run_dir, results)
    vlb = f"{results['vlb']:.4f}" if results["vlb"] is not None else "not computed (evaluator.compute_vlb=true)"
    logger.log(
        f"{results['samples']} images: VLB {vlb} bits/dim | rate_effective {results['rate_effective']:.4f} | "
        f"rate_used {results['rate_used']:.4f} | rate_total {results['rate_total']:.4f} bits/dim | "
        f"roundtrip {'OK' if results['roundtrip_ok'] else 'not checked' if results['roundtrip_ok'] is None else 'FAILED'}"
        f" -> {rt.run_dir}/results.json"
    )
    logger.log(f"compressed: {results['compressed_bytes']} bytes in {', '.join(results['compressed_files'])}; "
               f"restore with: python decode.py input={results['decode_input']} output_dir=<dir>")
    for name, rate in results.get("classical", {}).items():
        logger.log(f"  {name:>18}: {rate:.4f} bits/dim")
    log_results_to_wandb(results, images)
    return results


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


def _classical(dataset, num_samples: int) -> Dict[str, float]:
    """PNG / WebP / JPEG-XL lossless on the same images, per image and as one mosaic."""
    ids = eval_indices(dataset, num_samples, 0, 1)
    return classical_rates(np.stack([dataset[int(i)] for i in ids]))


def lane_layout(codec, codec_cfg: DictConfig, batch_size: int) -> Tuple[int, bool]:
    """(images' worth of ANS lanes in the message, whether batches grow): a codec that shares lanes
    (bitswap) takes codec.lane_images and codec.grow_batches; bbans needs one lane per dimension
    of a full batch. EncodePlan.build checks the range."""
    if not getattr(codec, "shares_lanes", False):
        return batch_size, False
    return int(codec_cfg.get("lane_images") or 1), bool(codec_cfg.get("grow_batches", True))


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
    """`encode.py mode=decode input=... output_dir=...` runs decode.py's CLI (the issue's spelling)."""
    if "mode=decode" not in argv:
        return None
    import decode  # decode.py next to this script; the script's folder is on sys.path

    return decode.main([a for a in argv if a != "mode=decode"])


if __name__ == "__main__":
    code = _decode_alias(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    main()
