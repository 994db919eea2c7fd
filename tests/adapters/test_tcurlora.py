"""tCURLoRA against an independent dense reference (full FFT, CUR selection, inverse FFT)."""

from __future__ import annotations

import pytest
import timm
import torch

from medpeft.adapters import adapter_layers, inject_adapters, tcurlora_groups
from medpeft.adapters.tcurlora import TCURGroup


def vit(depth: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=depth, num_classes=4).eval()


def reference_delta(weights: torch.Tensor, rank: int, dU: torch.Tensor) -> tuple[torch.Tensor, list, list]:
    """Dense tCURLoRA delta from the definition, over the FULL spectrum (no rfft shortcuts).

    Args:
        weights: stacked frontal slices ``[n3, n1, n2]``.
        rank: ``r``.
        dU: complex ``[n3 // 2 + 1, r, r]`` for the non-negative frequencies; the others are conjugates.
    """
    n3 = weights.shape[0]
    spectrum = torch.fft.fft(weights.double(), dim=0)  # [n3, n1, n2]
    col_scores = torch.stack([spectrum[k].abs().pow(2).sum(0).sqrt() for k in range(n3)]).sum(0)
    cols = sorted(torch.topk(col_scores, rank).indices.tolist())
    picked = spectrum[:, :, cols]
    row_scores = torch.stack([picked[k].abs().pow(2).sum(1).sqrt() for k in range(n3)]).sum(0)
    rows = sorted(torch.topk(row_scores, rank).indices.tolist())
    full_dU = [dU[k] if k <= n3 // 2 else dU[n3 - k].conj() for k in range(n3)]
    product = torch.stack([spectrum[k][:, cols] @ full_dU[k].cdouble() @ spectrum[k][rows, :] for k in range(n3)])
    return torch.fft.ifft(product, dim=0).real, cols, rows


def stored_dU(group: TCURGroup) -> torch.Tensor:
    """Complex ``[n3 // 2 + 1, r, r]`` from the stored parts: no imaginary part at 0 (and n3 / 2 when even)."""
    real, imag = group.tcur_dU_real.detach().double(), torch.zeros_like(group.tcur_dU_real, dtype=torch.float64)
    imag[1 : 1 + (group.n3 - 1) // 2] = group.tcur_dU_imag.detach()
    return torch.complex(real, imag)


def stacked_square_weights(model: torch.nn.Module) -> torch.Tensor:
    """q, k, v squares and proj of every block, in traversal order: ``[4 * depth, d, d]``."""
    slices = []
    for block in model.blocks:
        qkv = block.attn.qkv.weight.detach()
        d = qkv.shape[1]
        slices += [qkv[:d], qkv[d : 2 * d], qkv[2 * d :], block.attn.proj.weight.detach()]
    return torch.stack(slices)


@pytest.mark.parametrize("depth, rank", [(4, 1), (3, 2)])  # n3 = 16 (even) and 12; rank 1 and 2
def test_group_delta_matches_dense_reference(depth, rank):
    model = vit(depth)
    weights = stacked_square_weights(model)
    inject_adapters(model, "tcurlora", ["attn"], rank=rank)
    groups = tcurlora_groups(model)
    assert len(groups) == 1
    (group,) = groups.values()
    assert (group.n3, group.n1, group.n2) == weights.shape

    assert torch.count_nonzero(group.compute_delta()) == 0  # exact zero at init
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        group.tcur_dU_real.normal_(generator=generator)
        group.tcur_dU_imag.normal_(generator=generator)
    expected, cols, rows = reference_delta(weights, rank, stored_dU(group))
    assert group.col_index.tolist() == cols and group.row_index.tolist() == rows
    delta = group.compute_delta()
    assert not delta.is_complex()
    torch.testing.assert_close(delta.double(), expected, rtol=1e-4, atol=1e-5)

    # Each layer's delta_weight is its slices, q/k/v stacked back into the fused [3 d, d] layout.
    layers = adapter_layers(model)
    d = weights.shape[1]
    qkv_delta = layers["blocks.1.attn.qkv"].delta_weight()
    torch.testing.assert_close(qkv_delta.double(), expected[4:7].reshape(3 * d, d), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layers["blocks.1.attn.proj"].delta_weight().double(), expected[7], rtol=1e-4, atol=1e-5)

    # Every Fourier slice of the delta has rank <= r.
    spectrum = torch.fft.rfft(delta.double(), dim=0)
    ranks = torch.linalg.matrix_rank(spectrum, rtol=1e-6)
    assert int(ranks.max()) <= rank and int(ranks.max()) == rank


def test_members_in_traversal_order_with_split_qkv():
    model = vit(depth=2)
    inject_adapters(model, "tcurlora", ["mlp", "attn"], rank=1)
    groups = tcurlora_groups(model)
    square = next(g for g in groups.values() if g.n1 == g.n2)
    assert square.members == [
        ("blocks.0.attn.qkv", 0),
        ("blocks.0.attn.qkv", 1),
        ("blocks.0.attn.qkv", 2),
        ("blocks.0.attn.proj", 0),
        ("blocks.1.attn.qkv", 0),
        ("blocks.1.attn.qkv", 1),
        ("blocks.1.attn.qkv", 2),
        ("blocks.1.attn.proj", 0),
    ]
    shapes = sorted((g.n3, g.n1, g.n2) for g in groups.values())
    assert shapes == [(2, 192, 768), (2, 768, 192), (8, 192, 192)]


def test_grouping_by_name():
    model = vit(depth=3)
    inject_adapters(model, "tcurlora", ["blocks.*.attn.qkv", "blocks.*.attn.proj"], rank=1, grouping="name")
    sizes = sorted(g.n3 for g in tcurlora_groups(model).values())
    assert sizes == [3, 9]


def test_dU_receives_gradient_from_the_loss():
    model = vit(depth=2)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=1)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for group in tcurlora_groups(model).values():
        grad = group.tcur_dU_real.grad
        assert grad is not None and grad.abs().max() > 0
        if group.n3 > 2:  # imaginary parts learn too (the frequencies strictly between 0 and n3 / 2)
            assert group.tcur_dU_imag.grad.abs().max() > 0
        else:
            assert group.tcur_dU_imag is None


@pytest.mark.parametrize("n3", [1, 2, 3, 4, 5, 6, 7])
def test_every_trainable_number_receives_gradient(n3):
    """Real and imaginary parts at frequency 0 (and n3 / 2) would be dead numbers: irfft ignores them."""
    rank, frequencies = 2, n3 // 2 + 1
    generator = torch.Generator().manual_seed(n3)
    group = TCURGroup(torch.randn(n3, 6, 5, generator=generator), rank, [("layer", k) for k in range(n3)])
    parameters = list(group.parameters())
    expected = 2 * frequencies * rank**2 - (rank**2 if n3 % 2 else 2 * rank**2)
    assert sum(p.numel() for p in parameters) == expected == n3 * rank**2
    (group.compute_delta() * torch.randn(n3, 6, 5, generator=generator)).sum().backward()
    for parameter in parameters:
        assert parameter.grad is not None and torch.count_nonzero(parameter.grad) == parameter.numel()


def test_every_trainable_number_of_a_model_receives_gradient():
    model = vit(depth=3)  # groups of n3 = 12 (even: q, k, v, proj of 3 blocks) and n3 = 3 (odd: fc1, fc2)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=2)
    out = model(torch.randn(2, 3, 32, 32))
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    groups = tcurlora_groups(model).values()
    assert sorted(g.n3 for g in groups) == [3, 3, 12]
    for group in groups:
        for name, parameter in group.named_parameters():
            assert torch.count_nonzero(parameter.grad) == parameter.numel(), name


def test_group_factors_computed_once_per_forward(monkeypatch):
    model = vit(depth=3)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=1)
    calls = []
    for method in ("compute_delta", "compute_left_factors"):  # the dense and the activation form's factors
        original = getattr(TCURGroup, method)
        monkeypatch.setattr(TCURGroup, method, lambda self, f=original, m=method: calls.append((self, m)) or f(self))

    def check_calls() -> None:
        groups = list(tcurlora_groups(model).values())
        assert len(calls) == len(set(calls))  # each group builds each form's factors at most once
        assert {group for group, _ in calls} == set(groups) and len(groups) == 3

    model(torch.randn(1, 3, 32, 32))
    check_calls()
    calls.clear()
    model(torch.randn(1, 3, 32, 32)).sum().backward()  # a second pass recomputes (fresh graph)
    check_calls()


