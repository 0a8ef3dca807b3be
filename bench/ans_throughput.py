"""Throughput of craystack's vectorized rANS codecs.

For each codec, times one push and one pop of a full head of symbols and
prints symbols per second (push + pop) together with the cost of a push and
of a pop relative to ``np.random.standard_normal`` of the same shape, a
ratio that depends little on the machine.

    python bench/ans_throughput.py [--shape 64,3,32,32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import craystack as cs  # noqa: E402


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_codec(name, make, symbols, shape, repeats, ref):
    t0 = time.perf_counter()
    codec = make()
    t_build = time.perf_counter() - t0
    message = cs.random_message(1 + 2 * int(np.prod(shape)) + 4096, shape, seed=1)
    pushed, = codec.push(message, symbols)
    t_push = best_time(lambda: codec.push(message, symbols), repeats)
    t_pop = best_time(lambda: codec.pop(pushed), repeats)
    popped, out = codec.pop(pushed)
    assert np.array_equal(out, symbols) and cs.message_equal(popped, message), name
    n = int(np.prod(shape))
    print(f"{name:<44s} build {t_build * 1e3:8.1f} ms  push {t_push * 1e3:7.1f} ms"
          f"  pop {t_pop * 1e3:7.1f} ms  {n / (t_push + t_pop) / 1e6:6.2f} Msym/s"
          f"  push/randn {t_push / ref:5.2f}  pop/randn {t_pop / ref:5.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,3,32,32",
                        help="head shape, comma separated (default 64,3,32,32)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing repeats; the best is reported (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(args.seed)

    ref = best_time(lambda: np.random.standard_normal(shape), args.repeats)
    n = int(np.prod(shape))
    print(f"head shape {shape} ({n} lanes); np.random.standard_normal: {ref * 1e3:.2f} ms")

    # Categorical: 256 symbols with random per-lane probabilities
    probs = rng.dirichlet(np.ones(256), size=shape).astype(np.float32)
    cum = np.cumsum(probs.astype(np.float64), axis=-1)
    u = rng.random(shape)[..., None] * cum[..., -1:]
    sym = np.minimum((cum < u).sum(-1), 255)
    bench_codec("Categorical(256 symbols, prec 16)",
                lambda: cs.Categorical(probs, 16), sym, shape, args.repeats, ref)
    del probs, cum, u

    mean = rng.normal(size=shape)
    stdd = np.exp(rng.normal(size=shape) - 1.0)
    z = mean + stdd * rng.normal(size=shape)
    edges = cs.std_gaussian_buckets(16)
    sym = np.clip(np.searchsorted(edges, z) - 1, 0, (1 << 16) - 1)
    bench_codec("DiagGaussian_StdBins(bin 16, coding 24)",
                lambda: cs.DiagGaussian_StdBins(mean, stdd, 24, 16),
                sym, shape, args.repeats, ref)

    bin_mean = mean + 0.1 * rng.normal(size=shape)
    bin_stdd = stdd * np.exp(0.1 * rng.normal(size=shape))
    std_edges = cs.std_gaussian_buckets(10)
    sym = np.clip(np.searchsorted(std_edges, (z - bin_mean) / bin_stdd) - 1, 0, 1023)
    bench_codec("DiagGaussian_GaussianBins(bin 10, coding 18)",
                lambda: cs.DiagGaussian_GaussianBins(mean, stdd, bin_mean, bin_stdd, 18, 10),
                sym, shape, args.repeats, ref)

    x = np.clip(np.round((rng.uniform(-1, 1, size=shape) + 1) * 127.5), 0, 255).astype(np.int64)
    mean_x = (x / 127.5 - 1.0) + 0.02 * rng.normal(size=shape)
    bench_codec("DiscretizedGaussian(256 levels, coding 16)",
                lambda: cs.DiscretizedGaussian(mean_x, np.full(shape, 0.02), 256, 16),
                x, shape, args.repeats, ref)


if __name__ == "__main__":
    main()
