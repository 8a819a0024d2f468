"""The same training run on every fastopt backend and the NumPy reference: the time differs,
the final loss does not.

    python examples/swap_backend.py [--steps 200] [--size 100000]

A least-squares model with a few large parameters and Adam, stepped from the same start with
the same mini-batches on each backend; the element-wise kernels are bit-identical across
backends, so the final losses print the same to every digit.
"""
import argparse
import os
import time

import numpy as np

import fastopt as fo


def train(backend, steps, size, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.standard_normal(size).astype(np.float32)
    params = {"w": np.zeros(size, np.float32), "b": np.zeros(1, np.float32)}
    with fo.use_backend(backend):
        opt = fo.Adam(params, lr=1e-2)
        t0 = time.perf_counter()
        for _ in range(steps):
            noise = rng.standard_normal(size).astype(np.float32) * 0.1
            residual = params["w"] + params["b"] - (target + noise)
            opt.step({"dw": residual, "db": np.array([residual.mean()], np.float32)})
        seconds = time.perf_counter() - t0
    loss = float(np.mean((params["w"] + params["b"] - target) ** 2))
    return loss, seconds


def run(steps=200, size=100_000):
    print(f"Adam, {steps} steps on {size} parameters (float32); backends: {fo.backends()}")
    # times on a busy machine mostly measure the others: say how busy it is
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"  {fo.get_num_threads()} threads on {os.cpu_count()} CPUs, load average {load:.2f}")
    results = {}
    for backend in fo.backends():
        train(backend, 2, 1000)                      # warm-up (numba compiles)
        loss, seconds = train(backend, steps, size)
        results[backend] = loss
        print(f"  {backend:<7} final loss {loss:.17g}   {seconds * 1e3:8.1f} ms")
    same = len(set(results.values())) == 1
    print("identical final loss on every backend" if same else "final losses differ!")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--size", type=int, default=100_000)
    args = ap.parse_args()
    for name in ("steps", "size"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: at least 1, got {getattr(args, name)}")
    run(args.steps, args.size)
