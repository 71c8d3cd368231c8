"""Writes chat_golden.json: conversations rendered by `transformers.apply_chat_template`.

    pip install transformers tokenizers && python tests/golden/make_chat_golden.py

No model is downloaded: each tokenizer is a one-word WordLevel `tokenizers` model carrying the
template and the special tokens, which is all `apply_chat_template(tokenize=False)` reads.
tests/test_tokenizers_chat.py checks that tfllm renders the same strings without transformers
installed.
"""

from __future__ import annotations

import json
import pathlib

import transformers
from tokenizers import Tokenizer, models

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "chatml": (CHATML_QWEN2, "", "<|im_end|>"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}, {"role": "assistant", "content": "5"}],
    [
        {"role": "system", "content": "Answer in French, café au lait: ok.  "},
        {"role": "user", "content": "Hello\n\tthere"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Ça va ? 你好 🙂"},
        {"role": "assistant", "content": "Oui."},
    ],
]


def main() -> None:
    out = {"transformers": transformers.__version__, "templates": {}, "cases": []}
    for name, (template, bos, eos) in TEMPLATES.items():
        out["templates"][name] = {"source": template, "bos_token": bos, "eos_token": eos}
        tokenizer = transformers.PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer(models.WordLevel({"x": 0, bos or "<s>": 1, eos: 2}, "x")),
            bos_token=bos or None,
            eos_token=eos,
            chat_template=template,
        )
        for i, messages in enumerate(CONVERSATIONS):
            for prompt in (False, True):
                rendered = tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=prompt
                )
                out["cases"].append(
                    {
                        "template": name,
                        "conversation": i,
                        "add_generation_prompt": prompt,
                        "messages": messages,
                        "rendered": rendered,
                    }  # fmt: skip
                )
    path = pathlib.Path(__file__).with_name("chat_golden.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(out['cases'])} cases to {path}")


if __name__ == "__main__":
    main()
