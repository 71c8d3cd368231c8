"""`tfllm serve` through clients tfllm did not write: the `openai` package against the server
as a subprocess. Greedy outputs equal `tfllm generate`'s, alone and 16 at once; sampling with a
seed equals `tfllm generate --seed`; errors, 429s and disconnects as OpenAI clients expect."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tiny_run
from commands import run_subprocess
from server_process import Server

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

pytestmark = pytest.mark.slow  # a server process
SEQ = 128
SLOTS, QUEUE = 8, 16
CHUNK = 8  # --prefill_chunk: the longer prompts admitted while others run go in chunks
PROMPTS = [
    "def",
    "import os\n",
    "class Server:\n    def __init__(self",
    "x = [i * i for i in range(10)]\n",
    "",
    'if __name__ == "__main__":\n    main()\n',
    "for",
    "return {key: value for key, value in items.items() if value is not None}",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run_128"), seq=SEQ)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    log = str(tmp_path_factory.mktemp("server") / "server.log")
    argv = ["--workdir", run.workdir, "--slots", str(SLOTS), "--max_queue", str(QUEUE)]
    argv += ["--prefill_chunk", str(CHUNK)]
    started = Server(*argv, log_path=log)
    yield started
    assert started.stop() == 0, started.log


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def _generate(run, prompt: str, n: int, **options) -> str:
    return run.generator.generate([prompt], max_new_tokens=n, **options)[0]


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["run"]
    assert server.get("/health") == {"status": "ok"}


def test_greedy_completion_equals_generate(run, client):
    for prompt in PROMPTS[:3]:
        out = client.completions.create(model="run", prompt=prompt, max_tokens=12, temperature=0)
        assert out.choices[0].text == _generate(run, prompt, 12)
        assert out.choices[0].finish_reason in ("length", "stop")
        assert out.usage.completion_tokens <= 12


def test_sixteen_concurrent_mixed_lengths_equal_generate(run, server, client):
    """Continuous batching must not change results: 16 requests of mixed prompt and output
    lengths at once, through 8 slots, each equal to `tfllm generate` on its prompt alone; the
    prompts longer than the prefill chunk that take a slot freed while others run are
    prefilled in chunks."""
    jobs = [(PROMPTS[i % len(PROMPTS)], 4 + (5 * i) % 29) for i in range(16)]
    expected = [_generate(run, prompt, n) for prompt, n in jobs]

    def ask(job):
        prompt, n = job
        out = client.completions.create(model="run", prompt=prompt, max_tokens=n, temperature=0)
        return out.choices[0].text

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, jobs))
    assert got == expected
    assert server.metric("running_sequences") == 0


def test_streaming_equals_whole(run, server, client):
    # The prompt whose greedy completion is longest: a tiny model's first token after some
    # prompts is EOS (an empty completion, one chunk), which shifts between training runs.
    prompt = max(PROMPTS, key=lambda p: len(_generate(run, p, 20)))
    stream = client.completions.create(
        model="run", prompt=prompt, max_tokens=20, temperature=0, stream=True
    )
    pieces = [chunk.choices[0].text for chunk in stream]
    assert len(pieces) > 2
    assert "".join(pieces) == _generate(run, prompt, 20)
    raw = _raw_stream(server, {"model": "run", "prompt": prompt, "max_tokens": 3, "stream": True})
    assert raw.rstrip().endswith("data: [DONE]")
    events = [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: {")]
    assert events[-1]["choices"][0]["finish_reason"] == "length"


def test_sampling_n_and_seed_equal_generate(run, client):
    out = client.completions.create(
        model="run", prompt="def", max_tokens=10, temperature=1.0, seed=5, n=3,
        extra_body={"top_k": 40},
    )  # fmt: skip
    texts = [c.text for c in sorted(out.choices, key=lambda c: c.index)]
    for i, text in enumerate(texts):  # choice i draws with seed + i
        assert text == _generate(run, "def", 10, temperature=1.0, top_k=40, seed=5 + i)
    assert len(set(texts)) > 1


def test_stop_strings(run, client):
    whole = _generate(run, PROMPTS[0], 24)
    stop = whole[5:8]
    out = client.completions.create(
        model="run", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=[stop, "@@never"]
    )
    assert out.choices[0].text == whole[: whole.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    pieces = client.completions.create(
        model="run", prompt=PROMPTS[0], max_tokens=24, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in pieces) == whole[: whole.index(stop)]


def test_chat_equals_generate_chat(run, client):
    from tfllm.serve import chat

    messages = [{"role": "user", "content": "def f():"}]
    out = client.chat.completions.create(
        model="run", messages=messages, max_tokens=16, temperature=0
    )
    expected = chat.chat_completion(run, messages, max_new_tokens=16)
    assert out.choices[0].message.content == expected
    assert out.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="run", messages=messages, max_tokens=16, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected


def test_echo_logprobs_are_the_models(run, client):
    """Token-id prompts after the start id, as lm-evaluation-harness sends them: the echoed
    log-probs are the model's own log-softmax at each position."""
    ids = [int(i) for i in run.generator._prompt_ids(tf.constant(["import os\n"]))[0]]
    out = client.completions.create(
        model="run", prompt=[ids[1:]], max_tokens=1, temperature=0, echo=True, logprobs=2
    )
    logprobs = out.choices[0].logprobs
    assert len(logprobs.token_logprobs) == len(ids)  # the prompt (after EOS) + 1 generated
    expected = tf.nn.log_softmax(run.model(tf.constant([ids]))[0]).numpy()
    want = [expected[i, ids[i + 1]] for i in range(len(ids) - 1)]
    np.testing.assert_allclose(logprobs.token_logprobs[:-1], want, atol=1e-4)
    for value, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert max(top.values()) >= value - 1e-6 and len(top) <= 2


