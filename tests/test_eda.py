"""EDA operations (Wei & Zou 2019) on fixed sentences, the table builder, and WordNet lookup."""

from __future__ import annotations

import random
from pathlib import Path

import nltk
import pandas as pd
import pytest

from pipeline.augment.eda import (
    STOP_WORDS,
    apply_operation,
    augment_table,
    eda_sentence,
    match_case,
    random_deletion,
    random_insertion,
    random_swap,
    synonym_replacement,
)
from pipeline.augment.wordnet import Synonyms, WordNetMissingError, load_wordnet
from pipeline.config import EdaConfig

ROOT = Path(__file__).resolve().parents[1]
NLTK_DATA = ROOT / "data" / "nltk_data"

SENTENCE = "The quick brown fox , 21st of its kind , jumps over the lazy dog ."
TOKENS = SENTENCE.split()
PUNCT = {i for i, t in enumerate(TOKENS) if t in {",", "."}}
# Hand-made synonyms; stop words get some too, to show they are never used.
SYN = {
    "quick": ("fast", "speedy"),
    "brown": ("chocolate",),
    "fox": ("Reynard",),
    "jumps": ("leaps", "springs"),
    "lazy": ("idle",),
    "dog": ("domestic dog", "Canis familiaris"),
    "the": ("thee",),
    "over": ("o'er",),
    "of": ("off",),
    "its": ("it's",),
}


def fake_synonyms(word: str) -> tuple[str, ...]:
    return SYN.get(word.lower(), ())


def test_synonym_replacement_changes_exactly_n_non_stop_words():
    for seed in range(200):
        for n in (1, 2, 3):
            out = synonym_replacement(TOKENS, n, fake_synonyms, random.Random(seed))
            assert len(out) == len(TOKENS)
            changed = [i for i, (a, b) in enumerate(zip(TOKENS, out, strict=True)) if a != b]
            # Every word type here occurs once, so n types means n positions.
            assert len(changed) == n
            for i in changed:
                assert TOKENS[i].lower() not in STOP_WORDS
                assert match_case(TOKENS[i], out[i]) == out[i]
                assert out[i].lower() in {s.lower() for s in SYN[TOKENS[i].lower()]}


def test_synonym_replacement_replaces_every_occurrence_and_keeps_case():
    tokens = "Dog eat dog world".split()
    out = synonym_replacement(tokens, 1, lambda w: {"dog": ("hound",)}.get(w, ()), random.Random(0))
    assert out == "Hound eat hound world".split()


def test_match_case():
    assert match_case("Rock", "stone") == "Stone"
    assert match_case("ROCK", "stone") == "STONE"
    assert match_case("rock", "Stone") == "Stone"
    assert match_case("I", "one") == "One"


def test_random_insertion_inserts_n_synonyms_of_non_stop_words():
    allowed = {s for w, syns in SYN.items() if w not in STOP_WORDS for s in syns}
    for seed in range(200):
        out = random_insertion(TOKENS, 2, fake_synonyms, random.Random(seed))
        assert len(out) == len(TOKENS) + 2
        # The sentence is a subsequence of the output; what is left over was inserted.
        matched, inserted = 0, []
        for item in out:
            if matched < len(TOKENS) and item == TOKENS[matched]:
                matched += 1
            else:
                inserted.append(item)
        assert matched == len(TOKENS)
        assert len(inserted) == 2 and set(inserted) <= allowed


def test_random_swap_swaps_two_words_and_keeps_punctuation():
    for seed in range(200):
        out = random_swap(TOKENS, 1, random.Random(seed))
        diff = [i for i, (a, b) in enumerate(zip(TOKENS, out, strict=True)) if a != b]
        assert len(diff) == 2  # every word differs from every other here
        i, j = diff
        assert (out[i], out[j]) == (TOKENS[j], TOKENS[i])
        assert not PUNCT & {i, j}


def test_random_deletion_deletes_only_words_and_keeps_one():
    for seed in range(200):
        out = random_deletion(TOKENS, 0.5, random.Random(seed))
        it = iter(TOKENS)
        assert all(tok in it for tok in out)  # a subsequence
        assert out.count(",") == 2 and out[-1] == "."
        assert len(out) - 3 >= 1
    out = random_deletion(TOKENS, 1.0, random.Random(0))
    assert len(out) == 4 and out.count(",") == 2 and out[-1] == "."


def test_random_deletion_rate_is_p():
    words = "a1 b2 c3 d4 e5 f6 g7 h8 i9 j10".split()
    rng = random.Random(3)
    trials = 2000
    deleted = sum(10 - len(random_deletion(words, 0.3, rng)) for _ in range(trials))
    # Binomial(20000, 0.3): sd of the rate is 0.0032; 0.02 is > 6 sd.
    assert abs(deleted / (10 * trials) - 0.3) < 0.02


def test_n_is_a_fraction_alpha_of_the_words():
    # 13 words (punctuation does not count): n = max(1, int(0.25 * 13)) = 3 swaps, so at most
    # 6 positions differ and, for some seed, exactly 6.
    diffs = set()
    for seed in range(50):
        out = apply_operation("rs", TOKENS, 0.25, fake_synonyms, random.Random(seed))
        diffs.add(sum(a != b for a, b in zip(TOKENS, out, strict=True)))
    assert max(diffs) == 6
    out = apply_operation("sr", TOKENS, 0.25, fake_synonyms, random.Random(0))
    assert sum(a != b for a, b in zip(TOKENS, out, strict=True)) == 3


