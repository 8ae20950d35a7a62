"""benchmarks/gpu_check.py run through the Triton interpreter, for both tiers (tests/unit/test_gpu_check.py and
tests/served/test_gpu_check_served.py import it: pytest puts tests/ on sys.path for its conftest).

Each run is a fresh process (``TRITON_INTERPRET=1`` only works when set before triton's first import), with
``--carry`` pointed at an empty folder so a carried repository on this machine does not change what runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_gpu_check(tmp_path: Path, *extra: str, smoke: bool = False) -> dict[str, list[list[str]]]:
    """Run the script in interpret mode (every section), or ``smoke`` (the device run's sections, tiny, written
    where the device run writes: a dated file in ``--out-dir``) -> its table rows (cells) by section title."""
    if smoke:
        args = ["--smoke", "--out-dir", str(tmp_path / "gpu")]
    else:
        args = ["--interpret", "--out", str(tmp_path / "gpu_check.md"), "--sections", "all"]
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", *args, "--carry", str(tmp_path), *extra],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    out = tmp_path / "gpu_check.md" if not smoke else next((tmp_path / "gpu").glob("*-interpreter.md"))
    assert out.read_text() in proc.stdout  # the file holds the printed table
    assert out.read_text().startswith("# GPU check, ")  # the date and the machine, then the command line
    assert "benchmarks/gpu_check.py " + " ".join(args) in out.read_text()
    sections: dict[str, list[list[str]]] = {}
    title = ""
    lines = out.read_text().splitlines()
    for line, after in zip(lines, lines[1:] + [""]):
        if line.startswith("### "):
            title = line[4:]
            sections[title] = []
        elif line.startswith("| ") and not after.startswith("|---"):  # a row, not a table's header
            sections[title].append([c.strip() for c in line.strip("|").split("|")])
    return sections
