"""The roundtrip check alongside the encoder (batch_check): the same message as without it, every
batch decoded once, wrong images or a wrong message refused, checkpoints that hold only checked
batches, and resuming."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import craystack as cs
from bits_back_diffusion import batch_check
from bits_back_diffusion.batch_check import RoundtripError, alongside_threads
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.codec_checkpoints import newest_state
from bits_back_diffusion.codec_registry import build_codec
from bits_back_diffusion.coding import Precisions
from bits_back_diffusion.data.base import ArrayImageSet
from bits_back_diffusion.decoder import BatchDecodeError
from bits_back_diffusion.encoder import DatasetCoder, EncodePlan, coded_batch_sizes
from bits_back_diffusion.latent_model import DiffusionLatentModel
from test_bitswap import ConvNet, process

STEPS = 4


def make_codec(seed: int = 0, name: str = "bitswap"):
    lm = DiffusionLatentModel(ConvNet(seed=seed), process(1000, str(STEPS)), torch.device("cpu"))
    if name == "bitswap":
        return BitSwapCodec(lm, BITSWAP_PRECISIONS)
    return build_codec(name, lm, Precisions(prior_prec=10, latent_prec=18, obs_prec=24))


class Images(ArrayImageSet):
    """Noise images whose loading can be made to fail from the `fail_at`-th batch on (a crash)."""

    fail_at = None

    def get_batch(self, indices):
        self.loads = getattr(self, "loads", 0) + 1
        if self.fail_at is not None and self.loads >= self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        return super().get_batch(indices)


def dataset(n: int = 10) -> Images:
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 4, 4)).astype(np.uint8)
    return Images(images, name="noise", num_levels=256)


def coder(run_dir, data, check_codec=None, save_interval: int = 1000, name: str = "bitswap") -> DatasetCoder:
    """bitswap: lanes for one image, batches growing to 4; bbans: fixed batches of 4 (its lanes)."""
    bitswap = name == "bitswap"
    plan = EncodePlan.build(data, 4, -1, 0, 1, {"test": True}, head_images=1 if bitswap else 4, grow=bitswap)
    return DatasetCoder(make_codec(name=name), data, plan, str(run_dir), save_interval=save_interval, seed=0,
                        show_progress=False, check_codec=check_codec, check_threads=1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An encode checked afterwards, the way without a second codec."""
    ref = coder(tmp_path_factory.mktemp("ref"), dataset())
    encoded = ref.encode()
    return encoded, ref.check(encoded)


@pytest.mark.parametrize("name, threaded", [("bitswap", False), ("bbans", False), ("bitswap", True)])
def test_alongside_gives_the_same_message_and_decodes_every_batch_once(tmp_path, monkeypatch, name, threaded):
    """threaded: every lane group takes the threaded build, so both threads start OpenMP passes at
    once (as a CIFAR-sized run does)."""
    import numba

    from craystack.compiled import kernels

    if threaded:
        monkeypatch.setattr(kernels, "PARALLEL_MIN_LANES", 1)
    (tmp_path / "ref").mkdir()
    (tmp_path / "run").mkdir()
    ref = coder(tmp_path / "ref", dataset(), name=name)
    encoded_ref = ref.encode()
    checked_ref = ref.check(encoded_ref)
    check_codec = make_codec(name=name)
    run = coder(tmp_path / "run", dataset(), check_codec, name=name)
    run.check_threads = min(2, numba.config.NUMBA_NUM_THREADS)
    encoded = run.encode()
    assert cs.message_equal(encoded.message, encoded_ref.message)
    sizes = coded_batch_sizes(encoded)
    assert len(sizes) >= 3 and len(set(sizes)) >= 2  # the checker saw several batches, of two sizes or more
    assert encoded.stats["checked_batches"] == len(sizes)
    assert check_codec.lm.model_evals == STEPS * len(sizes)  # each batch popped once, on its own codec
    checked = run.check(encoded)
    assert checked.stats["message_restored"] and checked.stats["checked_alongside"]
    assert checked.stats["model_evals"] == STEPS * len(sizes) and checked.stats["decode_seconds"] > 0
    assert run.codec.lm.model_evals == STEPS * len(sizes)  # nothing was decoded afterwards
    assert not checked_ref.stats.get("checked_alongside") and checked_ref.stats["message_restored"]


class AlteredDecode:
    """A check codec that decodes correctly, then alters the images or the message it returns."""

    def __init__(self, what: str, batch: int):
        self.inner, self.what, self.batch, self.calls = make_codec(), what, batch, 0

    @property
    def lm(self):
        return self.inner.lm

    def decode(self, message, size):
        back, images = self.inner.decode(message, size)
        self.calls += 1
        if self.calls == self.batch:
            if self.what == "images":
                images = images.copy()
                images[0, 0, 0, 0] ^= 1
            else:
                flat = cs.flatten(back).copy()
                flat[-1] ^= 1
                back = cs.unflatten(flat, back.head.shape)
        return back, images


