"""The OpenAI-compatible HTTP API (--openai-listen) end to end on a synthetic model: OpenAI's own
Python SDK as the client (chat and completions, streamed and whole, logprobs, cached prompt
tokens), answers checked against the gRPC API on the same daemon, keys and tenants, and bad
input through raw HTTP (every refusal an OpenAI error object; the daemon keeps serving)."""
import datetime
import http.client
import ipaddress
import json
import re
import signal
import socket
import threading
import time
import urllib.request
import uuid

from typing import Dict, List, Literal, Optional, Union

import grpc
import jsonschema
import openai
import pydantic
import pytest

from conftest import Daemon, generate, pb, raw, status_of

ADMIN = "admin-key-for-openai-tests-0123456789"
SYSTEM = "You are the assistant of a bicycle shop in a small town. " * 8


def logged_port(d, name):
    m = re.search(name + r"=(\d+)", d.log_text())
    assert m and int(m.group(1)) > 0, d.log_text()
    return int(m.group(1))


def openai_port(d):
    return logged_port(d, "openai_port")


@pytest.fixture
def served(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, extra=["--openai-listen", "127.0.0.1:0",
                                            "--metrics-listen", "127.0.0.1:0"])
    d.http_port = openai_port(d)
    yield d
    assert d.stop() == 0


def metric(d, name):
    conn = http.client.HTTPConnection("127.0.0.1", logged_port(d, "metrics_port"), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    m = re.search("^" + re.escape(name) + r" (\d+)$", text, re.M)
    assert m, name
    return int(m.group(1))


def sdk(d, key="unused", timeout=60):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{d.http_port}/v1", api_key=key,
                         max_retries=0, timeout=timeout)


def post(d, path, body, headers=None, method="POST"):
    """(status, parsed JSON or raw text) of one request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=60)
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    r = conn.getresponse()
    raw = r.read().decode()
    conn.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw


def messages(question):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def grpc_chat(d, msgs, **kw):
    """(text, token ids) of the same conversation through gRPC's Generate."""
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                     for m in msgs], add_generation_prompt=True)
    text, ids = "", []
    for m in d.stub().Generate(pb.GenerateRequest(prompt=pb.Prompt(chat=chat), **kw), timeout=60):
        text += m.text
        ids += list(m.token_ids)
    return text, ids


