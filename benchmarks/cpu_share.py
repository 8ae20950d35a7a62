"""Where a served request's CPU goes: CPU seconds of every process of the server tree (tritonserver, the gateway,
each step's Python stub) during one perf_analyzer run on `widefunnel` (gRPC, batch 1). perf_analyzer itself has
exited when the run returns, so it is not counted.

Read from /proc (utime + stime) before and after the measured run, which follows an unmeasured warm-up run.
On 2 cores at concurrency 8 the server is CPU-bound, so the shares say what each part costs per request.

    .venv/bin/python benchmarks/cpu_share.py --repository benchmarks/out/model_repository --concurrency 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every readable process: pid -> (command line, user + system CPU seconds)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        found[int(pid)] = (cmd, (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def label(cmd: str) -> str | None:
    if "triton_python_backend_stub" in cmd:  # its first argument: <repository>/<model>/<version>/model.py
        return "stub " + Path(cmd.split()[1]).parent.parent.name
    for name in ("tritonserver", "widefunnel.gateway"):
        if name in cmd:
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    from widefunnel import model_configs as mcfg
    from widefunnel.client.perf import SweepSettings, input_data, run_perf, sample_seeds
    from widefunnel.evaluation.pipeline import _pinned_versions
    from widefunnel.server import TritonServer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    seeds = sample_seeds(args.repository, _pinned_versions(args.repository)["preprocess"], 256, seed=3)
    with tempfile.TemporaryDirectory() as tmp, TritonServer(args.repository) as server:
        out = Path(tmp)
        data = out / "seeds.json"
        data.write_text(json.dumps(input_data({"seed_item_id": np.array([[s]], np.int64)} for s in seeds)))
        settings = SweepSettings(str(args.concurrency), measurement_interval_ms=4000, max_trials=4,
                                 admin_key=server.admin_key)
        run_perf(mcfg.ENSEMBLE, server.grpc_url, "grpc", data, out, settings)  # warm-up
        before = cpu_seconds()
        rows = run_perf(mcfg.ENSEMBLE, server.grpc_url, "grpc", data, out, settings)
        after = cpu_seconds()
    spent: dict[str, float] = {}
    for pid, (cmd, cpu) in after.items():
        name = label(cmd)
        if name is not None:
            spent[name] = spent.get(name, 0.0) + cpu - before.get(pid, (cmd, 0.0))[1]
    total = sum(spent.values())
    print(f"concurrency {args.concurrency}: {rows[0]['Inferences/Second']:.0f} requests/s\n")
    print("| process | CPU s | share |\n|---|---:|---:|")
    for name, cpu in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"| {name} | {cpu:.2f} | {cpu / total:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
