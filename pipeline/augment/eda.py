"""EDA: easy data augmentation (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for
Boosting Performance on Text Classification Tasks", EMNLP).

For a sentence of l words and a fraction α (paper: 0.1), each new sentence is made by one
operation, with n = max(1, ⌊α·l⌋):

- ``sr`` synonym replacement: n distinct non-stop words, each replaced (at every occurrence) by a
  random WordNet synonym;
- ``ri`` random insertion: n times, a random synonym of a random non-stop word is inserted at a
  random position;
- ``rs`` random swap: n times, two random words swap places;
- ``rd`` random deletion: each word is deleted with probability p = α (one word always stays).

The label is kept. Unlike the reference implementation (github.com/jasonwei20/eda_nlp), which
lowercases the sentence and strips every non-letter first ("21st Century 's" becomes
"st century s"), the sentence's own tokens are kept — case, digits, punctuation — and only the
chosen words change. A *word* is a whitespace token holding a letter or digit (so ``'s`` and
``21st`` are words, ``,`` and ``-LRB-`` are not); punctuation never moves and is never deleted.
A word can be *replaced* (sr) or be the source of an insertion (ri) only when it is made of
letters (inner ``-`` or ``'`` allowed) and is not a stop word.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd

from pipeline.config import EdaConfig
from pipeline.data import augmented_table

OPERATIONS = ("sr", "ri", "rs", "rd")

# eda_nlp's stop-word list (nltk's English list), plus the PTB clitics of the SST tokenisation
# ("ca n't" has WordNet senses California and calcium for "ca").
STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself it its itself they them their theirs themselves what which who whom
    this that these those am is are was were be been being have has had having do does did doing
    a an the and but if or because as until while of at by for with about against between into
    through during before after above below to from up down in out on off over under again
    further then once here there when where why how all any both each few more most other some
    such no nor not only own same so than too very s t can will just don should now
    n't 's 're 've 'll 'd 'm ca wo sha
    """.split()
)
PTB_BRACKETS = frozenset({"-LRB-", "-RRB-", "-LSB-", "-RSB-", "-LCB-", "-RCB-"})
_REPLACEABLE = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")
# An operation that leaves the sentence unchanged, or repeats an earlier new sentence (e.g. rd
# deleting nothing), is tried again this many times in all before its slot is left empty.
MAX_TRIES = 5

SynonymLookup = Callable[[str], Sequence[str]]


# Both tests are memoised per token type: a table asks them millions of times about a vocabulary
# of a few ten thousand types.
@functools.cache
def is_word(token: str) -> bool:
    return token not in PTB_BRACKETS and any(ch.isalnum() for ch in token)


@functools.cache
def is_replaceable(token: str) -> bool:
    return token.lower() not in STOP_WORDS and _REPLACEABLE.fullmatch(token) is not None


def match_case(original: str, synonym: str) -> str:
    """Give ``synonym`` the capitalisation of the word it replaces (``Rock`` -> ``Stone``)."""
    if len(original) > 1 and original.isupper():
        return synonym.upper()
    if original[:1].isupper():
        return synonym[:1].upper() + synonym[1:]
    return synonym


def _replaceable_types(tokens: Sequence[str]) -> list[str]:
    """Lower-cased replaceable word types, in order of first appearance."""
    return list(dict.fromkeys(t.lower() for t in tokens if is_replaceable(t)))


def in_random_order(items: Sequence[str], rng: random.Random) -> Iterator[str]:
    """Yield ``items`` in a uniformly random order, drawing only as far as the caller reads
    (Fisher–Yates, one draw per item yielded): a caller that stops after the first item that
    has synonyms pays for one draw, not for a full shuffle."""
    pool = list(items)
    for last in range(len(pool) - 1, -1, -1):
        j = rng.randrange(last + 1)
        pool[j], pool[last] = pool[last], pool[j]
        yield pool[last]


def synonym_replacement(
    tokens: Sequence[str], n: int, synonyms: SynonymLookup, rng: random.Random
) -> list[str]:
    """Replace n distinct replaceable word types that have synonyms, each at every occurrence.

    As in eda_nlp, the types are visited in a random order and looked up only until n have
    synonyms. A multi-word synonym stays one list item (``"ice cream"``).
    """
    chosen: dict[str, str] = {}
    for word in in_random_order(_replaceable_types(tokens), rng):
        options = synonyms(word)
        if options:
            chosen[word] = rng.choice(options)
            if len(chosen) == n:
                break
    return [
        match_case(t, chosen[t.lower()]) if is_replaceable(t) and t.lower() in chosen else t
        for t in tokens
    ]


def random_insertion(
    tokens: Sequence[str], n: int, synonyms: SynonymLookup, rng: random.Random
) -> list[str]:
    """n times: insert a random synonym of a random replaceable word at a random position."""
    types = _replaceable_types(tokens)
    out = list(tokens)
    for _ in range(n):
        options = next((s for s in map(synonyms, in_random_order(types, rng)) if s), None)
        if options is None:
            break
        out.insert(rng.randrange(len(out) + 1), rng.choice(options))
    return out


