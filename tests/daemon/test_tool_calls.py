"""OpenAI tool calling end to end on the synthetic models, through OpenAI's own Python SDK:
calls forced by tool_choice (named, required with one and several functions) valid for the
chosen function's parameters by jsonschema's validator, whole and streamed, in the ChatML and
Llama 3 conventions; a conversation with a call and its result rendered as gRPC's ChatMessages
render it. (A file of its own: under ASan each CTest file has its own time limit.)"""
import json
import os
import re

import jsonschema
import pytest

from conftest import Daemon, pb
from test_openai import TIME, WEATHER, messages, openai_port, sdk, served  # noqa: F401


def closing_bias(d):
    """Biases that make the synthetic model's JSON end: towards quotes and closing braces,
    against the single-space and newline tokens."""
    stub = d.stub()

    def ids(t):
        return stub.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(text=t))).token_ids

    bias = {str(ids('"')[0]): 20, str(ids("}")[0]): 15}
    for ws in ("\n", " ", "\r", "\t", "\n\n", "  ", "\r\r"):
        if len(ids(ws)) == 1:
            bias[str(ids(ws)[0])] = -100
    return bias


def check_forced_calls(d, c, tools, choice, want_names, seeds=6, max_tokens=160):
    """Forced tool calls on the synthetic model at a hot temperature: each answer that stops is
    one call (no content) of a wanted function whose arguments are valid for that function's
    parameters (jsonschema's validator), the streamed call equals the whole one, and at least a
    third stop; an answer cut at max_tokens is content and finishes 'length'. (Sized for ASan:
    a few seeds, short answers, the stream compared once.)"""
    params = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    bias, calls = closing_bias(d), 0
    for seed in range(seeds):
        kw = dict(model="tiny", messages=messages(f"Weather {seed}"), tools=tools,
                  tool_choice=choice, max_tokens=max_tokens, temperature=5.0, seed=seed, logit_bias=bias)
        ch = c.chat.completions.create(**kw).choices[0]
        if ch.finish_reason != "tool_calls":
            assert ch.finish_reason == "length" and ch.message.tool_calls is None, ch
            assert re.sub(r"\s", "", ch.message.content).startswith('{"name"'), ch.message
            continue
        calls += 1
        assert ch.message.content is None and len(ch.message.tool_calls) == 1, ch.message
        call = ch.message.tool_calls[0]
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in want_names
        jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])
        if calls > 1:
            continue
        events = [e.choices[0] for e in c.chat.completions.create(stream=True, **kw)
                  if e.choices]
        streamed = [t for e in events for t in (e.delta.tool_calls or [])]
        assert [(t.index, t.function.name, t.function.arguments) for t in streamed] == [
            (0, call.function.name, call.function.arguments)]
        assert not any(e.delta.content for e in events) and events[-1].finish_reason == "tool_calls"
    assert calls >= seeds // 3, calls


def test_forced_tool_calls_follow_the_functions_schemas(served):
    c = sdk(served)
    named = {"type": "function", "function": {"name": "get_weather"}}
    check_forced_calls(served, c, [WEATHER, TIME], named, {"get_weather"})
    check_forced_calls(served, c, [TIME], "required", {"get_time"})
    # several functions: the name picks whose parameters the arguments follow
    check_forced_calls(served, c, [WEATHER, TIME], "required", {"get_weather", "get_time"},
                       seeds=9)


def test_tool_conversations_render_calls_and_results(served):
    """A conversation with an earlier call and its result, through the SDK (tool_choice auto)
    and through gRPC's ChatMessages: the same prompt, rendered in ChatML's tool convention, and
    the same greedy answer (the synthetic model's text holds no call: it is content)."""
    c = sdk(served)
    args = '{"city": "Paris", "days": 1}'
    msgs = [{"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}]
    r = c.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER], max_tokens=12,
                                  temperature=0)
    fn = WEATHER["function"]
    chat = pb.ChatMessages(
        messages=[pb.ChatMessage(role="user", content="Weather in Paris?"),
                  pb.ChatMessage(role="assistant", tool_calls=[
                      pb.ToolCall(id="call_1", name="get_weather", arguments=args)]),
                  pb.ChatMessage(role="tool", content="18 C and sunny", tool_call_id="call_1")],
        tools=[pb.Tool(name=fn["name"], description=fn["description"],
                       parameters=json.dumps(fn["parameters"]))],
        add_generation_prompt=True)
    stub = served.stub()
    ids = stub.Tokenize(pb.TokenizeRequest(prompt=pb.Prompt(chat=chat))).token_ids
    assert r.usage.prompt_tokens == len(ids)
    text = stub.Detokenize(pb.DetokenizeRequest(token_ids=ids, render_special=True)).text
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
            '{"city": "Paris", "days": 1}}\n</tool_call><|im_end|>') in text
    assert "<|im_start|>user\n<tool_response>\n18 C and sunny\n</tool_response><|im_end|>" in text
    answer = "".join(m.text for m in stub.Generate(pb.GenerateRequest(
        prompt=pb.Prompt(chat=chat), max_tokens=12, sampling=pb.SamplingParams()), timeout=60))
    assert r.choices[0].message.content == answer and r.choices[0].message.tool_calls is None
    # tool_choice none: the same prompt, the answer as content
    r2 = c.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER], max_tokens=12,
                                   temperature=0, tool_choice="none")
    assert r2.usage.prompt_tokens == len(ids) and r2.choices[0].message.content == answer


def test_forced_tool_calls_in_llama3_convention(tiny_model, data_dir):
    """The Llama 3 family: arguments under "parameters" in the answer, read back as OpenAI's
    arguments."""
    path = os.environ.get("PD_TINY_LLAMA3")
    if not path or not os.path.exists(path):
        pytest.skip("tiny-llama3.gguf not built")
    d = Daemon(path, data_dir, extra=["--openai-listen", "127.0.0.1:0"])
    try:
        d.http_port = openai_port(d)
        check_forced_calls(d, sdk(d), [TIME, WEATHER], "required", {"get_time", "get_weather"},
                           seeds=8, max_tokens=300)
    finally:
        assert d.stop() == 0
