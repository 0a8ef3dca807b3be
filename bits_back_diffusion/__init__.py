"""Lossless image compression with diffusion models and bits-back coding."""
