"""Tests for bits_back_diffusion.data and improved_diffusion.image_datasets on tiny self-made files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bits_back_diffusion.data import (
    DataError,
    EvalBatch,
    ImageSet,
    build_dataset,
    downsample_square,
    eval_batches,
    eval_indices,
    from_model_input,
    num_eval_batches,
    to_model_input,
    train_batches,
)
from bits_back_diffusion.data.base import ArrayImageSet

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers

def config(name: str, train_dir=None, val_dir=None, **overrides):
    """The repo's data config ``name`` with data dirs (and other keys) replaced."""
    cfg = OmegaConf.load(REPO / "config" / "data" / f"{name}.yaml")
    if "data" in cfg:  # a "# @package _global_" file nests its entries under data:
        cfg = cfg.data
    root = OmegaConf.create({"model": {"image_size": overrides.pop("model_image_size", 32)}, "data": cfg})
    data = root.data
    if train_dir is not None:
        data.train.data_dir = str(train_dir)
    if val_dir is not None:
        data.val.data_dir = str(val_dir)
    for k, v in overrides.items():
        data[k] = v
    return data


def rand_images(n, shape, seed=0, high=256):
    return np.random.default_rng(seed).integers(0, high, size=(n,) + shape, dtype=np.uint8)


def write_pngs(folder: Path, images_hwc, names=None, mode=None):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images_hwc):
        p = folder / (names[i] if names else f"img_{i:03d}.png")
        Image.fromarray(img, mode=mode).save(p) if mode else Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def chw(images_hwc):
    return np.stack([np.transpose(im, (2, 0, 1)) for im in images_hwc])


# ---------------------------------------------------------------- PNG folders

def test_png_folder_rgb_sorted_and_exact(tmp_path):
    imgs = rand_images(5, (32, 32, 3))
    names = ["b_1.png", "a_2.png", "c_0.png", "a_10.png", "d.PNG"]
    write_pngs(tmp_path / "val", imgs, names)
    ds = build_dataset(config("folder", val_dir=tmp_path / "val"), "val")
    assert isinstance(ds, ImageSet)
    assert (len(ds), ds.channels, ds.image_size, ds.num_levels, ds.name) == (5, 3, 32, 256, "folder")
    order = sorted(range(5), key=lambda i: names[i])
    for pos, i in enumerate(order):
        x = ds[pos]
        assert x.dtype == np.uint8 and x.shape == (3, 32, 32)
        np.testing.assert_array_equal(x, imgs[i].transpose(2, 0, 1))
        assert ds.describe(pos).endswith(names[i])
    np.testing.assert_array_equal(ds.get_batch([0, 4]), np.stack([ds[0], ds[4]]))


def test_cifar_config_recursive_and_jpeg(tmp_path):
    imgs = rand_images(3, (32, 32, 3), seed=1)
    write_pngs(tmp_path / "train" / "sub", imgs[:2])
    Image.fromarray(imgs[2]).save(tmp_path / "train" / "z.jpg", quality=95)
    (tmp_path / "train" / "notes.txt").write_text("not an image")
    ds = build_dataset(config("cifar", train_dir=tmp_path / "train"), "train")
    assert len(ds) == 3
    np.testing.assert_array_equal(ds[0], imgs[0].transpose(2, 0, 1))
    assert ds[2].shape == (3, 32, 32)  # lossy jpeg: just check it loads


def test_gray_and_rgba_are_refused_for_an_rgb_model(tmp_path):
    """Converting would drop the alpha channel (or code gray as RGB) while reporting a lossless roundtrip."""
    Image.fromarray(rand_images(1, (32, 32), seed=2)[0], mode="L").save(tmp_path / "a_gray.png")
    Image.fromarray(rand_images(1, (32, 32, 4), seed=3)[0], mode="RGBA").save(tmp_path / "b_rgba.png")
    write_pngs(tmp_path, rand_images(1, (32, 32, 3), seed=4), ["c_rgb.png"])
    with pytest.raises(DataError) as e:
        build_dataset(config("cifar", val_dir=tmp_path), "val")
    msg = str(e.value)
    assert "2 of 3 image files" in msg and "c_rgb.png" not in msg
    assert "a_gray.png: PNG gray 8-bit" in msg and "data.channels=1" in msg
    assert "b_rgba.png: PNG RGBA 8-bit" in msg and "bits_back_diffusion.data.convert" in msg


