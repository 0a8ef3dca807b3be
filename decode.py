"""Restore the images of compressed .bbd files as PNG files (config/decode.yaml).

    python decode.py input=<file.bbd or encode run dir> output_dir=<dir> [model_path=<checkpoint or run dir>]
                     [device=cpu|cuda] [allow_device_mismatch=false] [levels=raw|scaled] [overwrite=false]
    mpiexec -n W python decode.py input=<encode run dir> output_dir=<dir>       # rank r: files r, r+W, ...
    python decode.py -m +mode=submitit hydra.launcher.gpus_per_node=8 input=<encode run dir> output_dir=<dir>

The file's header names everything but the checkpoint, which is found by its SHA-256; image i
of the encoded dataset is written as <i:05d>.png. The work is in bits_back_diffusion.decoder
(the decode loop and loader encode.py's check shares), parallel_decode (ranks) and decode_cli
(these settings).
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from bits_back_diffusion import runtime
from bits_back_diffusion.decode_cli import run_config

runtime.register_resolvers()


@hydra.main(config_path="config", config_name="decode", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run_config(OmegaConf.to_container(cfg))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
