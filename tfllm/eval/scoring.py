"""One task on one engine: requests out, the harness's metrics back.

    multiple_choice        acc (argmax log-likelihood), acc_norm (divided by the choice's
                           length in characters, the harness's code), acc_bytes (in UTF-8 bytes)
    loglikelihood          acc (the target is the greedy continuation), perplexity
    loglikelihood_rolling  bits_per_byte, byte_perplexity, word_perplexity, token_perplexity
    generate_until         exact_match (ignore_case, ignore_punctuation, ignore_numbers,
                           regexes_to_ignore), after the task's regex / take_first filters

Per-example metrics carry the standard error of their mean; corpus-level ones (perplexities,
bits per byte) have none (the harness bootstraps them; tfllm reports null).
"""

from __future__ import annotations

import math
import re
import string

import numpy as np

from tfllm.eval.engine import Engine
from tfllm.eval.tasks import Task, TaskError


def mean_stderr(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def _per_example(values: dict[str, list[float]]) -> dict[str, tuple[float, float | None]]:
    return {name: (float(np.mean(v)), mean_stderr(v)) for name, v in values.items()}


def exact_match(prediction: str, reference: str, **options) -> float:
    """The harness's `exact_match_hf_evaluate` on one pair."""
    for pattern in options.get("regexes_to_ignore") or []:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    if options.get("ignore_case"):
        prediction, reference = prediction.lower(), reference.lower()
    for flag, chars in (
        ("ignore_punctuation", string.punctuation),
        ("ignore_numbers", "0123456789"),
    ):
        if options.get(flag):
            table = str.maketrans("", "", chars)
            prediction, reference = prediction.translate(table), reference.translate(table)
    return float(prediction == reference)


def apply_filters(text: str, filters: list[dict]) -> str:
    for step in filters:
        function = step.get("function")
        if function == "regex":
            found = re.findall(step.get("regex_pattern", r"#### (\-?[0-9\.\,]+)"), text)
            index = step.get("group_select", 0)
            if found and -len(found) <= index < len(found):
                match = found[index]
                if isinstance(match, tuple):
                    match = next((m for m in match if m), match[0])
                text = match.strip()
            else:
                text = step.get("fallback", "[invalid]")
        elif function == "lowercase":
            text = text.lower()
        elif function == "remove_whitespace":
            text = text.lstrip()
        elif function != "take_first":  # one response per request: taking the first is a no-op
            raise TaskError(f"filter function {function!r} is not supported")
    return text


def run_task(engine: Engine, task: Task, limit: int | None = None) -> dict:
    """Returns {"n": documents, "metrics": {name: (value, stderr)}}."""
    docs = task.docs[:limit] if limit else task.docs
    wanted = [m["metric"] for m in task.metrics]
    kind = task.output_type
    if kind == "multiple_choice":
        values = _multiple_choice(engine, task, docs)
    elif kind == "loglikelihood":
        values = _loglikelihood(engine, task, docs)
    elif kind == "loglikelihood_rolling":
        values = _rolling(engine, task, docs)
    else:
        values = _generate(engine, task, docs)
    missing = [m for m in wanted if m not in values]
    if missing:
        raise TaskError(
            f"{task.source or task.name}: metric(s) {', '.join(missing)} not available for "
            f"{kind}; available: {', '.join(values)}"
        )
    return {"n": len(docs), "metrics": {m: values[m] for m in wanted}}


def _multiple_choice(engine: Engine, task: Task, docs: list[dict]) -> dict:
    requests, spans, golds, choice_lists = [], [], [], []
    for index, doc in enumerate(docs):
        context, choices = task.text(doc, index), task.choices(doc, index)
        golds.append(task.gold(doc, index, choices))
        spans.append((len(requests), len(requests) + len(choices)))
        choice_lists.append(choices)
        requests.extend((context, task.target_delimiter + choice) for choice in choices)
    lls = np.array([ll for ll, _ in engine.loglikelihood(requests, task.name)])
    acc, acc_norm, acc_bytes = [], [], []
    for (low, high), gold, choices in zip(spans, golds, choice_lists, strict=True):
        scores = lls[low:high]
        chars = np.array([len(c) for c in choices], dtype=np.float64)
        utf8 = np.array([len(c.encode("utf-8")) for c in choices], dtype=np.float64)
        acc.append(float(np.argmax(scores) == gold))
        acc_norm.append(float(np.argmax(scores / chars) == gold))
        acc_bytes.append(float(np.argmax(scores / utf8) == gold))
    return _per_example({"acc": acc, "acc_norm": acc_norm, "acc_bytes": acc_bytes})


def _loglikelihood(engine: Engine, task: Task, docs: list[dict]) -> dict:
    requests = [
        (task.text(doc, i), task.target_delimiter + str(task.target(doc, i)))
        for i, doc in enumerate(docs)
    ]
    results = engine.loglikelihood(requests, task.name)
    values = _per_example({"acc": [float(greedy) for _, greedy in results]})
    values["perplexity"] = (_exp(-float(np.mean([ll for ll, _ in results]))), None)
    return values


def _rolling(engine: Engine, task: Task, docs: list[dict]) -> dict:
    spec = task.doc_to_target if task.doc_to_target is not None else task.doc_to_text
    texts = [str(task.render(spec, doc, i, "doc_to_target")) for i, doc in enumerate(docs)]
    results = engine.loglikelihood_rolling(texts, task.rolling_context, task.name)
    nll = -sum(ll for ll, _ in results)
    utf8 = sum(len(t.encode("utf-8")) for t in texts)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    tokens = sum(n for _, n in results)
    return {
        "bits_per_byte": (nll / utf8 / math.log(2), None),
        "byte_perplexity": (_exp(nll / utf8), None),
        "word_perplexity": (_exp(nll / words), None),
        "token_perplexity": (_exp(nll / max(tokens, 1)), None),
    }


def _exp(x: float) -> float:
    """A perplexity: inf past float64's range (a text of one long "word" can get there)."""
    return math.exp(x) if x < 709.0 else math.inf


def _generate(engine: Engine, task: Task, docs: list[dict]) -> dict:
    options = dict(task.generation_kwargs)
    options.setdefault("until", [])
    if isinstance(options["until"], str):
        options["until"] = [options["until"]]
    requests = [(task.text(doc, i), options) for i, doc in enumerate(docs)]
    outputs = engine.generate_until(requests, task.name)
    metric_options = {m["metric"]: m for m in task.metrics}.get("exact_match", {})
    kwargs = {
        k: v
        for k, v in metric_options.items()
        if k not in ("metric", "aggregation", "higher_is_better")
    }
    scores = [
        exact_match(apply_filters(out, task.filters), str(task.target(doc, i)), **kwargs)
        for i, (doc, out) in enumerate(zip(docs, outputs, strict=True))
    ]
    return _per_example({"exact_match": scores})
