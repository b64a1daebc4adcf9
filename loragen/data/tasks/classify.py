"""Classification datasets of the many-task suite, each asked as lm-evaluation-harness asks it where the
harness has the task (``harness`` names it), else in a documented formulation of loragen's own.

Each task turns a row into named ``fields`` and a class index; ``template`` (the question with its answer
cue, e.g. "... True or False?\\nAnswer:") is the input, ``words`` the continuations scored, in class order,
and ``plain`` the same content without the cue, which the label-renaming families ask (so only their
instruction says what an answer means). Local files are read into the schema of the dataset's hub copy.

| task | local files | harness task | classes (``words``) |
|---|---|---|---|
| rte | SuperGLUE jsonl | ``sglue_rte`` | True (entailment), False |
| cb | SuperGLUE jsonl | ``cb`` | True, False, Neither |
| qnli | GLUE TSV (dev only: carved) | ``qnli`` | yes (entailment), no |
| esnli | e-SNLI line-aligned dev files (carved) | ``mnli``'s prompt | True, Neither, False |
| mrpc | GLUE TSV | ``mrpc`` | no, yes (paraphrase) |
| stsb | GLUE TSV | none | 0 .. 5 (score rounded) |
| wic | WiC data + gold | ``wic`` | no, yes (same sense) |
| sst2 | ``stsa.binary`` lines | ``sst2`` | negative, positive |
| trec | ``COARSE:fine question`` lines | none | the six coarse classes |
| ag_news | CSV (test only: carved) | none | world, sports, business, science |
| mc_taco | TSV, no header | ``mc_taco`` | no, yes (plausible) |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from loragen.data.jsonrows import Row
from loragen.data.tasks.base import HubSource, Item, Malformed, TaskSpec, get_str, normalize_space
from loragen.data.tasks.tabular import read_aligned, read_labelled_lines, read_table

Fields = tuple[dict[str, str], int]


@dataclass
class LabelTask(TaskSpec):
    """A classification task: ``row_fields(row, file_label) -> (fields, class index)`` (local formats other than
    JSON / JSONL through ``TaskSpec.reader``)."""

    words: tuple[str, ...] = ()
    template: str = ""
    plain_template: str = ""
    ordinal: bool = False
    row_fields: Callable[[dict[str, Any], str | None], Fields] | None = None
    answer_kind: str = "option_text"
    headline: str = "acc"
    shot_splits: tuple[str, ...] = ("train",)
    cloze: str = "{question}"

    def parse_row(self, row: dict[str, Any], label: str | None) -> Item:
        if not isinstance(row, dict):
            raise Malformed(f"a record must be an object, got {type(row).__name__}")
        assert self.row_fields is not None  # every LabelTask names its row parser
        values, index = self.row_fields(row, label)
        if not 0 <= index < len(self.words):
            raise Malformed(f"class {index} is outside the {len(self.words)} classes")
        word = self.words[index]
        return Item(
            self.template.format(**values), word, self.words, index, word, plain=self.plain_template.format(**values)
        )


def label_index(raw: Any, names: dict[str, int], what: str = "label") -> int:
    """A class given by name (``entailment``) or by number (hub rows) -> its index."""
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, int):
        return raw
    text = str(raw).strip() if raw is not None else ""
    if text in names:
        return names[text]
    if text.lstrip("-").isdigit():
        return int(text)
    raise Malformed(f"{what} {raw!r} is not one of {', '.join(names)}")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


# ------------------------------------------------------------------------------------------ NLI


def _premise_hypothesis(row: dict[str, Any], label: str | None, names: dict[str, int]) -> Fields:
    return (
        {"premise": get_str(row, "premise"), "hypothesis": get_str(row, "hypothesis")},
        label_index(row.get("label", label), names),
    )


def _rte(row: dict[str, Any], label: str | None) -> Fields:
    return _premise_hypothesis(row, label, {"entailment": 0, "not_entailment": 1})


def _cb(row: dict[str, Any], label: str | None) -> Fields:
    return _premise_hypothesis(row, label, {"entailment": 0, "contradiction": 1, "neutral": 2})


def _qnli(row: dict[str, Any], label: str | None) -> Fields:
    return (
        {"question": get_str(row, "question"), "sentence": get_str(row, "sentence")},
        label_index(row.get("label", label), {"entailment": 0, "not_entailment": 1}),
    )


def _esnli(row: dict[str, Any], label: str | None) -> Fields:
    values, index = _premise_hypothesis(row, label, {"entailment": 0, "neutral": 1, "contradiction": 2})
    values["hypothesis"] = _sentence(values["hypothesis"])  # as the harness's mnli prompt
    return values, index


def _esnli_files(path: Path) -> list[Row]:
    """``.../s1.SPLIT`` names the four line-aligned files of a split (premise, hypothesis, label,
    the first explanation)."""
    split = path.name.split(".", 1)[1]
    rows = read_aligned(
        {
            "premise": path,
            "hypothesis": path.with_name(f"s2.{split}"),
            "label": path.with_name(f"labels.{split}"),
            "explanation_1": path.with_name(f"preproc1_expl_1.{split}"),
        }
    )
    return rows


NLI_PROMPT = "{premise}\nQuestion: {hypothesis} True or False?\nAnswer:"
PAIR_PLAIN = "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:"
LICENSE_SUPERGLUE = (
    "License not stated in the copy (SuperGLUE distribution of {what}); research use, check before redistributing."
)

RTE = LabelTask(
    name="rte",
    words=("True", "False"),
    template=NLI_PROMPT,
    plain_template=PAIR_PLAIN,
    row_fields=_rte,
    description="Decide whether the hypothesis follows from the premise.",
    harness="sglue_rte",
    files={"train": "rte/train.jsonl", "val": "rte/val.jsonl", "test": "rte/val.jsonl"},
    hub=HubSource("aps/super_glue", "rte", {"train": "train", "val": "validation", "test": "validation"}),
    license=LICENSE_SUPERGLUE.format(what="the PASCAL RTE data"),
    notes="val and test are both the public validation set (SuperGLUE's test labels are hidden).",
)
CB = LabelTask(
    name="cb",
    words=("True", "False", "Neither"),
    row_fields=_cb,
    plain_template=PAIR_PLAIN,
    template="{premise}\nQuestion: {hypothesis}. True, False, or Neither?\nAnswer:",
    harness="cb",
    description="Decide whether the hypothesis follows from the premise, contradicts it, or neither.",
    files={"train": "cb/train.jsonl", "val": "cb/val.jsonl", "test": "cb/val.jsonl"},
    hub=HubSource("aps/super_glue", "cb", {"train": "train", "val": "validation", "test": "validation"}),
    license=LICENSE_SUPERGLUE.format(what="the CommitmentBank"),
    max_shots=2,
    notes="val and test are both the public validation set (56 items); premises are long: at most 2 shots.",
)
QNLI = LabelTask(
    name="qnli",
    words=("yes", "no"),
    row_fields=_qnli,
    harness="qnli",
    template="{question}\n{sentence}\nQuestion: Does this response answer the question?\nAnswer:",
    plain_template="Question: {question}\nSentence: {sentence}\nAnswer:",
    description="Decide whether the sentence answers the question.",
    files={"train": "qnli/dev.tsv"},
    carve=500,
    reader=partial(read_table, delimiter="\t", quoted=False),
    hub=HubSource("nyu-mll/glue", "qnli", {"train": "train", "val": "validation", "test": "validation"}),
    license="License: CC BY-SA 4.0 (built from SQuAD). Adapted data is share-alike.",
    notes="Only GLUE's dev split is available locally: val/test are 500 items carved from it, train is the rest.",
)
ESNLI = LabelTask(
    name="esnli",
    words=("True", "Neither", "False"),
    row_fields=_esnli,
    harness="mnli (its prompt, on SNLI items)",
    template="{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
    plain_template=PAIR_PLAIN,
    description="Decide whether the hypothesis follows from the premise, contradicts it, or neither.",
    files={"train": "esnli/s1.dev"},
    carve=500,
    reader=_esnli_files,
    hub=HubSource("esnli", None, {"train": "train", "val": "validation", "test": "test"}),
    license="License: e-SNLI MIT; SNLI CC BY-SA 4.0 (share-alike).",
    notes="Only the preprocessed (tokenised) SNLI dev files are available locally: val/test are 500 items carved "
    "from them, train is the rest. The explanations are kept in the rows, not asked.",
)


# ------------------------------------------------------------------------------------------ sentence pairs


def _mrpc(row: dict[str, Any], label: str | None) -> Fields:
    values = {
        "sentence1": get_str(row, "sentence1" if "sentence1" in row else "#1 String"),
        "sentence2": get_str(row, "sentence2" if "sentence2" in row else "#2 String"),
    }
    return values, label_index(row.get("label", row.get("Quality", label)), {"0": 0, "1": 1})


def _stsb(row: dict[str, Any], label: str | None) -> Fields:
    raw: Any = row.get("label", row.get("score", label))  # anything: what is not a number is Malformed
    try:
        score = float(raw)
    except (TypeError, ValueError):
        raise Malformed(f"score {raw!r} is not a number") from None
    if not 0.0 <= score <= 5.0:
        raise Malformed(f"score {score} is outside 0..5")
    return {"sentence1": get_str(row, "sentence1"), "sentence2": get_str(row, "sentence2")}, int(score + 0.5)


def _wic(row: dict[str, Any], label: str | None) -> Fields:
    sentence1, sentence2 = get_str(row, "sentence1"), get_str(row, "sentence2")
    try:
        word = sentence1[int(row["start1"]) : int(row["end1"])]
    except (KeyError, TypeError, ValueError):
        raise Malformed("missing or invalid start1/end1") from None
    if not word.strip():
        raise Malformed("start1/end1 select no word of sentence1")
    raw = row.get("label", label)
    return {"sentence1": sentence1, "sentence2": sentence2, "word": word}, label_index(raw, {"F": 0, "T": 1})


def _wic_files(path: Path) -> list[Row]:
    """WiC's ``X.data.txt`` (word, PoS, index1-index2, sentence 1, sentence 2; tokenised) beside its
    ``X.gold.txt`` (T/F), as hub rows: the word's character span in sentence 1 (``start1``/``end1``)."""
    gold = path.with_name(path.name.replace(".data.txt", ".gold.txt"))
    rows: list[Row] = []
    for where, row in read_aligned({"data": path, "label": gold}):
        if isinstance(row, Malformed):
            rows.append((where, row))
            continue
        parts = row["data"].split("\t")
        if len(parts) != 5:
            rows.append((where, Malformed(f"{len(parts)} fields, expected 5 (word, PoS, indices, two sentences)")))
            continue
        _, _, indices, sentence1, sentence2 = parts
        try:
            index = int(indices.split("-")[0])
            tokens = sentence1.split(" ")
            start = len(" ".join(tokens[:index])) + (1 if index else 0)
            end = start + len(tokens[index])
        except (ValueError, IndexError):
            rows.append((where, Malformed(f"word index {indices!r} is not in sentence 1")))
            continue
        rows.append(
            (
                where,
                {
                    "sentence1": sentence1,
                    "sentence2": sentence2,
                    "start1": start,
                    "end1": end,
                    "label": row["label"].strip(),
                },
            )
        )
    return rows


