"""Jinja templates that come from files (task YAML fields, chat templates): one sandbox for all.

A template in a shared file is code written by someone else. Every such template is compiled
here, in jinja2's `ImmutableSandboxedEnvironment`: attribute access to dunder names, to the
internals of functions and to mutating methods is refused, so payloads such as
`cycler.__init__.__globals__.os.popen(...)` or `''.__class__.__mro__` raise `SecurityError`
instead of running. Any error, a refused one included, becomes one `TemplateFailure` line
naming the file (and the key) the template came from; callers raise it as their own error type.
"""

from __future__ import annotations

import functools

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError


class TemplateFailure(Exception):
    """A template that cannot be compiled or rendered, or that reached outside the sandbox."""


MAX_RESULT = 10_000_000  # characters or items one `*` may make; a bigger one is refused
MAX_EXPONENT = 4096


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*` and `**` bounded: `'a' * 10**12` would otherwise take
    the machine's memory before anything could refuse it."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is above the sandbox's {MAX_EXPONENT}")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if sized and len(seq) * count > MAX_RESULT:
                    raise SecurityError(f"a result of {len(seq) * count:,} items is too large")
        return super().call_binop(context, operator, left, right)


def environment(**options) -> ImmutableSandboxedEnvironment:
    """A fresh sandboxed environment; `options` are jinja2.Environment's (trim_blocks, ...)."""
    return _Sandbox(**options)


def _describe(err: Exception) -> str:
    if isinstance(err, SecurityError):
        return f"refused by the template sandbox ({err})"
    if isinstance(err, jinja2.TemplateSyntaxError):
        return f"syntax error at line {err.lineno}: {err.message}"
    return str(err).replace("\n", " ") or type(err).__name__


def compile_template(env: jinja2.Environment, source: str, origin: str) -> jinja2.Template:
    """`source` compiled in `env` (one of `environment`'s); a TemplateFailure names `origin`."""
    if not isinstance(env, ImmutableSandboxedEnvironment):
        raise TypeError("templates from files compile only in the sandboxed environment")
    try:
        return _cached(env, source)
    except (jinja2.TemplateError, SecurityError) as err:
        raise TemplateFailure(f"{origin}: {_describe(err)}") from None


@functools.lru_cache(maxsize=256)
def _cached(env: jinja2.Environment, source: str) -> jinja2.Template:
    return env.from_string(source)


def render(template: jinja2.Template, origin: str, **context) -> str:
    """The rendered text; any failure inside the template (a missing variable, a refused
    attribute, `raise_exception`, a Python error of a filter) is one TemplateFailure line."""
    try:
        return template.render(**context)
    except (jinja2.TemplateError, SecurityError) as err:
        raise TemplateFailure(f"{origin}: {_describe(err)}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as err:
        # Data the template did not expect (a number where it adds strings, ...).
        raise TemplateFailure(f"{origin}: {type(err).__name__}: {err}") from None
    except RecursionError:
        raise TemplateFailure(f"{origin}: the template recurses too deeply") from None
