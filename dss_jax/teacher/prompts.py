"""Few-shot chain-of-thought prompt templates, kept as editable text files.

A template file holds the few-shot exemplars followed by the query block, in which
`{{name}}` placeholders are filled in per row (e.g. `{{question}}`, `{{choices}}`).
Lines starting with `#` at the very top of the file are comments and are not sent.
Trailing whitespace is removed so the prompt ends right after the answer cue (`A:`,
`Answer:`, `Reasonings:`), where the teacher continues.

The packaged templates live in `dss_jax/teacher/prompts/<benchmark>.txt`.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import re
from typing import Mapping

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A few-shot prompt with `{{name}}` placeholders in its final (query) block."""

    text: str
    source: str

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_PLACEHOLDER.findall(self.text))

    def render(self, fields: Mapping[str, str]) -> str:
        """The prompt for one row; a missing or extra field is a ValueError naming it."""
        missing = self.placeholders - fields.keys()
        if missing:
            raise ValueError(f"prompt {self.source} needs fields {sorted(missing)}; got {sorted(fields)}")
        unused = fields.keys() - self.placeholders
        if unused:
            raise ValueError(f"prompt {self.source} has no placeholder for fields {sorted(unused)}")
        return _PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]), self.text)


def parse_template(raw: str, source: str) -> PromptTemplate:
    """Drop the leading `#` comment lines and trailing whitespace; require a placeholder."""
    lines = raw.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    text = "\n".join(lines).strip()
    if not text:
        raise ValueError(f"prompt template {source} is empty")
    if not _PLACEHOLDER.search(text):
        raise ValueError(f"prompt template {source} has no {{{{field}}}} placeholder for the query")
    return PromptTemplate(text=text, source=source)


def load_template(path: str) -> PromptTemplate:
    """A template from a file on disk (a user's own prompt)."""
    with open(path, encoding="utf-8") as f:
        return parse_template(f.read(), source=path)


def packaged_template(name: str) -> PromptTemplate:
    """The template shipped with dss_jax for benchmark `name` (prompts/<name>.txt)."""
    resource = importlib.resources.files("dss_jax.teacher").joinpath("prompts", f"{name}.txt")
    if not resource.is_file():
        raise FileNotFoundError(f"no packaged prompt template for {name!r} ({resource})")
    return parse_template(resource.read_text(encoding="utf-8"), source=f"dss_jax/teacher/prompts/{name}.txt")
