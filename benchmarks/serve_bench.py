"""Serving throughput and latency under concurrent clients: `tfllm serve` against the naive
way (one request at a time through the export's serving_default, what TF Serving gives a user
without batching) and `transformers serve --continuous-batching` on the `tfllm convert --to_hf`
copy of the same model, on the CPU.

    python -m benchmarks serve [--rounds 3] [--quick]

The model: configs/small.yaml's shape as in benchmarks/generate_bench.py (6 layers, hidden 512,
vocabulary 8192, 256 positions; about 25M parameters), random weights with EOS's embedding
zeroed so every request generates exactly max_tokens. The requests: a fixed mix of prompt
lengths (8, 32, 96 tokens) and output lengths (16, 32, 64 tokens), greedy, streamed; `c`
closed-loop clients send max(8, 2c) requests in all. Per contender and concurrency: output
tokens/s (generated tokens / wall time), time to first token and inter-token latency (the gaps
between streamed chunks) at p50 and p99. serving_default answers whole, so its first token
arrives with the last and it has no inter-token latency. Contenders alternate in rounds; the
record (benchmarks/results/, through the harness) gives each figure's median and spread over
the rounds.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks.common import summarize

PROMPT_TOKENS = (8, 32, 96)
MIX = [(8, 64), (32, 32), (96, 16), (8, 16), (32, 64), (96, 32), (8, 32), (32, 16)]


def prompts(tokenizer_path: str) -> dict[int, str]:
    """Texts of exactly 8, 32 and 96 tokens, cut from the stdlib's source."""
    import sysconfig

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    source = pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()
    ids = sp.encode(source[2000:12000])
    return {n: sp.decode(ids[:n]) for n in PROMPT_TOKENS}


def write_tokenizer_json(tokenizer_path: str, hf_dir: str) -> None:
    """tokenizer.json for the HF copy: transformers' own conversion of tokenizer.model needs a
    newer protobuf than this environment's, so the same Unigram model is written with
    `tokenizers` (ids checked equal to SentencePiece's on the benchmark's prompts)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Digits(individual_digits=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    for text in prompts(tokenizer_path).values():
        assert tok.encode(text).ids == sp.encode(text), "tokenizer.json differs"
    tok.save(os.path.join(hf_dir, "tokenizer.json"))
    config_path = os.path.join(hf_dir, "tokenizer_config.json")
    config = json.loads(pathlib.Path(config_path).read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    pathlib.Path(config_path).write_text(json.dumps(config, indent=2))
    os.remove(os.path.join(hf_dir, "tokenizer.model"))


def make_model(root: str) -> dict:
    """The workdir (trainer-written checkpoint), its export and its HF copy."""
    from benchmarks.generate_bench import make_run
    from tfllm.hub.convert import to_hf

    _, tokenizer_path, version_dir = make_run(root)
    hf_dir = f"{root}/hf"
    to_hf(root, hf_dir)
    write_tokenizer_json(tokenizer_path, hf_dir)
    return {"workdir": root, "export": version_dir, "hf": hf_dir, "tokenizer": tokenizer_path}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], port: int, log: str, timeout: float = 600) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited: {pathlib.Path(log).read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(1)
    process.kill()
    raise RuntimeError(f"{command[:3]} did not start: {pathlib.Path(log).read_text()[-2000:]}")


def streamed(port: int, model: str):
    """A client of an OpenAI-compatible server: one streamed completion per call."""

    def ask(prompt: str, max_tokens: int) -> dict:
        body = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        started = time.perf_counter()
        connection.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        times, tokens = [], 0
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if event.get("choices") and event["choices"][0].get("text"):
                times.append(time.perf_counter())
        connection.close()
        if not times:
            raise RuntimeError(f"no tokens from port {port}")
        return {"ttft": times[0] - started, "itl": list(np.diff(times)), "tokens": tokens}

    return ask


def one_at_a_time(version_dir: str):
    """The export's serving_default, one request at a time (a lock), whole answers."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece op the export uses)

    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    lock = threading.Lock()

    def ask(prompt: str, max_tokens: int) -> dict:
        started = time.perf_counter()
        with lock:
            out = signature(
                prompts=tf.constant([prompt]),
                max_new_tokens=tf.constant(max_tokens),
                temperature=tf.constant(0.0),
                top_k=tf.constant(0),
                top_p=tf.constant(1.0),
                seed=tf.constant(0, tf.int64),
            )
        tokens = int(np.sum(out["tokens"].numpy() != 0))
        return {"ttft": time.perf_counter() - started, "itl": [], "tokens": tokens}

    ask.signature = signature  # keeps the loaded variables alive
    return ask


def load(ask, texts: dict[int, str], concurrency: int) -> dict:
    """`concurrency` closed-loop clients through the mix; the figures of this run."""
    jobs = [MIX[i % len(MIX)] for i in range(max(len(MIX), 2 * concurrency))]
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda job: ask(texts[job[0]], job[1]), jobs))
    wall = time.perf_counter() - started
    ttft = [r["ttft"] for r in results]
    itl = [gap for r in results for gap in r["itl"]]

    def pct(values, q):
        return float(np.percentile(values, q)) if values else None

    return {
        "tokens_per_second": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "itl_p50": pct(itl, 50),
        "itl_p99": pct(itl, 99),
        "requests": len(results),
        "tokens": sum(r["tokens"] for r in results),
    }


