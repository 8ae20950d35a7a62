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


_MALLOC_RESERVE = 32 << 20


def server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stub must import this venv's packages (numpy, onnxruntime, widefunnel) and write no bytecode.

    glibc's malloc keeps a bounded reserve: blocks under 32 MiB come from the heap and up to 32 MiB of free heap
    is kept for the next request; larger blocks are mapped and returned when freed (fixed thresholds: by default
    they follow the largest free, so one wide request's memory would stay). A 256 KiB threshold returned every
    wide tensor, but paid its page faults again on every request: served K = 10,000 x 8 seeds on the 1M build
    took 370 ms against 240 ms now. Two arenas per process bound fragmentation across threads."""
    env = dict(os.environ)
    libs = str(TritonDistribution.find().libs)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
    paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["WIDEFUNNEL_SITE"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # stubs share few cores: spinning OpenMP threads starve them
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(_MALLOC_RESERVE))  # glibc's largest allowed threshold
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(_MALLOC_RESERVE))
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.update(extra or {})
    return env
