"""Helpers shared by tests."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

GENERATE_SCRIPT = """
import sys
from instructscale.generate.config import GenerateConfig
from instructscale.generate.stage import generate
from instructscale.process import load
from instructscale.runtime import RayConfig, init_ray
if __name__ == "__main__":
    init_ray(RayConfig(num_cpus=2))
    generate(load(GenerateConfig, sys.argv[1]))
"""


def kill_generate_when(cfg, cfg_file: Path, ready: Callable[[], bool], timeout_s: float = 300) -> None:
    """Run the generation stage for ``cfg`` in a process of its own and SIGKILL it (its whole
    process group) as soon as ``ready()`` holds, or when it ends or times out."""
    cfg_file.write_text(json.dumps(cfg.model_dump(mode="json")))
    proc = subprocess.Popen(
        [sys.executable, "-c", GENERATE_SCRIPT, str(cfg_file)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.2)
    kill_with_its_ray(proc)


def kill_with_its_ray(proc: subprocess.Popen) -> None:
    """SIGKILL a driver process started in a session of its own, and the embedded Ray it started: its
    raylet and workers run in process groups of their own, and a worker that outlived the driver
    could still answer (and log) a request after the kill."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    os.killpg(proc.pid, signal.SIGKILL)
    for child in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(family, timeout=30)
    proc.wait()


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
