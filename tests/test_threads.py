"""The compiled backends' threads: bit-identical results for any thread count, calls from
several Python threads at once, a call after fork, a fork during a step in another thread, the
default count and threadpoolctl."""
import contextlib
import copy
import hashlib
import io
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import warnings
from unittest import mock

import numpy as np
import pytest

import fastopt as fo
from fastopt import _threads

from conftest import COMPILED, WatchedLock, c_math_library, held_at

# above the size where the kernels go parallel, odd so the last chunk is a partial one
N = 3 * 65536 + 7


def adam_steps(n, dtype, steps=3, seed=0, pieces=None):
    """Params after ``steps`` Adam steps on fresh arrays (``pieces``: split into that many
    arrays and step them with one foreach call)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t in range(1, steps + 1):
        if pieces:
            cuts = np.linspace(0, n, pieces + 1).astype(int)[1:-1]
            fo.ops.foreach_adam_step_(*(np.split(a, cuts) for a in (p, g, m, v)), t, lr=0.1,
                                      weight_decay=0.01)
        else:
            fo.ops.adam_step_(p, g, m, v, t, lr=0.1, weight_decay=0.01)
    return p, m, v


def skip_numba_off_tbb(backend):
    """Skip the numba backend where Numba is not meant to run on its oneTBB layer (a
    NUMBA_THREADING_LAYER chosen, or a platform without the tbb wheel): its fork safety and the
    caller's floating-point environment in its threads are the oneTBB layer's (README), which
    Numba's OpenMP and workqueue layers do not give. Where it is meant to, another layer is a
    broken install, which these tests then fail."""
    if backend != "numba":
        return
    from fastopt._numba import _common
    if not _common.TBB_EXPECTED:
        pytest.skip("Numba is not meant to run on its oneTBB layer here")


@pytest.fixture(params=COMPILED)
def compiled(request):
    threads = fo.get_num_threads()
    with fo.use_backend(request.param):
        yield request.param
    fo.set_num_threads(threads)


@pytest.mark.parametrize("pieces", [None, 37])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bit_identical_for_1_to_5_threads(compiled, dtype, pieces):
    results = []
    for threads in (1, 2, 3, 5):
        fo.set_num_threads(threads)
        results.append(adam_steps(N, dtype, pieces=pieces))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("pieces", [None, 37])
def test_the_openmp_team_gives_the_pools_bits(compiled, pieces):
    """fastopt.torch runs its long steps on the OpenMP team (fo_pool.h; 16 chunks or more,
    which this size makes): same chunks, same bits."""
    from fastopt import _backend
    n = 18 * 65536 + 7
    fo.set_num_threads(2)
    expected = adam_steps(n, np.float32, pieces=pieces)
    for threads in (1, 2, 3):
        fo.set_num_threads(threads)
        was = _backend.active.use_openmp_team(True)
        try:
            got = adam_steps(n, np.float32, pieces=pieces)
        finally:
            assert _backend.active.use_openmp_team(was) is (compiled == "cython")
        for a, b in zip(got, expected):
            assert a.tobytes() == b.tobytes()


@contextlib.contextmanager
def floating_point_environment(control):
    """This thread's MXCSR control bits set to ``control`` (bits 6-15: DAZ, the exception
    masks, the rounding mode, FTZ), restored after: through glibc's fegetenv/fesetenv, whose
    x86-64 fenv_t holds MXCSR at byte 28 (read back: it took)."""
    import ctypes
    import platform
    libm = c_math_library("sets MXCSR")
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("sets MXCSR through glibc's fenv_t")
    env = (ctypes.c_uint32 * 8)()
    assert libm.fegetenv(env) == 0
    saved = env[7]
    env[7] = saved & 0x3F | control
    assert libm.fesetenv(env) == 0
    check = (ctypes.c_uint32 * 8)()
    assert libm.fegetenv(check) == 0 and check[7] & 0xFFC0 == control
    try:
        yield
    finally:
        env[7] = saved
        libm.fesetenv(env)


DEFAULT_ENVIRONMENT = 0x1F80           # every exception masked, to nearest
FLUSH_TO_ZERO = 0x1F80 | 0x8040       # the default masks, FTZ and DAZ (as -ffast-math loads)
ROUND_TOWARD_ZERO = 0x1F80 | 0x6000


@pytest.mark.parametrize("control", [FLUSH_TO_ZERO, ROUND_TOWARD_ZERO],
                         ids=["ftz-daz", "toward-zero"])
def test_every_thread_computes_in_the_callers_floating_point_environment(compiled, control):
    """A caller whose MXCSR is not the default (a library built with -ffast-math sets FTZ and
    DAZ when it is loaded; fesetround sets the rounding mode): the pool's helpers and the
    OpenMP team run their chunks in the caller's environment too (fo_pool.h), so a step gives
    the reference's bits in it, on any thread count, and a layer the same bits on any thread
    count. Before, the helpers' chunks were computed to nearest with subnormals kept."""
    from fastopt import _backend
    skip_numba_off_tbb(compiled)
    n = 18 * 65536 + 7                          # 16 chunks or more: the team takes it too
    rng = np.random.default_rng(5)
    p0 = (rng.standard_normal(n) * 2.0 ** -120).astype(np.float32)   # subnormal results
    g = rng.standard_normal(n).astype(np.float32)
    z = (rng.standard_normal((256, 1000)) * 40).astype(np.float32)   # subnormal exps

    def run(backend, threads, team=False, environment=control):
        p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        with fo.use_backend(backend), np.errstate(all="ignore"):
            fo.set_num_threads(threads)
            was = _backend.active.use_openmp_team(team)
            try:
                with floating_point_environment(environment):
                    for t in (1, 2):
                        fo.ops.adam_step_(p, g * np.float32(0.5 * t), m, v, t, lr=2.0 ** -124)
                    y = fo.softmax(z)
            finally:
                _backend.active.use_openmp_team(was)
        return p.tobytes() + m.tobytes() + v.tobytes(), y.tobytes()

    for team in (False, True):     # threads started in the default environment (a new
        run(compiled, 3, team, environment=DEFAULT_ENVIRONMENT)   # thread takes its creator's)
    expected_step = run("numpy", 1)[0]
    # (the environment changes these results: else the test could not fail)
    assert expected_step != run("numpy", 1, environment=DEFAULT_ENVIRONMENT)[0]
    expected_layer = run(compiled, 1)[1]
    for threads, team in [(1, False), (2, False), (3, False), (2, True)]:
        step, layer = run(compiled, threads, team)
        assert step == expected_step, (threads, team)
        assert layer == expected_layer, (threads, team)


def test_calls_from_several_python_threads_at_once(compiled):
    fo.set_num_threads(2)
    expected = [adam_steps(N, np.float32, seed=s) for s in range(4)]
    results = [None] * 4
    barrier = threading.Barrier(4)

    def work(s):
        barrier.wait()
        results[s] = adam_steps(N, np.float32, steps=3, seed=s)

    workers = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("backend", ["numpy"] + COMPILED)
def test_every_optimizer_from_several_python_threads_at_once(backend):
    """Each optimizer (with all of its state) stepped on its own arrays in 4 threads at once,
    as a thread pool training several models: the serial bits, state included."""
    from optim_specs import CONFIGS

    def run(job):
        (name, kwargs), dtype = job
        rng = np.random.default_rng(len(name))
        params = [rng.standard_normal(100_003).astype(dtype), rng.standard_normal((7, 3))]
        opt = getattr(fo, name)(params, **kwargs)
        for _ in range(3):
            opt.step([rng.standard_normal(p.shape).astype(p.dtype) for p in params])
        return [a.tobytes() for a in params] + [
            a.tobytes() for s in opt.state.values() for a in s.values()]

    jobs = [(config, dtype) for config in CONFIGS for dtype in (np.float32, np.float64)]
    with fo.use_backend(backend):
        expected = [run(job) for job in jobs]
        results = [None] * len(jobs)
        barrier = threading.Barrier(4)

        def work(k):
            barrier.wait()
            for i in range(k, len(jobs), 4):
                results[i] = run(jobs[i])

        workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert results == expected


