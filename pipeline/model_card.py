"""A trained member's model card: ``README.md`` in Hugging Face's model-card format.

YAML front matter (language, license, library, tags, datasets, metrics, base model and a
``model-index`` holding the dev results), then the body: the tasks with their heads and labels,
the dev scores, the training settings (the member config), the data, how to load the model and
predict, and its limits and biases as BEST-FiT's ethics statement names them.

The card claims only what loads: its ``library_name``, ``pipeline_tag``, widget and snippets
follow the member's ``exports.json`` (``pipeline/export.py``): sentence-transformers when the
directory loads with ``SentenceTransformer``, else the plain transformers encoder; a snippet per
exported task classifier, and each task that is not exported with the reason. Each exported
classifier directory gets a card of its own (:func:`classifier_card`).

The train stage writes the card of one seed into that seed's model dir; the ensemble stage,
which alone sees every seed, writes each member's card with the mean ± sd over its seeds to
``cards/<member>.md`` (a stage never writes into another stage's outputs).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import MemberConfig, MtlConfig
from pipeline.model import MINILM_HUB_ID
from pipeline.tasks import CORRELATIONS, TaskSpec

CARD_FILE = "README.md"
# The examples of the widgets and snippets.
WIDGET_SENTENCES = ("a gripping, funny film", "an engrossing and very funny movie",
                    "the plot is dull and the acting is worse")
WIDGET_PAIR = ("how do I learn to cook?", "what is the best way to learn cooking?")


# A metric's model-index type and its label in the card.
METRIC_CARD = {"accuracy": ("accuracy", "dev accuracy"), "f1": ("f1", "dev macro F1"),
               "pearson": ("pearsonr", "dev Pearson r"),
               "spearman": ("spearmanr", "dev Spearman ρ")}
LOSS_TEXT = {"cross_entropy": "CE", "bce": "BCE", "mse": "MSE", "l1": "L1"}
# train.precision as the card states it (pipeline/device.py; the heads run in fp32 under autocast).
PRECISION_TEXT = {"bf16": "bf16 autocast (heads in fp32)",
                  "fp16": "fp16 autocast with a dynamic loss scale (heads in fp32)",
                  "fp32": "fp32"}


def precision_text(configured: str, ran: str | None) -> str:
    """``auto`` with what it became on the training machine (unknown for a run before it)."""
    if configured != "auto":
        return PRECISION_TEXT[configured]
    if ran is None:
        return "auto (bf16 where the device computes it natively, else fp32)"
    return f"auto: {PRECISION_TEXT[ran]}"



def mtl_text(mtl: MtlConfig) -> str:
    """The card's line for a TorchJD aggregator / loss weighting (pipeline/aggregation.py)."""
    parts = [f"TorchJD aggregator {mtl.aggregator or 'sum'}"
             + (f" {dict(mtl.aggregator_options)}" if mtl.aggregator_options else "")]
    if mtl.weighting != "fixed":
        parts.append(f"loss weighting {mtl.weighting}"
                     + (f" {dict(mtl.weighting_options)}" if mtl.weighting_options else ""))
    return ", ".join(parts) + " (one batch of every task per step)"

def task_card(spec: TaskSpec) -> dict[str, Any]:
    """What the card says about a task, and its model-index entry, from its declaration."""
    names = spec.class_names()
    if spec.kind == "classification":
        head = f"{spec.outputs} logits, softmax over the classes"
        labels = ", ".join(f"{k} {name}" for k, name in enumerate(names))
    elif spec.kind == "binary":
        head = f"1 logit, sigmoid: p({names[1]})"
        labels = f"1 {names[1]} when p({names[1]}) ≥ 0.5, else 0 {names[0]}"
    else:
        low, high = spec.label_range
        head = "1 value, regressed on the label"
        labels = f"a number from {low:g} to {high:g}"
    dataset_type, _, config = (spec.dataset or spec.name).partition(":")
    source = "CS224N dev split" if spec.data.format == "cs224n" else "dev split"
    dataset = {"type": dataset_type, **({"config": config} if config else {}),
               "name": f"{spec.display} ({source})", "split": "dev"}
    return {
        "title": spec.display,
        "input": "a sentence pair" if spec.pair else "one sentence",
        "head": head,
        "labels": labels,
        "hf_task": ("sentence-similarity" if spec.pair and spec.kind == "regression"
                    else "text-classification"),
        "dataset": dataset,
        "metric": METRIC_CARD[spec.metric],
    }


