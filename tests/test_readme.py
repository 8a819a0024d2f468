"""The README's Python blocks run as written, and its ``python -m fastopt`` commands parse.

The README's blocks are fragments of a user's training script: they use names the reader
supplies (their data ``X, Y``, their ``backward``, their model). The rule, visible here rather
than a silent filter:

- every ```` ```python ```` block of README.md runs, in a fresh namespace holding
  ``np`` and ``fo`` (the imports of the README's first block) plus, for a block that holds one
  of READER_SUPPLIES' markers, that entry's names (the reader's data, small and made up here);
  a block using any other undefined name fails with NameError;
- a block that imports torch or mpi4py is skipped when that package is absent (named in the
  skip reason); the mpi4py block runs on ``MPI.COMM_WORLD`` of this one process;
- after a block, its entry's check asserts what the README's text around it says;
- every ``python -m fastopt ...`` command of README.md and bench/README.md (code spans and
  ```` ```bash ```` lines) is accepted by its parser; one with ``--torch`` or ``--mpi`` is
  skipped when torch or mpi4py is absent (COMMAND_NEEDS).

Cost: well under a second without torch's import (~1.5 s with it)."""
import importlib.util
import os
import re
import shlex

import numpy as np
import pytest

import fastopt as fo

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
BENCH_README = os.path.join(os.path.dirname(__file__), "..", "bench", "README.md")


def _read(path):
    if not os.path.exists(path):
        pytest.skip(f"no {os.path.basename(path)} next to the tests")
    with open(path, encoding="utf-8") as f:
        return f.read()


