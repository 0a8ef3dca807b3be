"""Restore the images of a compressed .bbd file as PNG files.

    python decode.py input=<file.bbd or encode run dir> output_dir=<dir> [model_path=<checkpoint or run dir>]
                     [device=cpu|cuda] [allow_device_mismatch=false] [levels=raw|scaled] [overwrite=false]

The file's header names the codec, precisions, process, model flags and device, so the checkpoint
is the only other input. It is named in the file by its SHA-256 (and its file name, as a hint) and
found through model_path=, else the encode run dir's evaluator.model_path, that file name beside
the input, the data config's default checkpoint (config/data/<data>.yaml -> config/evaluator/*.yaml),
or outputs/pretrained/<file name>; a checkpoint with another SHA-256 is never used. Before the model
is built, every header field is checked against bounds and the payload's size, and the model's
parameter count from the file's flags against the checkpoint's. The encoder's device kind is the
default device; another one (or another GPU model) is refused before the first model call, since
its model outputs differ in the last bits, unless allow_device_mismatch=true (the end-of-message
check then still refuses a wrong decode). Batches are decoded last-first (the message is a
stack), tiles are put back together, and image i is written as <i:05d>.png (mode L for one
channel, RGB for three).

An encode run dir as input decodes its compressed.bbd, or all of its compressed.rank<r>.bbd
(written by `mpiexec -n W python encode.py`; rank r holds images r, r+W, …) into one numbering.
A single rank file decodes to its own images under their dataset numbers, unless the pictures
were tiled: their tiles are spread over all ranks, so pass the run dir then.

Levels: with num_levels = 256 the pixel values are the levels. With fewer levels, `raw`
(default) writes the level values 0..K-1 themselves, which is what `data=folder` reads back, so
re-encoding the output gives the same file; `scaled` writes round(k * 255 / (K - 1)) for viewing
(also exactly invertible, but not what the folder reader expects).
"""
from __future__ import annotations

import os
import pickle
import re
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

USAGE = __doc__.split("\n\n")[1]
_KEYS = {"input": None, "output_dir": None, "model_path": None, "device": "", "levels": "raw", "overwrite": "false",
         "allow_device_mismatch": "false"}
_BOOL_KEYS = ("overwrite", "allow_device_mismatch")
REPO = os.path.dirname(os.path.abspath(__file__))


class DecodeError(ValueError):
    """A decode request that cannot be carried out; the message says how to fix it."""


def parse_args(argv: List[str]) -> Dict[str, str]:
    """key=value arguments (Hydra style) into a dict with defaults; unknown keys are refused."""
    args = dict(_KEYS)
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            raise DecodeError(f"unexpected argument {token!r}; expected key=value with key in {', '.join(_KEYS)}")
        args[key] = value
    for key in ("input", "output_dir"):
        if not args[key]:
            raise DecodeError(f"missing {key}=...")
    if args["levels"] not in ("raw", "scaled"):
        raise DecodeError(f"levels must be raw or scaled, got {args['levels']!r}")
    for key in _BOOL_KEYS:
        if args[key].lower() not in ("true", "false"):
            raise DecodeError(f"{key} must be true or false, got {args[key]!r}")
    if not re.fullmatch(r"(cpu|cuda(:\d+)?)?", args["device"]):
        raise DecodeError(f"device must be cpu, cuda or cuda:<index>, got {args['device']!r}")
    return args


