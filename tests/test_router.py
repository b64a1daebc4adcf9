from __future__ import annotations

import pytest
import torch

from loragen.models.components.router import (
    Router,
    Routing,
    auxiliary_loss,
    cv_squared,
    importance_loss,
    switch_load_loss,
)


@pytest.mark.parametrize("noise", ["none", "gaussian", "gumbel"])
def test_topk_gates_are_a_softmax_over_k_selected_experts(noise):
    torch.manual_seed(0)
    router = Router(16, num_experts=6, top_k=2, num_layers=3, hidden=8, noise=noise)
    routing = router(torch.randn(5, 3, 16))
    assert routing.gates.shape == (5, 3, 6)
    assert ((routing.gates != 0).sum(-1) == 2).all()
    assert torch.allclose(routing.gates.sum(-1), torch.ones(5, 3))
    assert torch.equal(routing.gates.gather(-1, routing.indices), routing.weights)


def test_noise_only_in_training_and_eval_is_deterministic():
    torch.manual_seed(0)
    router = Router(16, num_experts=8, top_k=2, num_layers=4, hidden=0, noise="gaussian")
    with torch.no_grad():
        router.noise_proj.bias.fill_(3.0)  # large noise scale
    h = torch.randn(64, 4, 16)
    router.eval()
    a, b = router(h), router(h)
    assert torch.equal(a.gates, b.gates)
    router.train()
    assert not torch.equal(router(h).indices, a.indices)


def test_layer_embedding_makes_layers_route_differently():
    router = Router(8, num_experts=4, top_k=1, num_layers=3, hidden=0, layer_embedding=True, noise="none")
    with torch.no_grad():
        router.layer_embedding.weight.copy_(torch.eye(3, 8) * 10)
    same = torch.zeros(1, 3, 8)
    logits = router(same).logits
    assert not torch.allclose(logits[0, 0], logits[0, 1])


def test_balance_losses_separate_balanced_from_collapsed_routing():
    n = 4
    balanced_gates = torch.eye(n).repeat(2, 1).reshape(2, n, n)  # each expert used equally
    collapsed_gates = torch.zeros(2, n, n)
    collapsed_gates[..., 0] = 1.0
    assert importance_loss(balanced_gates).item() == pytest.approx(0.0, abs=1e-6)
    assert importance_loss(collapsed_gates).item() == pytest.approx(3.0, rel=1e-5)  # var/mean^2 of [8,0,0,0]

    def routing(gates):
        return Routing(gates, gates.topk(1, -1).indices, gates.topk(1, -1).values, torch.log(gates + 1e-4))

    assert switch_load_loss(routing(balanced_gates)).item() == pytest.approx(1.0, rel=1e-3)
    assert switch_load_loss(routing(collapsed_gates)).item() == pytest.approx(n, rel=1e-3)
    assert auxiliary_loss(routing(collapsed_gates), "none").item() == 0.0
    assert cv_squared(torch.tensor([5.0])).item() == 0.0


def test_importance_loss_has_gradients_through_router():
    router = Router(8, num_experts=4, top_k=2, num_layers=2, hidden=4, noise="none")
    loss = importance_loss(router(torch.randn(3, 2, 8)).gates)
    loss.backward()
    assert router.mlp[0].weight.grad is not None and router.mlp[0].weight.grad.abs().sum() > 0


def test_invalid_router_settings_are_rejected():
    with pytest.raises(ValueError, match="top_k"):
        Router(8, num_experts=2, top_k=3, num_layers=1)
    with pytest.raises(ValueError, match="noise"):
        Router(8, num_experts=2, top_k=1, num_layers=1, noise="uniform")
    with pytest.raises(ValueError, match="auxiliary"):
        auxiliary_loss(Routing(*(torch.zeros(1, 1, 2),) * 4), "l2")