def measure(rounds: int, levels: list[int], with_transformers: bool, slots: int = 16) -> dict:
    """Every contender at every concurrency level, alternating over `rounds`: the medians and
    spreads, what failed, and the goals."""
    root = tempfile.mkdtemp(prefix="serve-bench-")
    paths = make_model(f"{root}/run")
    texts = prompts(paths["tokenizer"])
    servers, contenders, errors = [], {}, {}
    try:
        port = free_port()
        servers.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "tfllm.serve",
                    "--workdir",
                    paths["workdir"],
                    "--port",
                    str(port),
                    "--slots",
                    str(slots),
                    "--max_queue",
                    "256",
                    "--name",
                    "bench",
                ],
                port,
                f"{root}/tfllm.log",
            )
        )
        contenders["tfllm serve"] = streamed(port, "bench")
        contenders["serving_default, one at a time"] = one_at_a_time(paths["export"])
        if with_transformers:
            port = free_port()
            servers.append(
                start(
                    [
                        "transformers",
                        "serve",
                        paths["hf"],
                        "--continuous-batching",
                        # A bounded KV cache: by default it takes a share of the free memory,
                        # which got its process killed for lack of memory on this machine.
                        "--cb-block-size",
                        "32",
                        "--cb-num-blocks",
                        "256",
                        "--device",
                        "cpu",
                        "--dtype",
                        "float32",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    port,
                    f"{root}/transformers.log",
                )
            )
            contenders["transformers serve"] = streamed(port, paths["hf"])
        for name, ask in contenders.items():  # warm-up: every prompt bucket and output length
            try:
                for prompt_tokens, max_tokens in MIX:
                    ask(texts[prompt_tokens], max_tokens)
            except Exception as err:
                errors[name] = f"warm-up: {err!r}"
        runs = {name: {c: [] for c in levels} for name in contenders}
        for r in range(rounds):
            order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
            for name in order:
                for c in levels:
                    if name in errors:
                        continue
                    try:
                        runs[name][c].append(load(contenders[name], texts, c))
                    except Exception as err:  # a server that died: recorded, the others go on
                        errors[name] = f"round {r + 1}, c={c}: {err!r}"
                        continue
                    figure = runs[name][c][-1]
                    print(
                        f"round {r + 1} {name:32s} c={c:2d} {figure['tokens_per_second']:7.1f} "
                        f"tok/s ttft p99 {figure['ttft_p99']:.3f}s",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.terminate()
            server.wait(60)
        shutil.rmtree(root, ignore_errors=True)
    results = {
        name: {
            str(c): {
                key: summarize([run[key] for run in by_level[c] if run[key] is not None])
                for key in by_level[c][0]
            }
            for c in levels
            if by_level[c]
        }
        for name, by_level in runs.items()
    }
    return {"results": results, "errors": errors, "goals": goals(results, levels)}


def case(rounds: int, quick: bool) -> dict:
    """`python -m benchmarks serve [--rounds N] [--quick]`: 1, 4 and 16 clients with all three
    contenders (`--quick`: 1 and 4 clients, without `transformers serve`)."""
    levels = [1, 4] if quick else [1, 4, 16]
    with_transformers = not quick and shutil.which("transformers") is not None
    out = measure(rounds, levels, with_transformers)
    figures = {
        f"{name}, {c} clients": by_key
        for name, by_level in out["results"].items()
        for c, by_key in by_level.items()
    }
    notes = [f"{goal}: {value:.2f}" for goal, value in out["goals"].items() if value is not None]
    notes += [f"{name} failed ({error})" for name, error in out["errors"].items()]
    if not with_transformers:
        notes.append("transformers serve not run (--quick, or not installed: the bench extra)")
    return {"figures": figures, "notes": notes}


def goals(results: dict, levels: list[int]) -> dict:
    """The issue's goals, from the medians: at the most clients, tfllm serve's throughput over
    one-at-a-time's (>= 4) and over transformers serve's (>= 1.2); its p99 TTFT at the most
    clients over that at one client (< 3)."""

    def median(name, c, key):
        found = results.get(name, {}).get(str(c), {}).get(key)
        return found["median"] if found else None

    top, one = max(levels), min(levels)
    ours = median("tfllm serve", top, "tokens_per_second")
    out = {}
    for name in ("serving_default, one at a time", "transformers serve"):
        theirs = median(name, top, "tokens_per_second")
        out[f"throughput at c={top} vs {name}"] = ours / theirs if ours and theirs else None
    low, high = median("tfllm serve", one, "ttft_p99"), median("tfllm serve", top, "ttft_p99")
    out[f"p99 TTFT c={top} / c={one}"] = high / low if low and high else None
    return out
