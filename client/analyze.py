"""Triton Model Analyzer over the funnel's steps: NVIDIA's search for each step's dynamic-batching delay and
instance count, run against this project's tritonserver with the inputs the ensemble really feeds each step,
and the choice written back as build config (`serving.steps`), which the builder turns into every step's
`config.pbtxt`.

Why per step and not the ensemble as one: Model Analyzer 1.58's quick search over an ensemble enumerates the
joint neighbourhood of all composing models; with this ensemble's 8 it spent minutes of CPU in
`Neighborhood._append_combinations_to_results` without reaching a first measurement. Each step is profiled
alone instead (its manual brute search over `STEP_SWEEP`), at concurrency 1 and 4, with the tensors that
`client.perf.model_inputs` records from the ensemble's own wiring.

Model Analyzer runs from its own virtual environment (`make analyzer-env`: it pins tritonclient and numpy
versions the serving environment does not use); this module only writes its config, runs it and reads its
CSV. Usage: `widefunnel analyze --repository model_repository` (docs/OPERATIONS.md).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from widefunnel import model_configs as mcfg
from widefunnel.layout import CONFIG_FILE

logger = logging.getLogger(__name__)

# What the search tries for every step: the batching delay (latency-first: a lone request should not wait
# for company) and one or two instances on CPU.
STEP_SWEEP = {"max_queue_delay_microseconds": [0, 100, 500], "count": [1, 2]}
CONCURRENCY = (1, 4)
# The server's environment keys the Python stubs need (widefunnel.server.distribution.server_environment).
_SERVER_ENV = ("LD_LIBRARY_PATH", "WIDEFUNNEL_SITE", "PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS",
               "OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX",
               "GLIBC_TUNABLES")


@dataclass(frozen=True)
class StepChoice:
    model: str
    max_queue_delay_us: int
    instances: int
    avg_ms: dict[int, float]  # concurrency -> mean latency of the chosen config (MA reports no p50)
    throughput: dict[int, float]  # concurrency -> inferences/s of the chosen config


def analyzer_config(repository: Path, work: Path, inputs: dict[str, Path], backend_dir: Path,
                    server_binary: Path, perf_binary: Path, server_env: dict[str, str],
                    models: tuple[str, ...] = tuple(dict.fromkeys(mcfg.STEP_MODELS))) -> dict:
    """Model Analyzer's profile config (YAML as a dict) for ``models``, each with its recorded inputs."""
    profile = {}
    for model in models:
        profile[model] = {
            "perf_analyzer_flags": {"input-data": str(inputs[model])},
            "model_config_parameters": {
                "dynamic_batching": {"max_queue_delay_microseconds": STEP_SWEEP["max_queue_delay_microseconds"]},
                "instance_group": [[{"kind": "KIND_CPU", "count": STEP_SWEEP["count"]}]],
            },
        }
    return {
        "model_repository": str(repository),
        "output_model_repository_path": str(work / "output_repository"),
        "override_output_model_repository": True,
        "checkpoint_directory": str(work / "checkpoints"),
        "export_path": str(work / "export"),
        "profile_models": profile,
        "run_config_search_disable": True,
        "concurrency": list(CONCURRENCY),
        "client_protocol": "grpc",
        "triton_launch_mode": "local",
        "triton_server_path": str(server_binary),
        # loopback only: this server has no gateway and no admin key (its repository API is open)
        "triton_server_flags": {"backend-directory": str(backend_dir), "strict-readiness": "true",
                                "http-address": "127.0.0.1", "grpc-address": "127.0.0.1",
                                "metrics-address": "127.0.0.1"},
        # Model Analyzer runs perf_analyzer with this environment too: it must find libcudart and libb64
        "triton_server_environment": {k: server_env[k] for k in _SERVER_ENV if k in server_env},
        "perf_analyzer_path": str(perf_binary),
        # the summary tables are what writes results/metrics-model-inference.csv
        "skip_summary_reports": False,
        "inference_output_fields": ["model_name", "batch_size", "concurrency", "model_config_path", "instance_group",
                                    "perf_throughput", "perf_latency_avg", "perf_latency_p90", "perf_latency_p99"],
        "collect_cpu_metrics": True,
    }


def _float(value: str) -> float:
    return float(value.replace(",", ""))


def read_results(export: Path) -> list[dict]:
    """Rows of Model Analyzer's `results/metrics-model-inference.csv`: model config, concurrency, mean / p90 /
    p99 latency (ms), throughput (infer/s)."""
    path = export / "results" / "metrics-model-inference.csv"
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            rows.append({"config": row["Model Config Path"], "model": row["Model"],
                         "concurrency": int(_float(row["Concurrency"])),
                         "avg_ms": _float(row["Avg Latency (ms)"]),
                         "p90_ms": _float(row["p90 Latency (ms)"]),
                         "p99_ms": _float(row["p99 Latency (ms)"]),
                         "throughput": _float(row["Throughput (infer/sec)"])})
    return rows


