"""perf_analyzer for widefunnel: its environment, realistic inputs for every model, a concurrency sweep, a plot.

The `perf_analyzer` binary comes with the tritonclient wheel but links `libb64.so.0d` and `libcudart.so.12`,
which a fresh machine does not have: `libcudart.so.12` comes from the pip package nvidia-cuda-runtime-cu12, and
libb64 from Debian's `libb64-0d` when installed (`make env` installs it where apt-get exists), else from the
copy the pytriton wheel bundles, exposed under its soname through a symlink in a private directory.

Inputs are real: the ensemble gets item ids of the served build's catalogue; each step model gets the tensors
its upstream steps produce for those ids, obtained by calling the served models one after another exactly as
the ensemble wires them (`DirectChain`, also the "models called directly" baseline of the overhead benchmark).
"""

from __future__ import annotations

import csv
import ctypes
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from widefunnel import model_configs as mcfg
from widefunnel.arrays import load_table
from widefunnel.layout import CATALOGUE_FILE
from widefunnel.security import admin_headers, with_admin_key
from widefunnel.tensor_names import Client

logger = logging.getLogger(__name__)

LIBB64 = "libb64.so.0d"
LIBCUDART = "libcudart.so.12"


class PerfError(RuntimeError):
    """perf_analyzer is missing, cannot start, or failed; the message carries its own output."""


# --------------------------------------------------------------------------------------------------- environment
def perf_analyzer_binary() -> Path:
    """The tritonclient wheel puts `perf_analyzer` beside this interpreter's scripts."""
    for candidate in (Path(sys.prefix) / "bin" / "perf_analyzer", Path(sys.executable).parent / "perf_analyzer"):
        if candidate.exists():
            return candidate
    found = shutil.which("perf_analyzer")
    if found:
        return Path(found)
    raise PerfError("perf_analyzer not found: install tritonclient[all]==2.50.0 (`make env`)")


def cuda_runtime_lib_dir() -> Path | None:
    """`nvidia/cuda_runtime/lib` of the pip package nvidia-cuda-runtime-cu12 (a namespace package)."""
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "lib" / LIBCUDART).exists():
            return Path(root) / "lib"
    return None


def loader_finds(soname: str) -> bool:
    """True when the dynamic loader resolves `soname` from its default paths (e.g. Debian's libb64-0d)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def bundled_libb64() -> Path | None:
    """The libb64 that the pytriton wheel bundles in `site-packages/nvidia_pytriton.libs/`."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(next(iter(spec.submodule_search_locations))).parent / "nvidia_pytriton.libs"
    return next(iter(sorted(libs.glob("libb64-*.so.0d"))), None)


def private_lib_dir() -> Path:
    """A directory of this environment for soname symlinks (a temporary one where the venv is read-only)."""
    target = Path(sys.prefix) / "lib" / "widefunnel-perf-libs"
    try:
        target.mkdir(parents=True, exist_ok=True)
        if os.access(target, os.W_OK):
            return target
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="widefunnel-perf-libs-"))


def libb64_dir(prefer_system: bool = True) -> Path | None:
    """None when the system's libb64.so.0d is found; else a private dir whose `libb64.so.0d` links the bundled one."""
    if prefer_system and loader_finds(LIBB64):
        return None
    bundled = bundled_libb64()
    if bundled is None:
        raise PerfError(f"{LIBB64} not found: `apt-get install libb64-0d`, or install nvidia-pytriton==0.7.0")
    folder = private_lib_dir()
    link = folder / LIBB64
    if not (link.is_symlink() and link.resolve() == bundled.resolve()):
        tmp = folder / f".{LIBB64}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(bundled.resolve())
        os.replace(tmp, link)
    return folder


def perf_environment(base: dict[str, str] | None = None, prefer_system_libb64: bool = True) -> dict[str, str]:
    """The environment perf_analyzer runs in: LD_LIBRARY_PATH gains libcudart's and (if needed) libb64's dirs."""
    env = dict(os.environ if base is None else base)
    dirs = [d for d in (libb64_dir(prefer_system_libb64), cuda_runtime_lib_dir()) if d is not None]
    if cuda_runtime_lib_dir() is None and not loader_finds(LIBCUDART):
        raise PerfError(f"{LIBCUDART} not found: pip install nvidia-cuda-runtime-cu12 (a widefunnel dependency)")
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(d) for d in dirs] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    return env


