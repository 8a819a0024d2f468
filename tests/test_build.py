"""What an install without usable compiled kernels does: says why, once, and serves the next
backend. Runs a copy of the installed package in a subprocess, with its compiled kernels
removed (as an install without a C compiler leaves it) or refused for this CPU.

Building the package itself takes minutes: those tests are in test_packaging.py.
"""
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings

import pytest

import fastopt as fo
from fastopt import _cpu

NO_COMPILER = ("no working C compiler when fastopt was installed (cc cannot build a C program); "
               "reinstall with a working C compiler for the fast backend, past pip's cache (pip "
               "install --no-cache-dir --force-reinstall --no-deps fastopt, or the path or file "
               "you installed from)")
PROBE = """
import json, sys, fastopt as fo
try:
    fo.set_backend("cython")
    refused = None
except RuntimeError as exc:
    refused = str(exc)
print(json.dumps(dict(backends=fo.backends(), refused=refused)))
"""


def package_copy(tmp_path, build_info=None):
    """A copy of the fastopt under test in ``tmp_path`` without its compiled kernels, and
    ``_build_info.py`` holding ``build_info`` (None: no such file, as an older build)."""
    src = os.path.dirname(os.path.abspath(fo.__file__))
    dest = tmp_path / "fastopt"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(
        "__pycache__", "*.so", "*.pyd", "*.c", "_build_info.py"))
    if build_info is not None:
        (dest / "_kernels" / "_build_info.py").write_text(build_info)
    return tmp_path