def test_eda_sentence_is_seeded_and_new():
    ops = ["sr", "ri", "rs", "rd"] * 2
    a = eda_sentence(SENTENCE, ops, 0.1, fake_synonyms, random.Random(7))
    b = eda_sentence(SENTENCE, ops, 0.1, fake_synonyms, random.Random(7))
    c = eda_sentence(SENTENCE, ops, 0.1, fake_synonyms, random.Random(8))
    assert a == b and a != c
    assert all(s is not None for s in a)
    assert len(set(a)) == len(a) and SENTENCE not in a


def test_empty_and_one_word_sentences():
    ops = ["sr", "ri", "rs", "rd"]
    assert eda_sentence("", ops, 0.1, fake_synonyms, random.Random(0)) == [None] * 4
    assert eda_sentence("   ", ops, 0.1, fake_synonyms, random.Random(0)) == [None] * 4
    sr, ri, rs, rd = eda_sentence("Lazy", ops, 0.1, fake_synonyms, random.Random(0))
    assert sr == "Idle"
    assert sorted(ri.split()) == ["Lazy", "idle"]
    assert rs is None and rd is None  # a single word can be neither swapped nor deleted
    assert eda_sentence("!", ops, 0.1, fake_synonyms, random.Random(0)) == [None] * 4


def _sst(sentences: list[str], labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": pd.Series([f"s{i}" for i in range(len(sentences))], dtype="str"),
            "sentence": pd.Series(sentences, dtype="str"),
            "label": pd.Series(labels, dtype="Int8"),
        }
    )


def test_augment_table_keeps_labels_and_schema():
    sst = _sst([SENTENCE, "The lazy dog sleeps .", "", "Fox"], [4, 0, 2, 1])
    cfg = EdaConfig(num_aug=8, alpha=0.1, operations=["sr", "ri", "rs", "rd"], seed=5)
    table, report = augment_table(sst, cfg, fake_synonyms)
    assert list(table.columns) == [
        "id", "sentence", "label", "source", "source_id", "method", "score"
    ]
    assert str(table["label"].dtype) == "Int8" and str(table["score"].dtype) == "Float32"
    assert table["id"].is_unique and (table["source"] == "eda").all()
    assert table["score"].isna().all()
    by_id = dict(zip(sst["id"], sst["label"], strict=True))
    assert all(by_id[s] == lab for s, lab in zip(table["source_id"], table["label"], strict=True))
    # Slots cycle through the operations: 2 of each per sentence for 8 slots and 4 operations.
    assert table[table.source_id == "s0"]["method"].value_counts().to_dict() == dict.fromkeys(
        ["sr", "ri", "rs", "rd"], 2
    )
    assert "s2" not in set(table["source_id"])  # empty sentence: nothing
    assert set(table[table.source_id == "s3"]["method"]) <= {"sr", "ri"}
    assert report["rows"] == len(table) and report["empty_sentences"] == 1
    made = sum(r["made"] for r in report["per_operation"].values())
    not_made = sum(r["not_made"] for r in report["per_operation"].values())
    assert made == len(table) and made + not_made == 8 * len(sst)
    again, _ = augment_table(sst, cfg, fake_synonyms)
    pd.testing.assert_frame_equal(table, again)


def test_augment_table_rejects_unknown_operation():
    with pytest.raises(ValueError, match="augment.eda.operations"):
        augment_table(_sst(["a b"], [0]), EdaConfig(operations=["sr", "xx"]), fake_synonyms)


# --- real WordNet -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordnet():
    if not (NLTK_DATA / "corpora" / "wordnet" / "lexnames").is_file():
        pytest.fail(f"WordNet is expected in {NLTK_DATA}: run scripts/setup_wordnet.sh")
    return load_wordnet(NLTK_DATA)


def test_synonyms_match_nltk_synsets(wordnet, cs224n_dir):
    sst = pd.read_csv(cs224n_dir / "ids-sst-train.csv", sep="\t", nrows=300)
    words = sorted({w.lower() for s in sst["sentence"] for w in s.split()})
    synonyms = Synonyms(wordnet)
    for word in words:
        names = (n.replace("_", " ") for s in wordnet.synsets(word) for n in s.lemma_names())
        expected = tuple(n for n in dict.fromkeys(names) if n.lower() != word)
        assert synonyms(word) == expected, word
    assert len(synonyms) == len(words)
    assert "good" in synonyms("well") and synonyms("the") == ()


def test_real_wordnet_never_replaces_stop_words(wordnet, cs224n_dir):
    synonyms = Synonyms(wordnet)
    sst = pd.read_csv(cs224n_dir / "ids-sst-train.csv", sep="\t", nrows=50)
    rng = random.Random(0)
    for sentence in sst["sentence"]:
        tokens = sentence.split()
        out = synonym_replacement(tokens, 3, synonyms, rng)
        for before, after in zip(tokens, out, strict=True):
            if before.lower() in STOP_WORDS or not any(c.isalpha() for c in before):
                assert before == after
            elif before != after:
                assert after.lower() in {s.lower() for s in synonyms(before)}


def test_missing_wordnet_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "path", [])
    with pytest.raises(WordNetMissingError, match="setup_wordnet.sh"):
        load_wordnet(tmp_path)
    partial = tmp_path / "partial"
    (partial / "corpora" / "wordnet").mkdir(parents=True)
    (partial / "corpora" / "wordnet" / "data.noun").write_text("")
    with pytest.raises(WordNetMissingError, match="lexnames"):
        load_wordnet(partial)
