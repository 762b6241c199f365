"""pipeline.batching: tokenizing with the tiny word-level tokenizer of conftest (expected ids
looked up in its vocab.txt by hand), padding, length-grouped batches and epoch replay."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.batching import (
    Batch,
    TokenizedTask,
    batch_indices,
    collate,
    epoch_batches,
    pad,
    tokenize_task,
)
from pipeline.data import read_task_split
from pipeline.model import attention_mask

SST = [("s1", "the movie was good", 3), ("s2", "a very boring film", 1),
       ("s3", "i love this story !", 4)]
PAIRS = [("p1", "how do i run", "what is the best run", 1),
         ("p2", "the cat plays", "a dog runs", 0)]
STS = [("t1", "a man plays", "a woman plays", 3.5), ("t2", "the dog runs", "a cat", 0.25)]


@pytest.fixture(scope="module")
def vocab(tiny_bert) -> list[str]:
    return (tiny_bert / "vocab.txt").read_text().split()


def words(vocab: list[str], text: str) -> list[int]:
    """Word-level ids of a lower-case, in-vocabulary text (no [CLS]/[SEP])."""
    return [vocab.index(w) for w in text.split()]


def sst_frame(rows=SST, label_dtype: str = "Int8") -> pd.DataFrame:
    return pd.DataFrame({
        "id": pd.Series([r[0] for r in rows], dtype="str"),
        "sentence": pd.Series([r[1] for r in rows], dtype="str"),
        "label": pd.Series([r[2] for r in rows], dtype=label_dtype),
    })


def pair_frame(rows, label_dtype: str) -> pd.DataFrame:
    return pd.DataFrame({
        "id": pd.Series([r[0] for r in rows], dtype="str"),
        "sentence1": pd.Series([r[1] for r in rows], dtype="str"),
        "sentence2": pd.Series([r[2] for r in rows], dtype="str"),
        "label": pd.Series([r[3] for r in rows], dtype=label_dtype),
    })


# -- tokenize_task ---------------------------------------------------------------------------

def test_sst_one_sequence_per_example(tokenizer, vocab):
    data = tokenize_task("sst", sst_frame(), tokenizer, 128, "concat")
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert data.task == "sst" and data.ids == ["s1", "s2", "s3"] and len(data) == 3
    assert len(data.sequences) == 1
    assert data.sequences[0] == [[cls, *words(vocab, text), sep] for _, text, _ in SST]
    assert data.token_types == [[[0] * (len(text.split()) + 2) for _, text, _ in SST]]
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, [3, 1, 4])
    assert data.singles is None
    np.testing.assert_array_equal(data.lengths(), [6, 6, 7])
    np.testing.assert_array_equal(data.padded_lengths(), [6, 6, 7])


def test_sst_with_singles_has_none(tokenizer):
    assert tokenize_task("sst", sst_frame(), tokenizer, 128, "concat", True).singles is None


def test_concat_pair_is_one_sequence_with_segments(tokenizer, vocab):
    data = tokenize_task("qqp", pair_frame(PAIRS, "Int8"), tokenizer, 128, "concat")
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert len(data.sequences) == 1 and data.ids == ["p1", "p2"]
    for i, (_, a, b, _) in enumerate(PAIRS):
        ids_a, ids_b = words(vocab, a), words(vocab, b)
        assert data.sequences[0][i] == [cls, *ids_a, sep, *ids_b, sep]
        assert data.sequences[0][i].count(sep) == 2
        assert data.token_types[0][i] == [0] * (len(ids_a) + 2) + [1] * (len(ids_b) + 1)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, [1, 0])
    np.testing.assert_array_equal(data.lengths(), [12, 9])


def test_separate_pair_is_two_sequences(tokenizer, vocab):
    data = tokenize_task("sts", pair_frame(STS, "float32"), tokenizer, 128, "separate")
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert len(data.sequences) == 2
    for i, (_, a, b, _) in enumerate(STS):
        assert data.sequences[0][i] == [cls, *words(vocab, a), sep]
        assert data.sequences[1][i] == [cls, *words(vocab, b), sep]
        assert data.token_types[0][i] == [0] * (len(a.split()) + 2)
        assert data.token_types[1][i] == [0] * (len(b.split()) + 2)
    assert data.labels.dtype == np.float32
    np.testing.assert_array_equal(data.labels, np.array([3.5, 0.25], np.float32))
    # the length of an example is that of both its sequences
    np.testing.assert_array_equal(data.lengths(), [5 + 5, 5 + 4])
    # padding sees the longer of the two: each side is padded on its own
    np.testing.assert_array_equal(data.padded_lengths(), [5, 5])


def test_concat_with_singles_tokenizes_each_sentence_alone(tokenizer, vocab):
    data = tokenize_task("sts", pair_frame(STS, "float32"), tokenizer, 128, "concat", True)
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert len(data.sequences) == 1
    assert data.singles == [
        [[cls, *words(vocab, a), sep] for _, a, _, _ in STS],
        [[cls, *words(vocab, b), sep] for _, _, b, _ in STS],
    ]


def test_separate_with_singles_are_the_two_sequences(tokenizer):
    data = tokenize_task("qqp", pair_frame(PAIRS, "Int8"), tokenizer, 128, "separate", True)
    assert data.singles == data.sequences


def test_truncation_at_max_length(tokenizer, vocab):
    long = "the film was very very bad and the story was boring"
    data = tokenize_task("sst", sst_frame([("x", long, 0)]), tokenizer, 6, "concat")
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert data.sequences[0][0] == [cls, *words(vocab, "the film was very"), sep]

    pairs = pair_frame([("y", long, long + " and fun", 1)], "Int8")
    concat = tokenize_task("qqp", pairs, tokenizer, 9, "concat")
    seq = concat.sequences[0][0]
    assert len(seq) == 9 and seq[0] == cls and seq[-1] == sep and seq.count(sep) == 2
    separate = tokenize_task("qqp", pairs, tokenizer, 5, "separate")
    assert separate.sequences[0][0] == [cls, *words(vocab, "the film was"), sep]
    assert separate.sequences[1][0] == [cls, *words(vocab, "the film was"), sep]


def test_labels_none_when_label_column_is_null(tokenizer):
    sst = sst_frame().assign(label=pd.Series([pd.NA] * 3, dtype="Int8"))
    assert tokenize_task("sst", sst, tokenizer, 128, "concat").labels is None
    sts = pair_frame(STS, "float32").assign(label=pd.Series([np.nan] * 2, dtype="float32"))
    assert tokenize_task("sts", sts, tokenizer, 128, "separate").labels is None


@pytest.mark.parametrize("task,encoding", [("sst", "concat"), ("qqp", "concat"),
                                           ("sts", "separate")])
def test_empty_frame_gives_empty_task(tokenizer, task, encoding):
    frame = sst_frame([]) if task == "sst" else pair_frame([], "Int8")
    data = tokenize_task(task, frame, tokenizer, 128, encoding, with_singles=True)
    assert len(data) == 0 and data.ids == []
    assert all(seqs == [] for seqs in data.sequences)
    assert all(types == [] for types in data.token_types)
    assert len(data.sequences) == (2 if encoding == "separate" else 1)
    assert data.lengths().shape == (0,)
    assert data.labels is None or len(data.labels) == 0


# -- pad ---------------------------------------------------------------------------------------

def test_pad_to_longest_in_batch():
    enc = pad([[2, 5, 3], [2, 3], [2, 5, 6, 7, 3]], [[0, 0, 0], [0, 0], [0, 0, 0, 1, 1]],
              pad_id=9)
    expected_ids = [[2, 5, 3, 9, 9], [2, 3, 9, 9, 9], [2, 5, 6, 7, 3]]
    expected_mask = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    expected_types = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 1, 1]]
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    for key, want in [("input_ids", expected_ids), ("attention_mask", expected_mask),
                      ("token_type_ids", expected_types)]:
        assert enc[key].dtype == torch.long
        assert torch.equal(enc[key], torch.tensor(want)), key


def test_pad_leaves_the_mask_out_of_an_unpadded_batch():
    enc = pad([[2, 7, 3], [2, 8, 3]], [[0, 0, 0], [0, 0, 1]], pad_id=0)
    assert sorted(enc) == ["input_ids", "token_type_ids"]
    assert torch.equal(attention_mask(enc), torch.ones((2, 3), dtype=torch.long))


def test_pad_without_types_gives_zero_types():
    enc = pad([[2, 7, 7, 3], [2, 3]], None, pad_id=0)
    assert torch.equal(enc["input_ids"], torch.tensor([[2, 7, 7, 3], [2, 3, 0, 0]]))
    assert torch.equal(enc["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert torch.equal(enc["token_type_ids"], torch.zeros((2, 4), dtype=torch.long))


# -- batch_indices ----------------------------------------------------------------------------

LENGTHS = np.random.default_rng(5).integers(3, 60, size=203)


def assert_partition(batches: list[np.ndarray], n: int, batch_size: int) -> None:
    flat = np.concatenate(batches) if batches else np.array([], int)
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    sizes = sorted(len(b) for b in batches)
    expected = [batch_size] * (n // batch_size)
    if n % batch_size:
        expected = [n % batch_size, *expected]
    assert sizes == expected


@pytest.mark.parametrize("group", [True, False])
@pytest.mark.parametrize("n,batch_size", [(203, 16), (160, 16), (7, 16), (0, 4)])
def test_batches_cover_every_index_once(n, batch_size, group):
    lengths = LENGTHS[:n]
    assert_partition(batch_indices(lengths, batch_size, None, group), n, batch_size)
    assert_partition(batch_indices(lengths, batch_size, np.random.default_rng(3), group), n,
                     batch_size)


def test_eval_batches_are_sorted_by_length():
    batches = batch_indices(LENGTHS, 16, None, True)
    order = np.concatenate(batches)
    assert all(len(b) == 16 for b in batches[:-1]) and len(batches[-1]) == 203 % 16
    assert np.all(np.diff(LENGTHS[order]) >= 0)


def test_grouped_batches_are_length_sorted_windows_and_seeded():
    a = batch_indices(LENGTHS, 8, np.random.default_rng(1), True)
    b = batch_indices(LENGTHS, 8, np.random.default_rng(1), True)
    c = batch_indices(LENGTHS, 8, np.random.default_rng(2), True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    # each batch is a slice of a length-sorted window
    assert all(np.all(np.diff(LENGTHS[batch]) >= 0) for batch in a)


def test_random_batches_are_shuffled():
    batches = batch_indices(LENGTHS, 8, np.random.default_rng(1), False)
    assert not np.all(np.diff(LENGTHS[np.concatenate(batches)]) >= 0)
    assert not np.array_equal(np.concatenate(batches), np.arange(len(LENGTHS)))


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> tuple[int, int]:
    """(total tokens after padding each batch to its longest, of which padding)."""
    total = sum(len(b) * int(lengths[b].max()) for b in batches)
    return total, total - int(lengths.sum())


def test_length_grouping_cuts_padding_on_real_sst(cs224n_dir, tokenizer):
    frame, _ = read_task_split(cs224n_dir, "sst", "train")
    lengths = tokenize_task("sst", frame, tokenizer, 128, "concat").lengths()
    assert len(lengths) == 8544
    grouped = batch_indices(lengths, 16, np.random.default_rng(0), True)
    random = batch_indices(lengths, 16, np.random.default_rng(0), False)
    total_grouped, pad_grouped = padded_tokens(lengths, grouped)
    total_random, pad_random = padded_tokens(lengths, random)
    # Random batches of 16 pad to roughly the 90th length percentile; sorted windows of 800
    # examples leave only the length spread inside a batch (worked out: ~34x less padding).
    assert pad_random >= 10 * pad_grouped
    assert total_random >= 1.5 * total_grouped


# -- epoch_batches ----------------------------------------------------------------------------

def synthetic_task(lengths: list[int]) -> TokenizedTask:
    seqs = [list(range(2, 2 + n)) for n in lengths]
    return TokenizedTask("sst", [f"e{i}" for i in range(len(lengths))], [seqs],
                         [[[0] * n for n in lengths]], np.zeros(len(lengths), np.int64))


EPOCH_LENGTHS = [int(x) for x in np.random.default_rng(7).integers(3, 40, size=41)]
SUBSET = np.array([1, 2, 3, 5, 8, 13, 21, 34, 40, 9, 17, 25, 33, 0, 4, 6, 7, 10, 11, 12, 30, 31,
                   39])


@pytest.mark.parametrize("group", [True, False])
def test_epoch_batches_steps_subset_and_passes(group):
    data = synthetic_task(EPOCH_LENGTHS)
    batch_size = 5  # 23 examples: passes of 5 batches (4 full, one of 3)
    out = list(epoch_batches(data, SUBSET, batch_size, 12, (11, 1, 0), group))
    assert len(out) == 12
    assert all(np.isin(b, SUBSET).all() for b in out)
    for start in (0, 5):  # two full passes, each covering the subset exactly once
        np.testing.assert_array_equal(np.sort(np.concatenate(out[start:start + 5])),
                                      np.sort(SUBSET))
    third = np.concatenate(out[10:])
    assert len(np.unique(third)) == len(third)
    # passes are reshuffled: the second pass does not replay the first
    assert not all(np.array_equal(x, y) for x, y in zip(out[:5], out[5:10], strict=True))


def test_epoch_batches_pass_k_is_seeded_by_seed_and_k():
    """The documented replay contract: pass k is ``batch_indices`` of the subset's lengths with
    ``default_rng([*seed, k])``, mapped back to example indices."""
    data = synthetic_task(EPOCH_LENGTHS)
    out = list(epoch_batches(data, SUBSET, 5, 10, (4, 2), True))
    lengths = np.array(EPOCH_LENGTHS)[SUBSET]
    for k in range(2):
        expected = batch_indices(lengths, 5, np.random.default_rng([4, 2, k]), True)
        for got, local in zip(out[5 * k: 5 * k + 5], expected, strict=True):
            np.testing.assert_array_equal(got, SUBSET[local])


def test_epoch_batches_deterministic_per_seed():
    data = synthetic_task(EPOCH_LENGTHS)
    first = list(epoch_batches(data, SUBSET, 4, 9, (11, 3, 1), True))
    again = list(epoch_batches(data, SUBSET, 4, 9, (11, 3, 1), True))
    other = list(epoch_batches(data, SUBSET, 4, 9, (12, 3, 1), True))
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))
    # fewer steps replay a prefix of the same sequence
    prefix = list(epoch_batches(data, SUBSET, 4, 3, (11, 3, 1), True))
    assert all(np.array_equal(x, y) for x, y in zip(prefix, first[:3], strict=True))
    assert list(epoch_batches(data, SUBSET, 4, 0, (11, 3, 1), True)) == []


@contextmanager
def time_limit(seconds: int):
    def fail(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_epoch_batches_empty_subset_with_steps_raises():
    """No batch can come from an empty subset: asking for some must fail, not spin forever."""
    data = synthetic_task(EPOCH_LENGTHS)
    with time_limit(2), pytest.raises(ValueError, match="subset"):
        next(epoch_batches(data, np.array([], dtype=np.int64), 4, 3, (1,), True))


# -- collate / Batch.to -----------------------------------------------------------------------

def test_collate_concat_pairs_with_singles(tokenizer, vocab):
    data = tokenize_task("qqp", pair_frame(PAIRS, "Int8"), tokenizer, 128, "concat", True)
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    index = np.array([1, 0])
    batch = collate(data, index, pad_id=0)
    assert isinstance(batch, Batch) and batch.task == "qqp"
    np.testing.assert_array_equal(batch.index, index)
    a1, b1 = words(vocab, PAIRS[0][1]), words(vocab, PAIRS[0][2])
    a2, b2 = words(vocab, PAIRS[1][1]), words(vocab, PAIRS[1][2])
    row0 = [cls, *a2, sep, *b2, sep]
    row1 = [cls, *a1, sep, *b1, sep]
    assert len(batch.inputs) == 1
    enc = batch.inputs[0]
    assert torch.equal(enc["input_ids"], torch.tensor([row0 + [0] * 3, row1]))
    assert torch.equal(enc["attention_mask"], torch.tensor([[1] * 9 + [0] * 3, [1] * 12]))
    assert torch.equal(enc["token_type_ids"], torch.tensor([[0] * 5 + [1] * 4 + [0] * 3,
                                                            [0] * 6 + [1] * 6]))
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [0, 1]
    first, second = batch.singles
    assert torch.equal(first["input_ids"], torch.tensor([[cls, *a2, sep, 0],
                                                         [cls, *a1, sep]]))
    assert torch.equal(second["input_ids"], torch.tensor([[cls, *b2, sep, 0, 0],
                                                          [cls, *b1, sep]]))
    assert torch.equal(first["attention_mask"], torch.tensor([[1] * 5 + [0], [1] * 6]))
    assert torch.equal(second["attention_mask"], torch.tensor([[1] * 5 + [0] * 2, [1] * 7]))
    assert not first["token_type_ids"].any() and not second["token_type_ids"].any()


def test_collate_separate_and_unlabelled(tokenizer, vocab):
    frame = pair_frame(STS, "float32").assign(label=pd.Series([np.nan] * 2, dtype="float32"))
    data = tokenize_task("sts", frame, tokenizer, 128, "separate")
    batch = collate(data, np.array([0, 1]), pad_id=0)
    assert batch.labels is None and batch.singles is None
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    assert torch.equal(batch.inputs[1]["input_ids"],
                       torch.tensor([[cls, *words(vocab, "a woman plays"), sep],
                                     [cls, *words(vocab, "a cat"), sep, 0]]))

    labelled = tokenize_task("sts", pair_frame(STS, "float32"), tokenizer, 128, "separate")
    labels = collate(labelled, np.array([1]), pad_id=0).labels
    assert labels.dtype == torch.float32 and labels.tolist() == [0.25]


def test_batch_to_moves_every_tensor(tokenizer):
    data = tokenize_task("qqp", pair_frame(PAIRS, "Int8"), tokenizer, 128, "concat", True)
    batch = collate(data, np.array([0, 1]), pad_id=0)
    meta = torch.device("meta")
    moved = batch.to(meta)
    assert moved.task == "qqp"
    np.testing.assert_array_equal(moved.index, batch.index)
    tensors = [*(t for e in moved.inputs for t in e.values()),
               *(t for e in moved.singles for t in e.values()), moved.labels]
    assert all(t.device == meta for t in tensors)
    assert all(t.device.type == "cpu" for e in batch.inputs for t in e.values())
    unlabelled = Batch("sst", np.array([0]), [batch.inputs[0]], None).to(meta)
    assert unlabelled.labels is None and unlabelled.singles is None
