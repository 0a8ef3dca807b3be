"""The traced UNet that coding calls gives the eager model's outputs bit for bit (encoder and
decoder must see identical model outputs, and files written before the trace must still decode)."""
from __future__ import annotations

import numpy as np
import torch

from bits_back_diffusion.coding_net import CodingNet
from bits_back_diffusion.latent_model import DiffusionLatentModel
from improved_diffusion.script_util import create_model
from test_bitswap import ConvNet, process


def small_unet(seed: int = 0) -> torch.nn.Module:
    """The demo architecture (scale-shift norm, two levels) plus an attention level, random weights
    (zero-initialised output layers randomised so every block matters)."""
    torch.manual_seed(seed)
    model = create_model(image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False,
                         use_checkpoint=False, attention_resolutions="2", num_heads=2, num_heads_upsample=-1,
                         use_scale_shift_norm=True, dropout=0.1, channel_mult="1,2", in_channels=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_trace_equals_eager_bit_for_bit_at_every_batch_size():
    model = small_unet()
    net = CodingNet(model, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    assert not net.traced
    with torch.inference_mode():
        for batch in (1, 2, 5, 12, 1):  # traced at batch 1, then reused for every size
            for step in (0.0, 7.5, 999.0):
                x = torch.randn(batch, 1, 8, 8, generator=gen)
                t = torch.full((batch,), step)
                got = net(x, t)
                assert net.traced
                assert torch.equal(got, model(x, t)), (batch, step)


def test_latent_model_outputs_are_unchanged_by_the_trace():
    """reverse() through the trace equals p_mean_variance on the eager model, as float64 arrays."""
    model = small_unet(seed=3)
    diffusion = process(100, "10", num_levels=17)
    lm = DiffusionLatentModel(model, diffusion, torch.device("cpu"))
    gen = torch.Generator().manual_seed(2)
    for batch, t in ((1, 9), (3, 4), (7, 0)):
        z = torch.randn(batch, 1, 8, 8, generator=gen)
        mean, std = lm.reverse(z, t)
        with torch.no_grad():
            out = diffusion.p_mean_variance(model, z, torch.full((batch,), t), clip_denoised=True)
        np.testing.assert_array_equal(mean, out["mean"].double().numpy())
        low = 1e-6 if t == 0 else 1e-12
        np.testing.assert_array_equal(std, np.clip(np.exp(0.5 * out["log_variance"].double().numpy()), low, 1e12))
    assert lm.model_evals == 3


def test_other_modules_and_training_mode_run_eagerly():
    """Only our UNet is traced: another module may branch on its inputs, which a trace would freeze."""
    conv = CodingNet(ConvNet(channels=1), torch.device("cpu"))
    x, t = torch.randn(2, 1, 8, 8), torch.zeros(2)
    with torch.no_grad():
        assert torch.equal(conv(x, t), conv.model(x, t))
    assert not conv.traced
    unet = small_unet().train()
    net = CodingNet(unet, torch.device("cpu"))
    with torch.no_grad():
        net(x, t)
    assert not net.traced