def python_blocks(text):
    """The ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def _course_data(ns):
    rng = np.random.default_rng(0)
    ns["X"], ns["Y"] = rng.standard_normal((2, 150)), (rng.random((1, 150)) > 0.5) * 1.0

    def backward(X_t, Y_t, parameters):     # a linear layer's grads, enough to step on
        dz = parameters["W1"] @ X_t + parameters["b1"] - Y_t
        return {"dW1": dz @ X_t.T / X_t.shape[1], "db1": dz.mean(axis=1, keepdims=True)}
    ns["backward"] = backward


def _course_check(ns):
    # "updates parameters in place": the dict's arrays are the ones the optimizer stepped
    assert ns["opt"].param_groups[0]["params"][0] is ns["parameters"]["W1"]
    assert 0 in ns["opt"].state, "never stepped"
    assert int(ns["opt"].state[0]["step"]) == 100 * 3           # 150 examples, batches of 64
    assert np.any(ns["parameters"]["b1"] != 0)


def _torch_style_data(ns):
    rng = np.random.default_rng(1)
    for name, shape in (("W1", (4, 3)), ("b1", (4, 1)), ("W2", (2, 4)), ("b2", (2, 1))):
        ns[name] = rng.standard_normal(shape)
        ns["d" + name] = rng.standard_normal(shape)
    ns["start"] = {n: ns[n].copy() for n in ("W1", "b1", "W2", "b2")}


def _torch_style_check(ns):
    sd, start = ns["sd"], ns["start"]
    # "flattened group order": W1, W2 (lr 0.1), then b1, b2 (lr 0.01); SGD's first step with
    # momentum has buffer = grad, and nesterov steps by g + momentum * buffer
    for name, lr in (("W1", 0.1), ("W2", 0.1), ("b1", 0.01), ("b2", 0.01)):
        g = ns["d" + name]
        np.testing.assert_allclose(ns[name], start[name] - lr * (g + 0.9 * g), rtol=1e-12)
    # "torch.optim's layout, NumPy arrays"
    assert sorted(sd) == ["param_groups", "state"]
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    assert isinstance(sd["state"][0]["momentum_buffer"], np.ndarray)
    # "every group's lr = fn(epoch), from 0": the block's step set fn(0) = 0.1, the next fn(1)
    assert [g["lr"] for g in ns["opt"].param_groups] == [0.1, 0.1]
    assert ns["sched"].step() == 0.05 and ns["opt"].lr == 0.05


def _arena_data(ns):
    rng = np.random.default_rng(2)
    ns["dW1"] = rng.standard_normal((256, 784)).astype(np.float32)
    ns["db1"] = rng.standard_normal((256, 1)).astype(np.float32)
    ns["W1_saved"] = rng.standard_normal((256, 784)).astype(np.float32)


def _arena_check(ns):
    arena, W1 = ns["arena"], ns["W1"]
    # "copies into the arena too (the view stays)"
    assert np.shares_memory(W1, arena.flat_params) and np.array_equal(W1, ns["W1_saved"])
    assert arena.params["W1"] is W1 or np.shares_memory(arena.params["W1"], W1)
    np.testing.assert_array_equal(arena.grads["dW1"], ns["dW1"])
    assert np.any(ns["b1"] != 0)                    # stepped in place
    step = ns["opt"].state[0]["step"]               # "a read-only 0-d array"
    assert step.shape == () and not step.flags.writeable and int(step) == 1


def _torch_data(ns):
    import torch
    ns["model"] = torch.nn.Linear(3, 2)


def _torch_check(ns):
    import torch
    opt, model = ns["opt"], ns["model"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 1e-2
    model(torch.ones(1, 3)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight)


def _mpi_data(ns):
    rng = np.random.default_rng(3)
    ns["W1_init"] = rng.standard_normal((256, 784)).astype(np.float32)
    grads = rng.standard_normal((256, 784)).astype(np.float32)
    ns["batches"] = [(None, None)] * 2
    ns["backward"] = lambda X_t, Y_t: {"dW1": grads}


def _mpi_check(ns):
    # "the same model on every rank": one process steps as fo.AdamW would
    W1, opt = ns["W1"], ns["opt"]
    assert not np.array_equal(W1, ns["W1_init"])
    assert int(opt.state_dict()["state"][0]["step"]) == 2


# marker (a string of the block) -> (what the reader supplies, what the text says)
READER_SUPPLIES = {
    "fo.minibatches(X, Y": (_course_data, _course_check),
    "opt = fo.SGD([{": (_torch_style_data, _torch_style_check),
    "arena = fo.ParameterArena(np.float32)\nW1 = arena.add(\"W1\", (256, 784), init=np.random":
        (_arena_data, _arena_check),
    "from fastopt.torch import AdamW": (_torch_data, _torch_check),
    "from mpi4py import MPI": (_mpi_data, _mpi_check),
}
# a block importing the module on the left (a command with the option): skipped without the
# package on the right
NEEDS = {"torch": "torch", "fastopt.torch": "torch", "mpi4py": "mpi4py"}
COMMAND_NEEDS = {"--torch": "torch", "--mpi": "mpi4py"}


def _entry(block):
    found = [entry for marker, entry in READER_SUPPLIES.items() if marker in block]
    assert len(found) <= 1, "a README block matches two READER_SUPPLIES markers"
    return found[0] if found else (None, None)


def _needs(block):
    return [NEEDS[m] for m in NEEDS
            if re.search(rf"^\s*(from|import) {re.escape(m)}\b", block, re.M)]


def _skip_without(packages, what):
    for pkg in packages:
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{what} needs {pkg}, which is not installed")


def run_block(block):
    """Run one README block as the module docstring says; returns its namespace."""
    _skip_without(_needs(block), "the README block")
    supply, check = _entry(block)
    ns = {"np": np, "fo": fo, "__name__": "__readme__"}
    if supply is not None:
        supply(ns)
    exec(compile(block, "README.md", "exec"), ns)
    if check is not None:
        check(ns)
    return ns


BLOCKS = python_blocks(_read(README)) if os.path.exists(README) else []


def test_the_readme_has_its_python_blocks():
    # an extraction that found nothing would pass every block's test
    assert len(BLOCKS) >= 6
    for marker in READER_SUPPLIES:       # a marker that matches no block checks nothing
        assert sum(marker in b for b in BLOCKS) == 1, marker


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_python_block_runs_as_written(index):
    with fo.use_backend(fo.get_backend()):
        run_block(BLOCKS[index])


def test_the_readme_block_check_can_fail():
    course = next(b for b in BLOCKS if "fo.minibatches(X, Y" in b)
    with pytest.raises(TypeError):              # an argument the function does not take
        run_block(course.replace("axis=-1", "axes=-1"))
    with pytest.raises(NameError):              # a name neither the block nor the reader has
        run_block("opt = fo.Adam(params)")
    with pytest.raises(AssertionError):         # runs, but not as the text says
        run_block(course.replace("opt.step(grads)", "pass"))


def fastopt_commands(text):
    """The ``python -m fastopt ...`` commands of a Markdown text: its code spans (which may
    wrap across lines) and the lines of its ```bash blocks, without comments and pipes."""
    found = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", text.replace("```", "\0"))]
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        found += block.splitlines()
    commands = []
    for line in found:
        m = re.search(r"python -m fastopt\b([^#|&]*)", line)
        if m:
            commands.append(m.group(1).strip())
    return commands


COMMANDS = list(dict.fromkeys(
    (name, command) for name, path in (("README", README), ("bench-README", BENCH_README))
    if os.path.exists(path) for command in fastopt_commands(_read(path))))


def test_the_readmes_show_fastopt_commands():
    assert ("README", "") in COMMANDS and ("README", "--torch") in COMMANDS
    assert len([c for name, c in COMMANDS if name == "bench-README"]) >= 2


@pytest.mark.parametrize("where, command", COMMANDS,
                         ids=[f"{w}:{c or '(none)'}" for w, c in COMMANDS])
def test_the_readmes_fastopt_commands_parse(where, command):
    """Each ``python -m fastopt`` command the READMEs show is accepted by the command line
    (parse_args only: nothing is timed)."""
    from fastopt.__main__ import parse_args
    argv = shlex.split(command)
    _skip_without([pkg for option, pkg in COMMAND_NEEDS.items() if option in argv],
                  f"python -m fastopt {command}")
    try:
        parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: python -m fastopt {command}: usage error ({exc.code})")


def test_the_command_check_can_fail():
    from fastopt.__main__ import parse_args
    assert fastopt_commands("run `python -m fastopt --no-such\n--option` then") == \
        ["--no-such --option"]
    with pytest.raises(SystemExit):
        parse_args(shlex.split("--no-such --option"))
