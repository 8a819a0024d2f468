"""Mini-batch iteration over paired arrays."""
import numpy as np


def minibatches(X, Y, batch_size=64, axis=0, shuffle=True, seed=None):
    """Yield ``(X_t, Y_t)`` for one epoch: examples along ``axis`` of both arrays (``axis=-1``
    for the course's column layout), shuffled in sync (``seed`` makes it repeatable), the last
    batch smaller when ``batch_size`` does not divide the number of examples."""
    X = np.asarray(X)
    Y = np.asarray(Y)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size!r} (must be a positive int)")
    m = X.shape[axis]
    y_axis = axis if axis >= 0 else Y.ndim + axis
    if Y.shape[y_axis] != m:
        raise ValueError(f"X has {m} examples along axis {axis} but Y has {Y.shape[y_axis]}")
    order = np.random.default_rng(seed).permutation(m) if shuffle else np.arange(m)
    for start in range(0, m, batch_size):
        idx = order[start:start + batch_size]
        yield np.take(X, idx, axis=axis), np.take(Y, idx, axis=y_axis)