def test_rgb_is_refused_for_a_gray_model(tmp_path):
    Image.fromarray(rand_images(1, (8, 8, 3), seed=4)[0]).save(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"x.png: PNG RGB 8-bit .*data.channels=1 codes gray"):
        build_dataset(config("folder", val_dir=tmp_path, channels=1, model_image_size=8), "val")


# ---------------------------------------------------------------- ImageNet layouts

def test_imagenet_kaggle_folders(tmp_path):
    root = tmp_path / "imagenet"
    tr, va = rand_images(4, (64, 64, 3), seed=5), rand_images(2, (64, 64, 3), seed=6)
    write_pngs(root / "train_64x64", tr)
    write_pngs(root / "valid_64x64", va)
    cfg = config("imagenet", root / "train_64x64", root / "valid_64x64")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (4, 2)
    np.testing.assert_array_equal(train.get_batch(range(4)), chw(tr))
    np.testing.assert_array_equal(val[1], va[1].transpose(2, 0, 1))


@pytest.mark.parametrize("compressed", [False, True])
def test_imagenet_npz_batches(tmp_path, compressed):
    save = np.savez_compressed if compressed else np.savez
    data = rand_images(25, (3, 64, 64), seed=7)
    rows = data.reshape(25, -1)
    # batch_10 must sort after batch_2
    save(tmp_path / "train_data_batch_1.npz", data=rows[:10], labels=np.arange(10) + 1)
    save(tmp_path / "train_data_batch_2.npz", data=rows[10:20], labels=np.arange(10) + 1)
    save(tmp_path / "train_data_batch_10.npz", data=rows[20:], labels=np.arange(5) + 1)
    val = rand_images(3, (3, 64, 64), seed=8)
    save(tmp_path / "val_data.npz", data=val.reshape(3, -1), labels=np.ones(3))
    cfg = config("imagenet", tmp_path, tmp_path)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 25
    for i in (0, 9, 10, 19, 20, 24):
        np.testing.assert_array_equal(ds[i], data[i])
    np.testing.assert_array_equal(ds.get_batch([24, 0, 13, 13]), data[[24, 0, 13, 13]])
    assert "train_data_batch_10.npz" in ds.describe(21) and "row 1" in ds.describe(21)
    vds = build_dataset(cfg, "val")
    np.testing.assert_array_equal(vds.get_batch(range(3)), val)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vds))[2], val[2])  # e.g. for worker processes


def test_imagenet_pickle_batches(tmp_path):
    data = rand_images(6, (3, 64, 64), seed=9)
    for k, sl in ((1, slice(0, 4)), (2, slice(4, 6))):
        with open(tmp_path / f"train_data_batch_{k}", "wb") as f:
            pickle.dump({"data": data[sl].reshape(-1, 12288), "labels": [1] * 4, "mean": np.zeros(12288)}, f)
    val = rand_images(2, (3, 64, 64), seed=10)
    with open(tmp_path / "val_data", "wb") as f:
        pickle.dump({b"data": val.reshape(2, -1), b"labels": [3, 4]}, f)
    cfg = config("imagenet", tmp_path, tmp_path)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 6
    np.testing.assert_array_equal(ds.get_batch(range(6)), data)
    vds = build_dataset(cfg, "val")
    np.testing.assert_array_equal(np.stack([vds[0], vds[1]]), val)


def test_imagenet_batches_beside_missing_default_folder(tmp_path):
    val = rand_images(2, (3, 64, 64), seed=11)
    np.savez(tmp_path / "val_data.npz", data=val.reshape(2, -1))
    cfg = config("imagenet", tmp_path / "train_64x64", tmp_path / "valid_64x64")
    np.testing.assert_array_equal(build_dataset(cfg, "val").get_batch([0, 1]), val)
    with pytest.raises(DataError, match="imagenet64.py"):
        build_dataset(cfg, "train")  # no train batches there: the usual missing-folder error


def test_imagenet_full_resolution_downsampled(tmp_path):
    full = tmp_path / "full" / "n0001"
    full.mkdir(parents=True)
    Image.new("RGB", (300, 200), (12, 200, 99)).save(full / "n0001_1.png")
    Image.new("RGB", (150, 170), (250, 3, 40)).save(full / "n0001_2.png")
    noise = rand_images(1, (130, 97, 3), seed=12)[0]
    Image.fromarray(noise).save(full / "n0001_3.png")
    cfg = config("imagenet", tmp_path / "full", tmp_path / "full")
    ds = build_dataset(cfg, "val")
    assert len(ds) == 3
    x = ds.get_batch(range(3))
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.uint8
    assert (x[0] == np.array([12, 200, 99], dtype=np.uint8)[:, None, None]).all()
    assert (x[1] == np.array([250, 3, 40], dtype=np.uint8)[:, None, None]).all()
    # without resize the same folder is an error that names expected and actual sizes
    cfg.resize = False
    with pytest.raises(DataError, match=r"expected a 64x64 image, got 300x200"):
        build_dataset(cfg, "val")[0]


