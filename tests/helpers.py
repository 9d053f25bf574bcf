"""Helpers shared by tests."""

import json
import subprocess
import sys


def check_in_vllm(path: str) -> dict:
    """Load ``path`` in vLLM through `instructscale check-model` (a fresh process) and generate."""
    proc = subprocess.run(
        [sys.executable, "-m", "instructscale.cli", "check-model", str(path), "--engine", "vllm"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('{"engine"')))
