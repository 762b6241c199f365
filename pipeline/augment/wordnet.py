"""WordNet 3.0 through nltk, found offline, with synonyms looked up once per word type.

nltk reads WordNet from ``<dir>/corpora/wordnet/`` for some ``dir`` on its data path. On this
project's machines that directory is written by ``scripts/setup_wordnet.sh`` (Debian's
``wordnet-base`` + ``wordnet-sense-index`` files plus the ``lexnames`` table nltk needs);
elsewhere ``python -m nltk.downloader wordnet`` writes it.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from pipeline.errors import UserError

# The files WordNetCorpusReader opens (nltk.corpus.reader.wordnet.WordNetCorpusReader._FILES).
REQUIRED_FILES = (
    "lexnames",
    "index.sense",
    *(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")),
    *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")),
)
SETUP_HINT = (
    "run `scripts/setup_wordnet.sh` (installs Debian's wordnet-base and wordnet-sense-index and "
    "writes data/nltk_data/corpora/wordnet), or `python -m nltk.downloader -d data/nltk_data "
    "wordnet` where the network is up; then point augment.eda.wordnet_dir (or NLTK_DATA) at "
    "data/nltk_data"
)


# nltk's part-of-speech order (nltk.corpus.reader.wordnet.POS_LIST) and the data file of each.
_POS_FILES = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))
# Adjectives may carry a syntactic marker: "galore(ip)", "elect(p)".
_SYNTACTIC_MARKER = re.compile(r"\([^()]*\)$")


class WordNetMissingError(UserError):
    """WordNet is not installed where nltk looks; the message says how to install it."""


def load_wordnet(nltk_data_dir: str | Path | None = None) -> WordNetCorpusReader:
    """Open WordNet from ``<nltk_data_dir>/corpora/wordnet``, else from nltk's data path.

    ``nltk_data_dir`` is put first on ``nltk.data.path``: nltk 3.10 refuses to open corpus files
    outside that path, so a directory passed here must be on it anyway.
    """
    if nltk_data_dir is not None:
        root = str(Path(nltk_data_dir).resolve())
        if root not in nltk.data.path:
            nltk.data.path.insert(0, root)
    try:
        wordnet_dir = Path(nltk.data.find("corpora/wordnet").path)
    except LookupError as exc:
        searched = ", ".join(str(p) for p in nltk.data.path)
        raise WordNetMissingError(
            f"WordNet not found: no corpora/wordnet under any of [{searched}]; {SETUP_HINT}"
        ) from exc
    missing = [f for f in REQUIRED_FILES if not (wordnet_dir / f).is_file()]
    if missing:
        raise WordNetMissingError(f"{wordnet_dir}: WordNet files missing: {missing}; {SETUP_HINT}")
    with warnings.catch_warnings():
        # Only English is used: the multilingual (OMW) data is not needed.
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNetCorpusReader(str(wordnet_dir), None)


class Synonyms:
    """``synonyms(word)``: WordNet synonyms of ``word``, memoised per lower-cased word type.

    The synonyms of w are the lemma names of every synset of w (parts of speech in nltk's order
    n, v, a, r; nltk's morphy applied, so "destined" also finds "destine"), ``_`` read as a
    space, w itself left out, in WordNet's sense order with duplicates dropped — a fixed order,
    so that seeded choices among them are reproducible. This is what
    ``[l for s in wordnet.synsets(w) for l in s.lemma_names()]`` gives, but ~5x faster: building
    nltk ``Synset`` objects (pointers, gloss) costs ~150 µs per word type, while only the lemma
    names at the head of each data-file line are needed. So the lemma index and morphology come
    from nltk's reader and the names are read from the data files at the synset's byte offset
    (format: wndb(5WN)).
    """

    def __init__(self, wordnet: WordNetCorpusReader):
        self._wordnet = wordnet
        root = Path(wordnet.root.path)
        # ~35 MB for the four files; reading them whole is faster than a seek per synset.
        self._data = {pos: (root / f"data.{name}").read_bytes() for pos, name in _POS_FILES}
        self._names_at: dict[tuple[str, int], tuple[str, ...]] = {}
        self._cache: dict[str, tuple[str, ...]] = {}

    def _lemma_names(self, pos: str, offset: int) -> tuple[str, ...]:
        names = self._names_at.get((pos, offset))
        if names is None:
            data = self._data[pos]
            line = data[offset : data.index(b"\n", offset)]
            # offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt ...
            head = line.split(b" ", 4)
            w_cnt = int(head[3], 16)
            words = head[4].split(b" ", 2 * w_cnt)[: 2 * w_cnt : 2]
            names = tuple(
                _SYNTACTIC_MARKER.sub("", w.decode()).replace("_", " ")
                for w in words
            )
            self._names_at[(pos, offset)] = names
        return names

    def __call__(self, word: str) -> tuple[str, ...]:
        key = word.lower()
        found = self._cache.get(key)
        if found is None:
            index = self._wordnet._lemma_pos_offset_map
            names = (
                name
                for pos, _ in _POS_FILES
                for form in self._wordnet._morphy(key, pos)
                for offset in index.get(form, {}).get(pos, ())
                for name in self._lemma_names(pos, offset)
            )
            found = tuple(n for n in dict.fromkeys(names) if n.lower() != key)
            self._cache[key] = found
        return found

    def __len__(self) -> int:
        """Number of word types looked up so far."""
        return len(self._cache)
