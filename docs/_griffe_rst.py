"""A griffe extension of the site: the reST of nnxopt's docstrings, as Markdown.

The docstrings are Google style, read as Markdown by mkdocstrings, but use a
few reST constructs (Sphinx roles, ``.. math::`` blocks) and doctest blocks
in ``Example:`` sections; rendered as they are they show ``:class:`` prefixes,
run the maths into one paragraph and turn ``>>>`` into nested quotes. This
rewrites them before rendering: a role keeps its text as code, a math block
becomes a code block of TeX (the site loads no math renderer: it is built and
read offline), a doctest block (from ``>>>`` to the next blank line, as doctest
reads it) a ``pycon`` code block.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|math):`([^`]+)`")
_MATH = re.compile(
    r"^(?P<indent>[ ]*)\.\. math::\n((?:(?P=indent)[ ]+.*\n|[ ]*\n)+)", re.M
)

#: A doctest block: a ``>>>`` line, then the non-blank lines of its indentation.
_DOCTEST = re.compile(r"^(?P<indent>[ ]*)>>>.*\n(?:(?P=indent)\S.*\n)*", re.M)


def _fenced(match: re.Match[str], language: str = "pycon") -> str:
    indent = match.group("indent")
    return f"{indent}```{language}\n{match.group(0)}{indent}```\n"


def _math_block(match: re.Match[str]) -> str:
    indent = match.group("indent")
    body = [line.strip() for line in match.group(2).splitlines() if line.strip()]
    lines = [f"{indent}```tex", *(f"{indent}{line}" for line in body), f"{indent}```"]
    return "\n".join(lines) + "\n\n"


def to_markdown(text: str) -> str:
    """Rewrite the reST constructs nnxopt's docstrings use as Markdown."""
    text = _MATH.sub(_math_block, text + "\n")
    text = _DOCTEST.sub(_fenced, text)
    return _ROLE.sub(r"`\1`", text).rstrip("\n")


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`to_markdown` as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
