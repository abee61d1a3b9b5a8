"""Every fenced Python block of the README runs as written, in a fresh directory, within a
minute: the documentation cannot rot."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy  # trains runs, kills processes: not in the inner loop

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_python_block_runs(tmp_path, i):
    script = tmp_path / "block.py"
    script.write_text(BLOCKS[i])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"block {i} failed:\n{BLOCKS[i]}\n{res.stderr[-2000:]}"