def checkpoint_candidates(header, model_path: Optional[str], input_path: str) -> List[Tuple[str, str]]:
    """(path, where it came from) to look for the header's checkpoint in, first match wins:
    model_path= alone when given; else the encode run's evaluator.model_path, the encoder's file
    name beside the input, the data config's default checkpoint, and outputs/pretrained/<that
    name>. Paths in configs are relative to where encode.py ran: tried from here and from the
    repository. Every file found is verified by its SHA-256, so none of these can choose the weights."""
    if model_path:
        return [(model_path, "model_path=")]
    found: List[Tuple[str, str]] = []
    run_dir = input_path if os.path.isdir(input_path) else os.path.dirname(os.path.abspath(input_path))
    recorded = _config_value(os.path.join(run_dir, ".hydra", "config.yaml"), "evaluator.model_path")
    if recorded:
        found.append((recorded, f"evaluator.model_path of the encode run {run_dir}"))
    if header.checkpoint_name:
        found.append((os.path.join(run_dir, header.checkpoint_name), "beside the input"))
    default = _data_default_checkpoint(header.data_name)
    if default:
        found.append((default, f"the default checkpoint of data={header.data_name} (config/data/{header.data_name}.yaml)"))
    if header.checkpoint_name:
        found.append((os.path.join("outputs", "pretrained", header.checkpoint_name), "outputs/pretrained/"))
    out: List[Tuple[str, str]] = []
    for path, why in found:
        options = [os.path.join(base, os.path.expanduser(path)) for base in dict.fromkeys((os.getcwd(), REPO))]
        for full in [p for p in options if os.path.exists(p)] or options[:1]:
            if all(os.path.realpath(full) != os.path.realpath(p) for p, _ in out):
                out.append((full, why))
    return out


def _config_value(yaml_path: str, key: str) -> Optional[str]:
    """A string setting of a saved config, or None (missing file or key, unresolvable value)."""
    from omegaconf import OmegaConf

    if not os.path.isfile(yaml_path):
        return None
    try:
        value = OmegaConf.select(OmegaConf.load(yaml_path), key, throw_on_missing=False)
    except Exception:  # an unreadable or unresolvable config is only one place less to look
        return None
    return str(value) if isinstance(value, str) and value else None


def _data_default_checkpoint(data_name: str) -> Optional[str]:
    """evaluator.model_path of the evaluator group that config/data/<name>.yaml picks (else
    encode.yaml's default evaluator)."""
    from omegaconf import OmegaConf

    if not data_name:
        return None
    config = os.path.join(REPO, "config")
    evaluator = None
    for yaml_path, prefix in ((os.path.join(config, "data", f"{data_name}.yaml"), "override /evaluator"),
                              (os.path.join(config, "encode.yaml"), "evaluator")):
        try:
            defaults = OmegaConf.to_container(OmegaConf.load(yaml_path)).get("defaults", [])
        except Exception:  # missing or unreadable: look at the next one
            continue
        for entry in defaults:
            if isinstance(entry, dict) and prefix in entry:
                evaluator = str(entry[prefix])
                break
        if evaluator:
            break
    return _config_value(os.path.join(config, "evaluator", f"{evaluator}.yaml"), "model_path") if evaluator else None


def _checkpoint_files(path: str, wanted_name: str) -> List[str]:
    """The checkpoint file itself, or in a run dir the file with the encoder's name, else its newest EMA."""
    from bits_back_diffusion.checkpoints import newest_ema_checkpoint

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    named = os.path.join(path, wanted_name) if wanted_name else ""
    newest = newest_ema_checkpoint(path)
    return [p for p in dict.fromkeys((named, newest or "")) if p and os.path.isfile(p)]