def test_models_chat_and_cached_prompt_through_the_sdk(served):
    c = sdk(served)
    models = c.models.list().data
    assert [m.id for m in models] == ["tiny"] and models[0].owned_by == "prefixd"
    first = c.chat.completions.create(model="tiny", messages=messages("When are you open?"),
                                      max_tokens=8, temperature=0)
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert first.model == "tiny" and first.object == "chat.completion"
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    # the same answer as gRPC's Generate on the same conversation (greedy)
    text, ids = grpc_chat(served, messages("When are you open?"), max_tokens=8)
    assert choice.message.content == text
    assert first.usage.completion_tokens == len(ids)
    # another session over the same system prompt: its blocks come from the cache
    second = c.chat.completions.create(model="anything", messages=messages("Do you rent bikes?"),
                                       max_tokens=4, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 16 * (first.usage.prompt_tokens // 16 - 2), second.usage
    assert second.model == "tiny"


def test_streamed_chat_equals_the_whole_answer(served):
    c = sdk(served)
    kw = dict(model="tiny", messages=messages("Tell me a story"), max_tokens=12, temperature=3.0,
              seed=7, extra_body={"ignore_eos": True})
    whole = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                            **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and
              ch.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len({ch.id for ch in chunks}) == 1


def test_completions_token_prompt_and_legacy_logprobs(served):
    c = sdk(served)
    ids = list(served.stub().Tokenize(pb.TokenizeRequest(
        prompt=pb.Prompt(text="The quick brown fox jumps"))).token_ids)
    by_ids = c.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0,
                                  logprobs=3)
    by_text = c.completions.create(model="tiny", prompt="The quick brown fox jumps",
                                   max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    lp = by_ids.choices[0].logprobs
    n = by_ids.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == n
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 3
        assert max(top.values()) == pytest.approx(chosen)  # greedy takes the most probable


def test_chat_logprobs_equal_the_grpc_ones(served):
    c = sdk(served)
    r = c.chat.completions.create(model="tiny", messages=messages("hi"), max_tokens=5,
                                  temperature=0, logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                     for m in messages("hi")], add_generation_prompt=True)
    theirs = []
    for m in served.stub().Generate(pb.GenerateRequest(prompt=pb.Prompt(chat=chat), max_tokens=5,
                                                       top_logprobs=4), timeout=60):
        theirs += list(m.logprobs)
    assert [t.logprob for t in content] == pytest.approx([t.logprob for t in theirs], abs=1e-6)
    for t in content:
        assert len(t.top_logprobs) == 4 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token


def test_penalties_and_logit_bias_follow_openai_formula(served):
    """Each greedy pick under presence and frequency penalties is the best of the reported
    top-20 log-probabilities (the raw distribution) once every alternative has lost
    presence + frequency x its count so far; a logit bias bans or forces a token; gRPC's Generate
    with the same parameters gives the same tokens."""
    c = sdk(served)
    kw = dict(model="tiny", messages=messages("Name some colours"), max_tokens=24, temperature=0,
              extra_body={"ignore_eos": True})
    plain = c.chat.completions.create(logprobs=True, **kw)
    plain_ids = [bytes(t.bytes) for t in plain.choices[0].logprobs.content]
    r = c.chat.completions.create(presence_penalty=0.7, frequency_penalty=1.3, logprobs=True,
                                  top_logprobs=20, **kw)
    content = r.choices[0].logprobs.content
    assert len(content) == 24
    counts = {}  # by the token's bytes, which tell the tokens apart

    def penalised(tok):
        n = counts.get(bytes(tok.bytes), 0)
        return tok.logprob - (0.7 + 1.3 * n if n else 0)

    for t in content:
        best = max(penalised(a) for a in t.top_logprobs)
        assert penalised(t) >= best - 1e-4, (t.token, penalised(t), best)
        counts[bytes(t.bytes)] = counts.get(bytes(t.bytes), 0) + 1
    assert len(counts) > len(set(plain_ids))  # the penalties changed the picks
    # the same through gRPC (token texts above; ids here)
    _, ids = grpc_chat(served, messages("Name some colours"), max_tokens=24,
                       sampling=pb.SamplingParams(ignore_eos=True, presence_penalty=0.7,
                                                  frequency_penalty=1.3))
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert len(ids) == 24 and len(set(ids)) == len(counts)
    # logit_bias: ban the greedy answer's first token, then force one token everywhere
    first = served.stub().Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(
        text=plain.choices[0].logprobs.content[0].token))).token_ids[0]
    banned = c.chat.completions.create(logit_bias={str(first): -100}, logprobs=True, **kw)
    assert banned.choices[0].message.content != plain.choices[0].message.content
    _, ids = grpc_chat(served, messages("Name some colours"), max_tokens=24,
                       sampling=pb.SamplingParams(ignore_eos=True,
                                                  logit_bias=[pb.LogitBias(token_id=first,
                                                                           bias=-100)]))
    assert first not in ids
    _, ids = grpc_chat(served, messages("Name some colours"), max_tokens=5,
                       sampling=pb.SamplingParams(ignore_eos=True, temperature=1.5, seed=3,
                                                  logit_bias=[pb.LogitBias(token_id=42,
                                                                           bias=100)]))
    assert ids == [42] * 5


def test_json_object_mode_keeps_the_output_json(served):
    """response_format json_object on the synthetic model (random weights, so it rambles): every
    answer opens an object, one that stops parses as a JSON object with nothing after it, the
    stream is the whole answer, and gRPC's ResponseFormat gives the same tokens. A +100 bias on
    '}' (refused while the object is not open) makes the shortest object, then the end."""
    c = sdk(served)
    stub = served.stub()
    tok = {t: stub.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=t))).token_ids[0]
           for t in ("}", '"', "1", "\n", " ")}
    close_id = tok["}"]
    fmt = {"type": "json_object"}
    r = c.chat.completions.create(model="tiny", messages=messages("JSON please"), max_tokens=60,
                                  temperature=0, response_format=fmt,
                                  logit_bias={str(close_id): 100})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content.strip() == "{}" and json.loads(r.choices[0].message.content) == {}
    stopped = set()  # biases towards short values and closing, so that some objects end
    bias = {str(tok["}"]): 15, str(tok['"']): 20, str(tok["1"]): 10, str(tok["\n"]): -100,
            str(tok[" "]): -100}
    for seed in range(12):
        kw = dict(model="tiny", messages=messages(f"JSON please {seed}"), max_tokens=80,
                  temperature=5.0, seed=seed, response_format=fmt, logit_bias=bias)
        whole = c.chat.completions.create(**kw)
        text = whole.choices[0].message.content
        assert text.lstrip(" \t\r\n").startswith("{"), text
        if whole.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict), text
            assert text.rstrip() == text  # the closing brace is the last byte
            stopped.add(text.strip())
        else:
            assert whole.choices[0].finish_reason == "length"
            assert whole.usage.completion_tokens == 80
        streamed = "".join(ch.choices[0].delta.content or ""
                           for ch in c.chat.completions.create(stream=True, **kw) if ch.choices)
        assert streamed == text
    assert len(stopped - {"{}"}) >= 2, stopped  # objects with members among them
    _, ids = grpc_chat(served, messages("JSON please"), max_tokens=60,
                       sampling=pb.SamplingParams(logit_bias=[pb.LogitBias(token_id=close_id,
                                                                           bias=100)]),
                       response_format=pb.ResponseFormat(
                           type=pb.ResponseFormat.RESPONSE_FORMAT_JSON_OBJECT))
    assert served.stub().Detokenize(pb.DetokenizeRequest(token_ids=ids)).text.strip() == "{}"
    with pytest.raises(grpc.RpcError) as e:
        grpc_chat(served, messages("x"), response_format=pb.ResponseFormat(type=7))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "response_format" in e.value.details()