def test_conv_members_on_resnet():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval()
    inject_adapters(model, "tcurlora", ["conv"], blocks=[2, 3], rank=1)  # layer2.0 and layer2.1
    shapes = sorted((g.n3, g.n1, g.n2) for g in tcurlora_groups(model).values())
    assert shapes == [(1, 128, 576), (3, 128, 1152)]


def test_cache_is_dropped_when_a_forward_raises():
    model = vit(depth=2)
    inject_adapters(model, "tcurlora", ["attn", "mlp"], rank=1)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 5, 32, 32))  # wrong channel count: raises inside the forward
    layer = model.get_submodule("blocks.0.mlp.fc1")
    group = layer.group
    with torch.no_grad():
        group.tcur_dU_real.add_(0.5)  # as an optimizer step would
    assert not group.caching
    torch.testing.assert_close(layer.delta_weight(), layer.compute_delta_weight())
    assert layer.delta_weight().abs().sum() > 0  # the new dU, not the stale zero delta


def test_state_dict_loads_into_a_model_built_from_other_weights():
    """C and R follow the loaded frozen weights, not those the group was built from (a random-init rebuild)."""
    trained = vit(depth=2, seed=0)
    inject_adapters(trained, "tcurlora", ["attn", "mlp"], rank=4)
    with torch.no_grad():
        for group in tcurlora_groups(trained).values():
            group.tcur_dU_real.normal_(0.0, 1.0)
    rebuilt = vit(depth=2, seed=1)  # other frozen weights at injection
    inject_adapters(rebuilt, "tcurlora", ["attn", "mlp"], rank=4)
    rebuilt.load_state_dict(trained.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), trained(x))
