"""Scoring shortcuts (answer-only LM head, shared-prefix option scoring) equal the naive computation."""

from __future__ import annotations

import pytest
import torch

from loragen.data.tokenize import IGNORE
from loragen.models.scoring import answer_cross_entropy, answer_loss, score_options


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


@pytest.mark.parametrize("length_normalize", [True, False])
def test_shared_prefix_scoring_equals_scoring_each_option_alone(tiny, length_normalize):
    model = tiny("qwen2").model
    prompt = [10, 20, 30, 40, 50, 60]
    options = [[7, 8], [9], [11, 12, 13, 14]]
    fast = score_options(model, prompt, options, length_normalize)
    for j, option in enumerate(options):
        ids = torch.tensor([prompt + option])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        picked = logp[len(prompt) - 1:, :].gather(-1, torch.tensor(option)[:, None]).squeeze(-1)
        expected = picked.mean() if length_normalize else picked.sum()
        assert fast[j].item() == pytest.approx(expected.item(), abs=1e-4)


def test_option_scoring_picks_the_option_the_model_prefers(tiny):
    model = tiny("llama").model
    prompt = [3, 4, 5]
    with torch.no_grad():
        favourite = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmax())
    least = int(model(input_ids=torch.tensor([prompt])).logits[0, -1].argmin())
    scores = score_options(model, prompt, [[least], [favourite]])
    assert int(scores.argmax()) == 1
