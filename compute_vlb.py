"""Variational lower bound (bits/dim) of a diffusion model on a validation set.

    python compute_vlb.py                                   # CIFAR-10, public L_vlb checkpoint, vlb100
    python compute_vlb.py data=imagenet diffusion.timestep_respacing=vlb200
    mpiexec -n 2 python compute_vlb.py evaluator.model_path=outputs/train/<date>/<time>
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import hydra
import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from bits_back_diffusion import runtime
from bits_back_diffusion.run_dir import keep_earlier_outputs
from bits_back_diffusion.data import build_dataset, eval_batches, num_eval_batches, to_model_input
from bits_back_diffusion.models import check_data_fits_model, load_model
from bits_back_diffusion.sample_count import check_num_samples
from bits_back_diffusion.session import ScriptSession, script_session
from bits_back_diffusion.report import log_results_to_wandb, plot_curves, write_results
from bits_back_diffusion.vlb import VLBAccumulator, batch_vlb
from improved_diffusion import logger

runtime.register_resolvers()


def run(cfg: DictConfig, run_dir: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate; `run_dir` is for callers outside @hydra.main (tests, notebooks)."""
    with script_session(cfg, run_dir) as session:
        return _evaluate(cfg, session)


def _evaluate(cfg: DictConfig, session: ScriptSession) -> Dict[str, Any]:
    rt = session.rt
    with session.checks():  # a refused run writes nothing into the run dir
        runtime.check_flags(cfg, ("evaluator.clip_denoised",))
        loaded = load_model(cfg, rt.device)
        logger.log(f"model {loaded.checkpoint} (sha256 {loaded.sha256[:12]}), {loaded.diffusion.num_timesteps} steps "
                   f"({loaded.diffusion_cfg.get('timestep_respacing') or 'all'}), {rt.world_size} rank(s), run dir {rt.run_dir}")
        dataset = build_dataset(cfg.data, "val")
        check_data_fits_model(loaded, dataset.channels, dataset.image_size, dataset.num_levels)
        count = check_num_samples(cfg.evaluator.num_samples, len(dataset), rt.world_size)
        if count.shortfall_warning:
            logger.log(count.shortfall_warning)
    batch_size, num_samples = int(cfg.data.val.batch_size), count.requested
    acc = VLBAccumulator()
    started = time.time()
    bar = tqdm(
        eval_batches(dataset, batch_size, num_samples, rt.rank, rt.world_size),
        total=num_eval_batches(dataset, batch_size, num_samples, rt.rank, rt.world_size),
        disable=not rt.is_main, desc="vlb", unit="batch",
    )
    for batch in bar:
        x = to_model_input(batch.x, dataset.num_levels).to(rt.device)
        acc.add(batch.ids, batch_vlb(loaded.diffusion, loaded.model, x, batch.ids, int(cfg.seed),
                                     bool(cfg.evaluator.clip_denoised)))
        bar.set_postfix(bpd=f"{acc.mean:.4f}", stderr=f"{acc.stderr:.4f}", n=acc.count)
    merged = acc.gathered()
    if not rt.is_main:
        return {}
    results = {
        **merged.summary(),
        "steps": loaded.diffusion.num_timesteps,
        "respacing": loaded.diffusion_cfg.get("timestep_respacing") or "",
        "model_path": loaded.checkpoint,
        "model_sha256": loaded.sha256,
        "world_size": rt.world_size,
        "seconds": time.time() - started,
        **count.results(),
    }
    curves = merged.per_step_means()
    timesteps = np.asarray(loaded.diffusion.timestep_map)
    keep_earlier_outputs(rt.run_dir, ("results.json", "vlb_terms.npz", "vlb_terms.png"), logger.log)
    np.savez(os.path.join(rt.run_dir, "vlb_terms.npz"), timesteps=timesteps, **curves)
    png = plot_curves(
        os.path.join(rt.run_dir, "vlb_terms.png"), timesteps, {"L_t": curves["vb"]},
        "original timestep t", "bits/dim", f"VLB terms ({results['vlb']:.4f} bits/dim total)", logy=True,
    )
    write_results(rt.run_dir, results)
    logger.log(f"VLB {results['vlb']:.4f} ± {results['vlb_stderr']:.4f} bits/dim over {results['samples']} images "
               f"({results['steps']} steps) -> {rt.run_dir}/results.json")
    if count.shortfall_warning:
        logger.log(count.shortfall_warning)
    log_results_to_wandb(results, {"vlb_terms": png})
    return results


@hydra.main(config_path="config", config_name="compute_vlb", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