def run_python(path, code, *args, backend=None):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTOPT_BACKEND", "PYTHONPATH")}
    env["PYTHONPATH"] = str(path)
    if backend:
        env["FASTOPT_BACKEND"] = backend
    cmd = [sys.executable, *(["-c", code] if code else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          cwd=path)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def fallbacks():
    return [b for b in fo.backends() if b != "cython"]


def test_an_install_without_a_compiler_says_so_and_warns_once(tmp_path):
    path = package_copy(tmp_path, f"ERROR = {NO_COMPILER!r}\nMARCH = None\nFLAGS = None\n")
    out, err = run_python(path, PROBE + "import fastopt\n")
    result = json.loads(out)
    assert result["backends"] == fallbacks()
    assert f"not built: {NO_COMPILER}" in result["refused"]
    assert err.count("the compiled backend is not available") == 1
    assert f"not built: {NO_COMPILER}" in err and "FASTOPT_BACKEND=" in err
    # choosing a backend explicitly silences the warning
    out, err = run_python(path, PROBE, backend="numpy")
    assert "not available" not in err and json.loads(out)["refused"] is not None
    # the report's header says it the same way
    out, err = run_python(path, None, "-m", "fastopt", "--kernels", "sgd", "--sizes", "1e3",
                          "--dtypes", "float32", "--backends", "numpy", "--rounds", "1",
                          "--no-peers", "--no-groups", "--no-layers", backend="numpy")
    assert f"  cython  : not built: {NO_COMPILER}\n" in out


def test_the_fallback_warning_names_every_backend_passed_over_at_the_importing_line(tmp_path):
    """Falling back to NumPy, the warning gave the compiled backend's reason only (not why
    numba was passed over too), and pointed at fastopt/_backend.py, not at the import."""
    pytest.importorskip("numba")
    path = package_copy(tmp_path, f"ERROR = {NO_COMPILER!r}\nMARCH = None\nFLAGS = None\n")
    env = {k: v for k, v in os.environ.items() if k not in ("FASTOPT_BACKEND", "PYTHONPATH")}
    env.update(PYTHONPATH=str(path), NUMBA_DISABLE_JIT="1")
    (tmp_path / "user_script.py").write_text("import sys\nimport fastopt\n")
    done = subprocess.run([sys.executable, "user_script.py"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"{tmp_path / 'user_script.py'}:2: UserWarning: fastopt: the "
                                  f"compiled backend is not available: not built: {NO_COMPILER}"
                                  "; numba: NUMBA_DISABLE_JIT is set"), done.stderr


def test_missing_extension_files_are_reported_as_not_built_not_as_a_circular_import(tmp_path):
    # no _build_info.py, no extension: Python's own message blamed a circular import
    path = package_copy(tmp_path)
    out, err = run_python(path, PROBE, backend="numpy")
    refused = json.loads(out)["refused"]
    assert "not built: the compiled extension is not in this install" in refused
    assert "circular" not in refused


def build_march():
    """The ISA the compiled kernels here were built for, or None."""
    try:
        from fastopt._kernels import _build_info
    except ImportError:
        return None
    return _build_info.MARCH if _build_info.MARCH in _cpu.LEVELS else None


@pytest.mark.skipif("cython" not in fo.backends() or not build_march(),
                    reason="needs the compiled kernels built for an x86-64 level")
def test_a_build_for_an_isa_this_cpu_lacks_is_refused_before_import(tmp_path):
    # the check runs before any compiled code: patch what the CPU reports, then load
    code = ("import fastopt as fo, fastopt._cpu as cpu\n"
            "cpu.host_features = lambda: {'sse2'}\n" + PROBE)
    out, err = run_python(os.path.dirname(os.path.dirname(os.path.abspath(fo.__file__))),
                          code, backend="numpy")
    result = json.loads(out)
    assert "cython" not in result["backends"] and "numpy" in result["backends"]
    assert f"built for {build_march()}, which this CPU does not run" in result["refused"]
    assert "avx2" in result["refused"] or build_march() != "x86-64-v3"


def test_cpu_levels(monkeypatch):
    v3_host = _cpu.LEVELS["x86-64-v3"] | {"sse2", "aes"}
    monkeypatch.setattr(_cpu, "host_features", lambda: v3_host)
    assert _cpu.missing_features("x86-64-v3") == []
    assert _cpu.missing_features("x86-64-v4") == sorted(_cpu.LEVELS["x86-64-v4"] - v3_host)
    assert "avx512f" in _cpu.missing_features("x86-64-v4")
    monkeypatch.setattr(_cpu, "host_features", lambda: v3_host - {"fma"})
    assert _cpu.missing_features("x86-64-v3") == ["fma"]
    assert _cpu.missing_features("native") == [] and _cpu.missing_features(None) == []
    monkeypatch.setattr(_cpu, "host_features", lambda: None)        # cannot tell: no refusal
    assert _cpu.missing_features("x86-64-v3") == []


def test_last_level_cache_is_read_from_sysfs(tmp_path):
    """The largest level among the data and unified caches (Linux's sysfs layout; an EPYC
    VM's: glibc's sysconf said 320 MiB there), and None where sysfs has nothing readable."""
    caches = [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"),
              ("3", "Unified", "32768K"), ("4", "Instruction", "64M")]
    for k, (level, kind, size) in enumerate(caches):
        entry = tmp_path / f"index{k}"
        entry.mkdir()
        (entry / "level").write_text(level + "\n")
        (entry / "type").write_text(kind + "\n")
        (entry / "size").write_text(size + "\n")
    assert _cpu.last_level_cache_bytes(str(tmp_path)) == 32 << 20
    (tmp_path / "index3" / "size").write_text("garbled\n")
    assert _cpu.last_level_cache_bytes(str(tmp_path)) == 1 << 20
    assert _cpu.last_level_cache_bytes(str(tmp_path / "absent")) is None


def cpuinfo_field(name):
    """The first value of ``name`` in /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def test_the_optimizer_steps_use_the_vector_width_this_cpu_runs_fastest():
    """512-bit vectors on AMD Zen 4 and later (CPU family 25 on), 256-bit ones on other CPUs
    with AVX-512 (fo_common.h): the rule read back from /proc/cpuinfo, and the build that
    fastopt._kernels loaded."""
    kernels = pytest.importorskip("fastopt._kernels", exc_type=ImportError)
    base = importlib.import_module("fastopt._kernels.optim")
    family = cpuinfo_field("cpu family")
    if family is None or not base.cpu_has_avx512():
        pytest.skip("needs /proc/cpuinfo and a CPU with AVX-512")
    zen4_on = cpuinfo_field("vendor_id") == "AuthenticAMD" and int(family) >= 25
    assert base.cpu_prefers_512bit_steps() == zen4_on
    expected = ("optim" if os.environ.get("FASTOPT_NO_AVX512", "0") not in ("", "0")
                else "optim_avx512_zmm" if zen4_on else "optim_avx512")
    assert kernels._optim.__name__ == f"fastopt._kernels.{expected}"

def pyproject():
    path = os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")
    if not os.path.exists(path):
        pytest.skip("no pyproject.toml next to the tests")
    try:
        import tomllib
    except ImportError:                                   # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(path, "rb") as f:
        return tomllib.load(f)


def test_release_wheels_are_configured_for_linux_and_macos_and_tested():
    cibw = pyproject()["tool"]["cibuildwheel"]
    assert set(cibw["linux"]["archs"]) == {"x86_64", "aarch64"}
    assert cibw["macos"]["archs"] == ["arm64"]
    assert cibw["macos"]["environment"]["FASTOPT_NO_OPENMP"] == "1"     # Apple clang
    assert "pytest" in cibw["test-command"] and cibw["test-extras"] == ["test"]


def test_the_quick_start_adds_the_extras_without_a_second_build():
    path = os.path.join(os.path.dirname(__file__), "..", "README.md")
    if not os.path.exists(path):
        pytest.skip("no README.md next to the tests")
    with open(path) as f:
        text = f.read()
    extras = {name: sorted(re.split(r"[<>=!~;\[ ]", d)[0] for d in deps)
              for name, deps in pyproject()["project"]["optional-dependencies"].items()}
    quick = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    first, second = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert first == "pip install . && python -m fastopt"
    install, run = second.split(" && ")
    assert sorted(install.split()[2:]) == extras["test"] and run == "pytest tests"
    # every extra spelled out, to install later by name instead of rebuilding with .[extra]
    for name, deps in extras.items():
        said = re.search(rf"`{name}` is ([^;(]*)", " ".join(text.split())).group(1)
        assert sorted(said.replace(",", " ").replace(" and ", " ").split()) == deps, name


def setup_functions():
    """setup.py's names but its ``setup()`` call (that would build), or a skip where the tests
    run without the checkout's setup.py or a C compiler."""
    path = os.path.join(os.path.dirname(__file__), "..", "setup.py")
    if not os.path.exists(path) or shutil.which("gcc") is None:
        pytest.skip("needs the checkout's setup.py and gcc")
    pytest.importorskip("setuptools")       # (not in a CPython 3.12+ venv by default)
    with open(path) as f:
        code = f.read()
    names = {"__name__": "fastopt_setup_probe"}
    exec(compile(code[:code.rindex("setup(ext_modules")], path, "exec"), names)
    return names


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="x86-64 -march names")
def test_a_fastopt_march_the_compiler_refuses_is_said_not_dropped_silently(monkeypatch):
    setup = setup_functions()
    monkeypatch.setenv("FASTOPT_MARCH", "skylake-avx51")        # a typo
    with pytest.warns(UserWarning, match=r"refuses -march=skylake-avx51 \(FASTOPT_MARCH\)"):
        assert setup["_isa_flags"](["gcc"]) == []
    monkeypatch.setenv("FASTOPT_MARCH", "x86-64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert setup["_isa_flags"](["gcc"]) == ["-march=x86-64"]
