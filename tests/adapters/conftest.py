"""Tiny random-init timm encoders shared by the adapter tests."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

# (model name, create_model kwargs, input size, presets to adapt, blocks to adapt). Random-init ResNets zero the
# last BN of every residual block (zero_init_last), which would hide any change inside the block. On Swin the
# blocks of stages 1-3 are adapted: stage 4's 3072-wide TRM transforms alone would double the suite's run time.
ENCODERS = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32}, 32, ["attn", "mlp"], None),
    "swin": ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 4}, 64, ["attn", "mlp"], [0, 2, 4, 9]),
    "resnet": ("resnet18", {"zero_init_last": False}, 64, ["conv"], None),
    # The families of medpeft.models.families, shrunk (width 64, two blocks) where the real model is ViT-B sized,
    # layer scales and head scales at 1 (their 1e-6 .. 1e-3 inits would leave outputs that adapters barely move):
    # ConvNeXt's pointwise MLPs, EfficientNet-Lite's pointwise convs (depthwise ones are refused), EVA-02's
    # separate q / k / v, SwiGLU and rotary positions, BEiT's attention that reads .weight with q / v biases,
    # DINOv2's registers at patch 14, SAM's windowed + global attention with relative positions and its neck.
    "convnext": ("convnext_atto", {"ls_init_value": 1.0}, 32, ["mlp"], None),
    "efficientnet": ("tf_efficientnet_lite0", {}, 32, ["conv"], None),
    "eva02": ("eva02_base_patch14_224", {"img_size": 28, "embed_dim": 64, "depth": 2, "num_heads": 2, "head_init_scale": 1.0}, 28,
              ["attn", "mlp"], None),
    "beit": ("beit_base_patch16_224", {"img_size": 32, "embed_dim": 64, "depth": 2, "num_heads": 2, "head_init_scale": 1.0, "init_values": None}, 32,
             ["attn", "mlp"], None),
    "dinov2": ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "depth": 2, "init_values": None}, 28, ["attn", "mlp"], None),
    "sam": ("samvit_base_patch16", {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2,
            "global_attn_indexes": (1,), "window_size": 2, "neck_chans": 32}, 64, ["attn", "mlp"], None),
}  # fmt: skip
#: Weight-layer targets per tiny family, for the low-rank baselines' tests (PiSSA, CURLoRA, LoTR).
TARGETS = {"vit": ["attn", "mlp"], "efficientnet": ["conv"], "resnet": ["conv"]}
METHOD_OPTIONS = {"lora": {"rank": 4, "alpha": 8.0}, "trm": {"rank": 2, "order": 3}, "tcurlora": {"rank": 2}}


def make_encoder(family: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A random-init timm model in eval mode and a matching input batch ``[2, 3, S, S]``."""
    name, kwargs, size, _, _ = ENCODERS[family]
    torch.manual_seed(seed)
    # No stochastic depth: a dropped residual branch would get no gradient by chance.
    model = timm.create_model(name, pretrained=False, num_classes=8, drop_path_rate=0.0, **kwargs).eval()
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))


def inject(model: nn.Module, family: str, method: str) -> list[str]:
    """Adapters of ``method`` on the family's targets, with the shared test options."""
    from medpeft.adapters import inject_adapters

    _, _, _, targets, blocks = ENCODERS[family]
    return inject_adapters(model, method, targets, blocks=blocks, **METHOD_OPTIONS[method])


@torch.no_grad()
def randomize_adapters(model: nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Give every adapter parameter random non-zero values (zero-init factors hide bugs)."""
    from medpeft.adapters import adapter_parameters

    generator = torch.Generator().manual_seed(seed)
    for parameter in adapter_parameters(model):
        parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


@pytest.fixture(params=sorted(ENCODERS))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=sorted(METHOD_OPTIONS))
def method(request: pytest.FixtureRequest) -> str:
    return request.param


class TinyNet(nn.Module):
    """A non-square conv (``stem``: 3 -> 64) and linear (``lin``: 64 -> 48), named so no preset matches them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1)
        self.lin = nn.Linear(64, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 3, H, W] -> [B, 48]
        return self.lin(self.stem(x).mean(dim=(2, 3)))
