"""What a benchmark JSON records about where it ran: the commit, the hardware and the software.

The device machine receives a copy of the working tree without ``.git``, so the commit comes from,
in order: ``git rev-parse HEAD``; the ``PAGEDSERVE_COMMIT`` environment variable;
``bench/carry/COMMIT`` (written by ``python -m bench --prepare`` next to the tokenizer it carries).
The GPU is read through NVML (nvidia-ml-py), which opens no CUDA context in the runner.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys

COMMIT_FILE = os.path.join("bench", "carry", "COMMIT")
PACKAGES = ("torch", "triton", "transformers", "tokenizers", "numpy")


def git_commit(root: str) -> tuple[str, bool] | None:
    """(HEAD, whether tracked files differ from it) or None without git / a repository."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or os.path.realpath(top.stdout.strip()) != os.path.realpath(root):
            return None  # no repository, or ``root`` is a copy inside some other one
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        diff = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                              capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), bool(diff.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def commit_info(root: str) -> dict:
    """The commit the tree holds: $PAGEDSERVE_COMMIT first; then git when the tree is clean; then the commit
    that ``--prepare`` wrote into bench/carry (the GPU machine receives a copy whose .git can be older than
    the files it carries, so a dirty git HEAD there is not the commit that ran); then a dirty git HEAD."""
    if os.environ.get("PAGEDSERVE_COMMIT"):
        return {"commit": os.environ["PAGEDSERVE_COMMIT"], "dirty": None, "commit_source": "PAGEDSERVE_COMMIT"}
    got = git_commit(root)
    if got is not None and not got[1]:
        return {"commit": got[0], "dirty": False, "commit_source": "git"}
    path = os.path.join(root, COMMIT_FILE)
    if os.path.exists(path):
        with open(path) as fh:
            words = fh.read().split()
        if words:
            return {"commit": words[0], "dirty": "dirty" in words[1:], "commit_source": COMMIT_FILE}
    if got is not None:
        return {"commit": got[0], "dirty": got[1], "commit_source": "git"}
    return {"commit": "unknown", "dirty": None, "commit_source": None}


def gpus() -> list[dict]:
    """Name, memory, driver and max SM clock of each visible NVIDIA GPU; [] without NVML or GPUs."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: a CPU machine
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = range(pynvml.nvmlDeviceGetCount())
        if visible not in (None, ""):
            indices = [int(i) for i in visible.split(",") if i.strip().isdigit()]
        for i in indices:
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20,
                        "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                        "driver": driver.decode() if isinstance(driver, bytes) else driver})
        return out
    finally:
        pynvml.nvmlShutdown()


def hardware() -> dict:
    gs = gpus()
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"gpus": gs, "gpu_summary": summary(gs), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            "packages": versions}


def summary(gs: list[dict]) -> str:
    """``1 x NVIDIA H200 (143771 MiB)``, or ``cpu``."""
    if not gs:
        return "cpu"
    names = sorted({(g["name"], g["memory_mib"]) for g in gs})
    return ", ".join(f"{sum(1 for g in gs if (g['name'], g['memory_mib']) == n)} x {n[0]} ({n[1]} MiB)"
                     for n in names)
