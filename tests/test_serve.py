"""`dsctl serve` driven by the official `openai` client on 127.0.0.1: plain, streamed,
n > 1, completions, 16 concurrent requests (each equal to its answer alone), bad
requests answered with OpenAI-style 4xx errors (the server stays up), a client that
leaves mid-stream frees its row, and SIGTERM drains what is in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from dsctl.parallel.launch import free_port
from tests.sft_support import make_checkpoint, make_tokenizer

MODEL = "tiny-test"


def _start(checkpoint: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "DSCTL_WORKDIR": str(tmp / "work"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "dsctl.cli", "serve", str(checkpoint), "--port", str(port),
                             "--model-name", MODEL, "--max-new-tokens", "16"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
    proc.kill()
    raise RuntimeError("dsctl serve did not come up")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    make_tokenizer(root / "tok")
    return make_checkpoint(root / "ckpt", root / "tok", seed=2)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    proc, base = _start(checkpoint, tmp_path_factory.mktemp("serve-run"))
    yield base
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(client, text: str, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}],
                                          temperature=0, max_tokens=12, **kw)


def test_models_health_and_a_plain_chat_completion(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server + "/health").json()["status"] == "ok"
    reply = _ask(client, "What is 36 + 48?")
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert _ask(client, "What is 36 + 48?").choices[0].message.content == choice.message.content


def test_streamed_chat_equals_the_plain_answer_and_ends_with_done(client, server):
    plain = _ask(client, "Compute 12 + 35.").choices[0].message.content
    pieces, finish = [], None
    for chunk in _ask(client, "Compute 12 + 35.", stream=True):
        delta = chunk.choices[0].delta
        pieces.append(delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == plain and finish in ("stop", "length")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_n_samples_seeds_and_the_completions_endpoint(client):
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a number"}],
                                           temperature=1.0, max_tokens=10, n=3, seed=7)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    again = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a number"}],
                                           temperature=1.0, max_tokens=10, n=3, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]
    completion = client.completions.create(model=MODEL, prompt="Compute 2 + 2.", max_tokens=5, temperature=0)
    assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens <= 5


def test_sixteen_concurrent_requests_share_the_batch_and_each_gets_its_own_answer(client, server):
    questions = [f"What is {a} + {a + 7}?" for a in range(10, 26)]
    alone = [_ask(client, q).choices[0].message.content for q in questions]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda q: _ask(client, q).choices[0].message.content, questions))
    assert together == alone
    health = httpx.get(server + "/health").json()
    assert health["largest_batch"] >= 4  # they were decoded together
    assert health["speculative"] and health["drafts_proposed"] > 0  # greedy rows verified MTP drafts


BAD = [
    ("malformed JSON", b"{not json", 400),
    ("wrong type", {"model": MODEL, "messages": "hello"}, 400),
    ("max_tokens 0", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400),
    ("past the context", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400),
    ("prompt too long", {"model": MODEL, "messages": [{"role": "user", "content": "7 + 8 = 15. " * 400}]}, 400),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404),
    ("unknown role", {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400),
]


@pytest.mark.parametrize("what, body, status", BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_an_openai_error_and_the_server_stays_up(client, server, what, body, status):
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {
        "json": body}
    response = httpx.post(server + "/v1/chat/completions", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if what == "malformed JSON":
        assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
    assert _ask(client, "still there?").choices[0].finish_reason in ("stop", "length")


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": 200, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, timeout=60) as response:
        next(response.iter_lines())
    deadline = time.time() + 30
    while httpx.get(server + "/health").json()["active"] and time.time() < deadline:
        time.sleep(0.1)
    assert httpx.get(server + "/health").json()["active"] == 0


def test_sigterm_finishes_the_requests_in_flight_then_exits(checkpoint, tmp_path):
    proc, base = _start(checkpoint, tmp_path)
    result = {}

    def ask():
        body = {"model": MODEL, "messages": [{"role": "user", "content": "a long answer"}], "max_tokens": 200}
        result["response"] = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)

    worker = threading.Thread(target=ask)
    worker.start()
    deadline = time.time() + 30
    while not httpx.get(base + "/health").json()["active"] and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    # uvicorn re-raises the signal once its graceful shutdown is done
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    reply = result["response"].json()
    assert result["response"].status_code == 200 and reply["usage"]["completion_tokens"] > 0, json.dumps(reply)
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/health", timeout=2)


@pytest.mark.slow
def test_lm_evaluation_harness_local_completions_runs_against_dsctl_serve(server, client, tmp_path):
    pytest.importorskip("lm_eval")
    import shutil

    problems = tmp_path / "problems.jsonl"
    rows = [{"prompt": f"Compute {a} + {a + 3}.", "answer": str(2 * a + 3)} for a in range(10, 16)]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = tmp_path / "task"
    task.mkdir()
    (task / "dsctl_serve_arith.yaml").write_text(f"""task: dsctl_serve_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {problems}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["</answer>"]
  max_gen_toks: 12
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
""")
    cli = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": "unused"}
    done = subprocess.run([cli, "--model", "local-completions", "--model_args",
                           f"model={MODEL},base_url={server}/v1/completions,tokenizer_backend=None,"
                           "tokenized_requests=False,num_concurrent=4,max_retries=1",
                           "--tasks", "dsctl_serve_arith", "--include_path", str(task),
                           "--output_path", str(tmp_path / "out"), "--log_samples"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for f in (tmp_path / "out").rglob("samples_dsctl_serve_arith_*.jsonl")
              for line in f.read_text().splitlines()]
    assert len(logged) == len(rows)
    for row in logged:  # what the harness got is what the server answers that prompt
        prompt = rows[row["doc_id"]]["prompt"]
        ours = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                         stop=["</answer>"]).choices[0].text
        assert row["resps"][0][0] == ours