def test_chat_logprobs_are_the_models(run, server, client):
    """Chat `logprobs` + `top_logprobs`: each generated token's log-probability and its top
    alternatives; greedy, so the token is its own first alternative, and the first one is the
    model's own log-softmax after the rendered prompt."""
    messages = [{"role": "user", "content": "def f():"}]
    out = client.chat.completions.create(
        model="run", messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    content = out.choices[0].logprobs.content
    assert 1 <= len(content) <= 4
    for item in content:
        assert len(item.top_logprobs) == 2 and item.logprob <= 0
        assert abs(item.top_logprobs[0].logprob - item.logprob) < 1e-5
        assert item.top_logprobs[0].token == item.token
        assert item.bytes == list(item.token.encode())
    prompt = server.post("/tokenize", {"model": "run", "messages": messages})["tokens"]
    expected = tf.nn.log_softmax(run.model(tf.constant([prompt]))[0, -1]).numpy()
    np.testing.assert_allclose(content[0].logprob, expected.max(), atol=1e-4)
    plain = client.chat.completions.create(
        model="run", messages=messages, max_tokens=4, temperature=0
    )
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == out.choices[0].message.content


def test_bad_prefill_chunk_is_one_line_error(run):
    out = run_subprocess("serve", "--workdir", run.workdir, "--prefill_chunk", "-1", timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "error: --prefill_chunk must be at least 0, got -1" in out.stderr


def test_errors_are_openai_errors(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="run", prompt="x", temperature=-1)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="run", prompt="x", max_tokens=500)
    assert "500" in long.value.message and str(SEQ) in long.value.message
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x")
    with pytest.raises(openai.BadRequestError) as ids:
        client.completions.create(model="run", prompt=[[1, 10**6]])
    assert "1000000" in ids.value.message


def test_malformed_body_is_400(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(
        "POST", "/v1/completions", b"{not json", {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"]["type"] == "invalid_request_error"


def test_tokenizer_endpoints(server):
    info = server.get("/tokenizer_info")
    assert "eos_token" in info and info["model_max_length"] == SEQ
    tokens = server.post("/tokenize", {"prompt": "import os", "add_special_tokens": False})
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert server.post("/detokenize", {"tokens": tokens["tokens"]})["prompt"] == "import os"


def test_disconnect_mid_stream_frees_the_slot(run, server, client):
    body = {"model": "run", "prompt": "def", "max_tokens": 120, "temperature": 0, "stream": True}
    before = server.metric("generation_tokens_total")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(
        "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    response.fp.readline()  # the first event has arrived: the sequence holds a slot
    connection.sock.close()
    connection.close()
    deadline = time.monotonic() + 20
    while server.metric("running_sequences") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("running_sequences") == 0
    assert server.metric("generation_tokens_total") - before < 120  # cut short, not finished
    out = client.completions.create(model="run", prompt="for", max_tokens=8, temperature=0)
    assert out.choices[0].text == _generate(run, "for", 8)


def test_flood_beyond_the_queue_gets_429s(run, server):
    """More requests at once than slots + queue: the excess is refused with 429 and
    Retry-After, every admitted one completes with the right text, the server stays up."""
    flood = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    expected = _generate(run, "import", 40)

    def ask(_):
        try:
            out = flood.completions.create(
                model="run", prompt="import", max_tokens=40, temperature=0
            )
            return out.choices[0].text
        except openai.RateLimitError as err:
            assert err.response.headers["retry-after"] == "1"
            return 429

    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        results = list(pool.map(ask, range(48)))
    refused = results.count(429)
    assert 0 < refused < 48
    assert all(r == expected for r in results if r != 429)
    assert server.get("/health") == {"status": "ok"}


def test_metrics_page(server):
    text = server.get("/metrics")
    for name in ("requests_total", "prompt_tokens_total", "generation_tokens_total",
                 "queue_depth", "running_sequences", "time_to_first_token_seconds_bucket",
                 "inter_token_latency_seconds_count"):  # fmt: skip
        assert f"tfllm_{name}" in text
    assert 'tfllm_requests_total{endpoint="/v1/completions",status="200"}' in text


def _raw_stream(server, body: dict) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request(
        "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    return connection.getresponse().read().decode()


def test_lm_eval_local_completions_equals_tfllm_eval(run, server, tmp_path):
    """lm-evaluation-harness's `local-completions` model, tokenizing through the server's
    /tokenize (no Hugging Face tokenizer on the client), scores a multiple-choice task file as
    `tfllm eval` does on the same workdir: the same acc and log-likelihoods."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity")  # lm-eval[api]
    from test_eval_harness import local_task

    from tfllm.eval.engine import model_engine
    from tfllm.eval.scoring import run_task
    from tfllm.eval.tasks import load_task_file

    task = local_task(tmp_path)
    args = f"base_url={server.url}/v1/completions,model=run,max_length={SEQ}"
    out = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
         f"{args},tokenizer_backend=remote", "--tasks", "tfllm_local_mc", "--include_path",
         str(tmp_path), "--output_path", str(tmp_path / "out"), "--log_samples"],
        capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    harness = results["results"]["tfllm_local_mc"]
    engine = model_engine(run.model, run.tokenizer_path)
    ours = run_task(engine, load_task_file(task))["metrics"]
    assert harness["acc,none"] == pytest.approx(ours["acc"][0])
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"][0])
    samples = [json.loads(line) for p in (tmp_path / "out").rglob("samples_*.jsonl")
               for line in p.read_text().splitlines()]  # fmt: skip
    pairs = [(a["arg_0"], a["arg_1"]) for s in samples for a in s["arguments"].values()]
    theirs = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    expected = [ll for ll, _ in engine.loglikelihood(pairs)]
    assert len(pairs) == 12
    np.testing.assert_allclose(theirs, expected, atol=1e-3)


def test_chat_page_in_headless_chromium(run, server, tmp_path):
    """Type a message into the chat page, press Send, read the streamed reply from the page:
    the reply of `tfllm generate --chat`, and a tokens/s readout."""
    from headless_chromium import Chromium

    from tfllm.serve import chat

    try:
        browser = Chromium(str(tmp_path / "chromium"))
    except FileNotFoundError:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    try:
        browser.open(server.url + "/")
        assert browser.wait_for("document.getElementById('model').textContent") == "run"
        browser.evaluate("document.getElementById('max_tokens').value = '16'")
        browser.evaluate("document.getElementById('message').focus()")
        browser.send("Input.insertText", text="def f():")
        browser.evaluate("document.getElementById('send').click()")
        status = browser.wait_for(
            "(s => s.startsWith('done') || s.startsWith('error') ? s : '')"
            "(document.getElementById('status').textContent)"
        )
        reply = browser.evaluate("document.querySelector('.turn.assistant').textContent")
        user = browser.evaluate("document.querySelector('.turn.user').textContent")
    finally:
        browser.close()
    expected = chat.chat_completion(
        run, [{"role": "user", "content": "def f():"}], max_new_tokens=16
    )
    assert user == "def f():"
    assert status.startswith("done") and "tokens/s" in status, status
    assert reply == expected