def test_thread_count_changed_from_another_thread_during_calls(compiled):
    """fastopt.set_num_threads called by a third thread while two threads step optimizers
    and run layer kernels: every result has the serial bits (the count is read once a
    call; chunks never change a result)."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((300, 333)).astype(np.float32)

    def work(s):
        p, m, v = adam_steps(N, np.float64, seed=s)
        y, cache = fo.batchnorm_forward(z, np.ones(333, np.float32), np.zeros(333, np.float32))
        return [a.tobytes() for a in (p, m, v, fo.softmax(z, axis=s), y,
                                      *fo.batchnorm_backward(z, cache))]

    fo.set_num_threads(2)
    expected = [work(s) for s in range(2)]
    results, stop = [None] * 2, threading.Event()

    def flip():
        n = 1
        while not stop.is_set():
            fo.set_num_threads(n)
            n = n % 3 + 1

    flipper = threading.Thread(target=flip)
    workers = [threading.Thread(target=lambda s=s: results.__setitem__(s, work(s)))
               for s in range(2)]
    flipper.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    flipper.join()
    assert results == expected


@pytest.mark.parametrize("backend", ["numpy"] + COMPILED)
def test_one_optimizer_stepped_from_two_threads(backend):
    """Steps of one optimizer from two threads at once take turns: the kernels release the
    GIL, and both threads read step count t, both stored t + 1 and updated the same state
    arrays at the same time (20 steps counted 10, the values torn). With the same grads
    every order of the 20 steps gives the serial result."""
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(N).astype(np.float32), rng.standard_normal(7)]
    grads = [rng.standard_normal(N).astype(np.float32), rng.standard_normal(7)]
    steps = 10
    with fo.use_backend(backend):
        serial = [p.copy() for p in start]
        opt = fo.Adam(serial, lr=0.01)
        for _ in range(2 * steps):
            opt.step(grads)
        for attempt in range(3):        # a race lost every attempt but one in five
            params = [p.copy() for p in start]
            opt = fo.Adam(params, lr=0.01)
            barrier = threading.Barrier(2)

            def work():
                barrier.wait()
                for _ in range(steps):
                    opt.step(grads)

            workers = [threading.Thread(target=work) for _ in range(2)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            assert opt.state[0]["step"] == opt.state[1]["step"] == 2 * steps
            assert [p.tobytes() for p in params] == [p.tobytes() for p in serial]


@pytest.mark.parametrize("backend", ["numpy"] + COMPILED)
def test_a_deepcopy_waits_for_a_step_in_another_thread(backend):
    """copy.deepcopy(opt) takes the lock a step holds, as state_dict() does. It had not: a
    copy taken while another thread stepped held a step's work half done (some parameters
    and states a step ahead of the others, step counts 7 and 8 in one copy)."""
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(5), rng.standard_normal(3).astype(np.float32)]
    grads = [rng.standard_normal(5), rng.standard_normal(3).astype(np.float32)]
    with fo.use_backend(backend):
        opt = fo.Adam(params, lr=0.01)
        opt.step(grads)
        got = []
        lock = opt._lock = WatchedLock(opt._lock)
        with lock:                      # as a step in progress on another thread
            taker = threading.Thread(target=lambda: got.append(copy.deepcopy((params, opt))))
            held_at(lock, taker)
            assert not got
        taker.join(10)
        params2, opt2 = got[0]
        assert opt2.param_groups[0]["params"][0] is params2[0]
        opt.step(grads)
        opt2.step(grads)
        assert [p.tobytes() for p in params2] == [p.tobytes() for p in params]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_call_after_fork(compiled):
    skip_numba_off_tbb(compiled)
    fo.set_num_threads(2)
    expected = adam_steps(N, np.float32)       # starts the pool's helpers in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                               # child: only this thread exists
        ok = False
        try:
            ok = all(a.tobytes() == b.tobytes()
                     for a, b in zip(adam_steps(N, np.float32), expected))
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1", "the forked child computed wrong results"
    assert all(a.tobytes() == b.tobytes() for a, b in zip(adam_steps(N, np.float32), expected))


FORK_TIMEOUT = 20   # seconds a forked child may take for its step before it counts as hung


def _exit_child(check):
    """In a forked child: exit with 0 if ``check()`` is true, 2 if not, 1 if it raised; an
    alarm kills the child should it hang."""
    code = 1
    try:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)   # (not pytest's)
        signal.alarm(FORK_TIMEOUT)
        code = 0 if check() else 2
    finally:
        os._exit(code)


def fork_during_steps(make, step, snapshot, forks=3):
    """Fork ``forks`` times while another thread steps an optimizer from ``make()`` in a loop
    (``step(opt)``: one step, the same grads each time). Each child writes
    ``snapshot(opt)``, (step count, digest of its parameters and state), at the fork and
    after one step of its own. Asserts that every child had whole steps and took the next
    one: what a fresh ``make()`` has after as many steps."""
    opt = make()
    stop, stepped = threading.Event(), threading.Event()

    def steps():
        while not stop.is_set():
            step(opt)
            stepped.set()

    stepper = threading.Thread(target=steps)
    stepper.start()
    children = []       # per fork: the child's exit status and the snapshots it wrote
    try:
        assert stepped.wait(60)
        for _ in range(forks):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:        # child: the stepping thread is gone, its lock may not be
                code = 1
                try:
                    signal.signal(signal.SIGALRM, signal.SIG_DFL)   # (not pytest's handler)
                    signal.alarm(FORK_TIMEOUT)      # kills the child should its step hang
                    os.write(write, pickle.dumps(snapshot(opt)))
                    step(opt)
                    os.write(write, pickle.dumps(snapshot(opt)))
                    code = 0
                finally:
                    os._exit(code)
            os.close(write)
            status = os.waitpid(pid, 0)[1]
            with os.fdopen(read, "rb") as pipe:
                children.append((status, unpickle_all(pipe.read())))
            if os.WIFSIGNALED(status):
                break       # (one hung child is enough)
    finally:
        stop.set()
        stepper.join()
    counts = {snaps[0][0] for _, snaps in children if snaps}
    wanted = counts | {c + 1 for c in counts}
    reference, fresh = {}, make()
    for t in range(max(wanted, default=0) + 1):
        if t in wanted:
            reference[t] = snapshot(fresh)
        step(fresh)
    for status, snaps in children:
        assert snaps, "the child failed before its first snapshot"
        count = snaps[0][0]
        assert snaps[0] == reference[count], (
            f"the child was forked in the middle of a step: state past step {count}, not "
            "the whole next one")
        assert not os.WIFSIGNALED(status), "the child's first step hung (the lock was held)"
        assert os.WEXITSTATUS(status) == 0
        assert snaps[1:] == [reference[count + 1]], "the child's step is not the next one"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_waits_for_a_step_that_cannot_end_only_so_long(monkeypatch):
    """A fork takes every optimizer's step lock; a step that cannot end until the fork does
    had hung the parent for good (a numba first call in another thread, importing, waited
    for logging's lock, which logging's fork handler held through the fork). The fork now
    waits STEP_FORK_WAIT seconds, warns and goes on; the child, without the thread holding
    the lock, steps that optimizer (its lock reset there); the parent's step ends after."""
    from fastopt import optim
    monkeypatch.setattr(optim, "STEP_FORK_WAIT", 0.3)
    p, g = np.zeros(5), np.ones(5)
    opt = fo.SGD([p], lr=1.0)
    holding, leave = threading.Event(), threading.Event()

    def step_that_waits():              # a step holding the lock until the fork is over
        with opt._lock:
            holding.set()
            assert leave.wait(10)
        opt.step([g])

    def stepped():
        opt.step([g])
        return (p == -1).all()

    other = threading.Thread(target=step_that_waits)
    other.start()
    assert holding.wait(30)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = os.fork()
            if pid == 0:                # (the child leaves here, whatever the parent finds)
                _exit_child(stepped)
        # (fastopt's: from Python 3.12 a fork beside another thread warns of its own)
        assert [str(w.message)[:47] for w in caught if "fastopt" in str(w.message)] == [
            "fastopt: a fork waited 0.3 s for 1 optimizer(s)"]
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        leave.set()
        other.join(30)
    assert (p == -1).all()
    opt.step([g])                       # the parent's lock is free again
    assert (p == -2).all()