def find_checkpoint(header, model_path: Optional[str], input_path: str, source: str):
    """(checkpoint file, its state dict) whose SHA-256 is the header's; DecodeError saying which
    SHA-256 and file name are needed and where they were looked for, when none is."""
    from bits_back_diffusion.checkpoints import state_dict_sha256, strip_module_prefix
    from bits_back_diffusion.container import check_model_sha256
    from improved_diffusion import dist_util
    from improved_diffusion.checkpoint_io import CheckpointReadError

    looked: List[str] = []
    mismatch = ""
    for where, why in checkpoint_candidates(header, model_path, input_path):
        files = _checkpoint_files(where, header.checkpoint_name)
        if not files:
            looked.append(f"{where} ({why}): no checkpoint there")
        for ckpt in files:
            try:
                state = strip_module_prefix(dist_util.load_state_dict(ckpt, why=f"{why}, for {source}"))
            except (CheckpointReadError, OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
                looked.append(f"{ckpt} ({why}): unreadable ({str(exc)[:200]})")
                continue
            sha = state_dict_sha256(state)
            if sha == header.model_sha256:
                return ckpt, state
            looked.append(f"{ckpt} ({why}): SHA-256 {sha}")
            mismatch = sha
    if model_path and mismatch:
        check_model_sha256(header, mismatch, source)  # the checkpoint given is for other weights
    name = f" (the encoder's file was named {header.checkpoint_name})" if header.checkpoint_name else ""
    where = "\n  ".join(looked) if looked else "nowhere: no model_path=, no encode run config, no data config default"
    raise DecodeError(f"{source} needs the checkpoint whose state dict has SHA-256 {header.model_sha256}{name}; "
                      f"looked at:\n  {where}\npass model_path=<that checkpoint file or its training run dir>")


def parameter_count(model_flags) -> int:
    """Numbers in the state dict `create_model(**flags)` would have, counted on the meta device
    (no memory is allocated), so a forged header cannot make the decoder build a huge model."""
    import torch

    from improved_diffusion.script_util import create_model

    with torch.device("meta"):
        model = create_model(**model_flags.as_kwargs())
    return sum(t.numel() for t in model.state_dict().values())


def _load_model(header, ckpt: str, state, device, source: str):
    """The encoder's UNet and process from the header's flags, once the flags fit the checkpoint."""
    from bits_back_diffusion.container import BBDFormatError
    from improved_diffusion.script_util import create_gaussian_diffusion, create_model

    try:
        expected = parameter_count(header.model_flags)
    except Exception as exc:  # create_model asserts, or raises any of several types, for flags it cannot build
        raise BBDFormatError(f"{source}: the model flags do not describe a model ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    stored = sum(t.numel() for t in state.values())
    if expected != stored:
        raise BBDFormatError(f"{source}: the model flags describe {expected:,} parameters but checkpoint {ckpt} holds "
                             f"{stored:,}; the header does not belong to these weights")
    model = create_model(**header.model_flags.as_kwargs())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BBDFormatError(f"{source}: the model flags do not fit checkpoint {ckpt}: {str(exc)[:400]}") from None
    model.to(device).eval()
    try:
        diffusion = create_gaussian_diffusion(**header.diffusion_flags.as_kwargs())
    except (ValueError, TypeError) as exc:
        raise BBDFormatError(f"{source}: the diffusion flags do not describe a process ({exc})") from None
    if diffusion.num_timesteps != header.num_steps:
        raise BBDFormatError(
            f"{source}: the process has {diffusion.num_timesteps} steps but the file was coded with {header.num_steps}"
        )
    return model, diffusion


def choose_device(header, requested: str, allow_mismatch: bool, source: str, log=print):
    """The encoder's device kind unless `requested`; a different kind or GPU model is refused here,
    before any model call (its outputs differ in the last bits, so the decode would fail late)."""
    import torch

    encoded = header.device
    device = torch.device(requested or (encoded.kind if encoded is not None else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DecodeError(f"{source} is to be decoded on cuda, but this machine has no CUDA GPU"
                          + (f" (the encoder ran on {encoded.describe()})" if encoded is not None else ""))
    if encoded is None:
        log(f"{source} does not record the encoder's device (format version 1/2); decoding on {device.type}")
        return device
    here = type(encoded).of(device)
    differs = here.kind != encoded.kind or (here.kind == "cuda" and encoded.name and here.name != encoded.name)
    if differs and not allow_mismatch:
        raise DecodeError(
            f"{source} was encoded on {encoded.describe()}, but this decode would run on {here.describe()}; model "
            f"outputs differ between devices in the last bits, which bits-back decoding cannot absorb. Decode on "
            f"{encoded.kind}" + (f" ({encoded.name})" if encoded.name else "")
            + ", or pass allow_device_mismatch=true to try anyway (a wrong decode is still refused at the end)")
    if differs:
        log(f"WARNING: decoding on {here.describe()} a file encoded on {encoded.describe()} (allow_device_mismatch)")
    elif encoded.torch_version and encoded.torch_version != here.torch_version:
        log(f"WARNING: the encoder used torch {encoded.torch_version}, this is {here.torch_version}; if the decode "
            "fails, use the encoder's version")
    return device


def check_threads(header, device, allow_mismatch: bool, source: str) -> None:
    """On CPU the decoder must use the encoder's torch thread count (`encoder_threads`); more
    threads than this machine has cores would make the decode many times slower (and a forged
    count of hundreds exhausts memory on thread stacks), so that is refused up front too."""
    wanted = header.device.torch_threads if header.device is not None else 0
    cores = os.cpu_count() or 1
    if device.type == "cpu" and wanted > cores and not allow_mismatch:
        raise DecodeError(
            f"{source} was encoded with {wanted} torch threads, and this machine has {cores} cores; decoding on CPU "
            f"needs the encoder's thread count for bit-identical model outputs. Decode on a machine with at least "
            f"{wanted} cores, or pass allow_device_mismatch=true to decode with {wanted} threads here anyway (slow)")


def codec_settings(header, source: str):
    """(codec class, Precisions) the file names, checked before any model is loaded."""
    from bits_back_diffusion.codec_registry import codec_class
    from bits_back_diffusion.coding import Precisions
    from bits_back_diffusion.container import BBDFormatError

    try:
        cls = codec_class(header.codec)
    except ValueError as exc:
        raise DecodeError(f"{source} uses codec {header.codec!r}, unknown here ({exc})") from None
    try:
        return cls, Precisions(**header.precisions)
    except ValueError as exc:
        raise BBDFormatError(f"{source}: invalid codec precisions ({exc})") from None


def _build_codec(cls, precisions, latent_model, source: str):
    from bits_back_diffusion.container import BBDFormatError

    try:
        return cls(latent_model, precisions)
    except ValueError as exc:  # settings this codec refuses for this process
        raise BBDFormatError(f"{source}: the codec settings do not fit the process ({exc})") from None


_SHARED_FIELDS = ("codec", "precisions", "respacing", "steps", "num_steps", "data_shape", "num_levels", "batch_size",
                  "model_sha256", "model_flags", "diffusion_flags", "clip_denoised", "likelihood_std_min", "tiling")
_RANK_FILE = re.compile(r"^compressed\.rank(\d+)\.bbd$")


def find_inputs(path: str) -> List[str]:
    """The .bbd files `input=` names: the file itself, or an encode run dir's compressed file(s)."""
    if not os.path.isdir(path):
        return [path]
    single = os.path.join(path, "compressed.bbd")
    ranks = sorted((int(m.group(1)), name) for name in os.listdir(path) if (m := _RANK_FILE.match(name)))
    if os.path.isfile(single) and ranks:
        raise DecodeError(f"{path} holds both compressed.bbd and compressed.rank<r>.bbd files; pass one file as input")
    if os.path.isfile(single):
        return [single]
    if not ranks:
        raise DecodeError(f"{path} holds no compressed.bbd or compressed.rank<r>.bbd; run encode.py into it first")
    return [os.path.join(path, name) for _, name in ranks]


def rank_of(header) -> Tuple[int, int]:
    """(rank, world size) of the encoder process that wrote this file; (0, 1) for single files."""
    return header.rank, header.world_size


def check_rank_set(parts: List[Tuple[str, object]], source: str) -> None:
    """Several files decode together only as all ranks of one encode run."""
    if len(parts) == 1:
        return
    first = parts[0][1]
    world = rank_of(first)[1]
    ranks = sorted(rank_of(h)[0] for _, h in parts)
    if ranks != list(range(world)) or any(rank_of(h)[1] != world for _, h in parts):
        raise DecodeError(f"{source}: expected the files of ranks 0..{world - 1} of one run, found ranks {ranks}")
    for path, header in parts[1:]:
        for name in _SHARED_FIELDS:
            if getattr(header, name) != getattr(first, name):
                raise DecodeError(f"{path}: {name} differs from {parts[0][0]}'s; these files are not from one run")


def _expected_initial(header):
    """The message the encoder started from (coding.initial_message_for)."""
    from bits_back_diffusion.coding import initial_message_for

    init = header.initial_message
    return initial_message_for(tuple(header.head_shape), int(init["words_per_lane"]), int(init["seed"]))


def decode_message(codec, header, message, source: str, log=print) -> np.ndarray:
    """Pop every batch of one file's message (last first); returns (num_images, C, H, W) int64 levels
    in coding order, after checking that the message ended exactly where the encoder started.

    A message that cannot hold the batches the header claims is refused as soon as it runs dry:
    encoding only ever adds generator words it borrowed (craystack's empty_pops), so a decode that
    has to borrow beyond the file's count is past the encoder's start, and stops there instead of
    decoding noise for every claimed image."""
    import craystack as cs
    from bits_back_diffusion.container import BBDFormatError

    sizes = header.batch_sizes()
    borrowed = cs.empty_pops(message)
    batches = []
    start = time.time()
    for k, size in enumerate(reversed(sizes)):
        index = len(sizes) - k
        try:
            message, x = codec.decode(message, size)
        except (ValueError, ArithmeticError, RuntimeError, IndexError) as exc:
            raise BBDFormatError(f"{source}: batch {index} does not decode ({str(exc)[:300]}); the file was not made "
                                 "by this encoder with these weights and settings, or was altered") from None
        if cs.empty_pops(message) > borrowed:
            raise BBDFormatError(
                f"{source}: the message ran dry in batch {index} of {len(sizes)}: the file holds fewer images than its "
                f"header claims ({header.num_images}), or was made with other settings; it was altered or damaged")
        batches.append(x)
        log(f"{os.path.basename(source)}: decoded batch {index}/{len(sizes)} ({size} images, "
            f"{time.time() - start:.1f}s)")
    if header.initial_message is not None and not cs.message_equal(message, _expected_initial(header)):
        raise BBDFormatError(
            f"{source}: decoding did not end at the encoder's initial message, so the images are not trustworthy; "
            "decode with the same software version and device type as the encoder"
        )
    return np.concatenate(batches[::-1]) if batches else np.zeros((0,) + header.data_shape, np.int64)


def interleave(parts: List[np.ndarray], world: int) -> np.ndarray:
    """Rank r's i-th image is dataset image r + i * world (encode.py's sharding)."""
    total = sum(len(p) for p in parts)
    out = np.zeros((total,) + parts[0].shape[1:], np.int64)
    for rank, images in enumerate(parts):
        if len(out[rank::world]) != len(images):
            raise DecodeError(f"rank {rank} holds {len(images)} images, but {total} images over {world} ranks "
                              f"give it {len(out[rank::world])}")
        out[rank::world] = images
    return out


@contextmanager
def encoder_threads(header, device, log=print) -> Iterator[None]:
    """On CPU, torch's intra-op thread count changes how sums are split and so the last bits of the
    model's outputs; decoding needs them bit-identical, so use the encoder's count (then restore)."""
    import torch

    wanted = header.device.torch_threads if header.device is not None else 0
    before = torch.get_num_threads()
    if device.type != "cpu" or not wanted or int(wanted) == before:
        yield
        return
    cores = os.cpu_count() or 1
    if wanted > cores:
        log(f"WARNING: the encoder used {wanted} torch threads and this machine has {cores} cores; decoding needs "
            f"the same count for bit-identical outputs, so it will be slower here (allow_device_mismatch)")
    log(f"using {wanted} torch threads, as the encoder did (bit-identical model outputs on CPU)")
    torch.set_num_threads(int(wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decode_input(path: str, model_path: Optional[str] = None, device: str = "", log=print,
                 allow_device_mismatch: bool = False) -> Tuple[object, List[np.ndarray], List[int]]:
    """Decode a .bbd file or an encode run dir; returns (header, pictures as (C, H, W) int64 levels,
    their numbers in the encoded dataset). `device` "" means the encoder's."""
    from bits_back_diffusion.container import read_bbd
    from bits_back_diffusion.data.tiles import TilingInfo, reassemble
    from bits_back_diffusion.latent_model import DiffusionLatentModel
    from bits_back_diffusion.runtime import set_determinism

    files = find_inputs(path)
    read = [(f, read_bbd(f)) for f in files]  # every field checked against bounds and the payload
    check_rank_set([(f, h) for f, (h, _) in read], path)
    header = read[0][1][0]
    set_determinism()
    torch_device = choose_device(header, device, allow_device_mismatch, files[0], log)
    check_threads(header, torch_device, allow_device_mismatch, files[0])
    codec_cls, precisions = codec_settings(header, files[0])
    ckpt, state = find_checkpoint(header, model_path, path, files[0])
    model, diffusion = _load_model(header, ckpt, state, torch_device, files[0])
    latent_model = DiffusionLatentModel(model, diffusion, torch_device, clip_denoised=header.clip_denoised,
                                        likelihood_std_min=header.likelihood_std_min)
    codec = _build_codec(codec_cls, precisions, latent_model, files[0])
    with encoder_threads(header, torch_device, log):
        decoded = {rank_of(h)[0]: decode_message(codec, h, m, f, log) for f, (h, m) in read}
    rank, world = rank_of(header)
    if len(read) > 1:
        images, numbers = interleave([decoded[r] for r in range(world)], world), None
    else:
        images = decoded[rank]
        numbers = [rank + i * world for i in range(len(images))]
    if header.tiling is None:
        return header, list(images), numbers if numbers is not None else list(range(len(images)))
    if len(read) == 1 and world > 1:
        raise DecodeError(f"{files[0]} is rank {rank} of {world}: the tiles of the pictures are spread over all "
                          "ranks; pass input=<the encode run dir> holding every compressed.rank<r>.bbd")
    pictures = reassemble(images, TilingInfo.from_dict(header.tiling))
    return header, pictures, list(range(len(pictures)))


def decode_file(path: str, model_path: Optional[str] = None, device: str = "",
                log=print) -> Tuple[object, List[np.ndarray]]:
    """Decode every image of a .bbd file (or run dir); returns (header, list of (C, H, W) int64 levels)."""
    header, images, _ = decode_input(path, model_path, device, log)
    return header, images


def to_pixels(levels: np.ndarray, num_levels: int, mode: str) -> np.ndarray:
    """(C, H, W) levels to (H, W) or (H, W, 3) uint8 pixels (see the module doc for `mode`)."""
    levels = np.asarray(levels, dtype=np.int64)
    if mode == "scaled" and num_levels < 256:
        levels = (levels * 255 + (num_levels - 1) // 2) // (num_levels - 1)
    pixels = levels.astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def write_pngs(images: List[np.ndarray], output_dir: str, num_levels: int, mode: str, overwrite: bool,
               numbers: Optional[List[int]] = None) -> List[str]:
    """Image k as <numbers[k]:05d>.png (default numbers: 0, 1, …)."""
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    numbers = list(range(len(images))) if numbers is None else numbers
    paths = [os.path.join(output_dir, f"{i:05d}.png") for i in numbers]
    if not overwrite:
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise DecodeError(f"{existing[0]} exists ({len(existing)} files would be replaced); "
                              "choose an empty output_dir or pass overwrite=true")
    for path, image in zip(paths, images):
        Image.fromarray(to_pixels(image, num_levels, mode)).save(path)
    return paths


def main(argv: List[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        args = parse_args(argv)
        from bits_back_diffusion.data.outputs import check_output_dir  # before the model and the long decode
        check_output_dir(args["output_dir"], args["overwrite"].lower() == "true")
        header, images, numbers = decode_input(args["input"], args["model_path"], args["device"],
                                               allow_device_mismatch=args["allow_device_mismatch"].lower() == "true")
        paths = write_pngs(images, args["output_dir"], header.num_levels, args["levels"],
                           args["overwrite"].lower() == "true", numbers)
    except ValueError as exc:  # DecodeError, BBDFormatError, ModelLoadError, DataError
        print(f"decode.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images to {args['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
