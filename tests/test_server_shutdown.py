"""`tfllm serve --export`, stopped with SIGTERM while streams are in flight: every admitted
request finishes whole, then the process exits 0. And a bad command line is one error line."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import signal
import threading

import pytest
import tiny_run
from commands import run_subprocess
from server_process import Server

pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow  # a server process
SEQ = 128


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run_128"), seq=SEQ)


def _stream(port: int, prompt: str, max_tokens: int, accepted: threading.Event) -> tuple[str, str]:
    """A streamed completion read to its end: (text, the last event). `accepted` is set once the
    response has started, which the server does only after it has queued the request."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request(
        "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    accepted.set()
    text, last = "", ""
    for line in response:
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        last = line
        if line != "data: [DONE]":
            text += json.loads(line[6:])["choices"][0]["text"]
    return text, last


def test_export_served_and_sigterm_finishes_streams(run, tmp_path):
    server = Server("--export", run.export_dir, "--slots", "2", log_path=str(tmp_path / "log"))
    try:
        expected = run.generator.generate(["def"], max_new_tokens=12)[0]
        out = server.post(
            "/v1/completions",
            {"model": "tiny", "prompt": "def", "max_tokens": 12, "temperature": 0},
        )
        assert out["choices"][0]["text"] == expected  # the export's weights, the same tokens
        jobs = [("def", 110), ("import", 110), ("class", 110), ("for", 110)]  # 2 queued
        accepted = [threading.Event() for _ in jobs]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(_stream, server.port, p, n, event)
                for (p, n), event in zip(jobs, accepted, strict=True)
            ]
            # SIGTERM closes the listening socket: a request not yet queued would be refused.
            assert all(event.wait(60) for event in accepted)
            server.process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=120) for f in futures]
        code = server.process.wait(60)
    finally:
        server.stop()
    for (prompt, n), (text, last) in zip(jobs, results, strict=True):
        assert last == "data: [DONE]"
        assert text == run.generator.generate([prompt], max_new_tokens=n)[0]
    assert code == 0, server.log
    assert "SIGTERM" in server.log


def test_bad_command_lines_are_one_error_line(tmp_path):
    out = run_subprocess("serve", "--workdir", str(tmp_path / "missing"), timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "config.yaml not found" in out.stderr
