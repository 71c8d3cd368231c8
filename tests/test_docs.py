"""The documentation site's pages: the configuration reference is what docs/gen_config.py
writes, and every ```bash and ```python block runs as printed, page by page, on the tiny test
model (the convention is on the Development page)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKER = re.compile(
    r"^<!-- (not run: (?P<why>.+)|run by (?P<test>tests/\S+\.py)|file: (?P<file>\S+)) -->$"
)
# Appended to every `tfllm prepare` / `tfllm train` and `tfllm.load_config` of a page: the
# tiny test model on two stdlib packages (`{corpus}`); train.steps=20 unless the page sets it.
SHRINK = [
    "model.vocabulary_size=512",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.hidden_dim=32",
    "model.intermediate_dim=64",
    "model.max_sequence_length=64",
    "data.seq_len=32",
    "data.tokenizer_sample_mb=1",
    "data.source={corpus}",
    "train.global_batch_size=8",
    "train.eval_batches=2",
    "train.sample_tokens=8",
]
BASH_PRELUDE = """
tfllm() {{
    local extra=()
    case "$1" in
        prepare|train)
            extra=({sets})
            case " $* " in *train.steps=*) ;; *) extra+=(--set train.steps=20) ;; esac ;;
    esac
    "{python}" -m tfllm "$@" "${{extra[@]}}"
}}
"""
PYTHON_PRELUDE = """
import tfllm

_load_config = tfllm.load_config


def _shrunk(*files, overrides=()):
    overrides = [*overrides, *{shrink!r}]
    if not any(o.startswith("train.steps=") for o in overrides):
        overrides.append("train.steps=20")
    return _load_config(*files, overrides=overrides)


tfllm.load_config = _shrunk
"""


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    marker: str  # "" or the comment's text


def blocks(page: pathlib.Path) -> list[Block]:
    """The fenced blocks of a page, each with the marker comment right above it."""
    found, lines, i = [], page.read_text().splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)", lines[i])
        if not fence:
            i += 1
            continue
        end = lines.index("```", i + 1)
        above = lines[i - 1] if i else ""
        marker = above if above.startswith("<!--") else ""
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(page.name, i + 1, fence.group(1), code, marker))
        i = end + 1
    return found


def _runnable(page: pathlib.Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in ("bash", "python") and not b.marker]


PAGES = sorted(DOCS.glob("*.md"))
RUN_PAGES = [p.name for p in PAGES if _runnable(p)]


def test_configuration_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_config", DOCS / "gen_config.py")
    gen_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_config)
    committed = (DOCS / "configuration.md").read_text()
    assert committed == gen_config.render(), "stale: run python docs/gen_config.py"


def test_every_page_is_in_the_site_and_every_marker_is_understood():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p.name for p in PAGES if f": {p.name}" not in nav] == []
    for page in PAGES:
        for block in blocks(page):
            if not block.marker:
                continue
            where = f"{page.name}:{block.line}"
            match = MARKER.match(block.marker)
            assert match, f"{where}: unknown marker {block.marker}"
            if match["test"]:
                assert page.name in (ROOT / match["test"]).read_text(), where
    assert len(RUN_PAGES) >= 6, RUN_PAGES


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_runs_as_printed(page, corpus_dir, tmp_path):
    """The page's blocks in order in one fresh directory, as a user following it."""
    shrink = [s.format(corpus=corpus_dir) for s in SHRINK]
    sets = " ".join(f"--set {s}" for s in shrink)
    env = {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}
    for block in blocks(DOCS / page):
        match = MARKER.match(block.marker) if block.marker else None
        if match and match["file"]:
            target = tmp_path / match["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.code)
    for block in _runnable(DOCS / page):
        if block.lang == "bash":
            prelude = BASH_PRELUDE.format(sets=sets, python=sys.executable)
            argv = ["bash", "-euo", "pipefail", "-c", prelude + block.code]
        else:
            script = tmp_path / f"block_{block.line}.py"
            script.write_text(PYTHON_PRELUDE.format(shrink=shrink) + block.code)
            argv = [sys.executable, str(script)]
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        output = (done.stdout + done.stderr)[-4000:]
        assert done.returncode == 0, f"{page}:{block.line} exit {done.returncode}\n{output}"
