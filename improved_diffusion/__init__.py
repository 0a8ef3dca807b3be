"""Diffusion model components in the style of improved-DDPM."""
