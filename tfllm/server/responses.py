"""OpenAI's response shapes: completions and chat completions, whole or as server-sent event
chunks, with their log-probs and usage counts.

A choice is gathered from the scheduler's events (`tfllm.server.scheduler`) into a `Choice`;
streaming turns each event into a chunk as it arrives.
"""

from __future__ import annotations

import dataclasses
import json
import time

from tfllm.server.text import Codec


@dataclasses.dataclass
class Choice:
    """What one sequence produced, as the events arrive."""

    text: str = ""
    tokens: list = dataclasses.field(default_factory=list)  # (id, logprob, top)
    prompt: tuple | None = None  # echo: (logprobs (P - 1,), top (values, ids))
    reason: str | None = None
    usage: tuple[int, int] = (0, 0)  # prompt tokens, generated tokens


def sse(payload) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload) if not isinstance(payload, str) else payload}\n\n"


def usage(choices) -> dict:
    # Every choice of a prompt reads the same prompt: count it once per prompt, as OpenAI does.
    prompts = {}
    for key, choice in choices:
        prompts[key] = choice.usage[0]
    generated = sum(choice.usage[1] for _, choice in choices)
    prompt = sum(prompts.values())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
    }


def _top_dict(codec: Codec, values, ids, k: int) -> dict:
    top = {}
    for value, token in zip(values[:k], ids[:k], strict=True):
        top.setdefault(codec.decode([int(token)]), float(value))
    return top


def completion_logprobs(
    codec: Codec, choice: Choice, k: int, prompt_ids: list[int] | None, starts: int, offset: int = 0
) -> dict:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs and
    text_offset; with echo (`prompt_ids`, the prompt after the model's `starts` start ids) the
    prompt comes first. The first prompt token has a log-prob only after start ids."""
    tokens, values, tops, offsets = [], [], [], []
    position = offset
    if prompt_ids is not None:
        logprobs, (top_values, top_ids) = choice.prompt  # token j + 1 given tokens 0..j
        for i, token in enumerate(prompt_ids):
            text = codec.decode([token])
            tokens.append(text)
            offsets.append(position)
            position += len(text)
            j = starts + i - 1
            if j < 0:
                values.append(None)
                tops.append(None)
            else:
                values.append(float(logprobs[j]))
                tops.append(_top_dict(codec, top_values[j], top_ids[j], k))
    for token, value, (top_values, top_ids) in choice.tokens:
        text = codec.decode([token])
        tokens.append(text)
        offsets.append(position)
        position += len(text)
        values.append(value)
        tops.append(_top_dict(codec, top_values, top_ids, k))
    return {
        "tokens": tokens,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def chat_logprobs(codec: Codec, tokens: list, k: int) -> dict:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def entry(text: str, value: float) -> dict:
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    content = []
    for token, value, (top_values, top_ids) in tokens:
        item = entry(codec.decode([token]), value)
        item["top_logprobs"] = [
            entry(codec.decode([int(t)]), float(v))
            for v, t in zip(top_values[:k], top_ids[:k], strict=True)
        ]
        content.append(item)
    return {"content": content}


def completion(request_id: str, model: str, choices: list[dict], counts: dict) -> dict:
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": counts,
    }


def chat_completion(request_id: str, model: str, choices: list[dict], counts: dict) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": counts,
    }


def chunk(
    request_id: str,
    model: str,
    chat: bool,
    index: int,
    text: str | None,
    reason: str | None = None,
    logprobs=None,
    role: bool = False,
) -> dict:
    """One streamed chunk: a completion's `text`, or a chat message's `delta`."""
    if chat:
        delta = {"role": "assistant", "content": ""} if role else {}
        if text is not None and not role:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": reason}
        kind = "text_completion"
    return {
        "id": request_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
