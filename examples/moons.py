"""The course's "Optimization Methods" experiment on fastopt: a 3-layer network on two moons,
trained with mini-batch gradient descent, momentum and Adam, then Adam with learning-rate decay.

    python examples/moons.py [--epochs 5000] [--plot plots/moons.png]

The model is the course's: layer sizes [2, 5, 2, 1], ReLU, ReLU, sigmoid, He initialization,
cross-entropy cost, batches of 64 reshuffled every epoch, lr 0.0007. Only the optimizer
functions come from fastopt (``fastopt.course``: the course's names, fastopt's kernels).
"""
import argparse
import os
import time

import numpy as np

from fastopt.course import (initialize_adam, initialize_velocity, random_mini_batches,
                            schedule_lr_decay, update_parameters_with_adam,
                            update_parameters_with_gd, update_parameters_with_momentum)


def load_moons(n=300, noise=0.2, seed=3):
    """The course's data set: scikit-learn's two moons when installed, else the same shape
    drawn with NumPy. Examples are columns: X is (2, n), Y is (1, n)."""
    try:
        from sklearn.datasets import make_moons
        np.random.seed(seed)
        X, y = make_moons(n_samples=n, noise=noise)
    except ImportError:
        rng = np.random.default_rng(seed)
        t = rng.uniform(0, np.pi, n)
        y = (np.arange(n) % 2).astype(int)
        X = np.where(y[:, None] == 0, np.c_[np.cos(t), np.sin(t)],
                     np.c_[1 - np.cos(t), 0.5 - np.sin(t)])
        X = X + rng.normal(0, noise, X.shape)
    return X.T, y.reshape(1, -1)


def initialize_parameters(layer_dims, seed=3):
    """He initialization, as the course."""
    np.random.seed(seed)
    params = {}
    for l in range(1, len(layer_dims)):
        params[f"W{l}"] = np.random.randn(layer_dims[l], layer_dims[l - 1]) \
            * np.sqrt(2 / layer_dims[l - 1])
        params[f"b{l}"] = np.zeros((layer_dims[l], 1))
    return params


def forward(X, p):
    z1 = p["W1"] @ X + p["b1"]
    a1 = np.maximum(0, z1)
    z2 = p["W2"] @ a1 + p["b2"]
    a2 = np.maximum(0, z2)
    z3 = p["W3"] @ a2 + p["b3"]
    a3 = 1 / (1 + np.exp(-z3))
    return a3, (z1, a1, z2, a2, z3, a3)


def cost(a3, Y):
    """Summed cross-entropy (the course divides by m per epoch)."""
    logprobs = np.multiply(-np.log(a3), Y) + np.multiply(-np.log(1 - a3), 1 - Y)
    return np.sum(logprobs)


def backward(X, Y, p, cache):
    m = X.shape[1]
    z1, a1, z2, a2, z3, a3 = cache
    dz3 = 1.0 / m * (a3 - Y)
    grads = {"dW3": dz3 @ a2.T, "db3": dz3.sum(axis=1, keepdims=True)}
    da2 = p["W3"].T @ dz3
    dz2 = da2 * (a2 > 0)
    grads.update(dW2=dz2 @ a1.T, db2=dz2.sum(axis=1, keepdims=True))
    da1 = p["W2"].T @ dz2
    dz1 = da1 * (a1 > 0)
    grads.update(dW1=dz1 @ X.T, db1=dz1.sum(axis=1, keepdims=True))
    return grads