def check_perf_analyzer(env: dict[str, str] | None = None) -> str:
    """Runs `perf_analyzer --version`; raises PerfError with the loader's message if it cannot start."""
    env = env or perf_environment()
    proc = subprocess.run([str(perf_analyzer_binary()), "--version"], env=env, capture_output=True, text=True,
                          timeout=60)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise PerfError(f"perf_analyzer does not start: {out}")
    return out


# ------------------------------------------------------------------------------------------ the ensemble's steps
@dataclass(frozen=True)
class Step:
    model: str
    version: int
    inputs: dict[str, str]  # model input -> ensemble tensor
    outputs: dict[str, str]  # model output -> ensemble tensor


def ensemble_steps(config) -> list[Step]:
    """Steps of an ensemble config (a model_config_pb2 message or the server's JSON dict), in config order."""
    if not isinstance(config, dict):
        return [Step(s.model_name, int(s.model_version), dict(s.input_map), dict(s.output_map))
                for s in config.ensemble_scheduling.step]
    config = config.get("config", config)
    return [Step(s["model_name"], int(s.get("model_version", -1)), dict(s["input_map"]), dict(s["output_map"]))
            for s in config["ensemble_scheduling"]["step"]]


def served_steps(client, ensemble: str = mcfg.ENSEMBLE) -> list[Step]:
    """The steps as the server routes them now (its pinned versions), via a tritonclient gRPC or HTTP client."""
    config = client.get_model_config(ensemble)
    if not isinstance(config, dict):
        from google.protobuf import json_format

        config = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return ensemble_steps(config)


def _module_of(client):
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    return grpc if isinstance(client, grpc.InferenceServerClient) else http


