"""Encoder + pooling + heads on the tiny random BERT of conftest, against hand-worked tensors;
a saved member loads back in one call, and a broken one is an error naming what is wrong."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PARAMS_YAML
from torch import nn
from transformers import AutoModel

from pipeline.batching import pad
from pipeline.config import ConfigError, HeadConfig, ModelConfig, parse_params
from pipeline.errors import UserError
from pipeline.model import (
    AttentionPooling,
    MultitaskModel,
    SavedModelError,
    attention_mask,
    load_backbone,
    load_tokenizer,
    mlp_head,
    pool,
    resolve_backbone,
    save_member,
)
from pipeline.smart import perturbable

ROOT = Path(__file__).resolve().parents[1]
TASKS = ["sst", "qqp", "sts"]
POOLINGS = ["cls", "mean", "max", "attention"]
SENTENCES = ["the movie was good", "a very boring film", "i love this story !"]
SECONDS = ["the film was great", "what a terrible plot", "the story is not bad"]
SHORT = "the movie was good"
LONG = "the film was very very bad and the story was boring but the actor was great and fun"


@pytest.fixture(scope="module")
def build(tiny_bert):
    """Model factory cached per (pooling, pair_encoding), in eval mode with a fixed init."""
    cache: dict[tuple[str, str], MultitaskModel] = {}

    def make(pooling: str = "cls", pair_encoding: str = "concat") -> MultitaskModel:
        key = (pooling, pair_encoding)
        if key not in cache:
            torch.manual_seed(0)
            cfg = ModelConfig(backbone=str(tiny_bert), pooling=pooling, pair_encoding=pair_encoding)
            model = MultitaskModel(cfg, TASKS).eval()
            if model.attention_pool is not None:
                # a trained query is not zero; a random one makes the attention weights non-uniform
                with torch.no_grad():
                    model.attention_pool.query.normal_(0.0, 3.0)
            cache[key] = model
        return cache[key]

    return make


def encode(tokenizer, first, second=None):
    return dict(tokenizer(first, second, padding=True, return_tensors="pt"))


# --- pool() on hand-made hidden states ---------------------------------------------------------

BIG = 1.0e6
# B = 2, T = 3, D = 2; row 0 has 2 real tokens, row 1 has 1. Padded positions hold huge values
# that would dominate a max or a mean if they leaked in; real values are negative so that a max
# that filled padding with 0 would be caught too.
HIDDEN = torch.tensor(
    [
        [[-1.0, -4.0], [-3.0, -2.0], [BIG, BIG]],
        [[-5.0, 6.0], [BIG, -BIG], [BIG, BIG]],
    ]
)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_pool_cls():
    assert torch.equal(pool(HIDDEN, MASK, "cls", None), torch.tensor([[-1.0, -4.0], [-5.0, 6.0]]))


def test_pool_mean_ignores_padding():
    want = torch.tensor([[-2.0, -3.0], [-5.0, 6.0]])
    assert torch.allclose(pool(HIDDEN, MASK, "mean", None), want)


def test_pool_max_ignores_padding():
    want = torch.tensor([[-1.0, -2.0], [-5.0, 6.0]])
    assert torch.equal(pool(HIDDEN, MASK, "max", None), want)


def test_pool_unknown_method():
    with pytest.raises(ValueError, match="median"):
        pool(HIDDEN, MASK, "median", None)


def test_attention_pooling_zero_query_is_masked_mean():
    attention = AttentionPooling(2)
    got = pool(HIDDEN, MASK, "attention", attention)
    assert torch.allclose(got, torch.tensor([[-2.0, -3.0], [-5.0, 6.0]]))


def test_attention_pooling_weights_written_out():
    # q = (1, 0), scale 1/√2: row 0 scores −1/√2 and −3/√2, so weights are
    # softmax = (1, e^{−√2}) / (1 + e^{−√2}); padding gets none.
    attention = AttentionPooling(2)
    with torch.no_grad():
        attention.query.copy_(torch.tensor([1.0, 0.0]))
    got = pool(HIDDEN, MASK, "attention", attention)
    w1 = math.exp(-math.sqrt(2.0)) / (1 + math.exp(-math.sqrt(2.0)))
    w0 = 1 - w1
    want = torch.tensor([[-1.0 * w0 - 3.0 * w1, -4.0 * w0 - 2.0 * w1], [-5.0, 6.0]])
    assert torch.allclose(got, want, atol=1e-6)


# --- the whole model ---------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", POOLINGS)
def test_output_shapes(build, tokenizer, pooling):
    model = build(pooling)
    with torch.no_grad():
        sst = model("sst", [encode(tokenizer, SENTENCES)])
        qqp = model("qqp", [encode(tokenizer, SENTENCES, SECONDS)])
        sts = model("sts", [encode(tokenizer, SENTENCES, SECONDS)])
    assert sst.shape == (3, 5)
    assert qqp.shape == (3,)
    assert sts.shape == (3,)


@pytest.mark.parametrize("pair_encoding", ["concat", "separate"])
def test_separate_and_concat_shapes(build, tokenizer, pair_encoding):
    model = build("mean", pair_encoding)
    if pair_encoding == "concat":
        pair = [encode(tokenizer, SENTENCES, SECONDS)]
    else:
        pair = [encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)]
    with torch.no_grad():
        assert model("qqp", pair).shape == (3,)
        assert model("sts", pair).shape == (3,)
        assert model("sst", [encode(tokenizer, SENTENCES)]).shape == (3, 5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_does_not_change_pooled_vector(build, tokenizer, pooling):
    model = build(pooling)
    alone = encode(tokenizer, [SHORT])
    batch = encode(tokenizer, [SHORT, LONG])
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1] + 5  # really padded
    with torch.no_grad():
        single = model.embed(alone)[0]
        padded = model.embed(batch)[0]
    assert torch.allclose(single, padded, atol=1e-5), (single - padded).abs().max()


def test_padding_does_not_change_task_outputs(build, tokenizer):
    model = build("max", "separate")
    with torch.no_grad():
        alone = model("sts", [encode(tokenizer, [SHORT]), encode(tokenizer, [SECONDS[0]])])
        batched = model(
            "sts", [encode(tokenizer, [SHORT, LONG]), encode(tokenizer, [SECONDS[0], LONG])]
        )
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_separate_encoding_feature(build, tokenizer):
    model = build("mean", "separate")
    first, second = encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)
    with torch.no_grad():
        u = model.embed(first)
        v = model.embed(second)
        feature = model.features("qqp", [first, second])
        out = model("qqp", [first, second])
    d = u.shape[-1]
    assert feature.shape == (3, 4 * d)
    assert torch.allclose(feature[:, :d], u, atol=1e-6)
    assert torch.allclose(feature[:, d:2 * d], v, atol=1e-6)
    assert torch.allclose(feature[:, 2 * d:3 * d], (u - v).abs(), atol=1e-6)
    assert torch.allclose(feature[:, 3 * d:], u * v, atol=1e-6)
    assert model.heads["qqp"][1].in_features == 4 * d
    assert model.heads["sst"][1].in_features == d
    with torch.no_grad():
        assert torch.allclose(out, model.heads["qqp"](feature).squeeze(-1), atol=1e-6)


@pytest.mark.parametrize("parts", [["u", "v"], ["prod", "u"], ["diff"]])
def test_pair_features_choose_and_order_the_parts(tiny_bert, tokenizer, parts):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_bert), pooling="mean", pair_encoding="separate",
                      pair_features=parts)
    model = MultitaskModel(cfg, TASKS).eval()
    first, second = encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)
    with torch.no_grad():
        u, v = model.embed(first), model.embed(second)
        feature = model.features("sts", [first, second])
        out = model("sts", [first, second])
    by_hand = {"u": u, "v": v, "diff": (u - v).abs(), "prod": u * v}
    d = u.shape[-1]
    assert feature.shape == (3, len(parts) * d)
    for k, part in enumerate(parts):
        assert torch.allclose(feature[:, k * d:(k + 1) * d], by_hand[part], atol=1e-6)
    assert model.heads["qqp"][1].in_features == len(parts) * d
    assert model.heads["sts"][1].in_features == len(parts) * d
    assert model.heads["sst"][1].in_features == d
    with torch.no_grad():
        assert torch.allclose(out, model.heads["sts"](feature).squeeze(-1), atol=1e-6)


def test_pair_features_have_no_effect_with_concat(build, tiny_bert, tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_bert), pair_encoding="concat", pair_features=["u", "v"])
    model = MultitaskModel(cfg, TASKS).eval()
    default = build("cls", "concat")  # the same seed, default pair_features
    pair = [encode(tokenizer, SENTENCES, SECONDS)]
    d = model.backbone.config.hidden_size
    assert model.heads["qqp"][1].in_features == d
    with torch.no_grad():
        assert torch.equal(model("qqp", pair), default("qqp", pair))


@pytest.mark.parametrize(("pooling", "pair_encoding"),
                         [("cls", "concat"), ("attention", "separate")])
def test_heads_run_in_fp32_under_bf16_autocast(build, tokenizer, pooling, pair_encoding):
    model = build(pooling, pair_encoding)
    if pair_encoding == "concat":
        pair = [encode(tokenizer, SENTENCES, SECONDS)]
    else:
        pair = [encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)]
    for task, inputs in (("sst", [encode(tokenizer, SENTENCES)]), ("qqp", pair), ("sts", pair)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(task, inputs)
            feature = model.features(task, inputs)
        assert out.dtype == torch.float32
        # the head by hand in float64 on the same pooled features: dropout → linear → ReLU →
        # dropout → linear (dropout is the identity in eval mode)
        head = model.heads[task]
        w1, b1, w2, b2 = (t.detach().double() for t in (head[1].weight, head[1].bias,
                                                        head[4].weight, head[4].bias))
        want = (feature.double() @ w1.T + b1).clamp(min=0) @ w2.T + b2
        want = want if task == "sst" else want.squeeze(-1)
        assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-6), (out - want).abs().max()
        if task == "sts":
            # not rounded to bf16's 8 significant bits on the way out
            assert (out != out.to(torch.bfloat16).float()).all(), out


def test_concat_encoding_uses_token_type_ids(build, tokenizer):
    model = build("cls", "concat")
    enc = encode(tokenizer, SENTENCES, SECONDS)
    assert enc["token_type_ids"].sum() > 0  # the second segment is marked
    without = {**enc, "token_type_ids": torch.zeros_like(enc["token_type_ids"])}
    with torch.no_grad():
        direct = model.backbone(**enc).last_hidden_state[:, 0]
        pooled = model.embed(enc)
        assert torch.allclose(pooled, direct, atol=1e-6)
        assert not torch.allclose(pooled, model.embed(without), atol=1e-4)
        assert not torch.allclose(model("qqp", [enc]), model("qqp", [without]), atol=1e-6)


@pytest.mark.parametrize("point", ["embeddings", "word_embeddings"])
@pytest.mark.parametrize("pair_encoding", ["concat", "separate"])
def test_perturbation_point_outputs_replace_forward(build, tokenizer, pair_encoding, point):
    model = build("attention", pair_encoding)
    if pair_encoding == "concat":
        pair = [encode(tokenizer, SENTENCES, SECONDS)]
    else:
        pair = [encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)]
    single = [encode(tokenizer, SENTENCES)]
    module = model.perturbation_point(point)
    with torch.no_grad():
        for task, inputs in (("sst", single), ("qqp", pair), ("sts", pair)):
            plain, embeds, forward = perturbable(lambda t=task, i=inputs: model(t, i), module)
            assert [e.shape for e in embeds] == [
                (*enc["input_ids"].shape, model.backbone.config.hidden_size) for enc in inputs
            ]
            assert torch.equal(forward(embeds), plain)
            # and the replacement is really used: a perturbation moves the output (a random one:
            # the embedding LayerNorm would cancel a constant shift of the word embeddings)
            generator = torch.Generator().manual_seed(1)
            noise = [torch.randn(e.shape, generator=generator) for e in embeds]
            moved = forward([e + n for e, n in zip(embeds, noise, strict=True)])
            assert not torch.allclose(moved, plain, atol=1e-4)
            assert not module._forward_hooks  # the hooks are gone after each pass


def test_perturbation_points_are_the_lookup_and_the_encoder_input(build, tokenizer):
    """word_embeddings: the token lookup; embeddings: LayerNorm(word + position + type), BERT's
    embedding layer written out (eval mode: no dropout)."""
    model = build("cls")
    enc = encode(tokenizer, SENTENCES, SECONDS)
    layer = model.backbone.embeddings
    with torch.no_grad():
        _, (words,), _ = perturbable(lambda: model("sst", [enc]),
                                     model.perturbation_point("word_embeddings"))
        _, (encoder_input,), _ = perturbable(lambda: model("sst", [enc]),
                                             model.perturbation_point("embeddings"))
        positions = torch.arange(enc["input_ids"].shape[1])
        by_hand = layer.LayerNorm(layer.word_embeddings.weight[enc["input_ids"]]
                                  + layer.position_embeddings.weight[positions]
                                  + layer.token_type_embeddings.weight[enc["token_type_ids"]])
    assert torch.equal(words, layer.word_embeddings.weight[enc["input_ids"]])
    assert torch.allclose(encoder_input, by_hand, atol=1e-6)


def test_perturbation_point_unknown_or_absent(tiny_bert):
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), TASKS)
    with pytest.raises(ConfigError, match="smart.perturb_at: 'pooler'"):
        model.perturbation_point("pooler")
    model.backbone.embeddings = None
    with pytest.raises(ConfigError, match="has no such module"):
        model.perturbation_point("embeddings")


# --- heads -------------------------------------------------------------------------------------


def layer_kinds(head: nn.Sequential) -> list[type]:
    return [type(layer) for layer in head]


def test_default_head_layout(build):
    model = build("cls")
    d = model.backbone.config.hidden_size
    for task, out in (("sst", 5), ("qqp", 1), ("sts", 1)):
        head = model.heads[task]
        assert layer_kinds(head) == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
        assert head[0].p == pytest.approx(0.3)
        assert head[3].p == pytest.approx(0.3)
        assert (head[1].in_features, head[1].out_features) == (d, d)
        assert (head[4].in_features, head[4].out_features) == (d, out)


def test_head_depth_activation_hidden_dropout():
    head = mlp_head(32, 5, HeadConfig(layers=3, hidden=16, activation="gelu", dropout=0.1), 32)
    assert layer_kinds(head) == [
        nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU, nn.Dropout, nn.Linear,
    ]
    linears = [layer for layer in head if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32, 16), (16, 16), (16, 5)]
    assert all(layer.p == pytest.approx(0.1) for layer in head if isinstance(layer, nn.Dropout))


def test_single_layer_head():
    head = mlp_head(32, 1, HeadConfig(layers=1, activation="tanh", dropout=0.0), 32)
    assert layer_kinds(head) == [nn.Dropout, nn.Linear]
    assert (head[1].in_features, head[1].out_features) == (32, 1)


def test_tanh_activation():
    head = mlp_head(8, 1, HeadConfig(layers=2, activation="tanh"), 4)
    assert layer_kinds(head) == [nn.Dropout, nn.Linear, nn.Tanh, nn.Dropout, nn.Linear]
    assert head[1].out_features == 4  # hidden null → the backbone's hidden size


def test_heads_only_for_configured_tasks(tiny_bert):
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), ["sst"])
    assert list(model.heads) == ["sst"]


# --- parameter groups --------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "attention"])
def test_shared_and_head_parameters_partition_trainables(build, pooling):
    model = build(pooling)
    shared = {id(p) for p in model.shared_parameters()}
    heads = [{id(p) for p in model.head_parameters(task)} for task in TASKS]
    assert shared and all(heads)
    assert all(shared.isdisjoint(h) for h in heads)
    assert all(a.isdisjoint(b) for i, a in enumerate(heads) for b in heads[i + 1:])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert shared.union(*heads) == trainable
    assert {id(p) for p in model.backbone.parameters()} <= shared
    if pooling == "attention":
        assert id(model.attention_pool.query) in shared


def test_frozen_parameters_are_left_out(tiny_bert):
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert)), TASKS)
    embeddings = model.backbone.get_input_embeddings().weight
    embeddings.requires_grad_(False)
    assert id(embeddings) not in {id(p) for p in model.shared_parameters()}


# --- backbone resolution -----------------------------------------------------------------------


def test_resolve_backbone_minilm_is_local_dir():
    path = Path(resolve_backbone("minilm"))
    assert path.is_dir()
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_size"] == 384
    assert config["num_hidden_layers"] == 6


def test_resolve_backbone_passes_other_names_through(tiny_bert):
    assert resolve_backbone("bert-base-uncased") == "bert-base-uncased"
    assert resolve_backbone(str(tiny_bert)) == str(tiny_bert)


def test_missing_local_backbone_error_names_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(OSError, match="no-such-model"):
        MultitaskModel(ModelConfig(backbone=str(missing)), TASKS)


def test_a_hub_id_without_hub_access_is_one_line_for_the_tokenizer_as_for_the_backbone(
        monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    hint = ("(no hub access? point model.backbone at a local directory, or use `minilm`): ")
    messages = []
    for load in (load_tokenizer, lambda name: MultitaskModel(ModelConfig(backbone=name), TASKS)):
        with pytest.raises(UserError) as error:  # a stage prints it as its one error line
            load("bestfit-tests/no-such-model")
        messages.append(str(error.value))
        assert "\n" not in messages[-1]
        assert isinstance(error.value, OSError)  # what transformers raised, still
    assert messages[0].startswith("cannot load the tokenizer of backbone "
                                  "'bestfit-tests/no-such-model' from "
                                  "'bestfit-tests/no-such-model' " + hint)
    assert messages[1].startswith("cannot load backbone 'bestfit-tests/no-such-model' from "
                                  "'bestfit-tests/no-such-model' " + hint)


def test_the_train_stage_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants
    from conftest import load_stage
    from test_resume import write_prepared

    from pipeline.errors import EXIT_USER_ERROR, run_stage

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    write_prepared(tmp_path / "prepared")
    params = tmp_path / "params.yaml"
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["model"]["backbone"] = "bestfit-tests/no-such-model"
    params.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as done:
        run_stage("train", load_stage("train").main, [
            "multitask", "--seed", "11", "--prepared", str(tmp_path / "prepared"),
            "--augmented", str(tmp_path), "--out", str(tmp_path / "out"), "--checkpoints",
            str(tmp_path / "ckpt"), "--params", str(params), "--no-live"])
    assert done.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("train: error: cannot load the tokenizer of backbone "
                           "'bestfit-tests/no-such-model'")
    assert "no hub access?" in line


@pytest.mark.parametrize("pair_encoding", ["concat", "separate"])
def test_every_shared_parameter_gets_a_gradient_from_each_task(tiny_bert, tokenizer, pair_encoding):
    # shared_parameters() promises the parameters every task's loss reaches (PCGrad projects
    # their gradients); one that no loss reaches would carry grad None into that projection.
    torch.manual_seed(0)
    model = MultitaskModel(
        ModelConfig(backbone=str(tiny_bert), pooling="attention", pair_encoding=pair_encoding),
        TASKS,
    ).eval()
    with torch.no_grad():
        model.attention_pool.query.normal_()
    if pair_encoding == "concat":
        pair = [encode(tokenizer, SENTENCES, SECONDS)]
    else:
        pair = [encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)]
    for task, inputs in (("sst", [encode(tokenizer, SENTENCES)]), ("qqp", pair), ("sts", pair)):
        model.zero_grad(set_to_none=True)
        model(task, inputs).sum().backward()
        names = {id(p): n for n, p in model.named_parameters()}
        unreached = [names[id(p)] for p in model.shared_parameters() if p.grad is None]
        assert unreached == [], f"{task}: shared parameters with no gradient: {unreached}"
        assert all(p.grad is not None for p in model.head_parameters(task))


def test_an_fp16_checkpoint_loads_as_fp32_master_weights(tiny_bert, tmp_path):
    from transformers import AutoModel

    AutoModel.from_pretrained(str(tiny_bert)).half().save_pretrained(tmp_path / "fp16")
    reloaded = AutoModel.from_pretrained(str(tmp_path / "fp16"))
    assert next(reloaded.parameters()).dtype == torch.float16  # what transformers would train
    backbone = load_backbone(str(tmp_path / "fp16"))
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}
    original = AutoModel.from_pretrained(str(tiny_bert)).embeddings.word_embeddings.weight
    # the values are the checkpoint's, rounded to fp16 once
    torch.testing.assert_close(backbone.embeddings.word_embeddings.weight,
                               original.half().float())


# --- a saved member: one-call loading ----------------------------------------------------------


def member_config(tiny_bert: Path, name: str = "multitask", **model):
    raw = yaml.safe_load(PARAMS_YAML.read_text())
    raw["model"].update(backbone=str(tiny_bert), **model)
    return parse_params(raw).models[name]


def saved_member(tiny_bert: Path, directory: Path, name: str = "multitask", **model):
    """Save a member whose heads (and attention query) are random and far from zero, so that
    its outputs differ clearly from input to input; returns the in-memory model, eval mode."""
    member = member_config(tiny_bert, name, **model)
    torch.manual_seed(7)
    model = MultitaskModel(member.model, member.tasks).eval()
    with torch.no_grad():
        for param in model.heads.parameters():
            param.normal_(0.0, 0.5)
        if model.attention_pool is not None:
            model.attention_pool.query.normal_(0.0, 3.0)
    save_member(model, member, load_tokenizer(str(tiny_bert)), directory)
    return model, member


@pytest.mark.parametrize(("pooling", "pair_encoding"),
                         [("cls", "concat"), ("attention", "separate")])
def test_from_pretrained_round_trip_gives_identical_outputs(tiny_bert, tokenizer, tmp_path,
                                                            pooling, pair_encoding):
    model, member = saved_member(tiny_bert, tmp_path / "model", pooling=pooling,
                                 pair_encoding=pair_encoding)
    rng_before = torch.get_rng_state()
    loaded = MultitaskModel.from_pretrained(tmp_path / "model")
    assert torch.equal(torch.get_rng_state(), rng_before)  # loading draws no random numbers
    assert not loaded.training and loaded.member == member and loaded.tasks == member.tasks
    assert loaded.tokenizer("the movie")["input_ids"] == tokenizer("the movie")["input_ids"]
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    pair = ([encode(tokenizer, SENTENCES, SECONDS)] if pair_encoding == "concat"
            else [encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)])
    with torch.no_grad():
        for task, inputs in (("sst", [encode(tokenizer, SENTENCES)]), ("qqp", pair),
                             ("sts", pair)):
            assert torch.equal(loaded(task, inputs), model(task, inputs)), task
    # and the heads really came from the file: a fresh model's differ
    fresh = MultitaskModel(member.model, member.tasks).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh("sst", [encode(tokenizer, SENTENCES)]),
                                  model("sst", [encode(tokenizer, SENTENCES)]))


def test_from_pretrained_reads_only_the_directory(tiny_bert, tmp_path):
    # The backbone the member was trained from may be gone (another machine): the dir suffices.
    copy = tmp_path / "backbone"
    shutil.copytree(tiny_bert, copy)
    model, member = saved_member(copy, tmp_path / "model")
    shutil.rmtree(copy)
    loaded = MultitaskModel.from_pretrained(tmp_path / "model")
    assert loaded.member.model.backbone == str(copy)  # the config as trained, kept
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


@pytest.fixture(scope="module")
def saved_dir(tiny_bert, tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved") / "model"
    saved_member(tiny_bert, directory)
    return directory


def break_config(d: Path) -> None:
    config = json.loads((d / "bestfit.json").read_text())
    config["train"]["learning_rate"] = 1.0
    (d / "bestfit.json").write_text(json.dumps(config))


def heads_of_another_member(d: Path, tiny_bert: Path) -> None:
    saved_member(tiny_bert, d.parent / "single", "sst_single")
    shutil.copy(d.parent / "single" / "heads.safetensors", d / "heads.safetensors")


def wider_heads(d: Path, tiny_bert: Path) -> None:
    saved_member(tiny_bert, d.parent / "wide", head={"hidden": 8})
    shutil.copy(d.parent / "wide" / "heads.safetensors", d / "heads.safetensors")


def pickle_only(d: Path) -> None:
    (d / "model.safetensors").rename(d / "pytorch_model.bin")


BROKEN = {
    "missing": (lambda d, _: shutil.rmtree(d), r"model: not found; expected a saved member"),
    "a file": (lambda d, _: (shutil.rmtree(d), d.write_text("x")), r"model: not a directory"),
    "no bestfit.json": (lambda d, _: (d / "bestfit.json").unlink(),
                        r"bestfit\.json: missing; .* is not a saved bestfit member"),
    "bad bestfit.json": (lambda d, _: (d / "bestfit.json").write_text("{"),
                         r"bestfit\.json: not valid JSON"),
    "unknown key": (lambda d, _: break_config(d), r"bestfit\.json\.train: unknown key.*"
                                                  r"learning_rate"),
    "no heads": (lambda d, _: (d / "heads.safetensors").unlink(),
                 r"heads\.safetensors: missing"),
    "truncated heads": (lambda d, _: (d / "heads.safetensors").write_bytes(
        (d / "heads.safetensors").read_bytes()[:100]),
        r"heads\.safetensors: not a readable safetensors file"),
    "another member's heads": (heads_of_another_member,
                               r"heads\.safetensors do not match .*missing \['heads\.qqp"),
    "heads of another shape": (wider_heads, r"heads\.safetensors: heads\.sst\.1\.weight is "
                                            r"\[8, 32\], but .*bestfit\.json declares \[32, 32\]"),
    "pickle only": (lambda d, _: pickle_only(d), r"no backbone weights model\*\.safetensors "
                                                  r"\(only a pickle"),
    "no config.json": (lambda d, _: (d / "config.json").unlink(),
                       r"model/config\.json: missing; a model directory holds the backbone's "
                       r"config"),
    "no vocabulary": (lambda d, _: [f.unlink() for f in d.glob("tokenizer*")],
                      r"model: no tokenizer vocabulary \(tokenizer\.json, vocab\.\*"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_member_dir_is_a_user_error_naming_it(saved_dir, tiny_bert, tmp_path, case):
    directory = tmp_path / "model"
    shutil.copytree(saved_dir, directory)
    breaks, message = BROKEN[case]
    breaks(directory, tiny_bert)
    with pytest.raises(SavedModelError, match=message) as caught:
        MultitaskModel.from_pretrained(directory)
    assert str(directory) in str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


# --- cosine heads ------------------------------------------------------------------------------


def test_cosine_head_is_an_affine_map_of_the_cosine(tiny_bert, tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_bert), pooling="mean", pair_encoding="separate",
                      cosine_heads=["qqp", "sts"])
    model = MultitaskModel(cfg, TASKS).eval()
    # STS's range [0, 5]: cos 0 ↦ 0, cos 1 ↦ 5; QQP's logit 10·cos − 5 (p = ½ at cos ½)
    assert (model.heads["sts"].scale.item(), model.heads["sts"].shift.item()) == (5.0, 0.0)
    assert (model.heads["qqp"].scale.item(), model.heads["qqp"].shift.item()) == (10.0, -5.0)
    first, second = encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)
    with torch.no_grad():
        model.heads["sts"].scale.fill_(2.5)
        model.heads["sts"].shift.fill_(1.5)
        u, v = model.embed(first), model.embed(second)
        sts = model("sts", [first, second])
        qqp = model("qqp", [first, second])
        same = model("sts", [first, first])
    cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
    assert sts.shape == qqp.shape == (3,)
    assert torch.allclose(sts, 2.5 * cos + 1.5, atol=1e-5)
    assert torch.allclose(qqp, 10.0 * cos - 5.0, atol=1e-5)
    assert torch.allclose(same, torch.full((3,), 4.0), atol=1e-5)  # cos(u, u) = 1
    assert model.heads["sst"][1].in_features == u.shape[-1]  # single sentences: an MLP


def test_cosine_head_scalars_are_trained_and_saved(tiny_bert, tokenizer, tmp_path):
    model, member = saved_member(tiny_bert, tmp_path / "model", pooling="mean",
                                 pair_encoding="separate", cosine_heads=["sts"])
    assert [n for n, _ in model.heads["sts"].named_parameters()] == ["scale", "shift"]
    assert {id(p) for p in model.head_parameters("sts")} == {
        id(model.heads["sts"].scale), id(model.heads["sts"].shift)}
    loaded = MultitaskModel.from_pretrained(tmp_path / "model")
    assert loaded.member.model.cosine_heads == ["sts"]
    pair = [encode(tokenizer, SENTENCES), encode(tokenizer, SECONDS)]
    with torch.no_grad():
        assert torch.equal(loaded.heads["sts"].scale, model.heads["sts"].scale)
        assert not torch.equal(model.heads["sts"].scale, torch.tensor(5.0))  # really set
        assert torch.equal(loaded("sts", pair), model("sts", pair))


@pytest.mark.parametrize(("model", "message"), [
    ({"cosine_heads": ["sts"]}, "need model.pair_encoding: separate"),
    ({"cosine_heads": ["sst"], "pair_encoding": "separate"}, "a cosine head scores a pair task"),
    ({"cosine_heads": ["stsb"], "pair_encoding": "separate"}, "unknown task(s) ['stsb']"),
])
def test_cosine_heads_config_errors(tiny_bert, model, message):
    with pytest.raises(UserError, match=re.escape(message)):
        member_config(tiny_bert, **model)


# --- attention masks without a host sync -------------------------------------------------------


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_prepared_masks_give_the_backbones_own_outputs(tiny_bert, tokenizer, monkeypatch,
                                                       implementation):
    """A padded batch gets the 4-D mask transformers would build, an unpadded one none, and the
    encoder's check of the mask on the device (``padding_mask.all()``) is never reached; the
    hidden states are the backbone's own from the 2-D mask."""
    import transformers.masking_utils as masking

    torch.manual_seed(0)
    backbone = AutoModel.from_pretrained(tiny_bert, attn_implementation=implementation).eval()
    model = MultitaskModel(ModelConfig(backbone=str(tiny_bert), pooling="mean"), TASKS,
                           backbone=backbone).eval()
    assert model.prepares_masks
    padded = encode(tokenizer, SENTENCES)
    unpadded = pad([[2, 7, 9, 3], [2, 8, 8, 3]], None, pad_id=0)
    with torch.no_grad():
        expected = [backbone(**padded).last_hidden_state,
                    backbone(**unpadded, attention_mask=torch.ones(2, 4)).last_hidden_state]
        checked = masking._ignore_bidirectional_mask_sdpa

        def no_device_check(padding_mask, *args):
            assert padding_mask is None, "the mask was checked on the device"
            return checked(padding_mask, *args)

        monkeypatch.setattr(masking, "_ignore_bidirectional_mask_sdpa", no_device_check)
        pooled = [model.embed(padded), model.embed(unpadded)]
    for got, want, enc in zip(pooled, expected, [padded, unpadded], strict=True):
        assert torch.allclose(got, pool(want, attention_mask(enc), "mean"), atol=1e-6)