PAIRS_PLAIN = "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nAnswer:"

MRPC = LabelTask(
    name="mrpc",
    words=("no", "yes"),
    row_fields=_mrpc,
    harness="mrpc",
    plain_template=PAIRS_PLAIN,
    template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both sentences mean the same "
    "thing?\nAnswer:",
    description="Decide whether the two sentences mean the same thing.",
    files={"train": "mrpc/train.tsv", "val": "mrpc/dev.tsv", "test": "mrpc/dev.tsv"},
    reader=partial(read_table, delimiter="\t", quoted=False),
    hub=HubSource("nyu-mll/glue", "mrpc", {"train": "train", "val": "validation", "test": "validation"}),
    license="License unclear (Microsoft Research Paraphrase Corpus terms; no licence text with the data): "
    "research use, check before redistributing.",
    notes="val and test are both GLUE's dev split (test labels are hidden).",
)
STSB = LabelTask(
    name="stsb",
    words=("0", "1", "2", "3", "4", "5"),
    row_fields=_stsb,
    ordinal=True,
    plain_template=PAIRS_PLAIN,
    template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: On a scale from 0 to 5, how similar "
    "are the two sentences?\nAnswer:",
    description="Rate how similar the two sentences are in meaning, from 0 (unrelated) to 5 (equivalent).",
    files={"train": "stsb/train.tsv", "val": "stsb/dev.tsv", "test": "stsb/dev.tsv"},
    reader=partial(read_table, delimiter="\t", quoted=False),
    hub=HubSource("nyu-mll/glue", "stsb", {"train": "train", "val": "validation", "test": "validation"}),
    license="License: per source (see stsb/LICENSE.txt of the STS benchmark); research use.",
    notes="lm-evaluation-harness has no STS-B task: loragen asks for the similarity score rounded to an integer "
    "(six classes 0-5, the continuation scored), so acc is exact agreement with the rounded gold score.",
)
WIC = LabelTask(
    name="wic",
    words=("no", "yes"),
    row_fields=_wic,
    harness="wic",
    reader=_wic_files,
    template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Is the word '{word}' used in the same "
    "way in the two sentences above?\nAnswer:",
    plain_template="Word: {word}\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nAnswer:",
    description="Decide whether the word is used with the same meaning in both sentences.",
    files={"train": "wic/train.data.txt", "val": "wic/dev.data.txt", "test": "wic/dev.data.txt"},
    hub=HubSource("aps/super_glue", "wic", {"train": "train", "val": "validation", "test": "validation"}),
    license="License: CC BY-NC 4.0 -- NON-COMMERCIAL use only (WiC website).",
    non_commercial=True,
    notes="val and test are both the dev split (test labels are hidden). Local sentences are tokenised.",
)


