"""Each C harness in bench/ builds with the command its comment gives (several include the
kernels' own headers, src/fastopt/_kernels/fo_*.h, and fell behind when a header's function
gained an argument: bn_floor.c, until stop 72)."""
import platform
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESSES = sorted(ROOT.glob("bench/*.c"))


def build_command(source):
    """The ``gcc ...`` command in ``source``'s leading comment (continued by backslashes), up
    to its ``&&`` (the run that follows it)."""
    lines = source.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(r"\bgcc ", line))
    words = []
    for line in lines[start:]:
        text = re.sub(r"^\s*\*?\s*", "", line)
        words.append(text.rstrip("\\").strip())
        if not text.endswith("\\"):
            break
    return shlex.split(" ".join(words).split("&&")[0])


def test_every_harness_is_found():
    assert len(HARNESSES) >= 10


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the harnesses build for x86-64 (-march=x86-64-v3/v4)")
@pytest.mark.parametrize("source", HARNESSES, ids=[p.name for p in HARNESSES])
def test_c_harness_builds_with_its_documented_command(source, tmp_path):
    command = build_command(source)
    assert command[0] == "gcc" and source.relative_to(ROOT).as_posix() in command
    out = command.index("-o") + 1
    command[out] = str(tmp_path / source.stem)
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
