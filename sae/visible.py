"""How whitespace inside a token is shown, in one table: explanations, pages and search agree.

A token's text can be a bare space, a line break or a tab; shown as they are they vanish or
break the layout, so each gets a visible mark. Explanations mark spaces too ('from[␣import]'),
the token-level pages keep spaces as spaces (they read as text).
"""

from __future__ import annotations

MARKS = {"\n": "⏎", "\r": "␍", "\t": "⇥"}
SPACE = "␣"
_WITH_SPACES = str.maketrans({" ": SPACE, **MARKS})
_WITHOUT_SPACES = str.maketrans(MARKS)


def visible(text: str, *, spaces: bool = True) -> str:
    """`text` with its line breaks and tabs (and, unless `spaces` is False, spaces) marked."""
    return text.translate(_WITH_SPACES if spaces else _WITHOUT_SPACES)