def config_settings(output_repository: Path, config_name: str) -> tuple[int, int]:
    """(max_queue_delay_us, instances) of one config Model Analyzer wrote."""
    config = mcfg.from_pbtxt((output_repository / config_name / CONFIG_FILE).read_text())
    return (int(config.dynamic_batching.max_queue_delay_microseconds),
            sum(g.count or 1 for g in config.instance_group) or 1)


def choose(rows: list[dict], settings: dict[str, tuple[int, int]]) -> list[StepChoice]:
    """Latency first: per step, the config with the lowest mean latency at concurrency 1 (Model Analyzer reports
    mean, p90, p95 and p99, no median) among those whose throughput at the highest concurrency is within 10 % of
    the step's best; ties go to fewer instances, then less delay."""
    top = max(r["concurrency"] for r in rows)
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        configs = sorted({r["config"] for r in mine})
        at = {(r["config"], r["concurrency"]): r for r in mine}
        best_rate = max(at[(c, top)]["throughput"] for c in configs if (c, top) in at)
        eligible = [c for c in configs if (c, 1) in at and (c, top) in at
                    and at[(c, top)]["throughput"] >= 0.9 * best_rate]
        pick = min(eligible, key=lambda c: (at[(c, 1)]["avg_ms"], settings[c][1], settings[c][0]))
        delay, instances = settings[pick]
        out.append(StepChoice(model, delay, instances,
                              {n: at[(pick, n)]["avg_ms"] for n in (1, top)},
                              {n: at[(pick, n)]["throughput"] for n in (1, top)}))
    return out


def serving_toml(choices: list[StepChoice]) -> str:
    """The choice as a build config override (`widefunnel build --config FILE`)."""
    lines = ["# Written by `widefunnel analyze` (Triton Model Analyzer, per step; latency first).", ""]
    for c in choices:
        lines += [f"[serving.steps.{c.model}]", f"max_queue_delay_us = {c.max_queue_delay_us}",
                  f"instances = {c.instances}", ""]
    return "\n".join(lines)


def analyzer_binary(venv: Path) -> Path:
    binary = Path(venv) / "bin" / "model-analyzer"
    if not binary.exists():
        found = shutil.which("model-analyzer")
        if found:
            return Path(found)
        raise FileNotFoundError(f"{binary} not found: run `make analyzer-env` (pip install triton-model-analyzer "
                                f"into its own virtual environment)")
    return binary


def run_analyzer(binary: Path, config: dict, work: Path, env: dict[str, str], timeout_s: float) -> Path:
    """Runs `model-analyzer profile -f <config>`; its log goes to ``work/model_analyzer.log``."""
    import yaml  # noqa: PLC0415 - a Model Analyzer run is the only user

    work.mkdir(parents=True, exist_ok=True)
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = work / "model_analyzer.log"
    with open(log, "w") as handle:
        proc = subprocess.run([str(binary), "profile", "-f", str(path)], stdout=handle, stderr=subprocess.STDOUT,
                              env=env, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"model-analyzer exited {proc.returncode}; its log: {log}\n"
                           + "\n".join(log.read_text().splitlines()[-15:]))
    return Path(config["export_path"])


def analyze(repository: Path, work: Path, venv: Path, inputs: dict[str, Path], backend_dir: Path,
            server_binary: Path, server_env: dict[str, str], timeout_s: float = 3600.0,
            models: tuple[str, ...] | None = None) -> list[StepChoice]:
    """Model Analyzer on every step (``inputs``: each step's recorded inputs, `client.perf.write_input_files`),
    then the choice. The caller supplies the server's pieces (`widefunnel.server.distribution`)."""
    from widefunnel.client.perf import perf_analyzer_binary, perf_environment

    repository, work = Path(repository).resolve(), Path(work).resolve()
    perf_env = perf_environment()
    server_env = dict(server_env)
    server_env["LD_LIBRARY_PATH"] = os.pathsep.join([server_env.get("LD_LIBRARY_PATH", ""),
                                                     perf_env["LD_LIBRARY_PATH"]])
    config = analyzer_config(repository, work, inputs, backend_dir, server_binary, perf_analyzer_binary(),
                             server_env, models or tuple(dict.fromkeys(mcfg.STEP_MODELS)))
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    export = run_analyzer(analyzer_binary(venv), config, work, perf_env, timeout_s)
    rows = read_results(export)
    output = Path(config["output_model_repository_path"])
    choices = choose(rows, {r["config"]: config_settings(output, r["config"]) for r in rows})
    (work / "choices.json").write_text(json.dumps([c.__dict__ for c in choices], indent=2))
    return choices
