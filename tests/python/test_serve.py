"""`kdae serve` speaks the OpenAI API to the official `openai` client on loopback: chat (streamed and not)
equals `kdae generate`, echoed prompt logprobs equal `kdae forward`'s log-softmax (1e-4), concurrent greedy
clients get their sequential answers from one shared batch, a client that disconnects stops its decoding,
bad requests get OpenAI-style errors and the server keeps serving."""
import json
import pathlib
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch
from safetensors.torch import load_file

from train_fixtures import KDAE, make_model, run

KEY = "test-key"
PROMPTS = ["hello there", "what is two plus two", "name a colour", "tell me a story", "abc", "the sky is",
           "why", "write a poem about the sea"]


class Server:
    def __init__(self, model, *flags):
        self.proc = subprocess.Popen([KDAE, "serve", "--model", str(model), "--port", "0", "--template", "chatml",
                                      "--threads", "1", *flags], stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        match = re.search(r"listening on (http://[\d.]+:\d+)", line)
        assert match, line + self.proc.stderr.read()
        self.url = match.group(1)
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def health(self):
        with urllib.request.urlopen(self.url + "/health") as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve") / "m"
    make_model(d, seed=5, hidden=48, layers=2, heads=4, kv_heads=2, sharpen=4.0)
    return d


@pytest.fixture(scope="module")
def server(model):
    s = Server(model, "--api-key", KEY, "--max-batch", "16")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def generate_chat(model, prompt, tokens):
    r = run("generate", "--model", model, "--chat", "--template", "chatml", "--prompt", prompt, "--max-new-tokens",
            tokens, "--threads", "1")
    return r.stdout[:-1]  # the trailing newline


def ask(client, prompt, tokens=24, **kw):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
                                          temperature=0, **kw)


def test_models_and_chat_equal_generate(client, model):
    assert [m.id for m in client.models.list()] == ["m"]
    reply = ask(client, PROMPTS[0])
    assert reply.choices[0].message.content == generate_chat(model, PROMPTS[0], 24)
    assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason in ("stop", "length")


def test_streaming_equals_plain(client):
    plain = ask(client, PROMPTS[1], 30).choices[0]
    chunks = list(ask(client, PROMPTS[1], 30, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.message.content and len(chunks) > 2
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == plain.finish_reason


def test_stop_string_cuts_the_answer(client):
    full = ask(client, PROMPTS[3], 30).choices[0].message.content
    stop = full[5:8]
    assert len(stop) == 3 and full.find(stop) >= 1
    cut = ask(client, PROMPTS[3], 30, stop=[stop]).choices[0]
    assert cut.message.content == full[: full.find(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(client, PROMPTS[3], 30, stop=[stop], stream=True))
    assert streamed == cut.message.content


def test_echoed_prompt_logprobs_equal_forward(client, model, tmp_path):
    prompt = "the quick brown fox"
    r = client.completions.create(model="m", prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=3)
    choice = r.choices[0]
    ids = [ord(c) - 32 + 3 for c in prompt]  # the fixture's character vocabulary
    run("forward", "--model", model, "--tokens", ",".join(map(str, ids)), "--out", tmp_path / "f.safetensors",
        "--threads", "1")
    log_probs = torch.log_softmax(load_file(tmp_path / "f.safetensors")["logits"].double(), -1)  # (T, V)
    expected = [log_probs[i - 1, ids[i]].item() for i in range(1, len(ids))]
    got = choice.logprobs.token_logprobs
    assert got[0] is None and len(got) == len(ids) + 4
    assert max(abs(a - b) for a, b in zip(got[1:len(ids)], expected)) < 1e-4
    assert choice.text.startswith(prompt) and "".join(choice.logprobs.tokens) == choice.text
    top = choice.logprobs.top_logprobs[len(ids)]  # the first generated token was the greedy one
    assert choice.logprobs.tokens[len(ids)] == max(top, key=top.get)


def test_concurrent_clients_share_a_batch(client, server):
    sequential = [ask(client, p, 20).choices[0].message.content for p in PROMPTS]
    before = server.health()
    assert before["largest_batch"] == 1  # every earlier request ran alone
    results = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def worker(i):
        barrier.wait()
        results[i] = ask(client, PROMPTS[i], 20).choices[0].message.content

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == sequential
    after = server.health()
    assert after["largest_batch"] > 1 and after["sequences"] - before["sequences"] == len(PROMPTS)


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """A long context, so that a full answer takes seconds: the client closes long before it could finish, however
    loaded the machine (with 200 tokens, a slow client once read its first chunk after the server had sent them all)."""
    d = tmp_path_factory.mktemp("serve-long") / "m"
    make_model(d, seed=5, hidden=48, layers=2, heads=4, kv_heads=2, sharpen=4.0, context=LONG_CONTEXT)
    s = Server(d)
    yield s
    s.stop()


LONG_CONTEXT = 8192


def test_disconnect_stops_decoding(long_server):
    client = openai.OpenAI(base_url=long_server.url + "/v1", api_key="none", max_retries=0)
    before = long_server.health()
    budget = LONG_CONTEXT - 64
    stream = ask(client, PROMPTS[7], budget, stream=True)
    next(iter(stream))
    stream.close()
    for _ in range(300):
        h = long_server.health()
        if h["cancelled"] > before["cancelled"] and h["running"] == 0:
            break
        time.sleep(0.1)
    assert h["cancelled"] == before["cancelled"] + 1 and h["running"] == 0
    assert h["tokens"] - before["tokens"] < budget // 2  # stopped early, not at the end of its budget


def test_bad_requests_get_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "x", tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "x" * 300)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    req = urllib.request.Request(server.url + "/v1/chat/completions", data=b"{not json",
                                 headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "not valid JSON" in json.loads(e.value.read())["error"]["message"]
    assert ask(client, PROMPTS[2]).choices[0].message.content  # still serving
