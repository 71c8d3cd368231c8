"""Chatting with a trained model: messages rendered with the chat template training used
(`tfllm.tokenizers.chat`), a completion generated, and the reply cut at the template's end-of-turn
marker (the generator itself stops at the model's stop ids)."""

from __future__ import annotations

import json
import posixpath

import tensorflow as tf

from tfllm.errors import TfllmError
from tfllm.tokenizers import chat

_PROBE = "\x00reply\x00"


def template_of(cfg, tokenizer_path: str) -> chat.Template:
    """The template the workdir's data was rendered with (data.chat_template, else the one
    beside the tokenizer, else ChatML)."""
    directory = tokenizer_path if tf.io.gfile.isdir(tokenizer_path) else ""
    directory = directory or posixpath.dirname(tokenizer_path)
    return chat.load_template(cfg.data.chat_template, directory)


def end_of_turn(template: chat.Template) -> str:
    """What the template writes after an assistant reply (e.g. "<|im_end|>"), stripped."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    rendered = template.render(probe)
    return rendered[rendered.index(_PROBE) + len(_PROBE) :].strip()


def prompt(template: chat.Template, messages: list[dict]) -> str:
    return template.render(list(messages), add_generation_prompt=True)


def reply(template: chat.Template, completion: str) -> str:
    """The completion up to the end-of-turn marker."""
    marker = end_of_turn(template)
    return completion.split(marker)[0] if marker else completion


def chat_completion(trained, messages: list[dict], **options) -> str:
    """The reply of a `TrainedModel` to `messages` (options as `Generator.generate`)."""
    from tfllm.serve.generate import Generator

    template = template_of(trained.cfg, trained.tokenizer_path)
    generator = Generator(trained.model, trained.tokenizer_path)
    return reply(template, generator.generate([prompt(template, messages)], **options)[0])


def parse_messages(text: str) -> list[dict]:
    """`--chat` JSON -> messages, refused in one line unless a list of role/content objects."""
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as err:
        raise TfllmError(f"--chat: not JSON ({err})") from None
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in chat.ROLES and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise TfllmError(
            f"--chat: want a list of {{role: {'|'.join(chat.ROLES)}, content}} objects"
        )
    return messages