class Place(pydantic.BaseModel):
    city: str
    near: Optional["Place"] = None


class Person(pydantic.BaseModel):
    name: str
    age: int
    role: Literal["admin", "user"]
    tags: List[str]
    home: Optional[Place] = None


def hot_schema_answers(served, name, schema, max_tokens, no_whitespace, n=12):
    """n answers (finish reason, text) for json_schema on the synthetic model at a hot
    temperature, biased towards closing strings and containers and against the whitespace bytes
    in no_whitespace, so that documents end. A request may take minutes under ASan beside
    another test's daemon."""
    c = sdk(served, timeout=600)
    closing = {'"': 20, "}": 15, "]": 15}
    bias = {}
    for text, b in list(closing.items()) + [(w, -100) for w in no_whitespace]:
        tok = served.stub().Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=text))).token_ids
        bias[str(tok[0])] = b
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                  "strict": True}}
    answers = []
    for seed in range(n):
        r = c.chat.completions.create(model="tiny", messages=messages(f"{name} {seed}"),
                                      max_tokens=max_tokens, temperature=5.0, seed=seed,
                                      response_format=fmt, logit_bias=bias)
        answers.append((r.choices[0].finish_reason, r.choices[0].message.content))
    return answers


def test_json_schema_mode_gives_valid_documents(served):
    """response_format json_schema with a pydantic model's schema ($defs, a recursive Optional,
    an enum, an integer, a list): on the synthetic model at a hot temperature, with biases towards
    closing strings and containers and against whitespace so that documents end, every answer
    that stops is valid for the schema by jsonschema's validator (an independent one), and at
    least three of twelve stop."""
    schema = Person.model_json_schema()
    answers = hot_schema_answers(served, "Person", schema, 300, "\n ")
    for finish, text in answers:
        assert text.lstrip(" \t\r\n").startswith('{"name"'), text  # the first property
        if finish == "stop":
            jsonschema.validate(json.loads(text), schema)
    assert sum(finish == "stop" for finish, _ in answers) >= 3


class Signup(pydantic.BaseModel):
    code: pydantic.constr(pattern=r"^[A-Z]{2}-\d{4}$")
    email: pydantic.EmailStr
    born: datetime.date
    at: datetime.datetime
    id: uuid.UUID
    v4: ipaddress.IPv4Address
    v6: ipaddress.IPv6Address
    site: pydantic.AnyUrl
    age: pydantic.conint(ge=0, le=130)
    score: pydantic.confloat(gt=0, lt=1)
    nick: Optional[pydantic.constr(min_length=2, max_length=8)] = None


