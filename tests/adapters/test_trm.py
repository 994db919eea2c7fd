"""TRM against dense references written entry by entry from METHODS.md section 2."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from medpeft.adapters import TRMConfig, TRMLayer, regularization_loss
from medpeft.adapters.trm import balanced_factors, identity_core, ring_matrix, ring_matrix_minus_identity


def little_endian(index: int, sizes: tuple[int, ...]) -> list[int]:
    """``i -> (i_1, ..., i_D)`` with ``i = i_1 + i_2 I_1 + ...``."""
    digits = []
    for size in sizes:
        digits.append(index % size)
        index //= size
    return digits


def dense_transform(cores: list[torch.Tensor]) -> torch.Tensor:
    sizes = tuple(core.shape[0] for core in cores)
    n = math.prod(sizes)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i, j in itertools.product(range(n), range(n)):
        product = torch.eye(cores[0].shape[2], dtype=torch.float64)
        for core, a, b in zip(cores, little_endian(i, sizes), little_endian(j, sizes)):
            product = product @ core[a, b].double()
        out[i, j] = torch.trace(product)
    return out


def dense_residual(out_cores: list[torch.Tensor], in_cores: list[torch.Tensor]) -> torch.Tensor:
    out_sizes, in_sizes = tuple(c.shape[0] for c in out_cores), tuple(c.shape[0] for c in in_cores)
    result = torch.zeros(math.prod(out_sizes), math.prod(in_sizes), dtype=torch.float64)
    for o, i in itertools.product(range(result.shape[0]), range(result.shape[1])):
        product = torch.eye(out_cores[0].shape[1], dtype=torch.float64)
        for core, a in zip(out_cores, little_endian(o, out_sizes)):
            product = product @ core[a].double()
        for core, a in zip(in_cores, little_endian(i, in_sizes)):
            product = product @ core[a].double()
        result[o, i] = torch.trace(product)
    return result


def randomized(layer: TRMLayer, seed: int = 0) -> TRMLayer:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return layer


@pytest.mark.parametrize("order, in_features, out_features, rank", [(2, 6, 4, 2), (3, 12, 8, 2), (3, 8, 6, 3)])
def test_dense_references_linear(order, in_features, out_features, rank):
    torch.manual_seed(0)
    layer = randomized(TRMLayer(nn.Linear(in_features, out_features), TRMConfig(rank=rank, order=order)))
    assert len(layer.transform_cores) == order
    assert all(tuple(c.shape) == (s, s, rank, rank) for c, s in zip(layer.transform_cores, layer.in_factors))
    transform = dense_transform(list(layer.transform_cores))
    residual = dense_residual(list(layer.residual_out_cores), list(layer.residual_in_cores))
    torch.testing.assert_close(layer.transform_matrix().double(), transform, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.residual_matrix().double(), residual, rtol=1e-5, atol=1e-6)
    weight = layer.base_layer.weight.double()
    expected = weight @ transform + residual  # y = (W0 T + Delta) x + b
    x = torch.randn(5, in_features)
    reference = x.double() @ expected.T + layer.base_layer.bias.double()
    torch.testing.assert_close(layer(x).double(), reference, rtol=1e-4, atol=1e-5)


def test_dense_reference_conv_mixes_input_channels():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, kernel_size=3, padding=1)
    layer = randomized(TRMLayer(conv, TRMConfig(rank=2, order=2)))
    transform = dense_transform(list(layer.transform_cores))  # [4, 4]: channels only
    residual = dense_residual(list(layer.residual_out_cores), list(layer.residual_in_cores))  # [6, 36]
    assert transform.shape == (4, 4) and residual.shape == (6, 36)
    x = torch.randn(2, 4, 7, 7)
    mixed = torch.einsum("ij,bjhw->bihw", transform, x.double())  # T x: a 1x1 channel mix first
    reference = nn.functional.conv2d(mixed, conv.weight.double(), conv.bias.double(), padding=1)
    reference = reference + nn.functional.conv2d(x.double(), residual.reshape(6, 4, 3, 3), padding=1)
    torch.testing.assert_close(layer(x).double(), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_identity_init_is_exact(order, rank):
    layer = TRMLayer(nn.Linear(24, 24), TRMConfig(rank=rank, order=order))
    assert torch.equal(layer.transform_matrix(), torch.eye(24))
    assert torch.count_nonzero(layer.residual_matrix()) == 0
    assert torch.count_nonzero(layer.delta_weight()) == 0


def test_identity_init_non_power_of_two_rank_within_roundoff():
    # 1/3 is not representable in binary floating point, so T = I holds to round-off only.
    layer = TRMLayer(nn.Linear(24, 24), TRMConfig(rank=3, order=3))
    assert (layer.transform_matrix() - torch.eye(24)).abs().max() <= 1e-6


def test_residual_init_scales():
    torch.manual_seed(0)
    rank = 4
    layer = TRMLayer(nn.Linear(512, 512), TRMConfig(rank=rank, order=3))
    assert torch.count_nonzero(layer.residual_out_cores[0]) == 0  # B_1 = 0 -> Delta = 0
    for core in list(layer.residual_out_cores)[1:] + list(layer.residual_in_cores):
        sigma = math.sqrt(rank) / (core.shape[0] * rank)
        assert abs(core.std().item() / sigma - 1) < 0.35


@pytest.mark.parametrize("regularizer", ["identity", "orthogonal"])
def test_regularizers_zero_at_init_and_match_dense_reference(regularizer):
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 12))
    from medpeft.adapters import adapter_layers, inject_adapters

    inject_adapters(model, "trm", ["0", "2"], rank=2, order=2, regularizer=regularizer)
    assert regularization_loss(model).item() == 0.0
    for layer in adapter_layers(model).values():
        randomized(layer, seed=3)
    expected = torch.zeros((), dtype=torch.float64)
    for layer in adapter_layers(model).values():
        for core in layer.transform_cores:
            size, rank = core.shape[0], core.shape[2]
            core = core.detach().double()
            if regularizer == "identity":
                for r, s in itertools.product(range(rank), range(rank)):
                    expected += torch.linalg.norm(core[:, :, r, s] - torch.eye(size, dtype=torch.float64) / rank)
            else:
                for i, j in itertools.product(range(size), range(size)):
                    gram = sum(torch.kron(core[i, l], core[j, l]) for l in range(size))
                    target = torch.ones(rank**2, rank**2, dtype=torch.float64) / rank**2 * (i == j)
                    expected += torch.linalg.norm(gram - target)
    loss = regularization_loss(model)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_orthogonal_cores_represent_t_times_t_transposed():
    torch.manual_seed(0)
    layer = randomized(TRMLayer(nn.Linear(12, 12), TRMConfig(rank=2, order=2)))
    gram_cores = []
    for core in layer.transform_cores:
        size, rank = core.shape[0], core.shape[2]
        gram_cores.append(torch.einsum("ilab,jlcd->ijacbd", core, core).reshape(size, size, rank**2, rank**2))
    transform = layer.transform_matrix()
    torch.testing.assert_close(ring_matrix(gram_cores), transform @ transform.T, rtol=1e-4, atol=1e-4)


def test_regularizer_gradient_finite_at_init():
    layer = TRMLayer(nn.Linear(12, 12), TRMConfig(rank=2, order=2))
    layer.regularization().backward()
    assert all(torch.isfinite(c.grad).all() for c in layer.transform_cores)


@pytest.mark.parametrize(
    "n, order, expected", [(768, 3, (8, 8, 12)), (192, 3, (4, 6, 8)), (3, 3, (1, 1, 3)), (12, 2, (3, 4))]
)
def test_balanced_factors(n, order, expected):
    assert balanced_factors(n, order) == expected


@pytest.mark.parametrize("sizes", [(5,), (2, 3), (2, 3, 4), (2, 2, 3, 2)])
@pytest.mark.parametrize("rank", [1, 3])
def test_transform_minus_identity_value_and_gradient(sizes, rank):
    """The telescoped ``T - I`` (one dense contraction, diagonal blocks added in place) against ``T - I`` from the
    entry-by-entry reference, and its gradient against autograd through the plain ``ring_matrix``."""
    generator = torch.Generator().manual_seed(0)
    cores = [
        (
            identity_core(s, rank, torch.float64, "cpu")
            + 0.1 * torch.randn(s, s, rank, rank, generator=generator, dtype=torch.float64)
        ).requires_grad_()
        for s in sizes
    ]
    n = math.prod(sizes)
    weights = torch.randn(n, n, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        ring_matrix_minus_identity(cores).double(), dense_transform(cores) - torch.eye(n, dtype=torch.float64)
    )
    (ring_matrix_minus_identity(cores).double() * weights).sum().backward()
    fast = [core.grad.clone() for core in cores]
    for core in cores:
        core.grad = None
    (ring_matrix(cores) * weights).sum().backward()
    for got, expected in zip(fast, (core.grad for core in cores)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
