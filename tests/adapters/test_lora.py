"""LoRA against Hugging Face peft's LoRA as an independent oracle."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medpeft.adapters import LoRAConfig, LoRALayer, adapter_layers, inject_adapters

peft = pytest.importorskip("peft")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, kernel_size=3, stride=2, padding=1)
        self.lin = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] -> [B, 5]
        return self.lin(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("rank, alpha", [(4, 8.0), (2, 3.0)])
def test_matches_peft_lora(rank, alpha):
    torch.manual_seed(0)
    base = TinyNet().eval()
    ours = copy.deepcopy(base)
    # "conv" alone would be the preset (ResNet / EfficientNet block convolutions), which matches nothing here
    assert sorted(inject_adapters(ours, "lora", ["re:conv", "lin"], rank=rank, alpha=alpha)) == ["conv", "lin"]
    reference = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=["conv", "lin"], lora_dropout=0.0),
    ).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            assert isinstance(layer, LoRALayer)
            layer.lora_B.weight.normal_(generator=generator)  # B is zero at init: make the test bite
            peft_layer = reference.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A.weight)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B.weight)
        x = torch.randn(4, 3, 8, 8, generator=generator)
        ours_out, peft_out = ours(x), reference(x)
        assert (ours_out - base(x)).abs().max() > 1e-3
        torch.testing.assert_close(ours_out, peft_out, rtol=1e-5, atol=1e-6)
        # The merged delta agrees with peft's own delta weight too.
        for name, layer in adapter_layers(ours).items():
            peft_layer = reference.base_model.model.get_submodule(name)
            torch.testing.assert_close(layer.delta_weight(), peft_layer.get_delta_weight("default"))


def test_lora_init_follows_the_paper():
    layer = LoRALayer(nn.Linear(64, 32), LoRAConfig(rank=4))
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1.0 / 64**0.5  # kaiming_uniform(a=sqrt(5)) on fan_in 64
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4
