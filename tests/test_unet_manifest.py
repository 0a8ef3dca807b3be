"""Our UNet must produce exactly the state-dict keys and shapes of the public checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from improved_diffusion.script_util import create_model

CHECKPOINTS = ["cifar10_uncond_vlb_50M_500K", "imagenet64_uncond_vlb_100M_1500K"]


@pytest.fixture(scope="module")
def manifest(fixtures_dir):
    return json.loads((fixtures_dir / "pretrained_state_dict_manifest.json").read_text())


def build_on_meta(flags):
    with torch.device("meta"):
        return create_model(**flags)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_keys_shapes_and_order_match(manifest, name):
    entry = manifest[name]
    model = build_on_meta(entry["model_flags"])
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    expected = [(k, list(shape)) for k, shape in entry["state_dict"].items()]
    assert ours == expected
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_strict_load_of_manifest_tensors(manifest, name):
    entry = manifest[name]
    model = build_on_meta(entry["model_flags"])
    state = {k: torch.empty(shape, device="meta") for k, shape in entry["state_dict"].items()}
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # a key missing from the file must fail a strict load
    state.pop(next(iter(state)))
    with pytest.raises(RuntimeError, match="Missing key"):
        build_on_meta(entry["model_flags"]).load_state_dict(state, strict=True, assign=True)


def test_cifar_checkpoint_roundtrips_through_a_file_on_cpu(manifest, tmp_path):
    """A real save/load cycle of the 52M-parameter model (one model in memory at a time)."""
    flags = manifest["cifar10_uncond_vlb_50M_500K"]["model_flags"]
    model = create_model(**flags)
    path = tmp_path / "cifar.pt"
    torch.save(model.state_dict(), path)
    del model
    reloaded = create_model(**flags)
    reloaded.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    assert sum(p.numel() for p in reloaded.parameters()) == manifest["cifar10_uncond_vlb_50M_500K"]["num_params"]


def test_channel_mult_option_for_small_images():
    model = create_model(
        image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False,
        use_checkpoint=False, attention_resolutions="4", num_heads=1, num_heads_upsample=-1,
        use_scale_shift_norm=True, dropout=0.0, channel_mult="1,2", in_channels=1,
    )
    out = model(torch.zeros(2, 1, 8, 8), torch.tensor([0.0, 10.0]))
    assert out.shape == (2, 2, 8, 8)


def test_unknown_image_size_without_channel_mult_is_a_clear_error():
    with pytest.raises(ValueError, match="channel_mult"):
        create_model(
            image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=False, class_cond=False,
            use_checkpoint=False, attention_resolutions="4", num_heads=1, num_heads_upsample=-1,
            use_scale_shift_norm=True, dropout=0.0,
        )
