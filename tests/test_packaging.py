"""Building fastopt as users do: the sdist and wheel contents, and builds in a temporary copy of
the checkout (a reused build directory, no compiler, a compiler command of several words).

Each build takes minutes, so these run only with FASTOPT_SLOW_BUILD=1 (.ci/run runs them once,
not per backend). With FASTOPT_DIST_DIR pointing at a directory holding the sdist and wheel
already built by ``python -m build`` (as .ci/run does), the contents test inspects those
instead of building them again.
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

pytestmark = [
    pytest.mark.slow_build,
    pytest.mark.skipif(not os.environ.get("FASTOPT_SLOW_BUILD"),
                       reason="builds fastopt (minutes): set FASTOPT_SLOW_BUILD=1"),
]


def tracked_files():
    """The checkout's files under version control, or None outside a git checkout."""
    if not os.path.isdir(os.path.join(ROOT, ".git")) and not os.path.isfile(
            os.path.join(ROOT, ".git")):
        return None
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [f for f in out.splitlines() if os.path.exists(os.path.join(ROOT, f))]


def build_info(text):
    info = {}
    exec(text, info)
    return info


def wheel_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = [n for n in names if n.endswith("fastopt/_kernels/_build_info.py")]
        return names, build_info(z.read(info[0]).decode()) if info else None


# ------------------------------------------------------------------------- sdist and wheel
@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(sdist, wheel) paths: FASTOPT_DIST_DIR's, else built here (the wheel from the sdist)."""
    where = os.environ.get("FASTOPT_DIST_DIR")
    if not where:
        pytest.importorskip("build")
        where = str(tmp_path_factory.mktemp("dist"))
        subprocess.run([sys.executable, "-m", "build", "--outdir", where, ROOT], check=True,
                       capture_output=True)
    sdists = glob.glob(os.path.join(where, "fastopt-*.tar.gz"))
    wheels = glob.glob(os.path.join(where, "fastopt-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, os.listdir(where)
    return sdists[0], wheels[0]


def test_the_sdist_holds_what_builds_and_tests_the_package(dist):
    with tarfile.open(dist[0]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for needed in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in",
                   "tests/conftest.py",
                   "src/fastopt/_kernels/optim.pyx", "src/fastopt/_kernels/_common.pxi"):
        assert needed in names
    assert any(n.startswith("bench/") for n in names)
    assert any(n.startswith("examples/") for n in names)
    tracked = tracked_files()
    if tracked is not None:       # every tracked file that builds, runs or tests it
        wanted = {f for f in tracked if f.split("/")[0] in ("src", "tests", "bench", "examples")}
        assert wanted - names == set()
    # (bench's C harnesses are sources; any other C is Cython's output)
    built = [n for n in names if n.endswith((".so", ".pyd", ".o")) or
             n.endswith(".c") and not n.startswith("bench/") or
             n.endswith("_build_info.py") or n.startswith("build/")]
    assert built == []


def test_the_wheel_holds_what_runs(dist):
    names, info = wheel_files(dist[1])
    for module in ("fastopt/__init__.py", "fastopt/py.typed", "fastopt/_cpu.py",
                   "fastopt/_kernels/__init__.py",
                   "fastopt/_numba/optim.py", "fastopt/reference/optim.py"):
        assert module in names
    assert info is not None and info["ERROR"] is None, info
    for family in ("stream", "optim", "layers", "pool"):
        assert [n for n in names if n.startswith(f"fastopt/_kernels/{family}.")
                and n.endswith((".so", ".pyd"))]
    assert [n for n in names if n.endswith((".c", ".pyx", ".pxi", ".o"))] == []
    assert [n for n in names if n.startswith(("tests/", "bench/", "examples/"))] == []
    # the license text (BSD-3-Clause asks that binaries carry it)
    assert [n for n in names if n.endswith(".dist-info/licenses/LICENSE")], names


# ------------------------------------------------------------------- builds in a copy
def copy_checkout(dest):
    """The checkout's tracked files (nothing built) in ``dest``."""
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("needs a git checkout to copy")
    for f in tracked:
        os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), os.path.join(dest, f))
    return dest


def pip_wheel(src, out, **env):
    """``pip wheel`` the checkout ``src`` in place (its build/ directory persists between
    builds, as with repeated ``pip install .``); returns the wheel's path."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FASTOPT_")}
    environ.update(env)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "--wheel-dir", str(out), str(src)],
                          capture_output=True, text=True, env=environ)
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = glob.glob(os.path.join(out, "fastopt-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def built_objects(src):
    return glob.glob(os.path.join(src, "build", "lib*", "fastopt", "_kernels", "*.so"))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_a_failed_build_never_ships_the_previous_builds_objects(tmp_path):
    pytest.importorskip("Cython")
    src = copy_checkout(tmp_path / "checkout")
    # CC of two words keeps its flags (probing only the first word dropped every one); one
    # ISA variant only, to keep this build short
    wheel = pip_wheel(src, tmp_path / "first", CC="env gcc", FASTOPT_MARCH="x86-64-v3")
    names, info = wheel_files(wheel)
    assert info["ERROR"] is None and info["MARCH"] == "x86-64-v3"
    assert {"-O3", "-ffp-contract=off", "-march=x86-64-v3"} <= set(info["FLAGS"].split())
    assert [n for n in names if n.startswith("fastopt/_kernels/optim.") and n.endswith(".so")]
    assert built_objects(src)                   # what a stale build could ship

    # the same checkout, no compiler: the build fails, and neither the wheel nor build/ keeps
    # the first build's objects
    wheel = pip_wheel(src, tmp_path / "second", CC="/bin/false")
    names, info = wheel_files(wheel)
    assert [n for n in names if n.endswith((".so", ".pyd"))] == []
    assert info["ERROR"].startswith("no working C compiler when fastopt was installed")
    assert "reinstall with a working C compiler" in info["ERROR"]
    assert "--no-cache-dir" in info["ERROR"]    # pip would install its cached wheel again
    assert built_objects(src) == []