AUGMENT_SOURCES = {
    "eda": "EDA sentences (synonym replacement, random insertion, swap and deletion; Wei & Zou "
           "2019) made from the SST training sentences, with their labels",
    "amazon": "Amazon Movies & TV reviews chosen near each SST label's MiniLM embedding "
              "centroid, labelled by their star ratings (1–5 stars as classes 0–4)",
    "llm": "Amazon reviews labelled few-shot by an LLM (Llama-3-8B by default)",
}


def base_model(backbone: str) -> str | None:
    """The hub id the member was fine-tuned from, or None for a local directory (whose path
    says nothing on another machine)."""
    if backbone == "minilm":
        return MINILM_HUB_ID
    if Path(backbone).exists() or backbone.startswith(("/", ".", "~")) or backbone.count("/") > 1:
        return None
    return backbone


def backbone_text(backbone: str) -> str:
    hub_id = base_model(backbone)
    if hub_id is None:
        return f"a local model directory (`{Path(backbone).name}`)"
    return f"`{hub_id}`" + (" (`minilm`)" if backbone == "minilm" else "")


def _value(x: float) -> float:
    return round(float(x), 4)


def _scores(member: MemberConfig, metrics: Mapping[str, Any],
            seeds: Mapping[str, Any] | None) -> dict[str, float]:
    """Per task, the score the front matter reports: this seed's, or the mean over seeds."""
    out = {}
    for task in member.tasks:
        name = member.specs[task].metric_name
        cell = (seeds or {}).get("aggregate", {}).get(name)
        value = cell["mean"] if cell else metrics.get(name)
        if value is not None:
            out[task] = _value(value)
    return out


def _loads_with_sentence_transformers(exports: Mapping[str, Any] | None) -> bool:
    return bool(exports) and "path" in exports["sentence_transformers"]


