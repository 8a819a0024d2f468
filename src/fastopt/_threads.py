"""Thread counts: the default from the CPUs this process may use, and threadpoolctl support.

The compiled kernels run on fastopt's own pool (``_kernels/fo_pool.h``), so threadpoolctl,
which scikit-learn users use to limit OpenMP and BLAS threads, would not see them on its own:
:func:`register_threadpoolctl` teaches it to (``user_api="fastopt"``), and
``threadpoolctl.threadpool_limits(1)`` then limits fastopt too.
"""
import math
import os
import threading
import time

# the most threads a kernel call may use: the compiled pool's 255 helpers and the caller
# (fo_common.h's FO_MAX_THREADS)
MAX_THREADS = 256

# cgroup v2, then v1: a container's CPU quota (docker --cpus=1.5 gives "150000 100000")
_CGROUP_QUOTA_FILES = (("/sys/fs/cgroup/cpu.max", None),
                       ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                        "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_limit(files=_CGROUP_QUOTA_FILES):
    """CPUs allowed by this process's cgroup CPU quota, rounded up; None when unlimited."""
    for quota_file, period_file in files:
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file is not None:
                with open(period_file) as f:
                    fields += f.read().split()
            quota, period = fields[0], fields[1]
            if quota in ("max", "-1"):
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError, IndexError):
            continue
    return None


def default_threads():
    """``OMP_NUM_THREADS`` if set, else the CPUs this process may run on (its affinity mask,
    capped by a cgroup CPU quota): more threads than that only wait for each other. At most
    MAX_THREADS (which set_num_threads takes: a count above it, from the variable or a host's
    CPUs, was taken as it was, and 2**31 and more failed the import with OverflowError)."""
    try:
        n = int(os.environ["OMP_NUM_THREADS"].split(",")[0])
    except (KeyError, ValueError):
        n = 0
    if n >= 1:          # (0 or less is not a count: OpenMP ignores it, as a word)
        return min(n, MAX_THREADS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return min(cpus, quota or cpus, MAX_THREADS)


def register_threadpoolctl():
    """Make the compiled kernel families visible to (and limitable by) threadpoolctl, if it is
    installed. Each family's extension exports ``fastopt_get_num_threads`` and
    ``fastopt_set_num_threads``."""
    try:
        import threadpoolctl
    except ImportError:
        return False
    if not hasattr(threadpoolctl, "register"):    # threadpoolctl < 3.3
        return False

    class FastoptController(threadpoolctl.LibController):
        user_api = "fastopt"
        internal_api = "fastopt"
        filename_prefixes = ("optim", "layers", "stream")
        check_symbols = ("fastopt_get_num_threads", "fastopt_set_num_threads")

        def get_num_threads(self):
            return self.dynlib.fastopt_get_num_threads()

        def set_num_threads(self, num_threads):
            self.dynlib.fastopt_set_num_threads(num_threads)

        def get_version(self):
            from . import __version__
            return __version__

    threadpoolctl.register(FastoptController)
    return True


def wait_for_other_threads(limit, poll=0.001, ignore=()):
    """Wait, at most ``limit`` seconds, until no other thread of this process but those whose
    native ids are in ``ignore`` is running (none in state R in /proc/self/task: each asleep,
    blocked or stopped). True once none is, False at the limit, None without procfs (not
    Linux)."""
    skip = {str(threading.get_native_id())} | {str(tid) for tid in ignore}
    deadline = time.monotonic() + limit
    while True:
        try:
            tasks = os.listdir("/proc/self/task")
        except OSError:
            return None
        if not any(t not in skip and _thread_state(t) == "R" for t in tasks):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _thread_state(tid):
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:     # the thread ended (ENOENT at the open, ESRCH at the read)
        return "X"