def random_swap(tokens: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """n times: swap two random words (distinct positions); punctuation stays in place."""
    out = list(tokens)
    words = [i for i, t in enumerate(tokens) if is_word(t)]
    if len(words) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(words, 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(tokens: Sequence[str], p: float, rng: random.Random) -> list[str]:
    """Delete each word with probability p; when every word would go, one random word stays."""
    words = [i for i, t in enumerate(tokens) if is_word(t)]
    if len(words) < 2:
        return list(tokens)
    deleted = {i for i in words if rng.random() < p}
    if len(deleted) == len(words):
        deleted.discard(rng.choice(words))
    return [t for i, t in enumerate(tokens) if i not in deleted]


def words_to_change(tokens: Sequence[str], alpha: float) -> int:
    """n = max(1, ⌊α·l⌋) for a sentence of l words."""
    return max(1, int(alpha * sum(map(is_word, tokens))))


def apply_operation(
    op: str,
    tokens: Sequence[str],
    alpha: float,
    synonyms: SynonymLookup,
    rng: random.Random,
    n: int | None = None,
) -> list[str]:
    """Apply ``op`` once; ``n`` (when the caller has it already) is :func:`words_to_change`."""
    n = words_to_change(tokens, alpha) if n is None else n
    if op == "sr":
        return synonym_replacement(tokens, n, synonyms, rng)
    if op == "ri":
        return random_insertion(tokens, n, synonyms, rng)
    if op == "rs":
        return random_swap(tokens, n, rng)
    if op == "rd":
        return random_deletion(tokens, alpha, rng)
    raise ValueError(f"unknown EDA operation {op!r}; known: {list(OPERATIONS)}")


def eda_sentence(
    sentence: str,
    operations: Sequence[str],
    alpha: float,
    synonyms: SynonymLookup,
    rng: random.Random,
) -> list[str | None]:
    """One new sentence per entry of ``operations`` (None where the operation could make no
    sentence different from the input and from the earlier ones, e.g. rs on a one-word
    sentence). Tokens are split on whitespace, as SST is already tokenised."""
    tokens = sentence.split()
    n = words_to_change(tokens, alpha)
    seen = {" ".join(tokens)}
    out: list[str | None] = []
    for op in operations:
        new = None
        if tokens:
            for _ in range(MAX_TRIES):
                text = " ".join(apply_operation(op, tokens, alpha, synonyms, rng, n))
                if text not in seen:
                    new = text
                    seen.add(text)
                    break
        out.append(new)
    return out


def check_config(cfg: EdaConfig) -> None:
    if cfg.num_aug < 1:
        raise ValueError(f"augment.eda.num_aug: expected an integer >= 1, got {cfg.num_aug}")
    if not 0.0 < cfg.alpha <= 1.0:
        raise ValueError(f"augment.eda.alpha: expected a fraction in (0, 1], got {cfg.alpha}")
    unknown = [op for op in cfg.operations if op not in OPERATIONS]
    if unknown or not cfg.operations:
        raise ValueError(
            f"augment.eda.operations: expected a non-empty list from {list(OPERATIONS)}, "
            f"got {cfg.operations}"
        )


def augment_table(
    sst: pd.DataFrame, cfg: EdaConfig, synonyms: SynonymLookup
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """EDA rows for every row of a prepared SST table (``id``, ``sentence``, ``label``).

    Slot k of sentence i uses ``operations[(i·num_aug + k) mod len(operations)]``, so every
    operation makes an equal share. Row ``id`` is ``<sst id>-eda<k>``. One
    ``random.Random(seed)`` drives the whole table: the output is a function of (table, cfg).
    Returns the rows (augmented-table schema, see DESIGN.md) and a report of counts.
    """
    check_config(cfg)
    rng = random.Random(cfg.seed)
    ops, m = cfg.operations, len(cfg.operations)
    cols: dict[str, list[Any]] = {"id": [], "sentence": [], "label": [], "source_id": [],
                                  "method": []}
    made = dict.fromkeys(ops, 0)
    not_made = dict.fromkeys(ops, 0)
    empty = 0
    for i, (sid, sentence, label) in enumerate(
        zip(sst["id"], sst["sentence"], sst["label"], strict=True)
    ):
        slots = [ops[(i * cfg.num_aug + k) % m] for k in range(cfg.num_aug)]
        empty += not sentence.split()
        for k, (op, text) in enumerate(
            zip(slots, eda_sentence(sentence, slots, cfg.alpha, synonyms, rng), strict=True)
        ):
            if text is None:
                not_made[op] += 1
                continue
            made[op] += 1
            cols["id"].append(f"{sid}-eda{k}")
            cols["sentence"].append(text)
            cols["label"].append(label)
            cols["source_id"].append(sid)
            cols["method"].append(op)
    n = len(cols["id"])
    table = augmented_table(pd.DataFrame(
        {**{c: cols[c] for c in ("id", "sentence", "label")}, "source": ["eda"] * n,
         "source_id": cols["source_id"], "method": cols["method"], "score": [None] * n}
    ))
    report = {
        "input_sentences": len(sst),
        "empty_sentences": empty,
        "rows": n,
        "per_operation": {op: {"made": made[op], "not_made": not_made[op]} for op in ops},
        "label_counts": {
            int(k): int(v) for k, v in table["label"].value_counts().sort_index().items()
        },
        "config": {"num_aug": cfg.num_aug, "alpha": cfg.alpha, "operations": list(ops),
                   "seed": cfg.seed},
    }
    return table, report