def test_json_schema_string_and_number_constraints_hold(served):
    """The constraints pydantic writes for constr (pattern, lengths), EmailStr, date, datetime,
    UUID, IP addresses and AnyUrl (format) and conint/confloat (bounds): on the synthetic model at
    a hot temperature, every answer that stops is valid by jsonschema's validator with its format
    checker (rfc3339-validator for date-time) and parses as the pydantic model, whose own parsers
    judge the dates, addresses and URLs (email-validator for e-mail); at least three of eight
    stop."""
    schema = Signup.model_json_schema()
    answers = hot_schema_answers(served, "Signup", schema, 1500, "\n \t\r", n=8)
    for finish, text in answers:
        if finish == "stop":
            jsonschema.validate(json.loads(text), schema,
                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
            Signup.model_validate_json(text)
    assert sum(finish == "stop" for finish, _ in answers) >= 3


class Cat(pydantic.BaseModel):
    name: str
    pet_type: Literal["cat"]
    lives: pydantic.conint(ge=1, le=9)


class Dog(pydantic.BaseModel):
    pet_type: Literal["dog"]
    barks: bool


class Owner(pydantic.BaseModel):
    pet: Union[Cat, Dog] = pydantic.Field(discriminator="pet_type")
    others: List[Union[Cat, Dog]]
    ages: Dict[str, pydantic.conint(ge=0, le=30)]


def test_json_schema_tagged_unions_hold(served):
    """pydantic's unions of models told apart by a Literal field, as a discriminated union (oneOf
    with a discriminator) and as a plain Union (anyOf), the field not first in every model, and a
    Dict[str, conint] (additionalProperties as a schema): every answer that stops is valid by
    jsonschema's validator and parses as the pydantic model, and both kinds of pet come."""
    schema = Owner.model_json_schema()
    answers = hot_schema_answers(served, "Owner", schema, 1000, "\n \t\r", n=8)
    kinds = set()
    for finish, text in answers:
        if finish == "stop":
            jsonschema.validate(json.loads(text), schema)
            owner = Owner.model_validate_json(text)
            kinds.update(type(p).__name__ for p in [owner.pet] + owner.others)
    assert sum(finish == "stop" for finish, _ in answers) >= 3
    assert kinds == {"Cat", "Dog"}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city", "days"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
                   "required": ["zone"]}}}