def test_downsample_square_steps():
    assert downsample_square(Image.new("RGB", (64, 64)), 64).size == (64, 64)
    assert downsample_square(Image.new("RGB", (500, 130)), 64).size == (64, 64)
    assert downsample_square(Image.new("RGB", (40, 50)), 64).size == (64, 64)  # upsampling also works
    # exact 2x is a pure box filter: each output pixel is the mean of a 2x2 block
    a = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    out = np.asarray(downsample_square(Image.fromarray(a, mode="L"), 2))
    np.testing.assert_array_equal(out, a.reshape(2, 2, 2, 2).mean(axis=(1, 3)).round().astype(np.uint8))


# ---------------------------------------------------------------- digits

def test_digits():
    cfg = config("digits")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert (len(train), len(val)) == (1500, 297)
    assert train.num_levels == val.num_levels == 17
    assert train[0].shape == (1, 8, 8) and train[0].dtype == np.uint8
    allv = val.get_batch(range(len(val)))
    assert allv.max() == 16 and allv.min() == 0
    from sklearn.datasets import load_digits

    np.testing.assert_array_equal(val[-1][0], load_digits().images[-1].astype(np.uint8))
    assert build_dataset(cfg, "valid")[0].shape == (1, 8, 8)


# ---------------------------------------------------------------- errors

def test_missing_cifar_folder_shows_command(tmp_path):
    cfg = config("cifar", val_dir=tmp_path / "c10" / "valid_32x32")
    with pytest.raises(DataError) as e:
        build_dataset(cfg, "val")
    msg = str(e.value)
    assert "valid_32x32" in msg and "does not exist" in msg
    assert f"python datasets/cifar10.py --out_dir {tmp_path / 'c10'}" in msg


def test_missing_imagenet_folder_explains(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset(config("imagenet", tmp_path / "nope" / "train_64x64"), "train")
    msg = str(e.value)
    assert "train_64x64" in msg and "python datasets/imagenet64.py" in msg and "Kaggle" in msg


def test_unset_folder_dir():
    with pytest.raises(DataError, match="data.val.data_dir"):
        build_dataset(config("folder"), "val")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="contains no images"):
        build_dataset(config("cifar", val_dir=tmp_path / "empty"), "val")


def test_corrupt_image_names_path(tmp_path):
    write_pngs(tmp_path, rand_images(1, (32, 32, 3)))
    bad = tmp_path / "zz_bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="zz_bad.png: unreadable, truncated or corrupt"):
        build_dataset(config("cifar", val_dir=tmp_path), "val")  # every file is decoded up front


def test_wrong_size_expected_vs_got(tmp_path):
    Image.new("RGB", (33, 31)).save(tmp_path / "odd.png")
    with pytest.raises(DataError) as e:
        build_dataset(config("cifar", val_dir=tmp_path), "val")
    assert "expected a 32x32 image, got 33x31" in str(e.value) and "odd.png" in str(e.value)


def test_levels_out_of_range(tmp_path):
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(tmp_path / "x.png")
    cfg = config("folder", val_dir=tmp_path, channels=1, num_levels=17, model_image_size=8)
    with pytest.raises(DataError, match=r"levels in \[0, 16\].*200"):
        build_dataset(cfg, "val")[0]
    with pytest.raises(DataError, match="levels"):
        ArrayImageSet(np.full((1, 1, 2, 2), -1), name="t", num_levels=4)


def test_batch_rows_of_wrong_size(tmp_path):
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3 * 32 * 32), np.uint8))
    with pytest.raises(DataError, match=r"expected rows of 12288 .*32x32"):
        build_dataset(config("imagenet", val_dir=tmp_path), "val")


def test_bad_split_and_name():
    with pytest.raises(DataError, match="split"):
        build_dataset(config("digits"), "test")
    with pytest.raises(DataError, match="unknown dataset"):
        build_dataset({"name": "mnist", "image_size": 28}, "val")


def test_whole_config_accepted():
    root = OmegaConf.create({"model": {"image_size": 8}, "data": config("digits")})
    assert len(build_dataset(root, "val")) == 297


# ---------------------------------------------------------------- levels <-> model input

