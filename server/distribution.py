"""The pytriton wheel's server, the backend directory assembled from it, and the environment stubs run in.

The backend directory holds the Python backend (library, utils, the stub matching this interpreter) and this
project's Python-based backends from `plugins/`, so the same model repository runs here and on NVIDIA's
image, where native backends win for the same config.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from widefunnel.layout import install_plugin

# Python-based backends this project ships; each is `<name>/model.py` in the backend directory.
PYTHON_BASED_BACKENDS = ("onnxruntime", "widefunnel_ann")


class DistributionError(RuntimeError):
    """The server binary or its Python stub is missing."""


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pytriton wheel keeps the server binary, its libraries and the Python backend."""

    root: Path

    @classmethod
    def find(cls) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise DistributionError(
                "nvidia-pytriton is not installed: run `make env` (pip install nvidia-pytriton==0.7.0)")
        return cls(Path(next(iter(spec.submodule_search_locations))) / "tritonserver")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.root.parent.parent / "nvidia_pytriton.libs"

    def stub(self) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise DistributionError(f"no Python backend stub for Python {version} in {stub.parent.parent}")
        return stub


def assemble_backends(target: Path, dist: TritonDistribution | None = None) -> Path:
    """Build `--backend-directory`: python/ (library, utils, matching stub) plus our Python-based backends."""
    dist = dist or TritonDistribution.find()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    source = dist.root / "backends" / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(source / name, python_dir / name)
    shutil.copy2(dist.stub(), python_dir / "triton_python_backend_stub")
    for backend in PYTHON_BASED_BACKENDS:
        (target / backend).mkdir(exist_ok=True)
        install_plugin(backend, target / backend)
    return target


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stub must import this venv's packages (numpy, onnxruntime, widefunnel) and write no bytecode.

    glibc's malloc, bounded and fast for wide requests: blocks under 32 MiB come from the heap, of which at most
    4 MiB stays free for the next request; larger blocks are mapped and returned when freed (fixed thresholds:
    by default they follow the largest free, so one wide request's memory would stay). Memory is asked for in
    transparent huge pages (`glibc.malloc.hugetlb=1`, where the kernel allows them), so a 200 MB tensor takes
    100 page faults, not 50,000. Served on the 1M build, 8 seeds (`benchmarks/bench_malloc.py`): K = 100,000
    1,590 -> 780 ms per request, K = 10,000 253 -> 186 ms against the former 256 KiB / 1 MiB thresholds.
    Two arenas per process bound fragmentation across threads."""
    env = dict(os.environ)
    libs = str(TritonDistribution.find().libs)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["WIDEFUNNEL_SITE"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # stubs share few cores: spinning OpenMP threads starve them
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 << 20))  # glibc's largest allowed threshold
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(4 << 20))
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, "glibc.malloc.hugetlb=1") if t)
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.update(extra or {})
    return env
