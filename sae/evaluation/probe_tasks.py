"""Binary token-level tasks for the probe metric, read off the reStructuredText of the docs corpus.

Each context's text is the concatenation of its tokens' texts; labels are set per character by
line-aware rules over that text and a token takes a label if any of its characters has it. What
the context does not show (the start of its first line, a block opened before it) is never
guessed: such tokens are not labelled.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Sequence

import numpy as np

TASKS: dict[str, str] = {
    "code": "on a `>>>`/`...` example line, or inside a literal block or code directive's body",
    "keyword": "the token's text, stripped of whitespace, is a Python keyword",
    "heading": "on a section title line (the line above a punctuation underline)",
    "xref": "inside the backquoted target of a role, as in :func:`os.path.join`",
    "literal": "inside an inline literal, as in ``x = 1``",
}
CHAR_TASKS = ("code", "heading", "xref", "literal")  # labelled per character; keyword per token
KEYWORDS = frozenset(keyword.kwlist)
UNDERLINE_CHARS = frozenset("=-~^*#\"+'")
CODE_DIRECTIVES = ("code-block", "sourcecode", "code", "testcode", "testsetup", "doctest")

# Special tokens such as <|endoftext|> or <|im_end|> (SmolLM2-Instruct's end of sequence) sit
# between documents in our contexts: the text after one starts a fresh document.
_BOUNDARY = re.compile(r"<\|[A-Za-z_]+\|>")
_INTERACTIVE = re.compile(r"[ \t]*(?:>>>|\.\.\.)(?: |$)")
_CODE_DIRECTIVE = re.compile(rf"[ \t]*\.\.[ \t]+(?:{'|'.join(CODE_DIRECTIVES)})::")
_DIRECTIVE = re.compile(r"[ \t]*\.\.[ \t]+[\w:.+-]+::")  # `.. note::` ends in "::" too
_OPTION = re.compile(r"[ \t]+:[\w-]+:")  # `:linenos:` and co. before a code directive's body
_SPAN = r"(?:[^`\n]|\n(?![ \t]*\n))+"  # inline markup may wrap lines but not cross a blank one
_ROLE = re.compile(rf"(?<![\w`]):[A-Za-z][\w.+-]*(?::[A-Za-z][\w.+-]*)*:`({_SPAN})`")
_LITERAL = re.compile(r"(?<![\w`])``(?=\S)((?:[^\n]|\n(?![ \t]*\n))+?)(?<=\S)``(?![\w`])")


def label_contexts(token_texts: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """Per task in TASKS, an (S, T) bool array: which tokens of each context have the label.

    `token_texts` holds S contexts of T tokens, each decoded alone, so that joining a context's
    tokens gives its text. Labels are found per character, and a token takes a label if any of
    its characters has it (" ``x" is literal because of its "x"; an empty token has none). A
    special token such as <|endoftext|> ends a document: the text after it starts afresh. The
    text before a context's first line break may begin mid-line, so what depends on a line's
    start (code, heading) is not labelled there, nor is a block begun before the context.
    """
    lengths = {len(tokens) for tokens in token_texts}
    if len(lengths) > 1:
        raise ValueError(f"token_texts: contexts differ in length ({sorted(lengths)})")
    T = lengths.pop() if lengths else 0
    labels = {task: np.zeros((len(token_texts), T), bool) for task in TASKS}
    for s, tokens in enumerate(token_texts):
        token_chars = _token_labels(tokens)  # (len(CHAR_TASKS), T)
        for i, task in enumerate(CHAR_TASKS):
            labels[task][s] = token_chars[i]
        labels["keyword"][s] = [token.strip() in KEYWORDS for token in tokens]
    return labels


def _token_labels(tokens: Sequence[str]) -> np.ndarray:
    """(len(CHAR_TASKS), T): a token has a label if any of its characters has it."""
    text = "".join(tokens)
    chars = np.zeros((len(CHAR_TASKS), len(text)), bool)
    bounds = [(m.start(), m.end()) for m in _BOUNDARY.finditer(text)]
    starts = [0, *(end for _, end in bounds)]
    ends = [*(start for start, _ in bounds), len(text)]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        # only the first segment starts mid-document; only the last may be cut mid-line
        _label_segment(text[start:end], chars[:, start:end], first=i == 0, last=i == len(ends) - 1)
    counts = np.zeros((len(CHAR_TASKS), len(text) + 1), np.int32)
    np.cumsum(chars, axis=1, out=counts[:, 1:])
    token_end = np.cumsum([len(token) for token in tokens], dtype=np.int64)  # (T,)
    token_start = token_end - np.array([len(token) for token in tokens], np.int64)
    return counts[:, token_end] > counts[:, token_start]


def _label_segment(text: str, chars: np.ndarray, *, first: bool, last: bool) -> None:
    """Fill `chars` (len(CHAR_TASKS), len(text)) for one document's visible part."""
    lines = text.split("\n")
    offsets = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]]).tolist()
    visible = [not (first and i == 0) for i in range(len(lines))]  # line start seen
    complete = [not (last and i == len(lines) - 1) for i in range(len(lines))]  # line end seen
    code, heading, xref, literal = chars
    for i in _code_lines(lines, visible):
        code[offsets[i] : offsets[i] + len(lines[i])] = True
    for i in range(len(lines) - 1):
        if visible[i] and complete[i + 1] and _is_title(lines[i], lines[i + 1]):
            heading[offsets[i] : offsets[i] + len(lines[i])] = True
    for pattern, mask in ((_ROLE, xref), (_LITERAL, literal)):
        for match in pattern.finditer(text):
            mask[match.start(1) : match.end(1)] = True


def _code_lines(lines: list[str], visible: list[bool]) -> list[int]:
    """Lines of interactive examples, literal blocks (after "::") and code directives' bodies."""
    found: list[int] = []
    block_indent: int | None = None  # indentation of the line that opened the current block
    options = False  # a code directive's options may come before its body
    for i, line in enumerate(lines):
        if not visible[i]:
            continue  # a partial first line: its indentation and block are unknown
        indent = len(line) - len(line.lstrip(" \t"))
        if block_indent is not None:
            if not line.strip():
                options = False
                continue
            if indent > block_indent:
                options = options and _OPTION.match(line) is not None
                if not options:
                    found.append(i)
                continue  # a block's text is literal: its "::" or ">>>" open nothing
            block_indent = None
        if _INTERACTIVE.match(line):
            found.append(i)
        if _CODE_DIRECTIVE.match(line):
            block_indent, options = indent, True
        elif line.rstrip().endswith("::") and not _DIRECTIVE.match(line):
            block_indent, options = indent, False
    return found


def _is_title(title: str, underline: str) -> bool:
    """A non-blank line above one punctuation character repeated at least as long."""
    text, rule = title.strip(), underline.rstrip()
    return bool(text) and not _is_rule(text) and _is_rule(rule) and len(rule) >= max(len(text), 2)


def _is_rule(line: str) -> bool:
    return bool(line) and line[0] in UNDERLINE_CHARS and line == line[0] * len(line)


# ---- one task's probe ------------------------------------------------------------------------