@pytest.mark.parametrize("what, match", [("images", "decoded images differ from the input for image ids"),
                                         ("message", "did not give back the message it was pushed onto")])
def test_a_wrong_batch_is_refused_and_never_checkpointed(tmp_path, what, match):
    run = coder(tmp_path, dataset(), AlteredDecode(what, batch=3), save_interval=1)
    with pytest.raises(RoundtripError, match=match):
        run.encode()
    found = newest_state(str(tmp_path), "encode", 0, 1)
    assert found is not None  # the batches before the wrong one were saved ...
    state = found[1]
    assert state.batches_done == state.stats["checked_batches"] == 2  # ... and only they


def test_a_decode_with_other_weights_is_refused(tmp_path):
    run = coder(tmp_path, dataset(), make_codec(seed=1))
    with pytest.raises((RoundtripError, BatchDecodeError)):
        run.encode()


def test_resume_goes_on_checking_alongside(tmp_path, reference):
    data = dataset()
    data.fail_at = 5
    with pytest.raises(KeyboardInterrupt):
        coder(tmp_path, data, make_codec(), save_interval=2).encode()
    saved = newest_state(str(tmp_path), "encode", 0, 1)[1]
    assert 0 < saved.batches_done == saved.stats["checked_batches"] < 5
    check_codec = make_codec()
    run = coder(tmp_path, dataset(), check_codec, save_interval=2)
    encoded = run.encode()
    assert cs.message_equal(encoded.message, reference[0].message)
    sizes = coded_batch_sizes(encoded)
    assert encoded.stats["checked_batches"] == len(sizes)
    assert check_codec.lm.model_evals == STEPS * (len(sizes) - saved.batches_done)  # the rest only
    assert run.check(encoded).stats["checked_alongside"]


def test_unchecked_checkpoints_are_decoded_afterwards(tmp_path, reference):
    data = dataset()
    data.fail_at = 5
    with pytest.raises(KeyboardInterrupt):
        coder(tmp_path, data, None, save_interval=2).encode()  # check=false, or an older version
    check_codec = make_codec()
    run = coder(tmp_path, dataset(), check_codec, save_interval=2)
    encoded = run.encode()
    assert check_codec.lm.model_evals == 0  # earlier batches were never checked: no checker
    checked = run.check(encoded)
    assert checked.stats["message_restored"] and not checked.stats.get("checked_alongside")
    assert cs.message_equal(encoded.message, reference[0].message)


def test_the_vlb_runs_on_its_own_thread_while_checking_alongside(tmp_path):
    """The same sums as a VLB on the encoder's thread; each save waits for them."""
    import threading

    seen = []

    def vlb_fn(x, ids):
        seen.append(threading.current_thread().name)
        return x.reshape(len(x), -1).mean(1) + 0.001 * np.asarray(ids)

    results = {}
    for alongside in (False, True):
        run = coder(tmp_path / str(alongside), dataset(), make_codec() if alongside else None, save_interval=3)
        run.vlb_fn = vlb_fn
        (tmp_path / str(alongside)).mkdir()
        stats = run.encode().stats
        results[alongside] = (stats["vlb_count"], stats["vlb_sum"])
        saved = newest_state(str(tmp_path / str(alongside)), "encode", 0, 1)[1]
        assert saved.stats["vlb_count"] == saved.samples_done == 10  # nothing left pending at the last save
    assert results[True] == results[False] and results[True][0] == 10
    assert "MainThread" in seen and any(name.startswith("bbd-vlb") for name in seen)


def test_a_failing_encoder_stops_the_checker(tmp_path):
    data = dataset()
    data.fail_at = 4
    threads_before = {t.name for t in __import__("threading").enumerate()}
    with pytest.raises(KeyboardInterrupt):
        coder(tmp_path, data, make_codec()).encode()
    assert "bbd-check" not in {t.name for t in __import__("threading").enumerate()} - threads_before


@pytest.mark.parametrize("check, alongside, device, threads, expected", [
    (True, True, "cpu", 2, 1), (True, True, "cpu", 16, 8), (True, True, "cpu", 1, 0),
    (False, True, "cpu", 2, 0), (True, False, "cpu", 2, 0), (True, True, "cuda", 16, 0),
])
def test_which_runs_check_alongside(monkeypatch, check, alongside, device, threads, expected):
    import numba

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
    assert alongside_threads(check, alongside, torch.device(device)) == expected
    monkeypatch.setattr(numba, "threading_layer", lambda: "workqueue")  # not thread-safe: after the encode
    assert alongside_threads(check, alongside, torch.device(device)) == 0


def test_the_checker_runs_the_model_on_the_recorded_thread_count():
    """torch's thread count is the process's: the worker thread sees the encoder's."""
    seen = []
    checker = batch_check.AlongsideChecker(make_codec(), lambda *a: None, threads=1)
    try:
        checker._check = lambda job: seen.append(torch.get_num_threads())
        checker.submit(0, np.zeros(1), np.zeros((1, 3, 4, 4)), None, None)
        checker.wait()
    finally:
        checker.close()
    assert seen == [torch.get_num_threads()]