def test_fastopt_imports_logging_before_it_registers_its_fork_handlers():
    """Handlers registered later run first before a fork; logging's holds its lock through
    the fork. Registered after fastopt's (numba imports logging at its first compile), it
    made a fork wait for a step that waited, compiling, for that lock: the parent hung."""
    code = ("import os, sys\n"
            "register = os.register_at_fork\n"
            "def checked(**handlers):\n"
            "    if handlers.get('before') and 'logging' not in sys.modules:\n"
            "        sys.exit(f'registered before logging: {handlers[\"before\"]}')\n"
            "    register(**handlers)\n"
            "os.register_at_fork = checked\n"
            "import fastopt, fastopt.optim\n"
            "sys.exit(0 if 'logging' in sys.modules else 'logging not imported')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_is_in_a_use_backend_block_switches_freely():
    """The child has no thread in the block: its backend is the one the block would have
    restored, and its own use_backend blocks work (they raised "another thread is inside a
    use_backend block" for good before)."""
    before = fo.get_backend()
    inside, leave = threading.Event(), threading.Event()

    def block():
        with fo.use_backend("numpy"):
            inside.set()
            leave.wait(60)

    thread = threading.Thread(target=block)
    thread.start()
    try:
        assert inside.wait(60)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            answer = b"?"
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.alarm(FORK_TIMEOUT)      # kills the child should the block's lock hang
                restored = fo.get_backend() == before
                with fo.use_backend("numpy"):
                    switched = fo.get_backend() == "numpy"
                answer = b"1" if restored and switched and fo.get_backend() == before else b"0"
            except RuntimeError:
                answer = b"R"
            finally:
                os.write(write, answer)
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            answer = pipe.read()
        os.waitpid(pid, 0)
    finally:
        leave.set()
        thread.join()
    assert answer != b"R", "the child's use_backend raised: the parent's block is not its own"
    assert answer == b"1", "the child's backend is not the one before the parent's block"
    assert fo.get_backend() == before


def unpickle_all(data):
    """The objects pickled one after the other into ``data``."""
    stream, objects = io.BytesIO(data), []
    while stream.tell() < len(data):
        objects.append(pickle.load(stream))
    return objects


def digest(arrays):
    """SHA-256 of the arrays' bytes, in order."""
    hashed = hashlib.sha256()
    for a in arrays:
        hashed.update(np.ascontiguousarray(a).tobytes())
    return hashed.hexdigest()


def _waits_in(thread, function):
    """Whether ``thread`` is running ``function`` now (a frame of it on its stack)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None and frame.f_code is not function.__code__:
        frame = frame.f_back
    return frame is not None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_waits_at_the_launch_gate_for_launches_in_other_threads():
    """The numba backend's parallel launches pass _backend.LAUNCH_GATE: a fork waits for
    those in progress in other threads, and one begun meanwhile waits for the fork (as a step
    lock, but launches from several threads still run at once)."""
    from fastopt._backend import LAUNCH_GATE
    order, at_fork = [], []
    in_launch, leave = threading.Event(), threading.Event()

    def launch(name, hold=None):
        try:
            with LAUNCH_GATE:
                order.append(f"{name} in")
                if hold:
                    in_launch.set()
                    assert leave.wait(30)
                order.append(f"{name} out")
        except KeyboardInterrupt:
            order.append(f"{name} interrupted")

    def fork():
        # the child's copy of ``order`` is the record at the fork's instant: "forked" is
        # appended only after os.fork returned, when a launch the fork had held up may
        # already be in (CI, a busy machine: "third in" came first)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(write, repr(order).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            at_fork.append(pipe.read())
        order.append("forked")
        os.waitpid(pid, 0)

    first = threading.Thread(target=launch, args=("first", True))
    first.start()
    assert in_launch.wait(30)
    second = threading.Thread(target=launch, args=("second",))   # at once, beside first
    second.start()
    second.join(30)
    forker = threading.Thread(target=fork)
    forker.start()
    deadline = time.monotonic() + 30          # (until the fork waits at the gate: not a sleep
    while not LAUNCH_GATE._forks:             # a busy machine may outlast)
        assert time.monotonic() < deadline
        time.sleep(0.001)
    third = threading.Thread(target=launch, args=("third",))     # begun while the fork waits
    third.start()
    time.sleep(0.2)
    assert order == ["first in", "second in", "second out"]
    leave.set()
    for t in (first, forker, third):
        t.join(30)
    assert at_fork == [repr(["first in", "second in", "second out", "first out"])]
    assert order[:4] == ["first in", "second in", "second out", "first out"]
    assert sorted(order[4:]) == ["forked", "third in", "third out"]
    assert order.index("third in") < order.index("third out")
    # a fork from inside a launch of its own thread (a signal handler run as a launch returns)
    # does not wait for itself: it hung the process for good
    with LAUNCH_GATE:
        fork()
    assert order[-1] == "forked" and len(at_fork) == 2
    # a launch interrupted as it waits for a fork leaves no entry behind (every later fork
    # would wait for it)
    LAUNCH_GATE._forks.append(None)    # (as a fork enters itself)
    try:
        waiting = threading.Thread(target=launch, args=("waiting",))
        waiting.start()
        deadline = time.monotonic() + 30      # (until it waits in the gate)
        while not _waits_in(waiting, type(LAUNCH_GATE).__enter__):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        import ctypes
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(waiting.ident),
                                                   ctypes.py_object(KeyboardInterrupt))
    finally:
        LAUNCH_GATE._forks.pop()
    waiting.join(30)
    assert LAUNCH_GATE._active == [] and order[-1] == "waiting interrupted"


@pytest.mark.skipif(not hasattr(os, "fork") or "numba" not in COMPILED,
                    reason="needs fork and the numba backend")
def test_a_child_forked_during_a_numba_layer_call_in_another_thread_runs_its_calls():
    """A child forked while another thread was in one of the numba backend's parallel layer
    calls hung in its own first parallel call, on a lock oneTBB held at the fork (in 3 runs of
    150 forks: at forks 64, 82 and 14)."""
    skip_numba_off_tbb("numba")
    with fo.use_backend("numba"):
        fo.set_num_threads(2)
        z = np.random.default_rng(0).standard_normal((2000, 1000)).astype(np.float32)
        ones, zeros = np.ones(1000, np.float32), np.zeros(1000, np.float32)
        expected = fo.batchnorm_forward(z, ones, zeros)[0]
        stop = threading.Event()

        def layer_calls():
            while not stop.is_set():
                fo.batchnorm_forward(z, ones, zeros)

        other = threading.Thread(target=layer_calls)
        other.start()
        statuses = []
        try:
            for i in range(100):
                time.sleep(0.002 * (i % 5))
                pid = os.fork()
                if pid == 0:
                    _exit_child(lambda: np.array_equal(fo.batchnorm_forward(z, ones, zeros)[0],
                                                       expected))
                statuses.append(os.waitpid(pid, 0)[1])
                if statuses[-1]:
                    break
        finally:
            stop.set()
            other.join()
    assert not any(map(os.WIFSIGNALED, statuses)), f"child {len(statuses)} hung"
    assert statuses == [0] * 100


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("copied", [False, True], ids=["", "deepcopied"])
@pytest.mark.parametrize("backend", ["numpy"] + COMPILED)
def test_a_child_forked_during_a_step_in_another_thread_steps(backend, copied):
    """A fork waits for the steps in progress in other threads: the child's optimizer had
    the lock of a step whose thread the child does not have (its first step() waited
    forever) and the arrays of half that step. So does a deep copy's (or an unpickled
    optimizer's: the same protocol), which makes a lock of its own."""
    rng = np.random.default_rng(6)
    start = [rng.standard_normal(N).astype(np.float32), rng.standard_normal(7)]
    grads = [rng.standard_normal(N).astype(np.float32), rng.standard_normal(7)]

    def snapshot(opt):
        params = opt.param_groups[0]["params"]
        state = [a for i in sorted(opt.state) for _, a in sorted(opt.state[i].items())]
        return int(opt.state[0]["step"]) if opt.state else 0, digest(params + state)

    def make():
        opt = fo.Adam([p.copy() for p in start], lr=0.01)
        return copy.deepcopy(opt) if copied else opt

    with fo.use_backend(backend):
        fork_during_steps(make, lambda opt: opt.step(grads), snapshot)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("copied", [False, True], ids=["", "deepcopied"])
@pytest.mark.parametrize("backend", ["numpy"] + COMPILED)
def test_a_child_forked_during_a_fastopt_torch_step_in_another_thread_steps(backend, copied):
    """As above, for fastopt.torch's optimizers (their lock is the same kind)."""
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    rng = np.random.default_rng(7)
    start = [torch.from_numpy(rng.standard_normal(N).astype(np.float32)),
             torch.from_numpy(rng.standard_normal(7))]
    grads = [torch.from_numpy(rng.standard_normal(N).astype(np.float32)),
             torch.from_numpy(rng.standard_normal(7))]

    def make():
        opt = ft.Adam([torch.nn.Parameter(p.clone()) for p in start], lr=0.01)
        if copied:
            opt = copy.deepcopy(opt)
        for p, g in zip(opt.param_groups[0]["params"], grads):
            p.grad = g.clone()      # (a deep copy of a Parameter has no grad, as in torch)
        return opt

    def snapshot(opt):
        params = opt.param_groups[0]["params"]
        state = [v.numpy() for p in params for _, v in sorted(opt.state[p].items())]
        count = int(opt.state[params[0]]["step"]) if opt.state else 0
        return count, digest([p.detach().numpy() for p in params] + state)

    with fo.use_backend(backend):
        fork_during_steps(make, lambda opt: opt.step(), snapshot)


INTERRUPTED_FORK_HANDLERS = """
import dis, os, sys, threading
import numpy as np
import fastopt as fo
from fastopt import _backend, optim

BEFORE = {h.__code__ for h in (optim._hold_step_locks,
                               getattr(_backend.LAUNCH_GATE, "_wait_for_launches", None),
                               getattr(_backend.LAUNCH_GATE, "_hold", None)) if h}
if "numba" in fo.backends():
    fo.set_backend("numba")
z = np.ones((64, 10), np.float32)
fo.softmax(z)
opt = fo.Adam([np.ones(10, np.float32)], lr=0.1)
opt.step([np.ones(10, np.float32)])


def interrupt_at(k):
    # KeyboardInterrupt where CPython runs a signal handler: as a fork handler of fastopt's
    # begins, and as each call in it returns; at the k-th such point of one fork
    seen = [0]

    def tracer(frame, event, arg):
        if frame.f_code not in BEFORE:
            return None
        last = [None]

        def point():
            seen[0] += 1
            if seen[0] == k:
                sys.settrace(None)
                raise KeyboardInterrupt

        point()

        def local(frame, event, arg):
            if event == "opcode":
                name = None if last[0] is None else dis.opname[last[0]]
                if name and name.startswith("CALL") and not name.startswith("CALL_INTRINSIC"):
                    point()     # (3.12's CALL_INTRINSIC runs no signal handler)
                last[0] = frame.f_code.co_code[frame.f_lasti]
            return local
        # (f_trace before f_trace_opcodes: set after, 3.12 on sent this frame no opcode events)
        frame.f_trace = local
        frame.f_trace_opcodes = True
        return local
    return tracer, seen


def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def in_a_thread(fn):
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(20)
    return not t.is_alive()


for k in range(1, 1000):
    tracer, seen = interrupt_at(k)
    sys.settrace(tracer)
    fork()
    sys.settrace(None)
    if seen[0] < k:
        break
    for what, fn in [("a layer call", lambda: fo.softmax(z)),
                     ("a step", lambda: opt.step([np.ones(10, np.float32)])),
                     ("a fork", fork)]:
        if not in_a_thread(fn):
            print(f"interrupt {k}: {what} in another thread hangs", flush=True)
            os._exit(1)
points = k - 1

# a fork from inside a step and a launch of its own thread (a signal handler's): the step's
# hold stays its own, and the child leaves the launch
for k in range(1, 1000):
    tracer, seen = interrupt_at(k)
    child = False
    try:
        with opt._lock, _backend.LAUNCH_GATE:
            sys.settrace(tracer)
            pid = os.fork()
            sys.settrace(None)
            child = pid == 0
            if not child:
                taken = []
                in_a_thread(lambda: taken.append(opt._lock.acquire(timeout=0.2)))
                if not opt._lock._is_owned() or taken != [False]:
                    print(f"interrupt {k}: the step's lock was let go of", flush=True)
                    os._exit(1)
    except BaseException:
        if child:
            os._exit(3)
        raise
    if child:
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        print(f"interrupt {k}: the child failed to leave the launch", flush=True)
        os._exit(1)
    if seen[0] < k:
        break
print(f"{points} points", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_handler_interrupted_leaves_no_lock_held():
    """CPython forks on when one of its fork handlers raises (it prints the exception), and a
    handler can be stopped as it begins or as any call in it returns by what a signal handler
    raises (Ctrl-C). Interrupted as it had taken the launch gate's lock (and before the
    after-fork handler that lets go of it), or an optimizer's step lock before it listed it,
    a handler left the lock held: every later layer call (numba) and fork, or every step of
    that optimizer in another thread, hung for good. Also from inside a step and a launch of
    the forking thread (a signal handler that forks): interrupted there, the fork let go of
    the step's own hold, and the child's exit from the launch raised ValueError."""
    try:
        out = subprocess.run([sys.executable, "-c", INTERRUPTED_FORK_HANDLERS],
                             capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung (printed {exc.stdout!r})")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert out.stdout.endswith(" points\n") and int(out.stdout.split()[0]) > 5, out.stdout


NUMBA_POOL_FROM_A_THREAD = """
import os, threading
import numpy as np
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import fastopt as fo
fo.set_backend("numba")
thread = threading.Thread(target=fo.softmax, args=(np.ones((300, 300), np.float32),))
thread.start()
thread.join()
print("exiting", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_a_process_on_one_cpu_exits_after_a_numba_call_from_a_thread():
    """Numba's thread pool started by a layer call from a non-main thread, where one CPU may
    be used (a 1-CPU container, taskset): with oneTBB as the threading layer the interpreter
    hung at exit (fastopt._numba._common._start_pool says why)."""
    if "numba" not in fo.backends():
        pytest.skip("needs numba")
    try:
        out = subprocess.run([sys.executable, "-c", NUMBA_POOL_FROM_A_THREAD],
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the process did not exit (printed {exc.stdout!r})")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "exiting"


NUMBA_WORKQUEUE_FROM_THREADS = """
import threading
import numpy as np
import fastopt as fo
fo.set_backend("numba")
fo.set_num_threads(2)
rng = np.random.default_rng(0)
arrays = [[rng.standard_normal(200_000) for _ in range(4)] for _ in range(3)]
z = rng.standard_normal((300, 300))

def work(p, g, m, v):
    for t in range(1, 6):
        fo.ops.adam_step_(p, g, m, v, t, lr=0.1)
    return [p.tobytes(), fo.softmax(z).tobytes()]

expected = [work(*(a.copy() for a in group)) for group in arrays]
results = [None] * 3
workers = [threading.Thread(target=lambda i=i: results.__setitem__(i, work(*arrays[i])))
           for i in range(3)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("same" if results == expected else "different", flush=True)
"""


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_numbas_workqueue_layer_takes_calls_from_several_threads_in_turn():
    """Numba's workqueue threading layer (NUMBA_THREADING_LAYER=workqueue, or where neither
    TBB nor OpenMP loads) is not safe for concurrent parallel launches: kernels called from
    several Python threads at once killed the process ("Concurrent access has been
    detected"). Under it the parallel launches take turns: the serial bits."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    run = subprocess.run([sys.executable, "-c", NUMBA_WORKQUEUE_FROM_THREADS], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "same\n", run.stderr[-2000:]


NUMBA_WITHOUT_A_THREADING_LAYER = """
import warnings
import numpy as np
import fastopt as fo

def run(backend):
    with fo.use_backend(backend):
        # a small parameter, then a long one 12 bytes past a line: the elements before its
        # first line start run as a call of their own, then the threads take the rest
        buf = np.ones(3_000_016, np.float32)
        params = [np.ones(10, np.float32), buf[3:3 + 3_000_000]]
        opt = fo.Adam(params, lr=0.1)
        for _ in range(3):
            opt.step([np.full(p.shape, 0.5, np.float32) for p in params])
        return [p.tobytes() for p in params]

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    same = run("numba") == run("numpy")
    try:
        fo.set_backend("numba")
        fo.softmax(np.ones((4, 4), np.float32))
        layer = "ran"
    except RuntimeError as exc:
        layer = str(exc)
print(same, layer, [str(w.message) for w in caught if "threading layer" in str(w.message)],
      sep="|")
"""


NUMBA_WITHOUT_ONETBB = """
import sys, warnings
sys.modules["numba.np.ufunc.tbbpool"] = None    # Numba's TBB layer fails to import
import numpy as np
import fastopt as fo
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with fo.use_backend("numba"):
        fo.set_num_threads(2)
        fo.softmax(np.ones((3000, 100), np.float32))
        fo.softmax(np.ones((3000, 100), np.float32))
print([str(w.message) for w in caught if "oneTBB" in str(w.message)])
"""


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_numba_off_the_onetbb_layer_it_is_meant_to_use_warns_once():
    """Where the tbb wheel is a dependency and no layer was chosen, Numba fell back to its
    OpenMP layer without a word when its TBB layer did not load (numba 0.62.0's Linux wheels,
    numba#10240): forks after a parallel call then died, and the threads ignored the
    caller's floating-point environment. Now a warning says so, once."""
    skip_numba_off_tbb("numba")
    run = subprocess.run([sys.executable, "-c", NUMBA_WITHOUT_ONETBB], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    warned = eval(run.stdout)
    assert len(warned) == 1 and "oneTBB threading layer did not load" in warned[0], warned


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_numba_steps_without_a_threading_layer_run_on_one_thread():
    """Where Numba's threading layer does not load (NUMBA_THREADING_LAYER names one not
    installed), a long step raised Numba's ValueError after the elements before the
    parameter's first line start, and the parameters before it, had been stepped (a retry
    stepped them again). The steps now run on one thread, warned once, and the layers raise
    before writing anything, saying why."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="no_such_layer")
    run = subprocess.run([sys.executable, "-c", NUMBA_WITHOUT_A_THREADING_LAYER], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    same, layer, warned = run.stdout.split("|")
    assert same == "True"
    assert "layers need Numba's threading layer" in layer
    assert warned.count("threading layer does not load") == 1


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_numba_kernels_give_the_caller_its_numba_thread_count_back():
    """numba.set_num_threads is the calling thread's own setting, for its own prange code: a
    small layer call had left it at 1, a large one or a long step at fastopt's count."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba may use one CPU here: no count to give back")
    before, ours = numba.get_num_threads(), fo.get_num_threads()
    rng = np.random.default_rng(0)
    small, large = rng.standard_normal((3, 3)), rng.standard_normal((400, 400))
    p = rng.standard_normal(3_000_000).astype(np.float32)
    try:
        fo.set_num_threads(2)
        with fo.use_backend("numba"):
            for mine in sorted({1, numba.config.NUMBA_NUM_THREADS}):
                numba.set_num_threads(mine)
                for call in (lambda: fo.softmax(small), lambda: fo.softmax(large),
                             lambda: fo.batchnorm_forward(large, np.ones(400), np.zeros(400)),
                             lambda: fo.softmax_cross_entropy(large, np.zeros(400, int)),
                             lambda: [fo.ops.sgd_step_(p, p[::-1].copy(), lr=1e-3)
                                      for _ in range(3)]):
                    call()
                    assert numba.get_num_threads() == mine
    finally:
        numba.set_num_threads(before)
        fo.set_num_threads(ours)


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_numba_steps_go_parallel_in_a_run_of_calls_or_when_long(monkeypatch):
    """A step whose arrays hold STEP_PARALLEL_BYTES or more runs on the threads when a step that
    large ended less than POOL_AWAKE_SECONDS before (the worker is still awake) and alone
    otherwise, unless they hold STEP_PARALLEL_COLD_BYTES; absent state (an empty view) does not
    count; one share per thread, every element once."""
    from fastopt._numba import _common
    calls = []
    empty = np.empty(0, np.float32)

    def serial(x, e, scalars):
        calls.append("serial")
        x += 1

    def parallel(nshares, share, x, e, scalars):
        calls.append(("parallel", nshares))
        for i in range(nshares):
            x[i * share:(i + 1) * share] += 1

    def run(nbytes, state=empty):
        x = np.zeros(nbytes // 4, np.float32)
        _common.launch(serial, parallel, (x, state), ())
        assert (x == 1).all()
        return calls.pop()

    threads = fo.get_num_threads()
    fo.set_num_threads(2)
    try:
        if _common.get_num_threads() < 2:
            pytest.skip("numba may use one CPU here: nothing runs in parallel")
        monkeypatch.setattr(_common, "_last_step_end", [float("-inf")])
        large = _common.STEP_PARALLEL_BYTES + 28
        monkeypatch.setattr(_common, "POOL_AWAKE_SECONDS", 1e9)   # every call "right after"
        assert run(_common.STEP_PARALLEL_BYTES - 4) == "serial"   # short: alone, and no mark
        assert run(large) == "serial"             # the first of a run finds the worker asleep
        assert run(large) == ("parallel", 2)
        assert run(_common.STEP_PARALLEL_BYTES // 2) == "serial"
        half = np.zeros(_common.STEP_PARALLEL_BYTES // 8, np.float32)
        assert run(_common.STEP_PARALLEL_BYTES // 2, half) == ("parallel", 2)
        monkeypatch.setattr(_common, "POOL_AWAKE_SECONDS", 0.0)    # every call after a pause
        assert run(large) == "serial"
        assert run(_common.STEP_PARALLEL_COLD_BYTES) == ("parallel", 2)
        fo.set_num_threads(1)
        monkeypatch.setattr(_common, "POOL_AWAKE_SECONDS", 1e9)
        assert run(_common.STEP_PARALLEL_COLD_BYTES) == "serial"
    finally:
        fo.set_num_threads(threads)


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
@pytest.mark.parametrize("itemsize", [4, 8])
def test_numba_long_steps_run_the_elements_before_a_line_start_alone(itemsize, monkeypatch):
    """A step of ALIGN_MIN elements or more runs the elements before the param's first 64-byte
    line start as a serial call of their own (none when it starts one), then the rest from
    the line start, every element once; absent state stays empty in both calls. (ALIGN_MIN
    as an AVX-512 host sets it.)"""
    from fastopt._numba import _common
    monkeypatch.setattr(_common, "ALIGN_MIN", 1 << 16)
    dtype = np.float32 if itemsize == 4 else np.float64
    n = _common.ALIGN_MIN + 5
    for skip in range(0, 64, itemsize):
        buf = np.zeros((n + 16) * itemsize + 64, np.uint8)
        start = -buf.ctypes.data % 64 + skip
        x = buf[start:start + n * itemsize].view(dtype)
        calls = []

        def serial(a, e, scalars):
            calls.append((a.ctypes.data - x.ctypes.data, a.size, e.size))
            a += 1

        _common.launch(serial, None, (x, np.empty(0, dtype)), ())
        head = (64 - skip) % 64 // itemsize
        first = [(0, head, 0)] if head else []
        assert calls[:-1] == first and calls[-1] == (head * itemsize, n - head, 0), skip
        assert (x == 1).all()


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_numba_splits_at_a_line_start_only_where_it_compiles_for_avx512(monkeypatch):
    """The line-start split is on where Numba targets AVX-512 (NUMBA_CPU_FEATURES, else the
    host), and without it (ALIGN_MIN None) a long step at any offset is one serial call."""
    import numba
    from fastopt._numba import _common
    for features, wide in [("+avx2,+fma,-avx512f", False), ("+avx2,+avx512f,+avx512bw", True),
                           ("", False)]:
        monkeypatch.setattr(numba.config, "CPU_FEATURES", features)
        assert _common._wide_vectors() is wide, features
    monkeypatch.setattr(_common, "ALIGN_MIN", None)
    n = (1 << 16) + 5
    buf = np.zeros(n * 4 + 128, np.uint8)
    x = buf[-buf.ctypes.data % 64 + 16:][:n * 4].view(np.float32)
    calls = []

    def serial(a, e, scalars):
        calls.append((a.ctypes.data - x.ctypes.data, a.size))
        a += 1

    _common.launch(serial, None, (x, np.empty(0, np.float32)), ())
    assert calls == [(0, n)] and (x == 1).all()


NUMBA_WORKQUEUE_FORK = """
import os, time
import numpy as np
import fastopt as fo
from fastopt._numba import _common
fo.set_backend("numba")
z = np.ones((300, 300))
fo.softmax(z)
_common._launch_guard[0].acquire()      # as a launch in progress on another thread
pid = os.fork()
if pid == 0:
    fo.softmax(z)
    os._exit(0)
for _ in range(100):
    if os.waitpid(pid, os.WNOHANG)[0]:
        print("exited", flush=True)
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("the child hung", flush=True)
"""


@pytest.mark.skipif("numba" not in COMPILED or not hasattr(os, "fork"),
                    reason="needs the numba backend and fork")
def test_a_child_forked_during_a_workqueue_launch_runs_its_own():
    """The workqueue layer's launches take turns on a lock (above): a child forked while
    another thread held it (a launch in progress) waited forever at its first parallel
    kernel. The child starts with the lock free."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    run = subprocess.run([sys.executable, "-c", NUMBA_WORKQUEUE_FORK], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == "exited\n", (run.stdout, run.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_run_on_the_parents_openmp_team():
    """fastopt.torch runs long steps on the OpenMP team (fo_pool.h). GNU OpenMP's pool does
    not survive fork: a region in a child whose parent had a team (torch's, or one of our
    steps) waited forever at its end, e.g. a fastopt.torch step in a DataLoader-style worker.
    The child now runs such jobs on fastopt's pool: same bits."""
    if "cython" not in COMPILED:
        pytest.skip("the OpenMP team is the compiled backend's")
    from fastopt import _backend
    n = 18 * 65536 + 7           # 16 chunks or more: a job for the team
    threads = fo.get_num_threads()
    with fo.use_backend("cython"):
        fo.set_num_threads(2)
        was = _backend.active.use_openmp_team(True)
        try:
            expected = adam_steps(n, np.float32, steps=2)    # the parent's team starts
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                ok = False
                try:
                    ok = all(a.tobytes() == b.tobytes()
                             for a, b in zip(adam_steps(n, np.float32, steps=2), expected))
                finally:
                    os.write(write, b"1" if ok else b"0")
                    os._exit(0)
            os.close(write)
            ready, _, _ = select.select([read], [], [], 30)
            answer = os.read(read, 1) if ready else b""
            os.close(read)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        finally:
            _backend.active.use_openmp_team(was)
            fo.set_num_threads(threads)
    assert answer, "the forked child hung in its OpenMP region"
    assert answer == b"1", "the forked child computed wrong results"


HELPERS_AVOID_THE_CALLER = """
import os, numpy as np, fastopt as fo
fo.set_backend("cython")
fo.set_num_threads(2)
p, g, m, v = (np.ones(3 * 65536 + 7, np.float32) for _ in range(4))
def current_cpu():
    with open("/proc/thread-self/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[36])   # field 39, processor
def helpers():
    tids = [t for t in os.listdir("/proc/self/task")
            if open(f"/proc/self/task/{t}/comm").read().strip() == "fastopt-helper"]
    return [os.sched_getaffinity(int(t)) for t in tids]
everywhere = os.sched_getaffinity(0)
for cpu in sorted(everywhere) * 2:
    os.sched_setaffinity(0, {cpu})          # move the caller there,
    os.sched_setaffinity(0, everywhere)     # then let it run anywhere again
    # the caller on one CPU before and after the call may still have left it and come back
    # during the call (on a busy machine), so a mismatch is tried again: a pool that does
    # not keep its helpers off the caller's CPU fails every attempt
    for attempt in range(100):
        before = current_cpu()
        fo.ops.adam_step_(p, g, m, v, 1)
        found = helpers()
        if (current_cpu() == before and found
                and all(a == everywhere - {before} for a in found)):
            break
    else:
        raise SystemExit(f"helpers not kept off the caller's CPU: {before}, {found}")
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_helpers_run_off_the_callers_cpu():
    # a sleeping helper woken onto the caller's CPU would preempt the caller (fo_pool.h)
    if "cython" not in fo.backends():
        pytest.skip("the compiled extension is not built")
    out = subprocess.run([sys.executable, "-c", HELPERS_AVOID_THE_CALLER], capture_output=True,
                         text=True)
    assert out.stdout.strip() == "ok", out.stderr


ONE_POOL = """
import os, numpy as np, fastopt as fo
from fastopt._bench import stream_kernel
fo.set_backend("cython")
fo.set_num_threads(2)
p, g, m, v = (np.ones(3 * 65536 + 7, np.float32) for _ in range(4))
z = np.ones((512, 1000), np.float32)
for call in range(3):     # the optimizer steps, the layers and the roofline stream, alternated
    fo.ops.adam_step_(p, g, m, v, 1)
    fo.layers.softmax(z)
    stream_kernel()(p, g)
print(sum(open(f"/proc/self/task/{t}/comm").read().strip() == "fastopt-helper"
          for t in os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two CPUs")
def test_every_kernel_module_runs_on_one_pool():
    """The optimizer steps, the layers and the stream share one pool (pool.pyx): on 2 threads,
    one helper in the process. (A pool per module had one each, and a training loop's layer
    call and step then found each other's helper polling on the second core.)"""
    if "cython" not in fo.backends():
        pytest.skip("the compiled extension is not built")
    out = subprocess.run([sys.executable, "-c", ONE_POOL], capture_output=True, text=True)
    assert out.stdout.strip() == "1", (out.stdout, out.stderr)


@pytest.mark.parametrize("nchunks", [1, 2, 7, 65535, 65536, 200_001])
def test_the_pool_runs_every_chunk_of_a_job_once(nchunks):
    # the caller claims from the front, helpers from the back, of one claim word counting up
    # to 65535 chunks; a longer job runs its chunks in groups (fo_pool.h)
    pool = pytest.importorskip("fastopt._kernels.pool", exc_type=ImportError)
    for nthreads in (1, 2, 3):
        counts = pool.pool_chunk_counts(nchunks, nthreads)
        assert counts.shape == (nchunks,) and (counts == 1).all(), (nthreads, np.unique(counts))


def test_chunks_run_once_whether_or_not_sleeping_helpers_are_woken():
    """A job that finds the helpers asleep (after other work, as a training loop's steps do)
    wakes them only when its chunks are long enough to pay for the wake, or when it follows
    the last job within 100 us (fo_pool.h's fo_pool_wake_if_worth): the caller may run a first
    chunk alone, then the rest alone or with the helpers. Whichever way, every chunk runs
    once: jobs after idling (short ones, and long ones that the helper joins late) and a run
    of short jobs back to back. (Who ran them is not asserted: the pool's back-off, after a
    caller waited on a helper, and a busy machine decide that too; the wake rule's effect is
    measured in bench/test_bench_spaced.py.)"""
    pool = pytest.importorskip("fastopt._kernels.pool", exc_type=ImportError)
    for nchunks, seconds in [(8, 0.0), (8, 2e-5), (3, 1e-4), (8, 2e-3), (2, 2e-3), (8, 0.0)]:
        time.sleep(0.005)                       # the helper polls 150 us, then sleeps
        counts = pool.pool_chunk_counts(nchunks, 2, seconds)
        assert (counts == 1).all(), (nchunks, seconds, counts)
    time.sleep(0.005)
    for call in range(60):
        assert (pool.pool_chunk_counts(8, 2, 1e-6) == 1).all(), call


def test_concurrent_callers_of_long_jobs_run_every_chunk_once():
    """Jobs of more than 65535 chunks run as groups described by one static struct per pool
    (fo_pool.h), which only the thread holding the pool may set: a second caller runs its
    job on its own thread. Four threads at once, each with its own job length (groups of 2,
    3, 4 and 16 chunks), every chunk of every job run once."""
    pool = pytest.importorskip("fastopt._kernels.pool", exc_type=ImportError)
    lengths = (65536, 131071, 200001, 10**6)
    bad = []
    barrier = threading.Barrier(len(lengths))

    def work(nchunks):
        barrier.wait()
        for call in range(40 if nchunks < 10**6 else 8):
            counts = pool.pool_chunk_counts(nchunks, 2 + call % 2)
            if counts.shape != (nchunks,) or not (counts == 1).all():
                bad.append((nchunks, call, np.unique(counts).tolist()))

    workers = [threading.Thread(target=work, args=(n,)) for n in lengths]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not bad, bad[:5]


def test_cgroup_quota_caps_the_default(tmp_path):
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert _threads.cgroup_cpu_limit(((str(v2), None),)) == 2
    v2.write_text("max 100000\n")
    assert _threads.cgroup_cpu_limit(((str(v2), None),)) is None
    quota, period = tmp_path / "quota", tmp_path / "period"
    quota.write_text("50000\n")
    period.write_text("100000\n")
    assert _threads.cgroup_cpu_limit(((str(tmp_path / "absent"), None),
                                      (str(quota), str(period)))) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_default_threads_follow_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "import fastopt as fo; print(fo.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.strip() == "1"


def test_omp_num_threads_sets_the_default_and_a_count_below_1_is_ignored(monkeypatch):
    """OMP_NUM_THREADS=0 had meant one thread, OMP_NUM_THREADS=abc the CPUs: neither is a
    count (OpenMP ignores both), so both mean the CPUs."""
    from fastopt import _threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = _threads.default_threads()
    for value, expected in (("3", 3), ("4,2", 4), ("0", cpus), ("-2", cpus), ("abc", cpus),
                            ("", cpus), ("512", 256), (str(2**31), 256)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert _threads.default_threads() == expected, value
    # more CPUs than set_num_threads takes (a host of 512): capped there too (a count above it
    # was taken as it was, and one of 2**31 and more failed the import with OverflowError)
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(512)), raising=False)
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: None)
    assert _threads.default_threads() == 256
    # (imported on the NumPy reference, whose count is the default's; the numba backend's is
    # Numba's, at most the CPUs)
    code = "import fastopt as fo; print(fo.get_num_threads())"
    env = dict(os.environ, OMP_NUM_THREADS=str(2**31), FASTOPT_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "256", out.stderr
    del env["FASTOPT_BACKEND"]      # (the default backend: the import had failed)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and 1 <= int(out.stdout) <= 256, out.stderr


def test_threadpoolctl_sees_and_limits_the_kernels():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if "cython" not in fo.backends():
        pytest.skip("the compiled extension is not built")
    threads = fo.get_num_threads()
    try:
        # every build in the process (the portable one beside the AVX-512 one in use)
        for n in (1, 2):
            fo.set_num_threads(n)
            ours = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "fastopt"]
            assert ours and all(i["num_threads"] == n for i in ours), ours
        with threadpoolctl.threadpool_limits(1):
            assert fo.get_num_threads() == 1
        assert fo.get_num_threads() == 2
    finally:
        fo.set_num_threads(threads)


def test_threadpoolctl_limits_the_numba_backend_too(monkeypatch):
    """threadpoolctl sees the compiled extension's library; the numba backend takes that
    library's count as its limit (it had kept its own)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not {"cython", "numba"} <= set(fo.backends()):
        pytest.skip("needs the compiled extension and numba")
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba may use one CPU here (taskset, a cgroup quota): nothing to limit")
    from fastopt._numba import _common, layers
    seen = []       # the thread count the layer's parallel kernels run on

    def chunked(*args):
        seen.append(numba.get_num_threads())
        return _common.chunked(*args)
    monkeypatch.setattr(layers, "chunked", chunked)
    threads = fo.get_num_threads()
    fo.set_num_threads(2)
    try:
        with fo.use_backend("numba"):
            assert _common.get_num_threads() == min(2, _common._num_threads[0])
            with threadpoolctl.threadpool_limits(1):
                assert _common.get_num_threads() == 1
                numba.set_num_threads(2)
                fo.softmax(np.ones((256, 1000), np.float32))   # a parallel numba kernel
                assert seen == [1] and numba.get_num_threads() == 2    # (the caller's)
    finally:
        fo.set_num_threads(threads)


NUMBA_CHOSEN_IN_THE_ENVIRONMENT = """
import threadpoolctl, fastopt as fo
from fastopt._numba import _common
fo.set_num_threads(2)
with threadpoolctl.threadpool_limits(1):
    print(fo.get_backend(), _common.get_num_threads(), fo.get_num_threads())
print(fo.get_num_threads())
"""


def test_threadpoolctl_limits_the_numba_backend_chosen_in_the_environment():
    """With FASTOPT_BACKEND=numba nothing loaded the compiled extension, through whose library
    threadpoolctl sees fastopt: threadpool_limits(1) left the numba kernels on 2 threads
    (and user_api="fastopt" raised), unless some call (fo.backends()) had loaded it."""
    pytest.importorskip("threadpoolctl")
    if not {"cython", "numba"} <= set(fo.backends()):
        pytest.skip("needs the compiled extension and numba")
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba may use one CPU here (taskset, a cgroup quota): nothing to limit")
    env = dict(os.environ, FASTOPT_BACKEND="numba")
    run = subprocess.run([sys.executable, "-c", NUMBA_CHOSEN_IN_THE_ENVIRONMENT], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["numba", "1", "1", "2"]


NUMPY_CHOSEN_IN_THE_ENVIRONMENT = """
import sys, threadpoolctl, fastopt as fo
with threadpoolctl.threadpool_limits(1, user_api="fastopt"):
    print(fo.get_backend(), "fastopt._kernels" in sys.modules)
with threadpoolctl.threadpool_limits(1, user_api="fastopt"):
    fo.backends()                   # (loads the extension, if there is one, in the block)
print(fo.get_num_threads())
"""


def test_threadpoolctl_knows_user_api_fastopt_on_the_numpy_reference():
    """With FASTOPT_BACKEND=numpy nothing loads the compiled extension, whose loading had made
    threadpoolctl know user_api="fastopt": code that limits fastopt's threads raised
    ValueError on the reference (and would on a machine without the extension; q65). Now it
    limits nothing there, and the count is fastopt's afterwards."""
    pytest.importorskip("threadpoolctl")
    env = dict(os.environ, FASTOPT_BACKEND="numpy")
    run = subprocess.run([sys.executable, "-c", NUMPY_CHOSEN_IN_THE_ENVIRONMENT], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["numpy", "False", str(fo.get_num_threads())]


@pytest.mark.parametrize("backend", ["numpy"] + COMPILED)
def test_add_param_group_waits_for_a_step_in_another_thread(backend):
    """add_param_group takes the lock a step holds, as deepcopy and state_dict do. It had
    not: a group added while another thread stepped was half there for that step (in
    param_groups, not yet in the slots, starts and parameter count the step reads)."""
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal(5)}
    with fo.use_backend(backend):
        opt = fo.Adam(params, lr=0.01)
        lock = opt._lock = WatchedLock(opt._lock)
        with lock:                      # as a step in progress on another thread
            adder = threading.Thread(
                target=lambda: opt.add_param_group({"params": {"b": np.ones(3)}}))
            held_at(lock, adder)
            assert len(opt.param_groups) == 1
        adder.join(10)
        assert len(opt.param_groups) == 2
        # then, groups added from one thread while another steps: every step sees each
        # group whole or not at all (no exception; the first group stepped every time, each
        # parameter as many times as its state counts)
        names = [f"p{k}" for k in range(40)]
        start = {n: rng.standard_normal(k % 5 + 1) for k, n in enumerate(names)}
        grads = {n: rng.standard_normal(a.shape) for n, a in start.items()}
        params = {n: a.copy() for n, a in start.items()}
        opt = fo.Adam({names[0]: params[names[0]]}, lr=0.01)
        errors, steps = [], 200
        barrier = threading.Barrier(2)

        def step():
            barrier.wait()
            try:
                for _ in range(steps):
                    with opt._lock:     # (the grads of the groups there are, then their step)
                        opt.step({n: grads[n] for g in opt.param_groups
                                  for n in g["param_names"]})
            except Exception as error:      # noqa: BLE001 (reported below)
                errors.append(error)

        def add():
            barrier.wait()
            try:
                for n in names[1:]:
                    opt.add_param_group({"params": {n: params[n]}})
                    time.sleep(0)
            except Exception as error:      # noqa: BLE001
                errors.append(error)

        workers = [threading.Thread(target=step), threading.Thread(target=add)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors
        assert len(opt.param_groups) == len(names)
        assert opt.state[0]["step"] == steps
        # each parameter stepped as many times as its state counts, from its start
        for i, n in enumerate(names):
            count = int(opt.state[i]["step"]) if i in opt.state else 0
            ref = fo.Adam({n: start[n].copy()}, lr=0.01)
            for _ in range(count):
                ref.step({n: grads[n]})
            assert ref.param_groups[0]["params"][0].tobytes() == params[n].tobytes(), n


def test_pool_state_reports_the_pool():
    """pool_state (for diagnosis: whether calls run on the caller alone after a late helper)
    describes the pool: a 2-thread job starts its helper, and a job on one thread
    leaves the back-off as it was."""
    pool = pytest.importorskip("fastopt._kernels.pool", exc_type=ImportError)
    if os.cpu_count() < 2:
        pytest.skip("one CPU: no helper to start")
    pool.pool_chunk_counts(8, 2, 1e-5)
    state = pool.pool_state()
    assert set(state) == {"helpers", "serial_calls", "backoff", "wake_seconds", "chunk_seconds"}
    assert state["helpers"] >= 1 and state["serial_calls"] >= 0 and state["backoff"] >= 0
    pool.pool_chunk_counts(8, 1)
    after = pool.pool_state()
    assert (after["serial_calls"], after["backoff"]) == (state["serial_calls"], state["backoff"])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs procfs")
def test_waiting_for_other_threads_sees_a_running_one():
    """_threads.wait_for_other_threads, which a fork waits on once oneTBB's workers exist (a
    worker still running held a lock the child then waited for): False at its limit while
    another thread computes (NumPy sorts, the GIL released), True when that thread is
    ignored (the fork ignores Python threads) and once it is done."""
    big = np.random.default_rng(0).standard_normal(1_000_000)
    started, stop = threading.Event(), threading.Event()

    def compute():
        started.set()
        while not stop.is_set():
            np.sort(big)

    other = threading.Thread(target=compute)
    other.start()
    try:
        started.wait()
        time.sleep(0.01)
        assert _threads.wait_for_other_threads(0.01) is False
        assert _threads.wait_for_other_threads(0.01, ignore=[other.native_id]) is True
    finally:
        stop.set()
        other.join()
    assert _threads.wait_for_other_threads(1.0) is True
    # a thread that ends as its state is read: ENOENT at the open, ESRCH at the read (had
    # escaped, from a fork's before-hook)
    for error in (FileNotFoundError, ProcessLookupError):
        def ended(*args, error=error):
            raise error()
        with mock.patch("builtins.open", ended):
            assert _threads._thread_state("1") == "X"


@pytest.mark.skipif(not hasattr(os, "fork") or "numba" not in COMPILED,
                    reason="needs fork and the numba backend")
def test_a_fork_waits_for_other_threads_once_onetbb_runs(monkeypatch):
    """Once the numba backend's oneTBB layer has run a launch, a fork waits (at most
    SETTLE_WAIT) until no thread but Python's is running: its workers outlive the launch, and
    a child forked while one held a lock of oneTBB's hung."""
    from fastopt import _backend
    skip_numba_off_tbb("numba")
    with fo.use_backend("numba"):
        fo.set_num_threads(2)
        fo.softmax(np.ones((3000, 100), np.float32))
    assert _backend.LAUNCH_GATE.settle_threads
    waits = []
    monkeypatch.setattr(_threads, "wait_for_other_threads",
                        lambda limit, poll=0.001, ignore=(): waits.append((limit, set(ignore))))
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    python_threads = {t.native_id for t in threading.enumerate()}
    assert waits == [(_backend.LAUNCH_GATE.SETTLE_WAIT, python_threads)]


@pytest.mark.skipif("numba" not in COMPILED, reason="needs the numba backend")
def test_the_numba_chunk_size_is_set_inside_the_launch_gate(monkeypatch):
    """numba.set_parallel_chunksize takes Numba's init locks: called outside the launch gate,
    which a fork waits for, a child forked while another thread held them hung in its first
    parallel call (review q44)."""
    import numba
    from fastopt import _backend
    real, inside = numba.set_parallel_chunksize, []

    def watched(n):
        inside.append(threading.get_ident() in _backend.LAUNCH_GATE._active)
        return real(n)

    monkeypatch.setattr(numba, "set_parallel_chunksize", watched)
    with fo.use_backend("numba"):
        fo.set_num_threads(2)
        fo.softmax(np.ones((3000, 100), np.float32))
    assert inside and all(inside), inside