@pytest.mark.parametrize("K", [2, 17, 256])
def test_model_input_round_trip_exact(K):
    k = np.arange(K, dtype=np.uint8 if K <= 256 else np.int64)
    x = to_model_input(k, K)
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[-1].item() == 1.0
    expected = torch.tensor(2 * np.arange(K) / (K - 1) - 1, dtype=torch.float32)
    assert torch.equal(x, expected)
    back = from_model_input(x, K)
    assert back.dtype == torch.int64
    assert torch.equal(back, torch.arange(K))
    assert torch.equal(from_model_input(torch.tensor([-1.5, 1.5]), K), torch.tensor([0, K - 1]))
    # tensors keep their shape
    t = torch.arange(K).reshape(1, 1, 1, K)
    assert to_model_input(t, K).shape == (1, 1, 1, K)


def test_model_input_matches_improved_diffusion_scaling():
    k = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(k.astype(np.float32) / 127.5 - 1)
    assert torch.allclose(to_model_input(k, 256), ref, atol=1e-7, rtol=0)


# ---------------------------------------------------------------- eval batches

class CountingSet(ArrayImageSet):
    """Array dataset whose item i is filled with i % 256, recording what was loaded."""

    def __init__(self, n):
        super().__init__(
            (np.arange(n) % 256).astype(np.uint8)[:, None, None, None].repeat(2, 2).repeat(2, 3),
            name="counting",
            num_levels=256,
        )
        self.loaded = []

    def get_batch(self, indices):
        self.loaded.extend(int(i) for i in indices)
        return super().get_batch(indices)


@pytest.mark.parametrize("n,num_samples,world,bs", [(23, None, 1, 5), (23, -1, 3, 4), (23, 17, 4, 2), (10, 100, 3, 3), (5, 7, 8, 2)])
def test_eval_sharding(n, num_samples, world, bs):
    ds = CountingSet(n)
    limit = n if num_samples is None or num_samples < 0 or num_samples > n else num_samples
    seen = []
    for r in range(world):
        batches = list(eval_batches(ds, bs, num_samples, rank=r, world_size=world))
        assert len(batches) == num_eval_batches(ds, bs, num_samples, r, world)
        ids = np.concatenate([b.ids for b in batches]) if batches else np.zeros(0, np.int64)
        np.testing.assert_array_equal(ids, np.arange(r, limit, world))
        np.testing.assert_array_equal(ids, eval_indices(ds, num_samples, r, world))
        for j, b in enumerate(batches):
            assert isinstance(b, EvalBatch) and b.index == j
            assert b.x.dtype == np.int64 and b.x.shape == (len(b.ids), 1, 2, 2)
            assert len(b.ids) == bs or j == len(batches) - 1
            np.testing.assert_array_equal(b.x[:, 0, 0, 0], b.ids % 256)
        seen.extend(ids.tolist())
    assert sorted(seen) == list(range(limit))


def test_eval_start_batch_skips_without_loading():
    ds = CountingSet(30)
    full = list(eval_batches(ds, 4, 26, rank=1, world_size=2))
    ds.loaded.clear()
    resumed = list(eval_batches(ds, 4, 26, rank=1, world_size=2, start_batch=2, prefetch=0))
    assert [b.index for b in resumed] == [2, 3]
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.x, b.x)
    assert sorted(ds.loaded) == sorted(np.concatenate([b.ids for b in full[2:]]).tolist())
    assert num_eval_batches(ds, 4, 26, 1, 2, start_batch=2) == 2
    assert list(eval_batches(ds, 4, 26, 1, 2, start_batch=9)) == []


def test_eval_batches_errors_propagate(tmp_path):
    write_pngs(tmp_path, rand_images(3, (32, 32, 3)))
    ds = build_dataset(config("cifar", val_dir=tmp_path), "val")
    (tmp_path / "img_001.png").write_bytes(b"broken")  # damaged after the up-front check
    with pytest.raises(DataError, match="img_001.png"):
        list(eval_batches(ds, 1, None))


# ---------------------------------------------------------------- train batches