def model(X, Y, optimizer, learning_rate=0.0007, mini_batch_size=64, beta=0.9, beta1=0.9,
          beta2=0.999, epsilon=1e-8, num_epochs=5000, decay=False, decay_rate=1.0):
    """The course's training loop; returns the parameters and the cost every 1000 epochs."""
    params = initialize_parameters([X.shape[0], 5, 2, 1])
    v = s = None
    if optimizer == "momentum":
        v = initialize_velocity(params)
    elif optimizer == "adam":
        v, s = initialize_adam(params)
    t, seed, costs, lr = 0, 10, [], learning_rate
    for epoch in range(num_epochs):
        seed += 1                                   # reshuffled every epoch, as the course
        total = 0.0
        for mb_X, mb_Y in random_mini_batches(X, Y, mini_batch_size, seed):
            a3, cache = forward(mb_X, params)
            total += cost(a3, mb_Y)
            grads = backward(mb_X, mb_Y, params, cache)
            if optimizer == "gd":
                params = update_parameters_with_gd(params, grads, lr)
            elif optimizer == "momentum":
                params, v = update_parameters_with_momentum(params, grads, v, beta, lr)
            else:
                t += 1
                params, v, s, _, _ = update_parameters_with_adam(params, grads, v, s, t, lr,
                                                                 beta1, beta2, epsilon)
        if decay:
            lr = schedule_lr_decay(learning_rate, epoch, decay_rate)
        if epoch % 1000 == 0:
            costs.append(total / X.shape[1])
    return params, costs


def accuracy(X, Y, params):
    return float(np.mean((forward(X, params)[0] > 0.5) == Y))


def run(epochs=5000, plot=None):
    """Train the four variants; returns {name: (accuracy, seconds)} and prints a table."""
    X, Y = load_moons()
    runs = [("gradient descent", "gd", {}), ("momentum", "momentum", {}),
            ("adam", "adam", {}), ("adam + lr decay", "adam",
                                   dict(learning_rate=0.01, decay=True, decay_rate=1.0))]
    results, fitted = {}, {}
    print(f"two moons, 300 points, {epochs} epochs of batch 64")
    for name, opt, kw in runs:
        t0 = time.perf_counter()
        params, costs = model(X, Y, opt, num_epochs=epochs, **kw)
        seconds = time.perf_counter() - t0
        acc = accuracy(X, Y, params)
        results[name], fitted[name] = (acc, seconds), params
        # (costs holds every 1000th epoch's, as the course plots them: the trained model's own)
        final = cost(forward(X, params)[0], Y) / X.shape[1]
        print(f"  {name:<18} train accuracy {acc:6.1%}   {seconds:6.2f} s   "
              f"final cost {final:.4f}")
    if plot:
        plot_boundaries(X, Y, fitted, plot)
    return results


def plot_problem(path):
    """Why matplotlib could not save a figure at ``path``, or None (its directory is made)."""
    import tempfile
    if not path:
        return "an empty path"
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return "needs matplotlib (pip install 'fastopt[examples]')"
    ext = os.path.splitext(path)[1][1:].lower() or "png"
    if ext not in FigureCanvasBase.get_supported_filetypes():
        return f"matplotlib writes no {ext!r} files"
    if os.path.isdir(path):
        return "a directory"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tempfile.TemporaryFile(dir=os.path.dirname(path) or ".").close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def plot_boundaries(X, Y, fitted, path):
    import matplotlib           # (plot_problem checked that it is installed)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xx, yy = np.meshgrid(np.linspace(X[0].min() - 1, X[0].max() + 1, 200),
                         np.linspace(X[1].min() - 1, X[1].max() + 1, 200))
    grid = np.c_[xx.ravel(), yy.ravel()].T
    fig, axes = plt.subplots(1, len(fitted), figsize=(4 * len(fitted), 4))
    for ax, (name, params) in zip(axes, fitted.items()):
        zz = (forward(grid, params)[0] > 0.5).reshape(xx.shape)
        ax.contourf(xx, yy, zz, cmap=plt.cm.Spectral, alpha=0.8)
        ax.scatter(X[0], X[1], c=Y[0], cmap=plt.cm.Spectral, s=8)
        ax.set_title(name)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    stem, ext = os.path.splitext(path)
    if not ext[1:]:             # (as savefig names it: "name" and "name." write name.png)
        path = stem + ".png"
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5000)
    ap.add_argument("--plot", metavar="PATH", help="save the decision boundaries (matplotlib)")
    args = ap.parse_args()
    if args.epochs < 1:
        ap.error(f"--epochs: at least 1, got {args.epochs}")
    if args.plot is not None:   # checked before the training, not after it (it ended in a traceback)
        problem = plot_problem(args.plot)
        if problem:
            ap.error(f"--plot {args.plot}: {problem}")
    run(args.epochs, args.plot)
