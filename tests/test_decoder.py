"""decode.py as a Hydra entry point over the decoder library: today's key=value spellings, the
refusal of a rank count that does not divide the files (before anything is read), the SLURM
launcher, and the one decode loop every caller shares."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

import craystack as cs

from bits_back_diffusion import decode_cli, decoder, parallel_decode
from bits_back_diffusion.container import BBDFormatError
from bits_back_diffusion.parallel_decode import worker_files
from helpers import REPO_ROOT, compose_cfg, run_script

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "digits3_v2.bbd"
MODEL = REPO_ROOT / "outputs" / "pretrained" / "digits"


def test_todays_spellings_work_through_hydra(tmp_path):
    """Every key of the old parser, typed as before, reaches the decoder: the v2 fixture decodes to
    its known digits, stretched to 0-255 (levels=scaled), over a file already there (overwrite=true)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "00001.png").write_bytes(b"old")
    run_script("decode.py", [f"input={FIXTURE}", f"output_dir={out}", f"model_path={MODEL}", "device=cpu",
                             "allow_device_mismatch=true", "levels=scaled", "overwrite=true"])
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png"]  # nothing else
    _, levels, _ = decoder.decode_input(str(FIXTURE), model_path=str(MODEL), log=lambda *_: None)
    want = [hashlib.sha256(np.asarray(x)[0].astype(np.uint8).tobytes()).hexdigest() for x in levels]
    assert want == json.loads(FIXTURE.with_suffix(".json").read_text())["image_sha256"]
    for i, image in enumerate(levels):
        pixels = np.asarray(Image.open(out / f"{i:05d}.png"))
        np.testing.assert_array_equal(pixels, (image[0] * 255 + 8) // 16)
    refused = run_script("decode.py", [f"input={FIXTURE}", f"output_dir={out}", "levels=bright"], check=False)
    assert refused.returncode == 2 and "decode.py: error: levels must be raw or scaled, got 'bright'" in refused.stderr


def test_ranks_must_divide_the_files_before_anything_is_read(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for rank in range(4):  # unreadable on purpose: the refusal comes before any file is opened
        (run_dir / f"compressed.rank{rank}.bbd").write_bytes(b"not a bbd file")
    monkeypatch.setattr(decode_cli, "_ranks", lambda: (0, 3))
    monkeypatch.setattr(parallel_decode, "prepare_decoder", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "out"
    with pytest.raises(decoder.DecodeError) as refused:
        decode_cli.run(decode_cli.request_from_config({"input": str(run_dir), "output_dir": str(out)}))
    message = str(refused.value)
    assert "3 decode ranks cannot share the 4 compressed file(s)" in message
    assert "run with mpiexec -n 1 or 2 or 4" in message and not out.exists()


def test_each_rank_takes_every_wth_file():
    assert worker_files(8, 3, 4) == [3, 7]
    assert worker_files(4, 0, 2) == [0, 2] and worker_files(4, 1, 2) == [1, 3]
    assert [worker_files(2, r, 2) for r in (0, 1)] == [[0], [1]]
    decoder.check_workers("run", 6, 3)  # divides: accepted
    with pytest.raises(decoder.DecodeError, match="4 decode ranks cannot share the 6"):
        decoder.check_workers("run", 6, 4)


def _rank_set(folder, ranks: int = 2):
    """`ranks` rank files of one (pretend) run: the v3 fixture's header and message under each rank."""
    from bits_back_diffusion.container import read_bbd, write_bbd

    header, message = read_bbd(FIXTURE.with_name("digits3_v3.bbd"))
    folder.mkdir()
    for r in range(ranks):
        write_bbd(str(folder / f"compressed.rank{r}.bbd"), dataclasses.replace(header, rank=r, world_size=ranks), message)
    return message


def test_a_decode_rank_keeps_only_its_own_files_messages(tmp_path):
    """Every rank reads and checks every file, but holds the messages of its own share only."""
    message = _rank_set(tmp_path / "run", ranks=4)
    inp = decoder.open_input(str(tmp_path / "run"), workers=2, rank=1)
    assert len(inp.headers) == 4 and [h.rank for h in inp.headers] == [0, 1, 2, 3]
    assert [m is None for m in inp.messages] == [True, False, True, False]
    assert all(cs.message_equal(inp.messages[k], message) for k in (1, 3))
    whole = decoder.open_input(str(tmp_path / "run"))  # one rank: all of them
    assert all(m is not None for m in whole.messages)
    with pytest.raises(ValueError, match="compressed.rank0.bbd: read by another decode rank"):
        decoder.Decoder(inp, codec=None, device=None).decode_files([0, 1])


def test_a_damaged_file_of_another_rank_is_refused_by_every_rank(tmp_path):
    _rank_set(tmp_path / "run", ranks=2)
    damaged = tmp_path / "run" / "compressed.rank0.bbd"
    blob = bytearray(damaged.read_bytes())
    blob[-1] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    with pytest.raises(BBDFormatError, match="compressed.rank0.bbd: the payload is corrupted"):
        decoder.open_input(str(tmp_path / "run"), workers=2, rank=1)


def test_unknown_settings_are_refused_by_name(capsys):
    assert decode_cli.main(["input=a.bbd", "output_dir=o", "+colour=red"]) == 2
    assert "unexpected setting colour=...; decode.py takes input, output_dir" in capsys.readouterr().err
    assert decode_cli.main(["input=a.bbd", "output_dir=o", "overwrite=maybe"]) == 2
    assert "overwrite must be true or false, got 'maybe'" in capsys.readouterr().err
    assert decode_cli.main(["input=a.bbd", "output_dir=o", "device=tpu"]) == 2
    assert "device must be cpu, cuda or cuda:<index>" in capsys.readouterr().err


@pytest.mark.parametrize("mode, target", [("submitit", "SlurmLauncher"), ("submitit_local", "LocalLauncher")])
def test_decode_goes_to_slurm_like_the_other_scripts(mode, target):
    """`python decode.py -m +mode=submitit ...` composes Hydra's submitit launcher (one task per GPU);
    each task then takes its rank from SLURM's variables (decode_cli._ranks -> dist_util)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    from bits_back_diffusion import runtime

    runtime.register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base="1.3"):
        cfg = compose(config_name="decode", overrides=[f"+mode={mode}", "hydra.launcher.gpus_per_node=4",
                                                       "input=run", "output_dir=out"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.tasks_per_node == 4
    assert decode_cli.request_from_config({k: v for k, v in cfg.items() if k != "hydra"}).input == "run"


def test_encode_and_the_benches_use_the_decoders_loop():
    """One decode loop: encode.py's roundtrip check and bench/rates.py pop batches through
    decoder.pop_batches (a change of the loop reaches all of them)."""
    import inspect

    from bits_back_diffusion import encoder

    assert "pop_batches(" in inspect.getsource(encoder.DatasetCoder.decode)
    bench = (REPO_ROOT / "bench" / "rates.py").read_text()
    assert "pop_batches(" in bench and "codec.decode(" not in bench
    assert "load_run_model(" in bench and "torch.load(" not in bench
    assert compose_cfg("decode", ["input=x", "output_dir=y"]).levels == "raw"


def test_a_message_that_does_not_decode_names_its_batch():
    class Broken:
        def decode(self, message, size):
            if message == 1:
                raise ArithmeticError("zero probability")
            return message + 1, np.zeros((size, 1, 2, 2), np.int64)

    batches = decoder.pop_batches(Broken(), -1, [2, 3, 1])
    assert [(b.index, len(b.images), b.message) for b in [next(batches), next(batches)]] == [(2, 1, 0), (1, 3, 1)]
    with pytest.raises(decoder.BatchDecodeError, match=r"batch 1 of 3 does not decode \(zero probability\)"):
        next(batches)
    resumed = decoder.pop_batches(Broken(), 5, [2, 3, 1], done=2)  # two batches popped before
    assert [(b.index, b.message) for b in resumed] == [(0, 6)]