def test_train_batches_shuffled_infinite_disjoint():
    n, world, bs = 22, 2, 4
    per_rank = n // world
    ds = CountingSet(n)
    streams = []
    for r in range(world):
        gen = train_batches(ds, bs, rank=r, world_size=world, seed=3)
        xs = []
        for _ in range(3 * per_rank // bs + 1):  # several epochs: infinite
            x, kw = next(gen)
            assert kw == {} and x.dtype == torch.float32 and x.shape == (bs, 1, 2, 2)
            assert x.min() >= -1 and x.max() <= 1
            xs.append(from_model_input(x, 256)[:, 0, 0, 0])
        gen.close()
        streams.append(torch.cat(xs).numpy())
    epochs = [[s[e * per_rank : (e + 1) * per_rank] for s in streams] for e in range(3)]
    for e, shards in enumerate(epochs):
        a, b = (set(s.tolist()) for s in shards)
        assert len(a) == len(b) == per_rank and not (a & b)  # disjoint, no repeats within an epoch
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # reshuffled each epoch
    assert not np.array_equal(np.sort(epochs[0][0]), epochs[0][0])  # not in dataset order
    # same seed, same stream
    again = next(train_batches(ds, bs, rank=0, world_size=world, seed=3))[0]
    np.testing.assert_array_equal(from_model_input(again, 256)[:, 0, 0, 0].numpy(), streams[0][:bs])


def test_train_batches_on_digits_levels():
    ds = build_dataset(config("digits"), "train")
    x, _ = next(train_batches(ds, 16))
    levels = from_model_input(x, 17)
    assert levels.min() >= 0 and levels.max() <= 16
    assert torch.equal(to_model_input(levels, 17), x)


# ---------------------------------------------------------------- improved_diffusion.image_datasets

def test_load_data_reference_api(tmp_path):
    from improved_diffusion.image_datasets import ImageDataset, load_data

    imgs = rand_images(6, (16, 16, 3), seed=13)
    names = ["cat_0.png", "dog_0.png", "cat_1.png", "ant_2.png", "dog_1.png", "cat_9.png"]
    write_pngs(tmp_path / "a", imgs[:3], names[:3])
    write_pngs(tmp_path / "b", imgs[3:], names[3:])
    gen = load_data(data_dir=str(tmp_path), batch_size=2, image_size=16, class_cond=True, deterministic=True)
    seen = []
    for _ in range(4):  # 6 images, 3 batches/epoch: the 4th batch comes from the next epoch
        x, kw = next(gen)
        assert isinstance(x, torch.Tensor) and x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        seen.append(kw["y"])
    ys = torch.cat(seen[:3]).tolist()
    # listing order a/cat_0, a/cat_1, a/dog_0, b/ant_2, b/cat_9, b/dog_1; classes ant=0 cat=1 dog=2
    assert ys == [1, 1, 2, 0, 1, 2]
    assert torch.equal(seen[3], seen[0])
    x0 = next(load_data(data_dir=str(tmp_path), batch_size=1, image_size=16, deterministic=True))[0][0]
    np.testing.assert_allclose(x0.numpy(), imgs[0].transpose(2, 0, 1) / 127.5 - 1, atol=1e-6)

    ds = ImageDataset(8, [str(tmp_path / "a" / n) for n in sorted(names[:3])], classes=[0, 1, 2], shard=1, num_shards=2)
    assert len(ds) == 1
    arr, out = ds[0]
    assert arr.shape == (3, 8, 8) and arr.dtype == np.float32 and int(out["y"]) == 1
    assert "y" not in ImageDataset(8, [str(tmp_path / "a" / "cat_0.png")])[0][1]


def test_load_data_resizes_non_square(tmp_path):
    from improved_diffusion.image_datasets import load_data

    Image.new("RGB", (50, 30), (255, 0, 0)).save(tmp_path / "r.png")
    x, kw = next(load_data(data_dir=str(tmp_path), batch_size=1, image_size=8))
    assert x.shape == (1, 3, 8, 8) and kw == {}
    assert torch.allclose(x[0, 0], torch.ones(8, 8)) and torch.allclose(x[0, 1], -torch.ones(8, 8))


def test_image_datasets_does_not_import_bits_back():
    src = (REPO / "improved_diffusion" / "image_datasets.py").read_text()
    assert "bits_back_diffusion" not in src.split('"""', 2)[2]


def test_threaded_folder_batches_match_sequential(tmp_path):
    from bits_back_diffusion.data import FolderImageSet

    imgs = rand_images(12, (20, 24, 3), seed=14)
    write_pngs(tmp_path, imgs)
    common = dict(name="t", image_size=16, channels=3, num_levels=256, resize=True)
    seq = FolderImageSet(tmp_path, workers=1, **common).get_batch(range(12))
    par_ds = FolderImageSet(tmp_path, workers=3, **common)
    np.testing.assert_array_equal(par_ds.get_batch(range(12)), seq)
    (tmp_path / "img_005.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="img_005.png"):
        par_ds.get_batch(range(12))
