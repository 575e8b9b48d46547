"""Convert plain Wikipedia prose to the WikiText-2 raw layout.

WikiText-2 raw looks like::

     = Robert Boulter =
    <blank>
     Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role ...

Punctuation is space-separated, hyphens inside words become `` @-@ ``, digit group separators `` @,@ `` and decimal
points `` @.@ ``; every line starts with a space and ends with `` \\n``. Matching the layout keeps the format gap out
of the perplexity we report on WikiText-2.
"""

from __future__ import annotations

import re

__all__ = ["to_wikitext_line", "article_to_wikitext"]

_NUM_SEP = re.compile(r"(?<=\d)([,.])(?=\d)")
_HYPHEN = re.compile(r"(?<=\w)-(?=\w)")
_CONTRACTION = re.compile(r"(?<=\w)'(s|re|ve|ll|d|m|t)\b", re.IGNORECASE)
_NT = re.compile(r"(?<=\w)n't\b", re.IGNORECASE)
_PUNCT = re.compile(r"([,;:!?()\[\]\"$%/—–]|')")
_ABBREV = re.compile(r"^(?:[A-Za-z]\.)+$")


def _split_period(token: str) -> str:
    """``word.`` → ``word .``; abbreviations such as ``U.S.`` stay whole, as in WikiText."""
    if token.endswith(".") and len(token) > 1 and not _ABBREV.match(token):
        return token[:-1] + " ."
    return token
_SPACES = re.compile(r"\s+")


def to_wikitext_line(text: str) -> str:
    """One paragraph of prose → one WikiText line (leading space, tokens separated by single spaces)."""
    s = text.replace("“", '"').replace("”", '"').replace("’", "'").replace("‘", "'")
    s = s.replace("—", " — ").replace("–", " – ")
    s = _NUM_SEP.sub(lambda m: f" @{m.group(1)}@ ", s)
    s = _HYPHEN.sub(" @-@ ", s)
    s = _NT.sub(" n\x00t", s)
    s = _CONTRACTION.sub(lambda m: " \x00" + m.group(1), s)
    # keep the "@,@" / "@.@" markers intact while splitting other punctuation off
    parts = re.split(r"(@[,.\-]@)", s)
    out = []
    for part in parts:
        if re.fullmatch(r"@[,.\-]@", part):
            out.append(part)
        else:
            spaced = _PUNCT.sub(r" \1 ", part)
            out.append(" ".join(_split_period(t) for t in spaced.split()))
    s = _SPACES.sub(" ", " ".join(out)).strip().replace("\x00", "'")
    return f" {s} " if s else ""


def article_to_wikitext(title: str, extract: str) -> str:
    """A titled article → WikiText block: heading, blank line, one line per paragraph, blank line."""
    paragraphs = [to_wikitext_line(p) for p in extract.split("\n")]
    body = "".join(f"{p}\n" for p in paragraphs if p)
    return f" = {to_wikitext_line(title).strip()} = \n \n{body} \n"