def _classifiers(exports: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """The exported task classifiers, by task."""
    return {task: entry for task, entry in (exports or {}).get("transformers", {}).items()
            if "path" in entry}


def front_matter(member: MemberConfig, metrics: Mapping[str, Any],
                 seeds: Mapping[str, Any] | None = None,
                 exports: Mapping[str, Any] | None = None,
                 task: str | None = None) -> dict[str, Any]:
    """The card's YAML metadata (Hugging Face model-card fields): of the member directory, or
    (``task``) of that task's exported classifier."""
    n = _seed_count(seeds)
    results = []
    for name, value in _scores(member, metrics, seeds).items():
        if task is not None and name != task:
            continue
        task_name = name
        facts = task_card(member.specs[task_name])
        metric, label = facts["metric"]
        results.append({
            "task": {"type": facts["hf_task"], "name": facts["title"]},
            "dataset": dict(facts["dataset"]),
            "metrics": [{"type": metric, "value": value,
                         "name": f"{label}, mean of {n} seeds" if n else label}],
        })
    cards = [task_card(member.specs[t]) for t in ([task] if task else member.tasks)]
    tags = ["bestfit", "best-fit", "multitask", "bert", *member.tasks]
    if task is not None:  # a sequence classifier: transformers' pipeline and CrossEncoder
        library, pipeline_tag = "transformers", "text-classification"
        tags += ["text-classification"] + (["cross-encoder"] if member.specs[task].pair
                                           else [])
    elif _loads_with_sentence_transformers(exports):
        library, pipeline_tag = "sentence-transformers", "sentence-similarity"
        tags += ["sentence-transformers", "feature-extraction", "sentence-similarity"]
    else:  # AutoModel loads the encoder alone: its token states
        library, pipeline_tag = "transformers", "feature-extraction"
    meta: dict[str, Any] = {
        "language": ["en"],
        # The weights derive from the backbone and from datasets with their own terms.
        "license": "other",
        "library_name": library,
        "pipeline_tag": pipeline_tag,
        "tags": tags,
        "datasets": sorted({card["dataset"]["type"] for card in cards}),
        "metrics": sorted({card["metric"][0] for card in cards}),
    }
    hub_id = base_model(member.model.backbone)
    if hub_id:
        meta["base_model"] = hub_id
    if task is None and library == "sentence-transformers":
        meta["widget"] = [{"source_sentence": WIDGET_SENTENCES[0],
                           "sentences": list(WIDGET_SENTENCES[1:])}]
    elif task is not None:
        meta["widget"] = [{"text": WIDGET_PAIR[0], "text_pair": WIDGET_PAIR[1]}
                          if member.specs[task].pair else {"text": WIDGET_SENTENCES[0]}]
    name = f"bestfit-{member.name}" + (f"-{task}" if task else "")
    meta["model-index"] = [{"name": name, "results": results}]
    return meta


def _seed_count(seeds: Mapping[str, Any] | None) -> int | None:
    return len(seeds["per_seed"]) if seeds else None


def _tasks_section(member: MemberConfig) -> list[str]:
    pairs = ("`[CLS] a [SEP] b [SEP]` in one pass" if member.model.pair_encoding == "concat"
             else f"each sentence alone, pooled to u and v, head input "
                  f"[{', '.join(member.model.pair_features)}]")
    head = member.model.head
    lines = [
        "## Tasks and heads", "",
        f"One shared encoder, {member.model.pooling} pooling, one head per task (an MLP "
        f"of {head.layers} layers, {head.activation}, dropout {head.dropout}, unless the table "
        f"says a cosine). Pairs are encoded "
        f"as {pairs}.", "",
        "| task | input | head | labels |", "| --- | --- | --- | --- |",
    ]
    for task in member.tasks:
        facts = task_card(member.specs[task])
        if task in member.model.cosine_heads:
            facts["head"] = f"a·cos(u, v) + b (a, b learnt): {facts['head']}"
        lines.append(f"| {facts['title']} | {facts['input']} | {facts['head']} | "
                     f"{facts['labels']} |")
    return lines


def _results_section(member: MemberConfig, metrics: Mapping[str, Any],
                     seeds: Mapping[str, Any] | None) -> list[str]:
    names = [member.specs[t].metric_name for t in member.tasks] + ["overall"]
    lines = ["## Dev results", ""]
    if seeds:
        per_seed = seeds["per_seed"]
        order = sorted(per_seed, key=int)
        lines += [f"| metric | {' | '.join(f'seed {s}' for s in order)} | mean ± sd (n) |",
                  f"| --- |{' --- |' * len(order)} --- |"]
        for name in names:
            cell = seeds["aggregate"].get(name)
            if cell is None:
                continue
            sd = "—" if cell["sd"] is None else f"{cell['sd']:.4f}"
            values = " | ".join(f"{per_seed[s][name]:.4f}" if name in per_seed[s] else "—"
                                for s in order)
            lines.append(f"| {name} | {values} | {cell['mean']:.4f} ± {sd} ({cell['n']}) |")
        lines.append("")
        lines.append("sd is the sample standard deviation over the seeds (none for one seed).")
    else:
        lines += [f"| metric | seed {member.train.seed} |", "| --- | --- |"]
        lines += [f"| {name} | {metrics[name]:.4f} |" for name in names if name in metrics]
    terms = ", ".join(f"{spec.metric_name}" if spec.metric not in CORRELATIONS else
                      f"({spec.metric_name} + 1) / 2" for spec in member.specs.values())
    weights = {t: s.overall_weight for t, s in member.specs.items()}
    mean = ("the mean" if set(weights.values()) == {1.0}
            else f"the mean weighted by {weights}")
    # train.select_rows may be a global knob naming tasks this member does not train.
    sampled = {t: n for t, n in member.train.select_rows.items() if t in member.tasks}
    lines += ["", f"`overall` = {mean} of the task terms ({terms}) "
              f"over this member's tasks. The checkpoint kept is the epoch with the best dev "
              f"`{member.selection_label}`"
              + (f" (epoch {metrics['best_epoch']} of {member.train.epochs})"
                 if "best_epoch" in metrics else "")
              + (" on a fixed sample of the dev rows ("
                 + ", ".join(f"{t}: {n}" for t, n in sampled.items())
                 + "); its model was then scored on the whole dev set" if sampled else "")
              + ", so these dev scores are optimistic estimates of unseen-data performance."]
    own = metrics.get("task_best_epoch") or {}
    if own:  # train.select_per_task
        lines += ["", "Each task's predictions (and its score above) come from that task's own "
                  "best epoch by its metric: " + ", ".join(f"{t} epoch {e}" for t, e in own.items())
                  + f" (train.select_per_task); the model in this directory is epoch "
                  f"{metrics.get('best_epoch')}'s: loaded alone, it predicts every task as that "
                  f"epoch did."]
    return lines


def _schedule_text(member: MemberConfig) -> str:
    train = member.train
    epoch = ("one full pass over every task's data" if train.batches_per_epoch is None
             else f"{train.batches_per_epoch} batches")
    text = f"{train.schedule}, {train.epochs} epochs of {epoch}"
    if train.schedule == "custom":
        custom = train.custom
        text += (f"; the first {custom.epochs} train {custom.task} alone, each a full pass over "
                 f"{custom.fraction:.0%} of its data, then round robin")
    return text


def _training_section(member: MemberConfig, metrics: Mapping[str, Any]) -> list[str]:
    train, smart, loss = member.train, member.smart, member.loss
    smart_text = "off"
    if smart.lambda_ > 0 or smart.task_lambda:
        smart_text = (f"λ = {smart.lambda_:g}"
                      + (f" (per task {dict(smart.task_lambda)})" if smart.task_lambda else "")
                      + f", {smart.perturbation} perturbation of the "
                        f"{smart.perturb_at.replace('_', ' ')}, ε = {smart.epsilon:g}, "
                        f"step {smart.step_size:g}, noise variance {smart.noise_var:g}, "
                        f"{smart.steps} step(s), {smart.norm} norm")
    losses = ", ".join(f"{LOSS_TEXT[spec.loss]} ({name})" for name, spec in member.specs.items())
    ordered = [name for name, spec in member.specs.items() if spec.ordered]
    if loss.ordered_ce_weight and ordered:
        losses += f"; ordered CE weight {loss.ordered_ce_weight:g} ({', '.join(ordered)})"
    if loss.contrastive_weight:
        losses += (f"; contrastive weight {loss.contrastive_weight:g} (margin "
                   f"{loss.contrastive_margin:g}, STS target {loss.sts_contrastive_target})")
    rows = [
        ("backbone", backbone_text(member.model.backbone)),
        ("tasks", ", ".join(member.tasks)),
        ("max length", f"{member.model.max_length} tokens"),
        ("schedule", _schedule_text(member)),
        ("batch size", str(train.batch_size)),
        ("optimiser", f"AdamW, lr {train.lr:g}"
                      + (f" (heads {train.lr * train.head_lr_scale:g})"
                         if train.head_lr_scale != 1 else "")
                      + f", betas {tuple(train.betas)}, weight decay "
                      f"{train.weight_decay:g}, {train.warmup_ratio:.0%} linear warmup then "
                      f"linear decay, gradient clipping {train.max_grad_norm:g}"),
        ("precision", precision_text(train.precision, metrics.get("precision"))),
        ("losses", losses + (f"; task weights {dict(loss.task_weights)}"
                             if set(loss.task_weights.values()) != {1.0} else "")),
        ("SMART", smart_text),
        ("PCGrad", "on (one batch of every task per step)" if member.pcgrad.enabled else "off"),
        *([("task gradients", mtl_text(member.mtl))] if member.mtl.enabled else []),
        ("augmentation", ", ".join(member.augment) or "none"),
        ("seed", str(train.seed)),
    ]
    if "train_seconds" in metrics:
        rows.append(("training time", f"{metrics['train_seconds']:.0f} s"))
    return ["## Training", "", f"Member `{member.name}` of the bestfit pipeline (BEST-FiT recipe); "
            "its full config is `bestfit.json` beside this card.", "",
            "| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def _data_section(member: MemberConfig, metrics: Mapping[str, Any]) -> list[str]:
    counts = metrics.get("train_examples") or {}
    files = "; ".join(
        f"{spec.display}: " + (f"the CS224N default final project's {spec.data.train} / "
                               f"{spec.data.dev}" if spec.data.format == "cs224n" else
                               f"{spec.data.train} / {spec.data.dev} ({spec.data.format})")
        for spec in member.specs.values())
    lines = ["## Data", "",
             f"{files}. Dev scores are on the dev splits (or the seeded sample of them a "
             f"CPU-sized run uses)."]
    if counts:
        lines += ["", "| task | training examples |", "| --- | --- |"]
        lines += [f"| {task} | {counts[task]:,} |" for task in member.tasks if task in counts]
    for source in member.augment:
        lines += ["", f"The training sentences include {AUGMENT_SOURCES[source]}."]
    return lines


def member_directory(member: MemberConfig) -> str:
    """Where the member's model dir is in a bestfit checkout (the snippets' path)."""
    return f"models/{member.name}/seed_{member.train.seed}/model"


def _example(member: MemberConfig, task: str) -> str:
    return (f"[{WIDGET_SENTENCES[0]!r}]" if not member.specs[task].pair
            else f"[{WIDGET_PAIR!r}]")


def _bestfit_usage(member: MemberConfig) -> list[str]:
    task = member.tasks[0]
    single = not member.specs[task].pair
    cli_input = (f'--text "{WIDGET_SENTENCES[0]}"' if single else
                 f'--pair "{WIDGET_PAIR[0]}" "{WIDGET_PAIR[1]}"')
    directory = member_directory(member)
    return ["With the bestfit package installed (`pip install -e .` in its checkout):", "",
            "```python", "from pipeline.model import MultitaskModel",
            "from pipeline.predict import predict_sentences", "",
            f'model = MultitaskModel.from_pretrained("{directory}")  # eval mode, CPU',
            f'predict_sentences(model, "{task}", {_example(member, task)})  # a pandas DataFrame',
            "```", "",
            "```bash",
            f"bestfit-predict {directory} --task {task} {cli_input}",
            f"bestfit-predict {directory} --task {task} --input examples.csv --format jsonl "
            f"--output predictions.jsonl",
            "```"]


def _sentence_transformers_usage(member: MemberConfig, exports: Mapping[str, Any]) -> list[str]:
    directory = member_directory(member)
    lines = ["", f"With sentence-transformers alone, the directory is a `SentenceTransformer`: "
             f"the encoder and this member's {member.model.pooling} pooling, unnormalised, as "
             f"its heads read it:", "",
             "```python", "from sentence_transformers import SentenceTransformer", "",
             f'model = SentenceTransformer("{directory}")',
             f"embeddings = model.encode({list(WIDGET_SENTENCES)!r})",
             "similarities = model.similarity(embeddings, embeddings)  # cosine"]
    cosine = exports["sentence_transformers"].get("cosine_heads", {})
    for task, affine in cosine.items():
        spec = member.specs[task]
        lines += ["", f"# {spec.display}: this member's prediction is a·cos(u, v) + b of the "
                      f"two embeddings",
                  f"a, b = {affine['scale']!r}, {affine['shift']!r}",
                  f"u, v = model.encode({list(WIDGET_PAIR)!r})",
                  f"{task} = a * model.similarity(u, v).item() + b"
                  + (f"  # bestfit clips it to {spec.label_range[0]:g}–{spec.label_range[1]:g}"
                     if spec.kind == "regression" else "  # a logit")]
    return [*lines, "```"]


def _classifier_usage(member: MemberConfig, task: str, directory: str) -> list[str]:
    """The snippets that load ``task``'s exported classifier from ``directory``."""
    spec = member.specs[task]
    text = (f"{{'text': {WIDGET_PAIR[0]!r}, 'text_pair': {WIDGET_PAIR[1]!r}}}" if spec.pair
            else repr(WIDGET_SENTENCES[0]))
    note = {"classification": "a score per class",
            "binary": f"p({spec.class_names()[1]}) and p({spec.class_names()[0]})",
            "regression": f"the value, unclipped (bestfit clips it to "
                          f"{spec.label_range[0]:g}–{spec.label_range[1]:g})"}[spec.kind]
    lines = ["```python", "from transformers import pipeline", "",
             f'classifier = pipeline("text-classification", model="{directory}")',
             f"classifier({text}, top_k=None, truncation=True)  # {note}"]
    if spec.pair:
        lines += ["", "from sentence_transformers import CrossEncoder", "",
                  f'cross_encoder = CrossEncoder("{directory}")',
                  f"cross_encoder.predict([{WIDGET_PAIR!r}])"
                  + ("  # the value" if spec.kind == "regression" else "  # logits")]
    return [*lines, "```"]


def _usage_section(member: MemberConfig, exports: Mapping[str, Any] | None) -> list[str]:
    lines = ["## How to use", "", *_bestfit_usage(member)]
    if _loads_with_sentence_transformers(exports):
        lines += _sentence_transformers_usage(member, exports)
    else:
        why = (f" ({exports['sentence_transformers']['reason']})" if exports else
               " (this member was saved before bestfit exported to it)")
        lines += ["", "`AutoModel.from_pretrained` loads the encoder alone (its token states); "
                  "the pooling and the task heads are in `heads.safetensors`, and "
                  f"`SentenceTransformer` cannot load this member{why}."]
    classifiers = _classifiers(exports)
    for task, entry in classifiers.items():
        lines += ["", f"{member.specs[task].display} as a transformers "
                      f"`{entry['architecture']}` (its head exactly), in `{entry['path']}/`:",
                  "", *_classifier_usage(member, task,
                                         f"{member_directory(member)}/{entry['path']}")]
    missing = {task: entry["reason"] for task, entry in (exports or {}).get(
        "transformers", {}).items() if "reason" in entry}
    if missing:
        lines += ["", "Not exported as transformers sequence classifiers:", ""]
        lines += [f"- {member.specs[task].display}: {why}." for task, why in missing.items()]
    return lines


def _limits_section(member: MemberConfig) -> list[str]:
    used = ", ".join(member.augment)
    lines = [
        "## Limits and biases", "",
        "- English only, and only the domains it was trained on: movie-review sentences (SST), "
        "Quora questions and the STS-B genres (news, captions, forums). Expect lower and "
        "unmeasured quality elsewhere.",
        "- It inherits the biases of its pretrained backbone and of its training data: the "
        "labels of SST, Quora and STS-B reflect their annotators, and the BEST-FiT authors "
        "disagreed with some SST labels. Their models leaned on word overlap for pairs "
        "(sentences sharing most words called duplicates or highly similar even when one word "
        "flips the meaning, as \"stocks open lower\" / \"stocks close lower\"); expect the "
        "same here.",
        "- Augmentation can amplify bias. Choosing extra reviews by their closeness to SST's "
        "label centroids reinforces whatever associations SST already has (for instance films "
        "with stereotyped narratives being rated higher), and reviews labelled by an LLM carry "
        "the LLM's own biases. "
        + (f"This member was trained with: {used}." if used
           else "This member used no augmented data."),
        "- Not for decisions about people or with real stakes: not to rank or recommend content "
        "without a bias audit (it could reduce the exposure of stories about under-represented "
        "groups), and not to profile or target people, e.g. by scoring their posts about a "
        "politicised film.",
        "- The BEST-FiT authors suggest auditing SST's embedding space for distances between "
        "sentences about different groups, human review of a sample of the data, and "
        "adversarial debiasing; none of these was done for this model.",
    ]
    return lines


def model_card(member: MemberConfig, metrics: Mapping[str, Any],
               seeds: Mapping[str, Any] | None = None,
               exports: Mapping[str, Any] | None = None) -> str:
    """The card of ``member`` trained with seed ``member.train.seed``: ``metrics`` is that
    run's ``metrics.json``; ``seeds`` (the ensemble's ``seeds[<member>]``: ``per_seed`` and
    ``aggregate``) adds the mean ± sd over the member's seeds and makes the front matter report
    the means."""
    n = _seed_count(seeds)
    title = (f"# bestfit `{member.name}`" + (f", {n} seeds" if n else
                                             f", seed {member.train.seed}"))
    tasks = ", ".join(member.specs[t].display for t in member.tasks)
    intro = (f"{backbone_text(member.model.backbone)} fine-tuned by bestfit on {tasks}"
             + (" at once" if len(member.tasks) > 1 else "")
             + ", following the BEST-FiT recipe (multitask fine-tuning with task schedules, "
               "SMART, PCGrad and data augmentation; see Training for what this member used).")
    body = [title, "", intro, "",
            *_tasks_section(member), "",
            *_results_section(member, metrics, seeds), "",
            *_training_section(member, metrics), "",
            *_data_section(member, metrics), "",
            *_usage_section(member, exports), "",
            *_limits_section(member), "",
            "## License", "",
            "`other`: the weights derive from the backbone (its license applies) and from SST, "
            "Quora Question Pairs and STS-B, each under its own terms; check them before you "
            "redistribute or deploy the model."]
    return _card(front_matter(member, metrics, seeds, exports), body)


def _card(meta: Mapping[str, Any], body: list[str]) -> str:
    front = yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(body) + "\n"


def classifier_card(member: MemberConfig, task: str, metrics: Mapping[str, Any],
                    exports: Mapping[str, Any]) -> str:
    """The card of ``task``'s exported sequence classifier (``transformers/<task>/``)."""
    spec, entry = member.specs[task], exports["transformers"][task]
    directory = f"{member_directory(member)}/{entry['path']}"
    facts = task_card(spec)
    labels = ("one output, `problem_type: regression`" if spec.kind == "regression" else
              f"labels {', '.join(f'{k} {n}' for k, n in enumerate(spec.class_names()))}")
    body = [f"# bestfit `{member.name}`: {spec.display}, seed {member.train.seed}", "",
            f"The {spec.display} head of the bestfit member `{member.name}` (its model "
            f"directory, `../..`, has the card with the training, data and limits) with its "
            f"encoder, as a "
            f"transformers `{entry['architecture']}` that computes the head exactly: "
            f"{facts['input']} in, {labels}.", "",
            *_classifier_usage(member, task, directory)]
    score = _scores(member, metrics, None).get(task)
    if score is not None:
        body += ["", f"Dev {spec.metric_name}: {score:.4f} (the member's, seed "
                     f"{member.train.seed})."]
    return _card(front_matter(member, metrics, None, exports, task=task), body)


def write_cards(directory: Path, member: MemberConfig, metrics: Mapping[str, Any],
                exports: Mapping[str, Any] | None) -> None:
    """The member's card in its model ``directory`` and each exported classifier's in its own."""
    (directory / CARD_FILE).write_text(model_card(member, metrics, exports=exports))
    for task, entry in _classifiers(exports).items():
        (directory / entry["path"] / CARD_FILE).write_text(
            classifier_card(member, task, metrics, exports))
