"""peft's methods through medpeft's injection, freezing, counting, merging and adapter files."""

from __future__ import annotations

import pytest
import torch
from conftest import make_encoder, randomize_adapters

from medpeft.adapters import (
    adapter_parameters,
    inject_adapters,
    load_adapter,
    merge_adapters,
    prepare_adapters,
    regularization_loss,
    save_adapter,
    step_adapters,
    unmerge_adapters,
)
from medpeft.adapters.peft_methods import PEFT_METHODS, peft_tuner

peft = pytest.importorskip("peft")

TARGETS = {"vit": ["attn", "mlp"], "efficientnet": ["conv"]}
RANK = {"oft": 4, "boft": 4}  # block sizes dividing every targeted width; the others rank 4 too
CASES = [(m, f) for m in PEFT_METHODS for f in TARGETS if not (m == "vera" and f == "efficientnet")]


def _inject(method: str, family: str) -> tuple[torch.nn.Module, torch.Tensor, list[str]]:
    model, x = make_encoder(family)
    options = {} if PEFT_METHODS[method].size_knob is None else {"rank": RANK.get(method, 4)}
    names = inject_adapters(model, method, TARGETS[family], **options)
    return model, x, names


@pytest.mark.parametrize(("method", "family"), CASES)
def test_unchanged_at_init_and_merge_equals_unmerged(method, family):
    reference, x = make_encoder(family)
    model, _, names = _inject(method, family)
    with torch.no_grad():
        # HRA's init is an orthogonal product of reflections in pairs that cancel up to rounding
        torch.testing.assert_close(model(x), reference(x), atol=1e-4, rtol=0)
        randomize_adapters(model, scale=0.02)
        adapted = model(x)
        assert (adapted - reference(x)).abs().max() > 1e-4  # the random adapters change the output
        merge_adapters(model)
        torch.testing.assert_close(model(x), adapted, atol=1e-4, rtol=1e-4)
        unmerge_adapters(model)
        torch.testing.assert_close(model(x), adapted, atol=1e-4, rtol=1e-4)
    assert len(names) > 0


@pytest.mark.parametrize(("method", "family"), CASES)
def test_only_peft_tensors_train_and_every_one_gets_a_gradient(method, family):
    model, x, _ = _inject(method, family)
    randomize_adapters(model, scale=0.02)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(model)}
    model(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


@pytest.mark.parametrize(("method", "family"), CASES)
def test_adapter_file_round_trip_is_exact(method, family, tmp_path):
    model, x, _ = _inject(method, family)
    randomize_adapters(model, scale=0.02)
    save_adapter(model, tmp_path / "adapter.safetensors")
    fresh, _, _ = _inject(method, family)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        load_adapter(fresh, tmp_path / "adapter.safetensors")
        assert torch.equal(fresh(x), model(x))


def test_counts_follow_each_methods_formula():
    """Hand formulas on the ViT's qkv / proj / fc1 / fc2 (widths d = 192, 3 d and 4 d)."""
    shapes = [(576, 192), (192, 192), (768, 192), (192, 768)] * 12  # (out, in) per adapted layer
    r = 4

    def count(method: str, **options) -> int:
        model, _ = make_encoder("vit")
        inject_adapters(model, method, ["attn", "mlp"], **options)
        return sum(p.numel() for p in adapter_parameters(model))

    assert count("peft_lora", rank=r) == sum(r * (i + o) for o, i in shapes)
    assert count("dora", rank=r) == sum(r * (i + o) + o for o, i in shapes)  # plus a magnitude per output row
    assert count("loha", rank=r) == sum(2 * r * (i + o) for o, i in shapes)  # two LoRA-shaped pairs
    assert count("vera", rank=r) == sum(r + o for o, _ in shapes)  # lambda_d [r] and lambda_b [out]
    assert count("ia3") == sum(o for o, _ in shapes)  # one scale per output (none are feed-forward here)
    assert count("hra", rank=r) == sum(r * i for _, i in shapes)  # r Householder vectors of the input width
    assert count("adalora", rank=r) == sum(r * (i + o) + r for o, i in shapes)  # A, B and the singular values E


def test_peft_lora_through_the_new_path_equals_medpeft_lora():
    ours, x = make_encoder("vit")
    theirs, _ = make_encoder("vit")
    inject_adapters(ours, "lora", ["attn", "mlp"], rank=4, alpha=8.0)
    inject_adapters(theirs, "peft_lora", ["attn", "mlp"], rank=4, alpha=8.0)
    assert sum(p.numel() for p in adapter_parameters(ours)) == sum(p.numel() for p in adapter_parameters(theirs))
    randomize_adapters(ours, scale=0.05)
    with torch.no_grad():
        for name, layer in ours.named_modules():
            if hasattr(layer, "lora_A") and not isinstance(layer.lora_A, torch.nn.ModuleDict):
                peft_layer = theirs.get_submodule(name)
                peft_layer.lora_A["default"].weight.copy_(layer.lora_A.weight)
                peft_layer.lora_B["default"].weight.copy_(layer.lora_B.weight)
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)


def test_a_layer_type_peft_does_not_support_is_refused_naming_both():
    model, _ = make_encoder("efficientnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"Conv2d, which peft's vera does not support"):
        inject_adapters(model, "vera", ["conv"], rank=4)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_knob_value_peft_refuses_is_refused_before_training():
    model, _ = make_encoder("vit")
    with pytest.raises(ValueError, match=r"peft's oft refused"):
        inject_adapters(model, "oft", ["attn", "mlp"], rank=5)  # 5 divides no width of vit_tiny (192, 576, 768)


def test_adalora_allocator_prunes_to_its_target_rank_during_training():
    model, x = make_encoder("vit")
    inject_adapters(model, "adalora", ["attn"], rank=6)  # init_r 6 -> target_r 4 on 24 layers
    prepare_adapters(model, total_steps=20)
    config = peft_tuner(model).peft_config["default"]
    assert (config.tinit, config.tfinal, config.total_step) == (2, 4, 20)
    optimizer = torch.optim.SGD(adapter_parameters(model), lr=1e-2)
    for step in range(20):
        optimizer.zero_grad()
        loss = model(x).square().mean() + 1e-3 * regularization_loss(model)
        loss.backward()
        optimizer.step()
        step_adapters(model, step)
    kept = [int((layer.lora_E["default"] != 0).sum()) for layer in model.modules() if hasattr(layer, "lora_E")]
    assert len(kept) == 24 and sum(kept) == 4 * 24  # the allocator's budget: target_r per layer on average
    assert regularization_loss(model) > 0  # AdaLoRA's orthogonality term reaches the loss
