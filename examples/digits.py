"""An MLP with batch normalization and a softmax output on scikit-learn's bundled handwritten
digits (1,797 8x8 images, no download), trained with fastopt end to end.

    python examples/digits.py [--epochs 40] [--adamw] [--seed 0]

Linear(64, 128) -> BatchNorm -> ReLU -> Linear(128, 10) -> softmax cross-entropy, rows are
examples. fo.Adam (or fo.AdamW) steps every parameter including the batch-norm scales;
fo.minibatches shuffles; fo.BatchNorm and fo.softmax_cross_entropy run on fastopt's kernels.
"""
import argparse
import sys
import time

import numpy as np

import fastopt as fo


def load(seed=0):
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    X, y = X[order], y[order]
    split = int(0.8 * len(X))
    return X[:split], y[:split], X[split:], y[split:]


class MLP:
    def __init__(self, n_in=64, n_hidden=128, n_out=10, seed=0):
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2 / n_in)).astype(np.float32),
            "b1": np.zeros(n_hidden, np.float32),
            "W2": (rng.standard_normal((n_hidden, n_out)) * np.sqrt(1 / n_hidden))
            .astype(np.float32),
            "b2": np.zeros(n_out, np.float32),
        }
        self.bn = fo.BatchNorm(n_hidden, axis=0, dtype=np.float32)
        self.params["gamma"], self.params["beta"] = self.bn.gamma, self.bn.beta

    def forward(self, X, training=True):
        p = self.params
        self.X = X
        self.h = self.bn.forward(X @ p["W1"] + p["b1"], training=training)
        self.a = np.maximum(self.h, 0)
        return self.a @ p["W2"] + p["b2"]

    def backward(self, dlogits):
        p = self.params
        da = dlogits @ p["W2"].T
        dh = da * (self.h > 0)
        dz = self.bn.backward(dh)
        return {"dW2": self.a.T @ dlogits, "db2": dlogits.sum(0), "dW1": self.X.T @ dz,
                "db1": dz.sum(0), "dgamma": self.bn.dgamma, "dbeta": self.bn.dbeta}


def progress(epoch, epochs, loss):
    """The epoch's bar, moving on a terminal; piped, the last epoch's only."""
    tty = sys.stdout.isatty()
    if tty or epoch == epochs:
        done = int(30 * epoch / epochs)
        sys.stdout.write(("\r" if tty else "") + f"epoch {epoch:3d}/{epochs} "
                         f"[{'#' * done}{'.' * (30 - done)}] loss {loss:.4f}")
        sys.stdout.flush()


def run(epochs=40, adamw=False, seed=0, batch_size=64, lr=2e-3, quiet=False):
    """Train; returns (test accuracy, final train loss)."""
    X, y, X_test, y_test = load(seed)
    net = MLP(seed=seed)
    opt = (fo.AdamW(net.params, lr=lr, weight_decay=1e-2) if adamw
           else fo.Adam(net.params, lr=lr))
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total, count = 0.0, 0
        for xb, yb in fo.minibatches(X, y, batch_size=batch_size, seed=seed * 1000 + epoch):
            if len(xb) < 2:            # batch norm needs two examples
                continue
            loss, dlogits = fo.softmax_cross_entropy(net.forward(xb), yb)
            opt.step(net.backward(dlogits))
            total, count = total + loss * len(xb), count + len(xb)
        if not quiet:
            progress(epoch, epochs, total / count)
    test_acc = float(np.mean(net.forward(X_test, training=False).argmax(1) == y_test))
    if not quiet:
        print(f"\n{'AdamW' if adamw else 'Adam'}: test accuracy {test_acc:.1%} on "
              f"{len(X_test)} held-out digits ({time.perf_counter() - t0:.1f} s, backend "
              f"{fo.get_backend()})")
    return test_acc, total / count


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--adamw", action="store_true", help="AdamW (decoupled weight decay)")
    ap.add_argument("--seed", type=int, default=0, help=">= 0")
    args = ap.parse_args()
    if args.epochs < 1:
        ap.error(f"--epochs: at least 1, got {args.epochs}")
    if args.seed < 0:                       # (NumPy's generator takes no negative seed)
        ap.error(f"--seed: at least 0, got {args.seed}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("digits.py needs scikit-learn for its data: pip install 'fastopt[examples]'")
    run(args.epochs, args.adamw, args.seed)
