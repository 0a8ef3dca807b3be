"""Keyed VLB noise: a pure function of (seed, image id, step), standard normal, drawn on the device."""
import numpy as np
import torch
from scipy import stats

from bits_back_diffusion.noise import image_key, keyed_normals, per_image_noise_fn


def test_noise_of_an_image_does_not_depend_on_the_batch_around_it():
    alone = per_image_noise_fn(7, [5], (3, 4, 4), torch.device("cpu"))(2)
    batch = per_image_noise_fn(7, [9, 5, 1], (3, 4, 4), torch.device("cpu"))(2)
    assert alone.shape == (1, 3, 4, 4) and batch.shape == (3, 3, 4, 4)
    assert torch.equal(alone[0], batch[1])


def test_noise_changes_with_seed_image_and_step():
    base = per_image_noise_fn(0, [3], (48,), torch.device("cpu"))
    other_seed = per_image_noise_fn(1, [3], (48,), torch.device("cpu"))
    other_image = per_image_noise_fn(0, [4], (48,), torch.device("cpu"))
    draws = [base(0), base(1), other_seed(0), other_image(0)]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not torch.allclose(draws[i], draws[j])
    assert torch.equal(base(0), base(0))


def test_keyed_normals_are_standard_normal_and_uncorrelated():
    keys = torch.tensor([image_key(11, i, 3) for i in range(40)], dtype=torch.int64)
    x = keyed_normals(keys, 1001)  # odd count: the last Box-Muller pair is cut
    assert x.dtype == torch.float32 and x.shape == (40, 1001)
    flat = x.double().numpy().reshape(-1)
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    assert abs(flat.mean()) < 0.02 and abs(flat.std() - 1.0) < 0.02
    # neighbouring values (the two halves of a pair, and consecutive pairs) are uncorrelated
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02
    rows = x.double().numpy()
    assert abs(np.corrcoef(rows[0], rows[1])[0, 1]) < 0.15


def test_image_key_is_a_signed_64_bit_value():
    keys = [image_key(s, i, t) for s in range(3) for i in range(3) for t in range(3)]
    assert all(-(1 << 63) <= k < (1 << 63) for k in keys)
    assert len(set(keys)) == len(keys)