class DirectChain:
    """The ensemble's steps called one after another as separate requests, wired as the ensemble wires them.

    Each step runs in topological (config) order; optional inputs whose tensor does not exist are left out,
    as the ensemble scheduler leaves them out.
    """

    def __init__(self, client, steps: list[Step]):
        from tritonclient.utils import np_to_triton_dtype

        self.client, self.steps, self.module = client, steps, _module_of(client)
        self._dtype = np_to_triton_dtype

    def _infer(self, step: Step, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = []
        for name, array in tensors.items():
            tensor = self.module.InferInput(name, list(array.shape), self._dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self.module.InferRequestedOutput(n) for n in step.outputs]
        result = self.client.infer(step.model, inputs, model_version=str(step.version) if step.version > 0 else "",
                                   outputs=outputs)
        return {step.outputs[n]: result.as_numpy(n) for n in step.outputs}

    def run(self, request: dict[str, np.ndarray],
            record: Callable[[Step, dict[str, np.ndarray]], None] | None = None) -> dict[str, np.ndarray]:
        tensors = dict(request)
        for step in self.steps:
            step_inputs = {name: tensors[t] for name, t in step.inputs.items() if t in tensors}
            if record is not None:
                record(step, step_inputs)
            tensors.update(self._infer(step, step_inputs))
        return tensors


# ------------------------------------------------------------------------------------------------ input data
def catalogue_ids(repository: Path, version: int) -> np.ndarray:
    return np.asarray(load_table(Path(repository) / "preprocess" / str(version) / CATALOGUE_FILE))


def sample_seeds(repository: Path, version: int, count: int, seed: int = 0) -> np.ndarray:
    ids = catalogue_ids(repository, version)
    return np.sort(np.random.default_rng(seed).choice(ids, size=min(count, len(ids)), replace=False))


def _entry(tensors: dict[str, np.ndarray]) -> dict:
    """One perf_analyzer data entry for a batch-1 request: shapes without the batch dimension."""
    entry = {}
    for name, array in tensors.items():
        if array.shape[0] != 1:
            raise ValueError(f"{name}: expected batch 1, got shape {array.shape}")
        entry[name] = {"content": array.reshape(-1).tolist(), "shape": list(array.shape[1:])}
    return entry


def input_data(samples: Iterable[dict[str, np.ndarray]]) -> dict:
    """perf_analyzer's `--input-data` JSON: one entry per request, perf_analyzer cycles through them."""
    return {"data": [_entry(s) for s in samples]}


def model_inputs(client, seeds: np.ndarray, ensemble: str = mcfg.ENSEMBLE) -> dict[str, list[dict[str, np.ndarray]]]:
    """Real inputs of the ensemble and of every step, keyed by model name (per seed; a step used twice, twice)."""
    chain = DirectChain(client, served_steps(client, ensemble))
    samples: dict[str, list[dict[str, np.ndarray]]] = {ensemble: []}
    for seed in seeds:
        request = {Client.SEED_ITEM_ID: np.array([[seed]], np.int64)}
        samples[ensemble].append(request)
        chain.run(request, lambda step, tensors: samples.setdefault(step.model, []).append(tensors))
    return samples


def write_input_files(samples: dict[str, list[dict[str, np.ndarray]]], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for model, entries in samples.items():
        paths[model] = folder / f"input_{model}.json"
        paths[model].write_text(json.dumps(input_data(entries)))
    return paths


# -------------------------------------------------------------------------------------------------- the sweep
@dataclass
class SweepSettings:
    concurrency: str = "1,2,4"  # levels, comma-separated, or perf_analyzer's start:end:step
    measurement_interval_ms: int = 500
    max_trials: int = 8
    stability_percentage: int = 50  # a shared 2-core box is noisy; perf_analyzer fails runs it deems unstable
    timeout_s: float = 300.0
    admin_key: str | None = None  # perf_analyzer reads each model's config: a restricted API

    def ranges(self) -> list[str]:
        """One perf_analyzer --concurrency-range per run: each listed level alone, or the given range."""
        if ":" in self.concurrency:
            return [self.concurrency]
        return [f"{int(c)}:{int(c)}:1" for c in self.concurrency.split(",") if c.strip()]


def perf_command(model: str, url: str, protocol: str, data: Path, csv_path: Path, settings: SweepSettings,
                 version: int | None = None, concurrency_range: str | None = None,
                 interval_ms: int | None = None, batch: int = 1) -> list[str]:
    """``batch``: perf_analyzer stacks that many data entries into one request."""
    cmd = [str(perf_analyzer_binary()), "-m", model, "-u", url, "-i", protocol, "--input-data", str(data),
           "-b", str(batch), "--concurrency-range", concurrency_range or settings.ranges()[0],
           "--measurement-interval", str(interval_ms or settings.measurement_interval_ms),
           "--max-trials", str(settings.max_trials), "-s", str(settings.stability_percentage), "-f", str(csv_path)]
    if version is not None and version > 0:
        cmd += ["-x", str(version)]
    for header, value in (admin_headers(settings.admin_key, protocol) or {}).items():
        cmd += ["-H", f"{header}:{value}"]
    return cmd


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def parse_perf_csv(path: Path) -> list[dict[str, float | str]]:
    """perf_analyzer's `-f` CSV: one row per concurrency; latencies in microseconds."""
    with open(path, newline="") as handle:
        return [{k.strip(): _number(v) for k, v in row.items() if k} for row in csv.DictReader(handle)]


UNSTABLE = "Failed to obtain stable measurement"


def run_perf(model: str, url: str, protocol: str, data: Path, out_dir: Path, settings: SweepSettings,
             version: int | None = None, env: dict[str, str] | None = None, batch: int = 1
             ) -> list[dict[str, float | str]]:
    """perf_analyzer on one model over one protocol, each concurrency level; rows tagged with model and protocol.

    A level perf_analyzer calls unstable is measured once more with windows twice as long.
    """
    env = env or perf_environment()
    rows: list[dict[str, float | str]] = []
    for concurrency in settings.ranges():
        csv_path = out_dir / f"perf_{model}_{protocol}_b{batch}_{concurrency.replace(':', '-')}.csv"
        for interval in (settings.measurement_interval_ms, 2 * settings.measurement_interval_ms):
            csv_path.unlink(missing_ok=True)
            cmd = perf_command(model, url, protocol, data, csv_path, settings, version, concurrency, interval, batch)
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=settings.timeout_s)
            except subprocess.TimeoutExpired as exc:
                raise PerfError(f"perf_analyzer on {model} over {protocol} ran past {settings.timeout_s:.0f}s") from exc
            output = proc.stdout + proc.stderr
            if proc.returncode == 0 and csv_path.exists():
                break
            if UNSTABLE not in output:
                break
        if proc.returncode != 0 or not csv_path.exists():
            raise PerfError(f"perf_analyzer on {model} over {protocol} (concurrency {concurrency}) failed "
                            f"({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
        rows += [{"model": model, "protocol": protocol, **row} for row in parse_perf_csv(csv_path)]
    return rows


COLUMNS = ("model", "protocol", "Concurrency", "Inferences/Second", "p50 latency", "p90 latency", "p99 latency",
           "Avg latency", "Server Queue", "Server Compute Infer", "Client Send", "Client Recv")


def write_sweep_csv(rows: list[dict], path: Path) -> None:
    keys = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(rows: list[dict], path: Path, title: str = "widefunnel: perf_analyzer concurrency sweep") -> None:
    """Throughput and p50/p99 latency vs concurrency, one column per protocol, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = sorted({r["protocol"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(protocols), figsize=(7 * len(protocols), 9), squeeze=False)
    colours = plt.get_cmap("tab10")
    for col, protocol in enumerate(protocols):
        top, bottom = axes[0][col], axes[1][col]
        for i, model in enumerate(models):
            mine = sorted((r for r in rows if r["model"] == model and r["protocol"] == protocol),
                          key=lambda r: r["Concurrency"])
            if not mine:
                continue
            conc = [r["Concurrency"] for r in mine]
            width = 2.5 if model == mcfg.ENSEMBLE else 1.2
            top.plot(conc, [r["Inferences/Second"] for r in mine], "o-", color=colours(i), lw=width, label=model)
            bottom.plot(conc, [r["p50 latency"] / 1e3 for r in mine], "o-", color=colours(i), lw=width,
                        label=f"{model} p50")
            bottom.plot(conc, [r["p99 latency"] / 1e3 for r in mine], "x--", color=colours(i), lw=0.8,
                        label=f"{model} p99")
        levels = sorted({r["Concurrency"] for r in rows if r["protocol"] == protocol})
        top.set(title=f"{protocol}: throughput", xlabel="concurrency", ylabel="inferences / s", yscale="log",
                xticks=levels)
        bottom.set_xticks(levels)
        bottom.set(title=f"{protocol}: latency (solid p50, dashed p99)", xlabel="concurrency", ylabel="ms",
                   yscale="log")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


@dataclass
class SweepResult:
    rows: list[dict]
    csv_path: Path
    plot_path: Path
    seconds: float


def sweep(http_url: str, grpc_url: str, repository: Path, out_dir: Path, models: list[str] | None = None,
          protocols: tuple[str, ...] = ("grpc", "http"), settings: SweepSettings | None = None, samples: int = 32,
          log: Callable[[str], None] | None = None) -> SweepResult:
    """perf_analyzer on the ensemble and on each step model it pins, over each protocol; CSV + PNG in out_dir."""
    import tritonclient.grpc as grpc

    settings, start = settings or SweepSettings(), time.monotonic()

    def say(message: str) -> None:
        logger.info("%s", message)
        if log is not None:
            log(message)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = with_admin_key(grpc.InferenceServerClient(grpc_url), settings.admin_key, "grpc")
    try:
        steps = served_steps(client)
        versions = {s.model: s.version for s in steps}
        seeds = sample_seeds(repository, versions["preprocess"], samples)
        files = write_input_files(model_inputs(client, seeds), out_dir)
    finally:
        client.close()
    env, urls = perf_environment(), {"grpc": grpc_url, "http": http_url}
    rows: list[dict] = []
    for model in models or [mcfg.ENSEMBLE, *dict.fromkeys(s.model for s in steps)]:
        for protocol in protocols:
            say(f"perf_analyzer {model} over {protocol} (concurrency {settings.concurrency})")
            rows += run_perf(model, urls[protocol], protocol, files[model], out_dir, settings, versions.get(model), env)
    result = SweepResult(rows, out_dir / "perf.csv", out_dir / "perf.png", time.monotonic() - start)
    write_sweep_csv(rows, result.csv_path)
    plot_sweep(rows, result.plot_path)
    return result


def format_table(rows: list[dict]) -> str:
    """A markdown table: model, protocol, concurrency, throughput, p50/p99 in ms."""
    lines = ["| model | protocol | concurrency | infer/s | p50 ms | p99 ms |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['protocol']} | {int(r['Concurrency'])} | {r['Inferences/Second']:.1f} | "
                     f"{r['p50 latency'] / 1e3:.2f} | {r['p99 latency'] / 1e3:.2f} |")
    return "\n".join(lines)
