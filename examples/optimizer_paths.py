"""Why momentum, RMSprop and Adam help, made real: every fastopt optimizer started from the
same point on a saddle, the Rosenbrock valley and the Beale function.

    python examples/optimizer_paths.py [--steps 2000] [--plot [DIR]]

Prints each optimizer's final loss and the steps it took to get within 1e-3 of the minimum
(the saddle has none: there, how many steps it took to escape, starting almost on the ridge);
with --plot, one figure per surface with every path over the contours, in DIR (default
plots/, which git ignores).
"""
import argparse
import os

import numpy as np

import fastopt as fo

SURFACES = {
    # name: (f, grad, start, minimum value or None, plot window)
    "saddle": (lambda x, y: x ** 2 - y ** 2,
               lambda x, y: np.array([2 * x, -2 * y]),
               (1.0, 1e-3), None, (-1.5, 1.5, -1.5, 1.5)),
    "rosenbrock": (lambda x, y: (1 - x) ** 2 + 100 * (y - x ** 2) ** 2,
                   lambda x, y: np.array([-2 * (1 - x) - 400 * x * (y - x ** 2),
                                          200 * (y - x ** 2)]),
                   (-1.5, 2.0), 0.0, (-2, 2, -1, 3)),
    "beale": (lambda x, y: ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2
                            + (2.625 - x + x * y ** 3) ** 2),
              lambda x, y: np.array([
                  2 * (1.5 - x + x * y) * (y - 1) + 2 * (2.25 - x + x * y ** 2) * (y ** 2 - 1)
                  + 2 * (2.625 - x + x * y ** 3) * (y ** 3 - 1),
                  2 * (1.5 - x + x * y) * x + 2 * (2.25 - x + x * y ** 2) * 2 * x * y
                  + 2 * (2.625 - x + x * y ** 3) * 3 * x * y ** 2]),
              (1.0, 1.5), 0.0, (-0.5, 4, -1.5, 2)),
}

OPTIMIZERS = {
    "SGD": lambda p: fo.SGD(p, lr=1e-3),
    "SGD+Nesterov": lambda p: fo.SGD(p, lr=1e-3, momentum=0.9, nesterov=True),
    "Momentum": lambda p: fo.Momentum(p, lr=1e-2, beta=0.9),
    "RMSprop": lambda p: fo.RMSprop(p, lr=1e-2),
    "Adagrad": lambda p: fo.Adagrad(p, lr=0.5),
    "Adadelta": lambda p: fo.Adadelta(p, lr=10.0),
    "Adam": lambda p: fo.Adam(p, lr=2e-2),
    "AdamW": lambda p: fo.AdamW(p, lr=2e-2, weight_decay=1e-3),
    "Adamax": lambda p: fo.Adamax(p, lr=2e-2),
    "NAdam": lambda p: fo.NAdam(p, lr=2e-2),
    "RAdam": lambda p: fo.RAdam(p, lr=2e-3),   # its first 5 steps are plain momentum SGD
    "Lion": lambda p: fo.Lion(p, lr=2e-3),     # steps of lr in each coordinate (the sign)
}

# one colour per optimizer (matplotlib's 10 distinct ones, then black and gold), and the line
# style cycling too, so paths that overlap stay apart
_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "gold"]
STYLES = {name: dict(color=_COLORS[k], linestyle=["-", "--", "-.", ":"][k % 4])
          for k, name in enumerate(OPTIMIZERS)}


def descend(surface, make_opt, steps):
    f, grad, start, fmin, _ = SURFACES[surface]
    xy = np.array(start, dtype=np.float64)
    opt = make_opt([xy])
    path, converged = [xy.copy()], None
    for t in range(1, steps + 1):
        g = grad(*xy)
        if not np.all(np.isfinite(g)):
            break
        opt.step([g])
        path.append(xy.copy())
        if np.abs(xy).max() > 10:       # left the picture (the saddle's only way out)
            break
        if converged is None and fmin is not None and f(*xy) - fmin < 1e-3:
            converged = t
    return np.array(path), converged


def run(steps=2000, plot=None):
    results = {}
    for surface, (f, _, start, fmin, _) in SURFACES.items():
        print(f"{surface} from {start}: final loss, steps to within 1e-3 of the minimum")
        for name, make in OPTIMIZERS.items():
            path, converged = descend(surface, make, steps)
            loss = float(f(*path[-1]))
            results[surface, name] = (loss, converged, path)
            if fmin is not None:
                note = f"{converged:5d} steps" if converged else "   never"
            elif np.abs(path[-1]).max() > 10:
                note = f"escaped in {len(path) - 1} steps"
            else:
                x, y = path[-1]
                note = f"inside |x|, |y| <= 10 after {len(path) - 1} steps, at ({x:.3g}, {y:.3g})"
            print(f"  {name:<13} {loss:12.4g}  {note}")
    if plot:
        plot_paths(results, plot)
    return results


def plot_paths(results, outdir):
    import matplotlib           # (checked before the descents)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(outdir, exist_ok=True)
    for surface in SURFACES:
        fig, ax = plt.subplots(figsize=(7, 6))
        draw(ax, surface, results)
        path = os.path.join(outdir, f"{surface}.png")
        fig.savefig(path)
        plt.close(fig)
        print(f"wrote {path}")


def draw(ax, surface, results):
    """The surface's contours and every optimizer's path, each in its own style."""
    f, _, _, _, (x0, x1, y0, y1) = SURFACES[surface]
    xx, yy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    zz = f(xx, yy)
    levels = np.quantile(zz, np.linspace(0, 1, 30)) if surface != "saddle" else 30
    ax.contour(xx, yy, zz, levels=levels, cmap="gray", linewidths=0.5)
    for name in OPTIMIZERS:
        path = results[surface, name][2]
        ax.plot(path[:, 0], path[:, 1], label=name, linewidth=1.2, **STYLES[name])
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(surface)
    ax.legend(fontsize=7)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--plot", metavar="DIR", nargs="?", const="plots",
                    help="save one figure per surface (matplotlib) in DIR (default: plots)")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error(f"--steps: at least 1, got {args.steps}")
    if args.plot is not None:   # checked before the descents, not after them (a traceback)
        import importlib.util
        import tempfile
        if not args.plot:
            ap.error("--plot : an empty path (a directory to write the figures in)")
        if importlib.util.find_spec("matplotlib") is None:
            ap.error(f"--plot {args.plot}: needs matplotlib (pip install 'fastopt[examples]')")
        try:
            os.makedirs(args.plot, exist_ok=True)
            tempfile.TemporaryFile(dir=args.plot).close()
        except OSError as exc:
            ap.error(f"--plot {args.plot}: {exc.strerror or exc}")
    run(args.steps, args.plot)
