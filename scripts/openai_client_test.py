"""The router's OpenAI-compatible API, driven by the official `openai` package.

Run by scripts/openai-test.sh against a live local cluster:

    python3 scripts/openai_client_test.py http://127.0.0.1:<port> <api key>

Every check prints one "PASS name" or "FAIL name: why" line; the exit status
is 1 when any check failed. Generation goes through the unmodified client
(base_url = <api>/v1, the cluster's API key); error statuses are read at the HTTP level
with urllib, so that what a client sees on the wire is what is checked.
"""

import json
import sys
import traceback
import urllib.error
import urllib.request

import openai
from openai import OpenAI

API = sys.argv[1].rstrip("/")
API_KEY = sys.argv[2]
TIMEOUT_S = 120  # one request, on two CPU cores
client = OpenAI(base_url=f"{API}/v1", api_key=API_KEY, timeout=TIMEOUT_S, max_retries=0)
results = []


def check(fn):
    """Runs one check, recording PASS, or FAIL with the assertion's message."""
    name = fn.__name__.removeprefix("check_")
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any failure is this check's failure
        detail = str(e) or type(e).__name__
        if not isinstance(e, AssertionError):
            detail = f"{type(e).__name__}: {detail}\n{traceback.format_exc(limit=3)}"
        results.append((name, False))
        print(f"FAIL {name}: {detail}", flush=True)
    else:
        results.append((name, True))
        print(f"PASS {name}", flush=True)
    return fn


def http(method, path, body=None, raw=None, key=API_KEY):
    """(status, parsed JSON or text) of one request, whatever the status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"{API}{path}", data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            status, text = r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def extra(obj, field):
    """A field the openai package does not model (Cactus's own), if present."""
    value = getattr(obj, field, None)
    if value is None and obj.model_extra:
        value = obj.model_extra.get(field)
    return value


def check_cactus_fields(res, n=1):
    """The `cactus` list names each choice's task, and each receipt link works."""
    cactus = extra(res, "cactus")
    assert isinstance(cactus, list) and len(cactus) == n, f"cactus field: {cactus!r}"
    ids = set()
    for entry in cactus:
        task_id, link = entry.get("task_id"), entry.get("receipt")
        assert task_id and link == f"/v1/receipts/{task_id}", f"cactus entry: {entry!r}"
        status, receipt = http("GET", link)
        assert status == 200, f"GET {link}: {status} {receipt!r}"
        assert receipt.get("task_id") == task_id, f"{link} gives another task's receipt"
        ids.add(task_id)
    assert len(ids) == n, f"task ids not distinct: {cactus!r}"


def check_usage(usage, completion=None):
    """Usage adds up, and matches the tokens counted by the caller when given."""
    assert usage is not None, "no usage"
    assert usage.prompt_tokens > 0, f"prompt_tokens {usage.prompt_tokens}"
    assert usage.completion_tokens > 0, f"completion_tokens {usage.completion_tokens}"
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, f"{usage}"
    if completion is not None:
        assert usage.completion_tokens == completion, (
            f"completion_tokens {usage.completion_tokens}, but {completion} tokens came"
        )


models = client.models.list().data
assert models, "GET /v1/models lists no model"
MODEL = models[0].id
print(f"model: {MODEL}", flush=True)
CHAT = [
    {"role": "system", "content": "You are a helpful assistant. Answer in full sentences."},
    {"role": "user", "content": "Describe a cactus in the desert."},
]
PROMPT = "Once upon a time, in a desert full of cacti,"


@check
def check_models_list():
    assert all(m.object == "model" for m in models), models
    assert client.models.list().data[0].id == MODEL


@check
def check_chat():
    res = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=24, seed=7)
    assert res.object == "chat.completion", res.object
    assert res.id.startswith("chatcmpl"), res.id
    assert res.model == MODEL, res.model
    assert len(res.choices) == 1, res.choices
    c = res.choices[0]
    assert c.index == 0 and c.message.role == "assistant", c
    assert isinstance(c.message.content, str), c.message
    assert c.finish_reason in ("stop", "length"), c.finish_reason
    check_usage(res.usage)
    if c.finish_reason == "length":
        assert res.usage.completion_tokens == 24, res.usage
    check_cactus_fields(res)


@check
def check_chat_stream():
    stream = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=24, seed=7, stream=True,
        stream_options={"include_usage": True}, logprobs=True,
    )
    ids, parts, tokens, finish, usage_chunks = set(), [], 0, [], []
    for chunk in stream:
        ids.add(chunk.id)
        assert chunk.object == "chat.completion.chunk", chunk.object
        if not chunk.choices:
            usage_chunks.append(chunk)
            continue
        c = chunk.choices[0]
        if c.delta.content:
            parts.append(c.delta.content)
        if c.logprobs and c.logprobs.content:
            tokens += len(c.logprobs.content)
        if c.finish_reason:
            finish.append(c.finish_reason)
    assert len(ids) == 1, f"chunks with several ids: {ids}"
    assert len(parts) >= 2, f"{len(parts)} content chunks: {parts!r}"
    assert "".join(parts).strip(), "the joined text is empty"
    assert finish and finish[-1] in ("stop", "length"), f"finish reasons {finish}"
    assert len(usage_chunks) == 1, f"{len(usage_chunks)} usage chunks"
    check_usage(usage_chunks[0].usage, tokens)
    check_cactus_fields(usage_chunks[0])


@check
def check_completion():
    res = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=3)
    assert res.object == "text_completion", res.object
    assert res.id.startswith("cmpl"), res.id
    assert len(res.choices) == 1 and isinstance(res.choices[0].text, str), res.choices
    assert res.choices[0].finish_reason in ("stop", "length"), res.choices[0]
    check_usage(res.usage)
    check_cactus_fields(res)


