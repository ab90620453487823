"""The router runs in a slim image: importing it (and building its app) must not pull in the engine,
torch, transformers or numpy."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "numpy", "triton", "tokenizers", "safetensors", "pagedserve.engine",
         "pagedserve.core", "pagedserve.worker", "pagedserve.models", "pagedserve.entrypoints")


def test_router_imports_stay_light() -> None:
    code = (
        "import json, sys\n"
        "import pagedserve.router.__main__, pagedserve.router.app, pagedserve.router.discovery\n"
        "from pagedserve.router.app import RouterState, build_app\n"
        "from pagedserve.router.backends import BackendPool\n"
        "from pagedserve.router.metrics import RouterMetrics\n"
        "from pagedserve.router.routing import Router\n"
        "build_app(RouterState(BackendPool(), Router(), RouterMetrics(), None, None, 3))\n"
        "from pagedserve.router.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import kubernetes.client, kubernetes.watch\n"
        "print(json.dumps(sorted(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "runtime"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    mods = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "pagedserve.router.app" in mods and "aiohttp" in mods
    bad = [m for m in mods if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not bad, f"the router imported heavy modules: {bad}"
