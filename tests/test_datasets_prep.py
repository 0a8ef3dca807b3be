"""End-to-end tests of datasets/cifar10.py and datasets/imagenet64.py on tiny self-made archives."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bits_back_diffusion.data import build_dataset, read_image

REPO = Path(__file__).resolve().parents[1]


def load_script(name):
    # datasets/ is not a package (and must not shadow the HuggingFace "datasets" package)
    spec = importlib.util.spec_from_file_location(f"_prep_{name}", REPO / "datasets" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cifar10 = load_script("cifar10")
imagenet64 = load_script("imagenet64")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar_tarball(path: Path, n_train=10, n_test=4, seed=0):
    """A tarball laid out like the official one: 5 train batches, a test batch, batches.meta."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    train_labels = rng.integers(0, 10, n_train).tolist()
    test_labels = rng.integers(0, 10, n_test).tolist()
    members = {"batches.meta": {b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}}
    per = n_train // 5
    for k in range(5):
        sl = slice(k * per, (k + 1) * per)
        members[f"data_batch_{k + 1}"] = {
            b"batch_label": b"training batch",
            b"data": train[sl],
            b"labels": train_labels[sl],
            b"filenames": [b"f%d.png" % i for i in range(sl.start, sl.stop)],
        }
    members["test_batch"] = {b"data": test, b"labels": test_labels, b"filenames": [b"t.png"] * n_test}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return md5, (train, train_labels), (test, test_labels)