# ------------------------------------------------------------------------------------------ single texts


def _sst2(row: dict[str, Any], label: str | None) -> Fields:
    return {"sentence": get_str(row, "sentence")}, label_index(row.get("label", label), {"0": 0, "1": 1})


TREC_CLASSES = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")  # the hub's coarse_label order


def _trec(row: dict[str, Any], label: str | None) -> Fields:
    raw = row.get("coarse_label", label)
    return {"text": get_str(row, "text")}, label_index(raw, {c: i for i, c in enumerate(TREC_CLASSES)}, "class")


def _sst2_line(line: str) -> tuple[str, str]:
    label, text = line.split(" ", 1)
    return label, text


def _trec_line(line: str) -> tuple[str, str]:
    head, text = line.split(" ", 1)
    coarse, _, fine = head.partition(":")
    if not fine or coarse not in TREC_CLASSES:
        raise ValueError(head)
    return coarse, text


def _ag_news(row: dict[str, Any], label: str | None) -> Fields:
    if "text" in row:  # hub: label 0..3
        return {"text": get_str(row, "text")}, label_index(row.get("label", label), {})
    text = normalize_space(f"{get_str(row, 'Title')} {get_str(row, 'Description')}")
    return {"text": text}, label_index(row.get("Class Index"), {}) - 1  # local CSV: 1..4