def test_n_choices_share_one_prompt(served):
    """n = 4: four choices, each the answer a single request with seed + index gives, the usage
    summed over them; the prompt is computed once (the other three take its blocks from the
    cache: the hit-token counter grows by three prompts' worth of full blocks), and the streamed
    form carries the same four texts by index, a finish per choice and one usage at the end."""
    c = sdk(served)
    msgs = messages("Four different endings, please")
    kw = dict(model="tiny", max_tokens=8, temperature=5.0, seed=40,
              extra_body={"ignore_eos": True})
    hits = metric(served, "prefixd_cache_hit_tokens_total")
    r = c.chat.completions.create(messages=msgs, n=4, logprobs=True, **kw)
    prompt = r.usage.prompt_tokens
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 32 and r.usage.prompt_tokens_details.cached_tokens == 0
    assert metric(served, "prefixd_cache_hit_tokens_total") - hits >= 3 * (prompt // 16 * 16)
    texts = [ch.message.content for ch in r.choices]
    assert len(set(texts)) > 1  # the seeds differ
    assert all(len(ch.logprobs.content) == 8 for ch in r.choices)
    for i in (0, 3):  # choice i is what seed 40 + i gives alone
        one = c.chat.completions.create(messages=msgs, **{**kw, "seed": 40 + i})
        assert one.choices[0].message.content == texts[i]
    streamed, finishes, usage = {}, [], None
    for chunk in c.chat.completions.create(messages=msgs, n=4, stream=True,
                                           stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            streamed[ch.index] = streamed.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finishes.append(ch.index)
        usage = chunk.usage or usage
    assert [streamed[i] for i in range(4)] == texts
    assert sorted(finishes) == [0, 1, 2, 3] and usage.completion_tokens == 32
    legacy = c.completions.create(model="tiny", prompt="Once upon a time", n=3, max_tokens=4,
                                  temperature=5.0, seed=1, extra_body={"ignore_eos": True})
    assert [ch.index for ch in legacy.choices] == [0, 1, 2]


def test_bad_input_is_an_openai_error_and_the_daemon_goes_on(served):
    chat = "/v1/chat/completions"
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (chat, "{not json", 400, "not valid JSON"),
        (chat, "[1, 2]", 400, "JSON object"),
        (chat, {**ok, "messages": []}, 400, "'messages'"),
        (chat, {**ok, "messages": [{"role": "wizard", "content": "x"}]}, 400, "wizard"),
        (chat, {**ok, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
         "type 'text'"),
        (chat, {**ok, "temperature": "hot"}, 400, "'temperature' must be a number"),
        (chat, {**ok, "max_tokens": -1}, 400, "'max_tokens'"),
        (chat, {**ok, "n": 17}, 400, "'n' is 17; it must be in [1, 16]"),
        (chat, {**ok, "n": 0}, 400, "'n' is 0"),
        (chat, {**ok, "presence_penalty": 2.5}, 400, "'presence_penalty' is 2.5"),
        (chat, {**ok, "frequency_penalty": "x"}, 400, "'frequency_penalty' must be a number"),
        (chat, {**ok, "logit_bias": [1]}, 400, "'logit_bias' must be an object"),
        (chat, {**ok, "logit_bias": {"ab": 1}}, 400, "keys must be token ids"),
        (chat, {**ok, "logit_bias": {"5": 101}}, 400, "from -100 to 100"),
        (chat, {**ok, "logit_bias": {"99999999": 1}}, 400, "vocabulary"),  # the engine's check
        (chat, {**ok, "tools": [{"type": "function"}]}, 400, "tools[0] must be"),
        (chat, {**ok, "tools": [WEATHER, WEATHER]}, 400, "'get_weather' is offered twice"),
        (chat, {**ok, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {
            "name": "get_time"}}}, 400, "names 'get_time', which is not in 'tools'"),
        (chat, {**ok, "tool_choice": "required"}, 400, "'tool_choice' needs 'tools'"),
        (chat, {**ok, "tools": [WEATHER], "logprobs": True}, 400, "'logprobs' with 'tools'"),
        (chat, {**ok, "tools": [WEATHER], "tool_choice": "required",
                "response_format": {"type": "json_object"}}, 400, "cannot be combined"),
        (chat, {**ok, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "format": "iri"}}}}}],
                "tool_choice": "required"}, 400, "'format' 'iri' is not supported"),
        (chat, {**ok, "messages": [{"role": "user", "content": "x", "tool_calls": []}]}, 400,
         "only an assistant makes tool calls"),
        (chat, {**ok, "messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"arguments": "{}"}}]}]}, 400, "tool_calls[0]"),
        (chat, {**ok, "functions": [{"name": "f"}]}, 400, "send them as 'tools'"),
        ("/v1/completions", {"prompt": "a", "tools": [WEATHER]}, 400, "/v1/chat/completions"),
        (chat, {**ok, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
        (chat, {**ok, "top_logprobs": 2}, 400, "needs 'logprobs'"),
        (chat, {**ok, "stop": [1]}, 400, "stop[0]"),
        (chat, {**ok, "response_format": {"type": "json_schema", "json_schema": {}}}, 400,
         "json_schema needs"),
        (chat, {**ok, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "integer", "multipleOf": 2}}}}, 400,
         "response_format json_schema: 'multipleOf' is not supported in a schema (at #)"),
        (chat, {**ok, "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "string", "pattern": "(a)\\1"}}}}, 400,
         "response_format json_schema: 'pattern': backreferences are not supported"),
        (chat, {**ok, "response_format": {"type": "yaml"}}, 400, "type 'yaml' is not supported"),
        (chat, {**ok, "response_format": "json"}, 400, "'response_format' must be an object"),
        ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt per request"),
        ("/v1/completions", {"prompt": "a", "echo": True}, 400, "echo"),
        ("/v1/completions", {"max_tokens": 2}, 400, "'prompt' is required"),
        ("/v1/completions", {"prompt": [1, -5]}, 400, "prompt[1]"),
        ("/v1/completions", {"prompt": [10 ** 9]}, 400, "token"),  # the engine's check
        ("/v1/embeddings", {"input": "x"}, 404, "no such endpoint"),
    ]
    for path, body, status, needle in cases:
        got, answer = post(served, path, body)
        assert got == status, (path, body, got, answer)
        assert needle in answer["error"]["message"], (body, answer)
        assert answer["error"]["type"] in ("invalid_request_error", "not_found_error")
    got, answer = post(served, chat, None, method="GET")
    assert got == 405 and answer["error"]["message"] == "use POST"
    # an announced body over 4 MiB is refused from its headers, before it is sent
    s = socket.create_connection(("127.0.0.1", served.http_port), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{"
              % (4 * 1024 * 1024 + 1))
    reply = b""
    while b"}}" not in reply:
        chunk = s.recv(4096)
        assert chunk, reply
        reply += chunk
    s.close()
    assert reply.startswith(b"HTTP/1.1 413 ") and b"4 MiB" in reply and b"Connection: close" in reply
    # a prompt beyond the context limit is the engine's refusal, with its message
    got, answer = post(served, "/v1/completions", {"prompt": [7] * 5000, "max_tokens": 1})
    assert got == 400 and "context limit" in answer["error"]["message"]
    for stream in (False, True):  # with n = 3, the first refusal answers for the request
        got, answer = post(served, "/v1/completions", {"prompt": [7] * 5000, "max_tokens": 1,
                                                        "n": 3, "stream": stream})
        assert got == 400 and "context limit" in answer["error"]["message"], answer
    got, answer = post(served, chat, ok)
    assert got == 200 and answer["choices"][0]["message"]["role"] == "assistant"


def test_malformed_http_gets_4xx_and_the_daemon_keeps_serving(served):
    port = served.http_port
    assert status_of(raw(port, b"garbage\r\n\r\n")) == 400
    assert status_of(raw(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20)) == 400
    big = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert status_of(raw(port, big)) == 431
    many = b"GET /v1/models HTTP/1.1\r\n" + b"X-H: 1\r\n" * 2000 + b"\r\n"
    assert status_of(raw(port, many)) == 431
    assert status_of(raw(port, b"GET /" + b"m" * 2000 + b" HTTP/1.1\r\n\r\n")) == 414
    long_key = b"POST /v1/models HTTP/1.1\r\nAuthorization: Bearer " + b"k" * 300 + b"\r\n\r\n"
    assert status_of(raw(port, long_key)) == 431
    smuggle = (b"POST /v1/completions HTTP/1.1\r\nContent-Length: 4\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status_of(raw(port, smuggle)) == 400
    # a chunked request body is HTTP/1.1 and is read as one body
    body = json.dumps({"prompt": "hello", "max_tokens": 2}).encode()
    chunked = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
               % (5, body[:5], len(body) - 5, body[5:]))
    resp = raw(port, chunked)
    assert status_of(resp) == 200 and b'"text_completion"' in resp, resp[:300]
    # "Expect: 100-continue" (curl's way with large bodies): the go-ahead, then the answer
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert s.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
    s.sendall(body)
    resp = b""
    while chunk := s.recv(65536):
        resp += chunk
    s.close()
    assert status_of(resp) == 200 and b'"text_completion"' in resp, resp[:300]
    # still serving
    r = sdk(served).completions.create(model="tiny", prompt="still here", max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_keep_alive_and_pipelined_requests(served):
    """Two requests in one write on one connection: two answers, in order, keep-alive."""
    body = json.dumps({"prompt": "hello", "max_tokens": 2, "temperature": 0}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    s = socket.create_connection(("127.0.0.1", served.http_port), timeout=30)
    s.sendall(req + req.replace(b"/v1/completions", b"/v1/models").replace(b"POST", b"GET"))
    got = b""
    while got.count(b"HTTP/1.1 200 OK") < 2:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    first, second = got.split(b"HTTP/1.1 200 OK")[1:3]
    assert b"text_completion" in first and b'"object":"list"' in second
    assert b"Connection: keep-alive" in first
    s.close()


def test_a_hang_up_cancels_the_generation(served):
    """A streaming client that disconnects after its first event: the engine stops the sequence
    (counted CANCELLED, far fewer than the 1,900 tokens asked for) and serves the next."""
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "go"}],
                       "max_tokens": 1900, "stream": True, "temperature": 1.0,
                       "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", served.http_port), timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
              % (len(body), body))
    got = b""
    while b"data: " not in got:
        got += s.recv(4096)
    assert b"text/event-stream" in got and b"Transfer-Encoding: chunked" in got
    s.close()
    t0 = time.time()
    r = sdk(served).chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                     "content": "next"}],
                                            max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert time.time() - t0 < 30
    deadline = time.time() + 30
    while metric(served, 'prefixd_rpcs_total{code="CANCELLED"}') != 1:
        assert time.time() < deadline, "the hang-up was not seen as a cancel"
        time.sleep(0.05)
    assert metric(served, "prefixd_generated_tokens_total") < 1900


