"""A torch MLP on scikit-learn's bundled digits (1,797 8x8 images, no download), trained twice
from the same initial weights on the same batches: with torch.optim.AdamW and with
fastopt.torch.AdamW, the one-line change. Both reach the same accuracy; both times are printed.

    python examples/torch_mlp.py [--epochs 20] [--seed 0] [--bf16] [--threads 1]

At this size a training step is mostly per-call overhead, which is what the times compare
(torch runs one thread by default here: its OpenMP teams only wait on matrices this small).
``--bf16`` keeps the parameters in bfloat16 with fastopt's float32 master copies (torch.optim
then keeps bfloat16 moments, and its accuracy may trail).
"""
import argparse
import sys
import time

import numpy as np

try:
    import torch
except ImportError:
    sys.exit("torch_mlp.py needs torch and scikit-learn: pip install 'fastopt[torch,examples]'")

import fastopt.torch


def load(seed=0):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    X, y = torch.tensor(X[order] / 16.0, dtype=torch.float32), torch.tensor(y[order])
    split = int(0.8 * len(X))
    return X[:split], y[:split], X[split:], y[split:]


def model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Linear(128, 10)).to(dtype)


def train(optimizer_class, epochs=20, seed=0, batch_size=64, lr=2e-3, dtype=torch.float32):
    """Returns (held-out accuracy, seconds in the training loop, seconds in optimizer.step)."""
    X, y, X_test, y_test = load(seed)
    X, X_test = X.to(dtype), X_test.to(dtype)
    net = model(seed, dtype)
    opt = optimizer_class(net.parameters(), lr=lr, weight_decay=1e-2)
    batches = torch.Generator().manual_seed(seed)
    in_step = 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=batches).split(batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(X[idx]).float(), y[idx])
            loss.backward()
            t = time.perf_counter()
            opt.step()
            in_step += time.perf_counter() - t
    total = time.perf_counter() - start
    with torch.no_grad():
        accuracy = (net(X_test).argmax(1) == y_test).float().mean().item()
    return accuracy, total, in_step


def run(epochs=20, seed=0, dtype=torch.float32, quiet=False):
    results = {}
    for label, cls in (("torch.optim.AdamW", torch.optim.AdamW),
                       ("fastopt.torch.AdamW", fastopt.torch.AdamW)):
        results[label] = train(cls, epochs=epochs, seed=seed, dtype=dtype)
        if not quiet:
            acc, total, in_step = results[label]
            print(f"{label:20s} accuracy {acc:.3f}   loop {total:6.2f} s   "
                  f"of which step {in_step:6.3f} s")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="0 to 2**64 - 1")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch's threads")
    args = parser.parse_args()
    for name in ("epochs", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: at least 1, got {getattr(args, name)}")
    if not 0 <= args.seed < 2**64:          # (NumPy's generator and torch's range)
        parser.error(f"--seed: 0 to 2**64 - 1, got {args.seed}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("torch_mlp.py needs scikit-learn for its data: pip install "
                 "'fastopt[torch,examples]'")
    torch.set_num_threads(args.threads)
    print(f"fastopt backend: {fastopt.get_backend()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    run(args.epochs, args.seed, torch.bfloat16 if args.bf16 else torch.float32)