def _mc_taco(row: dict[str, Any], label: str | None) -> Fields:
    values = {key: get_str(row, key) for key in ("sentence", "question", "answer")}
    return values, label_index(row.get("label", label), {"no": 0, "yes": 1})


# the LabelTask declarations (SST2 … MC_TACO, RTE … WIC above) are alike in shape only: each declares its own
# dataset's words, templates, files and licence; kept apart
SST2 = LabelTask(
    name="sst2",
    words=("negative", "positive"),
    row_fields=_sst2,
    harness="sst2",
    template="{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
    plain_template="Text: {sentence}\nAnswer:",
    description="Decide whether the sentence is positive or negative.",
    files={"train": "sst2/stsa.binary.train", "val": "sst2/stsa.binary.dev", "test": "sst2/stsa.binary.dev"},
    reader=partial(read_labelled_lines, split=_sst2_line, keys=("label", "sentence")),
    hub=HubSource("nyu-mll/glue", "sst2", {"train": "train", "val": "validation", "test": "validation"}),
    license="License unclear (SST has no explicit licence): research use, check before redistributing.",
    notes="Sentence-level SST-2 (Kim 2014's stsa.binary; lower-cased, tokenised); dev = GLUE SST-2 dev.",
)
TREC = LabelTask(
    name="trec",
    words=("abbreviation", "entity", "description", "person", "location", "number"),
    row_fields=_trec,
    template="Question: {text}\nWhat kind of thing does this question ask for: an abbreviation, an entity, a "
    "description, a person, a location or a number?\nAnswer:",
    plain_template="Question: {text}\nAnswer:",
    description="Classify what kind of answer the question asks for.",
    files={"train": "trec/train.txt", "test": "trec/test.txt", "val": "trec/test.txt"},
    reader=partial(read_labelled_lines, split=_trec_line, keys=("coarse_label", "text")),
    hub=HubSource("CogComp/trec", None, {"train": "train", "val": "test", "test": "test"}),
    license="License unknown (public research data, Li & Roth 2002): research use.",
    notes="lm-evaluation-harness has no TREC task: loragen asks for the coarse class as a word. val = test "
    "(TREC has no dev split).",
)
AG_NEWS = LabelTask(
    name="ag_news",
    words=("world", "sports", "business", "science"),
    row_fields=_ag_news,
    template="{text}\nQuestion: Is this news article about the world, sports, business or science?\nAnswer:",
    plain_template="Article: {text}\nAnswer:",
    description="Classify the topic of the news article.",
    files={"train": "ag_news/test.csv"},
    carve=500,
    reader=partial(read_table, delimiter=","),
    hub=HubSource("fancyzhx/ag_news", None, {"train": "train", "val": "test", "test": "test"}),
    license="License: research / NON-COMMERCIAL use (AG corpus readme).",
    non_commercial=True,
    notes="Only the test split is available locally: val/test are 500 items carved from it, train is the rest. "
    "lm-evaluation-harness has no AG News task (Sci/Tech is asked as 'science').",
)
MC_TACO = LabelTask(
    name="mc_taco",
    words=("no", "yes"),
    row_fields=_mc_taco,
    harness="mc_taco",
    template="{sentence}\nQuestion: {question}\nAnswer: {answer}\nPlausible:",
    plain_template="{sentence}\nQuestion: {question}\nCandidate answer: {answer}\nAnswer:",
    description="Decide whether the candidate answer to the temporal question is plausible.",
    files={"train": "mc_taco/dev_3783.tsv", "val": "mc_taco/test_9442.tsv", "test": "mc_taco/test_9442.tsv"},
    reader=partial(
        read_table, delimiter="\t", quoted=False, columns=("sentence", "question", "answer", "label", "category")
    ),
    hub=HubSource("CogComp/mc_taco", None, {"train": "validation", "val": "test", "test": "test"}),
    license="License not stated (check before redistributing); research use.",
    notes="MC-TACO has no train split: its dev file (3783 candidate rows) is the train split here, its test file "
    "(9442) val and test. One item per candidate answer.",
)

TASKS = [RTE, CB, QNLI, ESNLI, MRPC, STSB, WIC, SST2, TREC, AG_NEWS, MC_TACO]