@pytest.fixture
def multi(tiny_model, data_dir):
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN, extra=["--openai-listen", "127.0.0.1:0"])
    d.http_port = openai_port(d)
    yield d
    assert d.stop() == 0


def test_keys_and_tenant_isolation(multi):
    admin = multi.admin(ADMIN)
    ka = admin.CreateTenant(pb.CreateTenantRequest(name="alpha")).api_key
    kb = admin.CreateTenant(pb.CreateTenantRequest(name="beta")).api_key
    msgs = messages("hello")
    with pytest.raises(openai.AuthenticationError) as e:
        sdk(multi, "pfx-not-a-key").chat.completions.create(model="tiny", messages=msgs,
                                                           max_tokens=2)
    assert "invalid API key" in str(e.value)
    got, answer = post(multi, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2})
    assert got == 401 and "missing API key" in answer["error"]["message"]
    got, answer = post(multi, "/v1/chat/completions", {"messages": msgs},
                       headers={"Authorization": "Basic abc"})
    assert got == 401 and "Bearer" in answer["error"]["message"]
    with pytest.raises(openai.PermissionDeniedError):  # the admin key has no tenant
        sdk(multi, ADMIN).chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
    a = sdk(multi, ka)
    a.chat.completions.create(model="tiny", messages=msgs, max_tokens=2, temperature=0)
    again = a.chat.completions.create(model="tiny", messages=msgs, max_tokens=2, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    other = sdk(multi, kb).chat.completions.create(model="tiny", messages=msgs, max_tokens=2,
                                                   temperature=0)
    assert other.usage.prompt_tokens_details.cached_tokens == 0  # alpha's cache is alpha's
    # a quota is the engine's 429
    admin.SetLimits(pb.SetLimitsRequest(name="beta", limits=pb.TenantLimits(
        max_context_tokens=8)))
    with pytest.raises(openai.BadRequestError) as e:
        sdk(multi, kb).chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
    assert "context limit" in str(e.value)


def test_rate_limits_count_computed_tokens_and_say_when_to_retry(tiny_model, data_dir):
    """A tokens-per-minute limit counts what the daemon computes, so a prompt found in the cache
    costs only its new tokens. Over the limit gRPC answers RESOURCE_EXHAUSTED with the
    grpc-retry-pushback-ms trailer, and the OpenAI API 429 with Retry-After, which OpenAI's SDK
    waits out before it succeeds; requests per minute count Generate and Warm, not Tokenize."""
    d = Daemon(tiny_model, data_dir, admin_key=ADMIN,
               extra=["--openai-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
    try:
        d.http_port = openai_port(d)
        metrics_port = logged_port(d, "metrics_port")

        def tenant_metric(name, tenant):
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                          timeout=30).read().decode()
            m = re.search(rf'^{name}{{tenant="{tenant}"}} (\d+)$', body, re.M)
            return int(m.group(1))

        def ids(n, first):
            return pb.Prompt(tokens=pb.TokenIds(ids=[first + (i * 7) % 400 for i in range(n)]))

        admin = d.admin(ADMIN)
        per_minute = 2400  # 40 tokens a second
        ka = admin.CreateTenant(pb.CreateTenantRequest(name="alpha", limits=pb.TenantLimits(
            max_tokens_per_minute=per_minute))).api_key
        kb = admin.CreateTenant(pb.CreateTenantRequest(name="beta", limits=pb.TenantLimits(
            max_requests_per_minute=2))).api_key
        a = d.stub(ka)
        go_on = pb.SamplingParams(ignore_eos=True)
        finals = [generate(a, ids(300, 10), max_tokens=8, sampling=go_on)[2] for _ in range(2)]
        costs = [f.usage.prompt_tokens - f.usage.cached_tokens + f.usage.generated_tokens
                 for f in finals]
        assert costs[0] == 308 and finals[1].usage.cached_tokens >= 288 and costs[1] <= 20
        assert tenant_metric("prefixd_tenant_computed_tokens_total", "alpha") == sum(costs)
        # new prompts until the bucket is overdrawn: then a request waits for the refill
        refusal, first = None, 50
        for _ in range(60):
            try:
                a.Warm(pb.WarmRequest(prompt=ids(120, first)), timeout=60)
            except grpc.RpcError as e:
                refusal = e
                break
            first += 1
        assert refusal is not None and refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "alpha is over its rate limit" in refusal.details()
        wait = float(re.search(r"retry in ([0-9.]+) s", refusal.details()).group(1))
        assert 0 < wait <= 121 * 60 / per_minute + 0.1  # at most one Warm's overdraft
        # gRPC's retry policies read the standard pushback trailer
        pushback = dict(refusal.trailing_metadata())["grpc-retry-pushback-ms"]
        assert abs(int(pushback) / 1000 - wait) <= 0.1
        time.sleep(wait)
        w = a.Warm(pb.WarmRequest(prompt=ids(120, first)), timeout=60)  # refilled: taken
        assert w.computed_tokens == 120  # and overdrawn again, by about 120 tokens (3 s)
        # the OpenAI API: 429, Retry-After; the SDK waits it out and gets its answer
        conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": [1, 2, 3],
                                                                 "max_tokens": 1}),
                     headers={"Authorization": f"Bearer {ka}"})
        r = conn.getresponse()
        answer = json.loads(r.read())
        conn.close()
        assert r.status == 429 and "rate limit" in answer["error"]["message"]
        assert answer["error"]["type"] == "rate_limit_error"
        retry_ms = int(r.getheader("retry-after-ms"))
        assert 1000 < retry_ms <= 121 * 60000 / per_minute + 100
        assert int(r.getheader("Retry-After")) == (retry_ms + 999) // 1000
        limited = tenant_metric("prefixd_tenant_rate_limited_total", "alpha")
        patient = openai.OpenAI(base_url=f"http://127.0.0.1:{d.http_port}/v1", api_key=ka,
                                max_retries=3, timeout=60)
        t0 = time.monotonic()
        done = patient.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=1)
        assert done.usage.completion_tokens == 1
        assert time.monotonic() - t0 >= retry_ms / 2000  # it was told to wait, and did
        assert tenant_metric("prefixd_tenant_rate_limited_total", "alpha") > limited
        # requests per minute: Generate and Warm count, Tokenize does not
        b = d.stub(kb)
        generate(b, ids(20, 30), max_tokens=1, sampling=go_on)
        b.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text="free")))
        b.Warm(pb.WarmRequest(prompt=ids(20, 31)))
        with pytest.raises(grpc.RpcError) as e:
            generate(b, ids(20, 32), max_tokens=1, sampling=go_on)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 requests per minute" in e.value.details()
        assert tenant_metric("prefixd_tenant_rate_limited_total", "beta") == 1
        (st,) = b.Stats(pb.StatsRequest()).tenants  # the tenant sees its own counts
        assert st.rate_limited == 1 and st.computed_tokens == 41  # 20 + 1 generated, 20 warmed
        # lifting the limit lets the tenant in at once
        admin.SetLimits(pb.SetLimitsRequest(name="beta", limits=pb.TenantLimits()))
        generate(b, ids(20, 32), max_tokens=1, sampling=go_on)
    finally:
        assert d.stop() == 0