@check
def check_completion_stream():
    stream = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=16, seed=3, stream=True,
        stream_options={"include_usage": True}, logprobs=1,
    )
    parts, tokens, finish, usage_chunks = [], 0, [], []
    for chunk in stream:
        if not chunk.choices:
            usage_chunks.append(chunk)
            continue
        c = chunk.choices[0]
        if c.text:
            parts.append(c.text)
        if c.logprobs and c.logprobs.tokens:
            tokens += len(c.logprobs.tokens)
        if c.finish_reason:
            finish.append(c.finish_reason)
    assert len(parts) >= 2, f"{len(parts)} text chunks: {parts!r}"
    assert "".join(parts).strip(), "the joined text is empty"
    assert finish and finish[-1] in ("stop", "length"), f"finish reasons {finish}"
    assert len(usage_chunks) == 1, f"{len(usage_chunks)} usage chunks"
    check_usage(usage_chunks[0].usage, tokens)
    check_cactus_fields(usage_chunks[0])


@check
def check_two_choices():
    res = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=12, n=2, seed=11, logprobs=True
    )
    assert sorted(c.index for c in res.choices) == [0, 1], res.choices
    tokens = sum(len(c.logprobs.content) for c in res.choices)
    check_usage(res.usage, tokens)
    check_cactus_fields(res, n=2)


@check
def check_chat_logprobs():
    res = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=16, seed=5, logprobs=True, top_logprobs=3
    )
    c = res.choices[0]
    assert c.logprobs and c.logprobs.content, f"no logprobs: {c.logprobs}"
    for t in c.logprobs.content:
        assert t.logprob <= 0, f"token {t.token!r} has logprob {t.logprob}"
        assert len(t.top_logprobs) == 3, f"token {t.token!r}: {len(t.top_logprobs)} top_logprobs"
        assert all(a.logprob <= 0 for a in t.top_logprobs), t.top_logprobs
    joined = b"".join(bytes(t.bytes) for t in c.logprobs.content).decode("utf-8", "replace")
    assert joined == c.message.content, f"tokens join to {joined!r}, content {c.message.content!r}"
    check_usage(res.usage, len(c.logprobs.content))


@check
def check_completion_logprobs():
    res = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, seed=5, logprobs=2)
    c = res.choices[0]
    lp = c.logprobs
    assert lp and lp.tokens, f"no logprobs: {lp}"
    n = len(lp.tokens)
    assert len(lp.token_logprobs) == n and len(lp.top_logprobs) == n and len(lp.text_offset) == n, lp
    assert all(x <= 0 for x in lp.token_logprobs), lp.token_logprobs
    # Two distinct tokens may decode to the same text and share a key.
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs), lp.top_logprobs
    assert lp.text_offset == sorted(lp.text_offset), lp.text_offset
    assert "".join(lp.tokens) == c.text, f"tokens join to {''.join(lp.tokens)!r}, text {c.text!r}"
    check_usage(res.usage, n)


@check
def check_json_schema():
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
        "required": ["name", "country"],
    }
    res = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a city as JSON with its name and country."}],
        max_tokens=96, seed=1, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    content = res.choices[0].message.content
    data = json.loads(content)
    assert isinstance(data, dict) and {"name", "country"} <= data.keys(), f"{content!r}"
    assert res.choices[0].finish_reason == "stop", res.choices[0].finish_reason


@check
def check_client_errors():
    """The client's own exception classes come from the statuses."""
    try:
        client.chat.completions.create(model=MODEL, messages=CHAT, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400
    try:
        client.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=4)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404


def error_of(status, body, want_status):
    assert status == want_status, f"status {status}, expected {want_status}: {body!r}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not OpenAI's error shape: {body!r}"
    e = body["error"]
    assert {"message", "type", "param", "code"} <= e.keys(), f"error fields: {e!r}"
    assert e["message"], f"empty message: {e!r}"
    return e


@check
def check_http_bad_temperature():
    for value in (5, "hot"):
        e = error_of(*http("POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "temperature": value}), 400)
        assert e["param"] == "temperature", f"temperature {value!r}: {e!r}"


@check
def check_http_bad_json():
    e = error_of(*http("POST", "/v1/chat/completions", raw=b'{"messages": [{"role": "user", '), 400)
    assert e["param"], f"no param: {e!r}"
    e = error_of(*http("POST", "/v1/completions", {"model": MODEL, "prompt": PROMPT, "max_tokens": "many"}), 400)
    assert e["param"] == "max_tokens", e


@check
def check_http_unknown_model():
    e = error_of(*http("POST", "/v1/chat/completions", {"model": "no-such-model", "messages": CHAT}), 404)
    assert e["code"] == "model_not_found", e


@check
def check_http_body_over_cap():
    prompt = "cactus " * (800 * 1024 // 7)  # over the 576 KiB cap
    e = error_of(*http("POST", "/v1/completions", {"model": MODEL, "prompt": prompt}), 413)
    assert e["type"] == "invalid_request_error", e


@check
def check_http_without_a_valid_key():
    for key in (None, "sk-cactus-not-a-key"):
        e = error_of(*http("POST", "/v1/chat/completions", {"model": MODEL, "messages": CHAT}, key=key), 401)
        assert e["code"] == "invalid_api_key", e
    try:
        OpenAI(base_url=f"{API}/v1", api_key="wrong", timeout=TIMEOUT_S, max_retries=0).chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=4
        )
        raise AssertionError("a wrong key was served")
    except openai.AuthenticationError:
        pass


@check
def check_http_unknown_path():
    error_of(*http("GET", "/v1/no-such-endpoint"), 404)
    error_of(*http("POST", "/v1/no-such-endpoint", {}), 404)


failed = [name for name, ok in results if not ok]
print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
