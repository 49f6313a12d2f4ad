"""Splitting a line of text into sentences, and lines into paragraphs of two or more.

A paragraph is one line, as a list of its sentence strings in their original case,
stripped at both ends and not tokenised (the tokenizer lower-cases and splits them later).
As in the reference (d2l.ai, "Pretraining BERT"), a paragraph is kept only if it has at
least two sentences, since next-sentence prediction needs pairs; empty lines are skipped.

Sentence splitting (`split_sentences`) is a deterministic rule, no model and no dependency:

A sentence ends after a run of terminators `.` `!` `?` `…` (so `...` too), plus any closing
quotes or brackets right after them (`"` `'` `”` `’` `»` `)` `]` `}`), when all of this holds:

1. whitespace follows, then optionally opening quotes or brackets (`"` `'` `“` `‘` `«` `(`
   `[` `{`, spaces between them allowed, as in tokenised text), then an uppercase letter
   (any script: `É`, `Ж`), a digit, or WikiText's unknown-word token `<unk>`;
2. if the terminator is a single `.` glued to the word before it (the non-space characters
   before it, leading quotes and brackets dropped), that word is not
   - an abbreviation in `ABBREVIATIONS` (as listed, or with its first letter capitalised:
     `vs` and `Vs`; `No` but not `no`), nor
   - an initial or a chain of initials: uppercase letters joined by dots (`J.`, `J.R.R.`,
     `U.S.`), except the single letter `I` (the pronoun, the numeral in "World War I.").

Because whitespace must follow the terminator, decimals (`3.5`), versions (`v1.2.3`) and
URLs never split. Tokenised WikiText (`wiki.*.tokens`) splits too: its spaced period
` . ` has no word glued to it, so ` . The` ends a sentence like `. The` does, and
WikiText's spaced decimals (`3 @.@ 5`) have no lone `.`. Each sentence keeps its
terminator and its text as is ("It is red .", "Is it?"); only its ends are stripped.

Known limits, all from the rule being local:
- an abbreviation not in the list, followed by a capitalised word, splits
  ("a Ph.D. Student", "Assn. Members");
- a real sentence end on a listed abbreviation or an initial does not split
  ("... in the U.S. The next", "... and so on, etc. Then", "... plan B. Then");
- a sentence starting in lower case does not split ("... end. and then"), nor one starting
  with a symbol other than the quotes and brackets above;
- a numbered list item ("1. Introduction") splits after the number;
- scripts without case (Chinese, Arabic, Hindi, ...) and terminators without a following
  space (`。`) never split, so such a corpus keeps no paragraph;
- in tokenised text a spaced quote after ` . ` goes with the next sentence (` . " The`),
  as it does in the reference's `line.split(" . ")`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from bertpretrain.data.corpus import ARTICLE, BREAK, Paragraph

# Words that end in "." without ending a sentence. Compared as listed or with the first
# letter capitalised; uppercase initials (J., U.S.) are a rule of their own, not listed.
ABBREVIATIONS = frozenset(
    # titles and ranks
    ["Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "Rev", "Hon", "Gov", "Sen", "Rep"]
    + ["Gen", "Col", "Lt", "Capt", "Sgt"]
    # Latin and references
    + ["vs", "etc", "e.g", "i.e", "cf", "al", "ca", "approx", "No", "Nos", "Fig", "Vol", "pp"]
    # places and companies
    + ["Mt", "Inc", "Ltd", "Co", "Corp", "Bros"]
    # months, as in "Jan. 5"
    + ["Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"]
)
_ABBREVIATIONS = ABBREVIATIONS | {a[0].upper() + a[1:] for a in ABBREVIATIONS}

# (terminators)(closers) whitespace (openers, spaces allowed between them as in tokenised text)
_CANDIDATE = re.compile(r"""(?P<end>(?P<term>[.!?…]+)["'”’»)\]}]*)\s+(?:["'“‘«(\[{]\s*)*""")
_OPENERS = "\"'“‘«([{"
_INITIALS = re.compile(r"[^\W\d_](?:\.[^\W\d_])*")  # J, J.R.R, U.S (letters; case checked apart)
_UNK = "<unk>"  # WikiText's unknown word: counts as a capitalised sentence start


def split_sentences(paragraph: str) -> list[str]:
    """The sentences of `paragraph` by the rule in this module's docstring, ends stripped."""
    sentences = []
    start = 0
    for match in _CANDIDATE.finditer(paragraph):
        nxt = match.end()  # first letter of the would-be next sentence
        if nxt == len(paragraph):
            break
        char = paragraph[nxt]
        if not (char.isupper() or char.isdigit() or paragraph.startswith(_UNK, nxt)):
            continue
        if match["term"] == "." and _no_end_after(_word_before(paragraph, match.start())):
            continue
        sentences.append(paragraph[start : match.end("end")].strip())
        start = match.end("end")
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def _word_before(text: str, i: int) -> str:
    """The run of non-space characters ending at `i`, without leading quotes or brackets."""
    j = i
    while j > 0 and not text[j - 1].isspace():
        j -= 1
    return text[j:i].lstrip(_OPENERS)


def _no_end_after(word: str) -> bool:
    """A "." glued to `word` does not end a sentence: an abbreviation or initials."""
    if word in _ABBREVIATIONS:
        return True
    return word != "I" and word.isupper() and _INITIALS.fullmatch(word) is not None


def paragraphs_from_lines(lines: Iterable[str]) -> tuple[list[Paragraph], int]:
    """Each line split into sentences; the paragraphs with at least two, and the number of
    non-empty lines seen."""
    tally = {"seen": 0, "kept": 0}
    return list(iter_paragraphs(lines, tally)), tally["seen"]


def iter_paragraphs(
    lines: Iterable[str], tally: dict[str, int], breaks: bool = False
) -> Iterator[Paragraph]:
    """`paragraphs_from_lines` as a stream; `tally` counts the non-empty lines "seen" and
    the paragraphs "kept". With `breaks`, a blank line or a WikiText title line
    (" = Title = ") yields a BREAK: a new document starts, as in google-research/bert's
    input format (blank lines between documents)."""
    for line in lines:
        if breaks and (not line.strip() or ARTICLE.match(line)):
            yield BREAK
        line = line.strip()
        if not line:
            continue
        tally["seen"] += 1
        sentences = split_sentences(line)
        if len(sentences) >= 2:
            tally["kept"] += 1
            yield sentences