def test_drain_finishes_the_running_stream_and_refuses_new_requests(default_model, data_dir):
    """The default model (about 100 tokens/s here, a few under ASan's unoptimised build) keeps a
    100-token stream running through the drain; a request that arrives meanwhile is refused 503,
    the stream ends normally."""
    d = Daemon(default_model, data_dir, extra=["--openai-listen", "127.0.0.1:0",
                                               "--drain-timeout", "600"])
    d.http_port = openai_port(d)
    stream = sdk(d).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "go"}], max_tokens=100,
        stream=True, temperature=1.0, extra_body={"ignore_eos": True})
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    got, answer = post(d, "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert got == 503 and "shutting down" in answer["error"]["message"]
    rest = list(stream)
    assert [ch.choices[0].finish_reason for ch in rest if ch.choices][-1] == "length"
    assert d.proc.wait(600) == 0
    assert d.stop() == 0


def test_json_object_mode_on_the_default_model(default_model, data_dir):
    """The default model asked for a JSON object, greedy: with response_format json_object the
    answer is one whole JSON object with the keys asked for, and ends there."""
    d = Daemon(default_model, data_dir, extra=["--openai-listen", "127.0.0.1:0"])
    d.http_port = openai_port(d)
    ask = [{"role": "user", "content": "Describe a fictional person as a JSON object with the "
                                       "keys name, age and city."}]
    r = sdk(d, timeout=600).chat.completions.create(  # the default model is slow under ASan
        model="m", messages=ask, max_tokens=120, temperature=0,
        response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop", r
    person = json.loads(r.choices[0].message.content)
    assert isinstance(person, dict) and {"name", "age", "city"} <= set(person), person
    assert d.stop() == 0


def test_structured_output_through_the_sdk_on_the_default_model(default_model, data_dir):
    """OpenAI's SDK parses into a pydantic model (client.beta.chat.completions.parse sends the
    model's strict JSON schema): the default model, greedy, answers an instance."""
    class Contact(pydantic.BaseModel):
        name: str
        age: int
        city: str
        hobbies: List[str]

    d = Daemon(default_model, data_dir, extra=["--openai-listen", "127.0.0.1:0"])
    d.http_port = openai_port(d)
    r = sdk(d, timeout=600).beta.chat.completions.parse(  # slow under ASan
        model="m", messages=[{"role": "user", "content": "Invent a person: name, age, city and "
                                                         "a few hobbies, as JSON."}],
        max_tokens=150, temperature=0, response_format=Contact)
    assert r.choices[0].finish_reason == "stop"
    contact = r.choices[0].message.parsed
    assert isinstance(contact, Contact) and contact.name and contact.hobbies, contact
    assert d.stop() == 0
