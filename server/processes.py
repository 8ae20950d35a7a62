"""What /proc says about a running server: its Python stubs, their memory, their shared-memory regions."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from pathlib import Path

Stub = tuple[str, str, str]  # (model, version, instance name), e.g. ("quota_merge", "1", "quota_merge_0_1")
SHM_DIR = Path("/dev/shm")


def children(pid: int) -> list[int]:
    """Every child of the process, found by the parent pid in each process's /proc stat.

    Not /proc/<pid>/task/*/children: Triton starts stubs from its model-loading threads, and that file is
    only reliable while the children are stopped (proc(5)); reading it missed stubs under load (a dead stub
    never restarted, a swap's new stubs unseen)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def stub_processes(server_pid: int) -> dict[int, Stub]:
    """pid -> (model, version, instance) of each Python-backend stub the server runs: its argv names the
    model file (argv[1]) and the instance (argv[8], "<model>_<group>_<index>")."""
    out = {}
    for pid in children(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
            model_file = Path(argv[1].decode(errors="replace"))
            instance = argv[8].decode(errors="replace") if len(argv) > 8 else ""
            out[pid] = (model_file.parent.parent.name, model_file.parent.name, instance)
    return out


def instance_stubs(stubs: dict[int, Stub]) -> dict[int, Stub]:
    """The stubs that serve a model instance. Loading a model first runs a stub named after the model alone
    (it completes the config: `auto_complete_config`) that exits by design once that is done."""
    return {pid: stub for pid, stub in stubs.items() if stub[2] and stub[2] != stub[0]}


def dead_instances(known: dict[int, Stub], current: dict[int, Stub], dead: Callable[[int], bool]) -> set[Stub]:
    """Instances whose stub died since ``known`` was taken and that have no live stub now.

    Keyed by instance, so one dead instance among several of a version is found. A reload (a swap staging
    versions) starts the instance's new stub before the old one exits: an instance that still has a live
    stub did not die."""
    live = {stub for pid, stub in current.items() if not dead(pid)}
    return {stub for pid, stub in known.items() if (pid not in current or dead(pid)) and stub not in live}


def tree_rss_kib(pid: int) -> int:
    """Resident memory of the server and its direct children (the Python stubs), KiB."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
    return total


def smaps_kib(pid: int, field: str) -> int:
    """One field of a process's `/proc/<pid>/smaps_rollup` (``Rss``, ``Pss``, ``Anonymous``...), KiB; 0 when the
    process is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def process_dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def zombies(server_pid: int) -> list[int]:
    return [pid for pid in children(server_pid) if Path(f"/proc/{pid}").exists() and process_dead(pid)]


def shm_regions(prefix: str) -> list[Path]:
    """The Python backend's shared-memory regions of one server (`shm-region-prefix-name` is ours)."""
    return sorted(SHM_DIR.glob(f"{prefix}*"))


def mapped_paths(pids: list[int]) -> set[str]:
    out: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                if "/dev/shm/" in line:
                    out.add(line.split(maxsplit=5)[-1].removesuffix(" (deleted)"))
    return out


def orphan_regions(server_pid: int, prefix: str, min_age_s: float = 10.0) -> list[Path]:
    """Regions no live stub maps (a dead stub's: Triton 2.51 keeps the dead instance's mapping in the server
    and never removes its file), older than ``min_age_s`` (the server creates a region, then starts the stub
    that maps it: a young one may be on its way)."""
    mapped = mapped_paths(children(server_pid))
    now = time.time()
    out = []
    for path in shm_regions(prefix):
        with contextlib.suppress(OSError):
            if str(path) not in mapped and now - path.stat().st_mtime > min_age_s:
                out.append(path)
    return out


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2


def _release_pages(path: Path) -> None:
    """Frees a tmpfs file's pages even while a process still maps it (it would read zeros): unlinking alone
    frees nothing until the last mapping goes."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, ctypes.c_longlong(0), ctypes.c_longlong(size))
    finally:
        os.close(fd)


def remove_regions(paths: list[Path]) -> int:
    removed = 0
    for path in paths:
        with contextlib.suppress(OSError):
            _release_pages(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed
