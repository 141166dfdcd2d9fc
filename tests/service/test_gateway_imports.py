"""The gateway, the client and their commands never import torch (the gateway image has none)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
from megasr.service import create_app
from megasr.settings import Settings
from megasr.client import Client
from megasr.cli import client_cmd, serve_cmd
app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", auth_enabled=False))
app.openapi()
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"heavy": heavy, "worker": "megasr.worker" in sys.modules,
                  "model": "megasr.model" in sys.modules}))
"""


def test_the_gateway_never_imports_torch():
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    modules = json.loads(result.stdout.strip().splitlines()[-1])

    assert modules == {"heavy": [], "worker": False, "model": False}
