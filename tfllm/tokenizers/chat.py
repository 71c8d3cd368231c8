"""Chat templates: conversations rendered to text the way `transformers` renders them, and cut
into trained and untrained segments for the loss mask.

A template is Jinja, rendered in tfllm's sandbox (`tfllm.templates`: jinja2's
`ImmutableSandboxedEnvironment`) with `trim_blocks=True, lstrip_blocks=True`, `raise_exception`,
`strftime_now` and a `tojson` filter that keeps non-ASCII text, as
`transformers.apply_chat_template` does. Where it comes from, first match
wins: `data.chat_template` (a file), `chat_template.jinja` beside the tokenizer,
`chat_template` in `tokenizer_config.json`, else the built-in ChatML template.

Segments: for each assistant turn i, the text rendered for messages[:i] with the generation
prompt ends where the reply starts, and the text rendered for messages[:i+1] ends where it
stops; the characters between the two are the reply (its end-of-turn marker included, so the
model learns to stop). This needs a template whose renderings of a conversation's prefixes are
prefixes of the whole rendering, which holds for the templates of the supported families;
one that does not is refused with the turn it breaks at.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from dataclasses import dataclass

import jinja2

from tfllm import templates
from tfllm.errors import DataError

# ChatML, as Qwen2 writes it, without a default system prompt: tfllm's own models.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Template:
    """A compiled chat template and the special-token strings it may refer to."""

    source: str
    origin: str  # where it was read from, for error messages
    bos_token: str = ""
    eos_token: str = ""

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return templates.render(
                _compile(self.source, self.origin),
                f"chat template {self.origin}",
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except templates.TemplateFailure as err:
            raise DataError(str(err)) from None

    def segments(self, messages: list[dict], train_roles=("assistant",)) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, trained) pieces, in order.

        A message is trained when its role is in `train_roles` and it does not say
        `"train": false`.
        """
        pieces, done = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            whole = self.render(messages[: i + 1])
            if not (prompt.startswith(done) and whole.startswith(prompt)):
                raise DataError(
                    f"chat template {self.origin}: the rendering of the first {i + 1} messages "
                    "does not extend the rendering of the first {i}; loss masks need a "
                    "template whose prefixes render as prefixes"
                )
            trained = message["role"] in train_roles and message.get("train", True)
            pieces += [(prompt[len(done) :], False), (whole[len(prompt) :], trained)]
            done = whole
        rest = self.render(messages)[len(done) :]
        pieces.append((rest, False))
        return [(text, trained) for text, trained in pieces if text]


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@functools.cache
def _environment():
    env = templates.environment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


def _compile(source: str, origin: str) -> jinja2.Template:
    try:
        return templates.compile_template(_environment(), source, f"chat template {origin}")
    except templates.TemplateFailure as err:
        raise DataError(str(err)) from None


def _token_text(value) -> str:
    """tokenizer_config.json writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content", "")
    return value or ""


def load_template(override: str = "", tokenizer_dir: str = "") -> Template:
    """The chat template to use, by the precedence in the module docstring."""
    if override:
        if not os.path.isfile(override):
            raise DataError(f"data.chat_template: {override} not found")
        with open(override, encoding="utf-8") as f:
            source = f.read()
        return Template(source, override, *_special_tokens(tokenizer_dir))
    if tokenizer_dir:
        jinja_path = os.path.join(tokenizer_dir, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                return Template(f.read(), jinja_path, *_special_tokens(tokenizer_dir))
        config = _tokenizer_config(tokenizer_dir)
        source = config.get("chat_template")
        if isinstance(source, list):  # several named templates: transformers uses "default"
            source = {t["name"]: t["template"] for t in source}.get("default")
        if source:
            where = os.path.join(tokenizer_dir, "tokenizer_config.json")
            return Template(source, where, *_special_tokens(tokenizer_dir))
    return Template(CHATML, "built-in ChatML")


def _tokenizer_config(tokenizer_dir: str) -> dict:
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if not tokenizer_dir or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _special_tokens(tokenizer_dir: str) -> tuple[str, str]:
    config = _tokenizer_config(tokenizer_dir)
    return _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
