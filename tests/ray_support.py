"""A local Ray head for the Ray tests (``test_ray.py``, ``test_atlas_ray.py``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile


def ray_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ray.scripts.scripts", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


def ray_head():
    """Yield the address of a Ray head with 2 CPUs on 127.0.0.1 (a free port, a private temp dir); stop it
    afterwards. Use as a module fixture: ``yield from ray_head()``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="lesion-ray-", dir="/tmp")  # Ray's socket paths must stay short
    try:
        ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}")  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        ray_cli("stop", "--force", check=False)
        shutil.rmtree(temp, ignore_errors=True)
