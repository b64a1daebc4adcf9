"""Scoring shortcuts (answer-only LM head, batched option scoring) equal the naive computation."""

from __future__ import annotations

import pytest
import torch

from loragen.data.tokenize import IGNORE
from loragen.eval.scoring import answer_cross_entropy, answer_loss, score_requests


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_answer_only_head_equals_full_logits_loss(tiny, arch):
    model = tiny(arch).model
    ids = torch.randint(5, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = IGNORE
    labels[1, 10:] = IGNORE
    with torch.no_grad():
        full = answer_cross_entropy(model(input_ids=ids).logits, labels)
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state
        assert answer_loss(model, hidden, labels).item() == pytest.approx(full.item(), abs=1e-5)


def _alone(model, context, continuation):
    """The naive computation: one forward of context + continuation, summed log-probabilities."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(logp[len(context) - 1 :].gather(-1, torch.tensor(continuation)[:, None]).sum())


@pytest.mark.parametrize("arch, sliding", [("qwen2", False), ("llama", False), ("gemma", False), ("llama", True)])
def test_batched_request_scoring_equals_scoring_each_request_alone(tiny, arch, sliding, monkeypatch):
    """Padding and context sharing change no scored position: many ragged requests, some sharing a context, in
    one padded batch (and in several) score as each does alone."""
    from loragen.eval import scoring

    model = tiny(arch).model
    # sliding-window models read each request whole instead of sharing contexts through the cache
    monkeypatch.setattr(scoring, "_sliding_window", lambda model: sliding)
    gen = torch.Generator().manual_seed(1)
    requests = []
    for n_context, n_continuation in [(6, 2), (1, 1), (13, 4), (3, 7), (9, 1), (6, 2)]:
        context = torch.randint(5, 200, (n_context,), generator=gen).tolist()
        requests.append((context, torch.randint(5, 200, (n_continuation,), generator=gen).tolist()))
    expected = [_alone(model, c, t) for c, t in requests]
    requests += [(requests[0][0], [7]), (requests[2][0], [9, 10, 11])]  # options sharing a context
    expected += [_alone(model, c, t) for c, t in requests[-2:]]
    for rows in (16, 2, 1):  # one batch; several batches; one context at a time
        assert score_requests(model, requests, max_rows=rows) == pytest.approx(expected, abs=1e-4)
    assert score_requests(model, []) == []


def test_option_scoring_picks_the_option_the_model_prefers(tiny):
    model = tiny("llama").model
    prompt = [3, 4, 5]
    with torch.no_grad():
        favourite = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    least = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmin())
    scores = score_requests(model, [(prompt, [least]), (prompt, [favourite])])
    assert scores[1] > scores[0]


def test_pairs_are_encoded_as_the_harness_encodes_them(tiny):
    """Trailing spaces move to the continuation; continuation tokens are those of the whole text."""
    from loragen.data.tokenize import encode_pair

    tok = tiny("llama").tokenizer
    context, continuation = encode_pair(tok, "Question: why?\nAnswer: ", "because")
    assert context == tok("Question: why?\nAnswer:")["input_ids"]
    assert context + continuation == tok("Question: why?\nAnswer: because")["input_ids"]