def test_cifar10_end_to_end(tmp_path, capsys):
    tarball = tmp_path / "tiny.tar.gz"
    md5, (train, train_labels), (test, test_labels) = make_cifar_tarball(tarball)
    out = tmp_path / "cifar10"
    assert cifar10.main(["--out_dir", str(out), "--tarball", str(tarball), "--md5", md5]) == 0
    files = sorted((out / "train_32x32").glob("*.png"))
    assert len(files) == 10 and len(list((out / "valid_32x32").glob("*.png"))) == 4
    for i in range(10):
        f = out / "train_32x32" / f"{CLASSES[train_labels[i]]}_{i:05d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(f)).transpose(2, 0, 1), train[i].reshape(3, 32, 32))
    f = out / "valid_32x32" / f"{CLASSES[test_labels[3]]}_00003.png"
    np.testing.assert_array_equal(np.asarray(Image.open(f)).transpose(2, 0, 1), test[3].reshape(3, 32, 32))

    # the loader reads what was written through the repo's cifar config
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "config" / "data" / "cifar.yaml")
    cfg = cfg.data if "data" in cfg else cfg  # "@package _global_" files nest under data:
    cfg.val.data_dir = str(out / "valid_32x32")
    ds = build_dataset(cfg, "val")
    assert len(ds) == 4 and ds[0].shape == (3, 32, 32)

    # a stray file makes the train split incomplete: it is rewritten, the complete valid split kept
    first = out / "train_32x32" / f"{CLASSES[train_labels[0]]}_00000.png"
    (out / "train_32x32" / "extra.png").write_bytes(first.read_bytes())
    capsys.readouterr()
    assert cifar10.main(["--out_dir", str(out), "--tarball", str(tarball), "--md5", md5]) == 0
    printed = capsys.readouterr().out
    assert "keeping existing" in printed and "valid_32x32" in printed
    assert not (out / "train_32x32" / "extra.png").exists()
    # once both are complete, nothing is read (not even the tarball)
    assert cifar10.main(["--out_dir", str(out), "--tarball", str(tmp_path / "absent.tgz")]) == 0
    assert capsys.readouterr().out.count("keeping existing") == 2

    # --overwrite rewrites both
    victim = out / "valid_32x32" / f"{CLASSES[test_labels[0]]}_00000.png"
    victim.write_bytes(b"junk")
    assert cifar10.main(["--out_dir", str(out), "--tarball", str(tarball), "--md5", md5, "--overwrite"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert Image.open(victim).size == (32, 32)


def test_cifar10_md5_mismatch(tmp_path, capsys):
    tarball = tmp_path / "tiny.tar.gz"
    md5, _, _ = make_cifar_tarball(tarball)
    out = tmp_path / "c"
    # default expected md5 is the official one, which the tiny tarball does not match
    with pytest.raises(cifar10.ChecksumError) as e:
        cifar10.prepare(out, tarball=str(tarball))
    msg = str(e.value)
    assert str(tarball) in msg and cifar10.MD5 in msg and md5 in msg
    assert cifar10.main(["--out_dir", str(out), "--tarball", str(tarball)]) == 1
    err = capsys.readouterr().err
    assert "md5 mismatch" in err and md5 in err
    assert not (out / "train_32x32").exists()


def test_cifar10_cli_subprocess_help():
    r = subprocess.run([sys.executable, "datasets/cifar10.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--tarball" in r.stdout and "--overwrite" in r.stdout


@pytest.mark.parametrize("fmt", ["npz", "pickle"])
def test_imagenet64_batches_to_pngs(tmp_path, fmt):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (7, 3, 64, 64), dtype=np.uint8)
    val = rng.integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    src = tmp_path / "src"
    src.mkdir()

    def write(name, data, labels):
        if fmt == "npz":
            np.savez(src / f"{name}.npz", data=data.reshape(len(data), -1), labels=labels)
        else:
            with open(src / name, "wb") as f:
                pickle.dump({"data": data.reshape(len(data), -1), "labels": labels}, f)

    write("train_data_batch_1", train[:4], [5, 6, 7, 8])
    write("train_data_batch_2", train[4:], [1, 2, 3])
    write("val_data", val, [10, 11, 12])
    out = tmp_path / "imagenet"
    assert imagenet64.main(["batches", "--src", str(src), "--out_dir", str(out)]) == 0
    names = sorted(p.name for p in (out / "train_64x64").iterdir())
    assert names == [f"{i:07d}.png" for i in range(7)]
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "config" / "data" / "imagenet.yaml")
    cfg = cfg.data if "data" in cfg else cfg
    cfg.train.data_dir, cfg.val.data_dir = str(out / "train_64x64"), str(out / "valid_64x64")
    np.testing.assert_array_equal(build_dataset(cfg, "train").get_batch(range(7)), train)
    np.testing.assert_array_equal(build_dataset(cfg, "val").get_batch(range(3)), val)
    # the batches themselves load to the same arrays
    cfg.train.data_dir = str(src)
    np.testing.assert_array_equal(build_dataset(cfg, "train").get_batch(range(7)), train)

    lab = tmp_path / "labelled"
    assert imagenet64.main(["batches", "--src", str(src), "--out_dir", str(lab), "--label_prefix"]) == 0
    assert sorted(p.name for p in (lab / "valid_64x64").iterdir())[0] == "0010_0000000.png"


def test_imagenet64_downsample_matches_loader(tmp_path):
    src = tmp_path / "full"
    (src / "n01").mkdir(parents=True)
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(src / "n01" / "a.png")
    Image.new("RGB", (200, 333), (7, 8, 9)).save(src / "b.jpg")
    dest = tmp_path / "small"
    assert imagenet64.main(["downsample", "--src", str(src), "--dest", str(dest)]) == 0
    a = np.asarray(Image.open(dest / "n01" / "a.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(a, read_image(src / "n01" / "a.png", image_size=64, channels=3, resize=True))
    assert Image.open(dest / "b.png").size == (64, 64)
    assert imagenet64.downsample_folder(src, dest) == 0  # already there: skipped


def test_imagenet64_info_and_missing(tmp_path, capsys):
    assert imagenet64.main(["info"]) == 0
    assert "image-net.org" in capsys.readouterr().out
    assert imagenet64.main(["batches", "--src", str(tmp_path / "nothing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "datasets/imagenet64.py"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "Kaggle" in r.stdout


def test_cifar10_download_path_without_network(tmp_path, capsys):
    # a file:// URL exercises the download code (temporary .part file, md5 check, reuse) offline
    tarball = tmp_path / "served.tar.gz"
    md5, _, _ = make_cifar_tarball(tarball)
    out = tmp_path / "c"
    cifar10.prepare(out, md5=md5, url=tarball.as_uri(), workers=2)
    assert (out / cifar10.TARBALL_NAME).is_file() and not list(out.glob("*.part"))
    assert len(list((out / "valid_32x32").glob("*.png"))) == 4
    capsys.readouterr()
    cifar10.prepare(out, md5=md5, url="file:///nonexistent", overwrite=True, workers=2)
    assert "using previously downloaded" in capsys.readouterr().out
    with pytest.raises(cifar10.ChecksumError):
        cifar10.prepare(tmp_path / "d", md5="0" * 32, url=tarball.as_uri())
