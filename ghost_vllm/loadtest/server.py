"""Start/stop a real vLLM OpenAI-compatible server on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

__all__ = ["free_port", "VLLMServer"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``ghost-vllm serve`` (or, ``launcher="vllm"``, vLLM's own ``vllm serve`` console script beside this Python) in
    a subprocess; context manager that waits for /health and stops it cleanly."""

    def __init__(self, model: str, extra: Optional[list[str]] = None, log_path: Optional[Path] = None,
                 startup_timeout: float = 300.0, env: Optional[dict] = None, launcher: str = "ghost-vllm",
                 command: Optional[list[str]] = None, port: Optional[int] = None, cwd: Optional[Path] = None,
                 host: str = "127.0.0.1"):
        """``command`` (with ``port``, ``cwd``): run exactly this command line instead (e.g. one from the README)."""
        self.model = model
        self.launcher = launcher
        self.command = command
        self.cwd = cwd
        self.host = host
        self.port = port or free_port()
        self.base_url = f"http://{host}:{self.port}"
        self.extra = extra or []
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None

    def __enter__(self) -> "VLLMServer":
        serve = ([str(Path(sys.executable).parent / "vllm"), "serve"] if self.launcher == "vllm"
                 else [sys.executable, "-m", "ghost_vllm.cli", "serve"])
        cmd = self.command or [*serve, self.model, "--host", self.host, "--port", str(self.port), *self.extra]
        self._log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})},
                                     start_new_session=True, cwd=self.cwd)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} during start-up; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"server not healthy after {self.startup_timeout} s; log: {self.log_path}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.base_url}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.returncode is not None:
            return self.returncode or 0
        self.proc.send_signal(signal.SIGINT)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.returncode = self.proc.wait()
            raise RuntimeError("server did not stop within the timeout after SIGINT")
        finally:
            if self._log is not subprocess.DEVNULL:
                self._log.close()
        return self.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
