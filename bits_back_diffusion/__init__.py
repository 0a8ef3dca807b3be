"""Bits-back coding with diffusion models, and what train.py, compute_vlb.py and encode.py share."""
