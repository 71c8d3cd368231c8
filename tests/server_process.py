"""`python -m tfllm.serve` as a user starts it: a subprocess on a free local port, waited for
until /health answers, stopped with SIGTERM (its exit code kept for the tests)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running server; `url` is its base address, `log` its output so far."""

    def __init__(self, *argv: str, log_path: str, timeout: float = 240.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        command = [sys.executable, "-m", "tfllm.serve", *argv, "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited {self.process.returncode}:\n{self.log}")
            try:
                if self.get("/health") == {"status": "ok"}:
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not answer within {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read().decode()
        return json.loads(body) if path != "/metrics" and not path == "/" else body

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def metric(self, name: str) -> float:
        for line in self.get("/metrics").splitlines():
            if line.startswith(f"tfllm_{name} "):
                return float(line.split()[-1])
        raise KeyError(name)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
