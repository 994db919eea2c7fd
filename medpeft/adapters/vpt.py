"""VPT-deep: learnable prompt tokens in every adapted block (Jia et al., ECCV 2022, arXiv 2203.12119).

Each wrapped block ``b_l`` of a plain ViT (preset ``blocks``) holds its own prompts ``P_l: [p, D]``. Its input
tokens ``x = [x_prefix, x_patch]`` (``x_prefix``: the ``n`` class / register tokens, timm's ``num_prefix_tokens`` of
the ViT) are run as

``[y_prefix, y_prompt, y_patch] = b_l([x_prefix, P_l, x_patch])``, output ``[y_prefix, y_patch]``

so the prompts attend and are attended in that block, and their outputs are dropped: the block's output, and so
every feature map a decoder reads (timm's ``forward_intermediates``), keeps the original token layout. With every
block wrapped this is the paper's VPT-deep (block ``l``'s prompt outputs are replaced by ``P_{l+1}``); wrapping only
the first block (``blocks=[0]``) differs from VPT-shallow, whose prompts would travel through all later blocks.
Prompts get no position embedding (they are inserted after it).

Initialisation: ``uniform(-v, v)`` with ``v = sqrt(6 / (C k_h k_w + D))``, the Xavier bound of the ViT's patch
embedding (``C`` input channels, ``k_h x k_w`` patch), as in the reference code (github.com/KMnP/vpt, which fixes
``C = 3``); ``v = sqrt(3 / D)`` when the ViT has no ``patch_embed.proj``. Unlike the zero-initialised adapters, the
output is **not** the base model's at initialisation: the prompts take part in attention from the start.
Optional dropout on the prompts, as in the reference code.

Only blocks of timm's ``vision_transformer`` (ViT, DeiT, DINOv2 with or without registers) take prompts: the blocks
of Swin and SAM (windows of ``[B, H, W, C]``), ConvNeXt and EfficientNet (``[B, C, H, W]``) have no token sequence,
and EVA's rotary and BEiT's relative positions are sized for the patch tokens; a ViT without ``num_prefix_tokens``
above the block is refused too.

Not mergeable: prompts are extra tokens, not weights.
Trainable numbers per wrapped block: ``p D``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.models import vision_transformer
from torch import nn

from medpeft.adapters.base import AdapterModule, Matches, register_adapter, replace_module

__all__ = ["PROMPTABLE_BLOCKS", "VPTBlock", "VPTConfig", "prefix_token_owner"]

#: The block classes of timm's plain ViT, whose input and output are ``[B, N, D]`` token sequences.
PROMPTABLE_BLOCKS: tuple[type, ...] = tuple(
    getattr(vision_transformer, name)
    for name in ("Block", "ResPostBlock", "ParallelScalingBlock", "DiffParallelScalingBlock", "ParallelThingsBlock")
    if hasattr(vision_transformer, name)
)


@dataclass
class VPTConfig:
    """Options of VPT-deep.

    Args:
        prompts: prompt tokens ``p`` per block.
        dropout: dropout probability on the prompts.
    """

    prompts: int = 10
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, int) or isinstance(self.prompts, bool) or self.prompts <= 0:
            raise ValueError(f"vpt prompts must be a positive int, got {self.prompts!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vpt dropout must be in [0, 1), got {self.dropout!r}")


class VPTBlock(AdapterModule):
    """A frozen ViT block run with its own prompt tokens inserted after the prefix tokens; see the module docstring.

    Args:
        base_layer: the frozen block, ``[B, N, D] -> [B, N, D]``.
        prefix_tokens: ``n``, the class / register tokens in front of the patch tokens.
        config: prompt count and dropout.
        bound: the prompts are drawn from ``uniform(-bound, bound)``.
    """

    def __init__(self, base_layer: nn.Module, prefix_tokens: int, config: VPTConfig, bound: float) -> None:
        super().__init__()
        first = next(layer for layer in base_layer.modules() if isinstance(layer, nn.Linear))
        self.base_layer = base_layer.requires_grad_(False)
        self.prefix_tokens, self.dim = prefix_tokens, first.in_features
        weight = first.weight
        self.vpt_prompt = nn.Parameter(torch.empty(config.prompts, self.dim, device=weight.device, dtype=weight.dtype))
        nn.init.uniform_(self.vpt_prompt, -bound, bound)
        self.vpt_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Run the block on ``[prefix, prompts, patches]`` and drop the prompt rows.

        Args:
            x: tokens ``[B, N, D]``, prefix tokens first.
            attn_mask: must be ``None`` (a mask would need rows and columns for the prompts).
            **kwargs: passed to the block (``is_causal``).

        Returns:
            ``[B, N, D]``, the block's outputs at the original tokens.
        """
        if attn_mask is not None:
            raise ValueError(
                "vpt does not support attention masks (NaFlex-style padding): the prompts have no entries"
            )
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"vpt expects tokens [B, N, {self.dim}], got {list(x.shape)}")
        n, p = self.prefix_tokens, self.vpt_prompt.shape[0]
        prompts = self.vpt_dropout(self.vpt_prompt).to(x.dtype).expand(x.shape[0], -1, -1)
        out = self.base_layer(torch.cat([x[:, :n], prompts, x[:, n:]], dim=1), **kwargs)
        return torch.cat([out[:, :n], out[:, n + p :]], dim=1)


def vpt_refusal(name: str, module: nn.Module) -> str | None:
    """Why ``module`` cannot take prompts (``None`` when it can): it must be a block of timm's plain ViT."""
    if isinstance(module, PROMPTABLE_BLOCKS):
        return None
    kind = f"{type(module).__module__}.{type(module).__qualname__}"
    return (
        f"{name!r}, a {kind}; vpt inserts prompt tokens into the [B, N, D] token sequence of a plain "
        "ViT block (timm vision_transformer: ViT, DeiT, DINOv2), which this is not (Swin / SAM blocks take "
        "[B, H, W, C] windows, ConvNeXt / EfficientNet [B, C, H, W] maps; EVA / BEiT positions cover only the patch "
        "tokens)"
    )


def prefix_token_owner(root: nn.Module, name: str) -> nn.Module | None:
    """The nearest module above ``name`` in ``root`` (``root`` included) with an integer ``num_prefix_tokens``."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        owner = root.get_submodule(".".join(parts[:depth]))
        prefix = getattr(owner, "num_prefix_tokens", None)
        if isinstance(prefix, int) and not isinstance(prefix, bool):
            return owner
    return None


def _prompt_bound(owner: nn.Module, dim: int) -> float:
    """``sqrt(6 / (fan_in + D))`` with ``fan_in`` the patch embedding's ``C k_h k_w`` (``D`` without one)."""
    proj = getattr(getattr(owner, "patch_embed", None), "proj", None)
    weight = getattr(proj, "weight", None)
    fan_in = weight[0].numel() if isinstance(weight, torch.Tensor) and weight.ndim == 4 else dim
    return math.sqrt(6.0 / (fan_in + dim))


@register_adapter(
    "vpt",
    VPTConfig,
    size_knob="prompts",
    merge_refusal="prompts are extra tokens, not weights",
    refuse=vpt_refusal,
    default_targets=("blocks",),
    summary="VPT-deep: learnable prompt tokens in every block of a plain ViT (Jia et al. 2022)",
)
def apply_vpt(root: nn.Module, matches: Matches, config: VPTConfig) -> None:
    """Replace every matched block of ``root`` by a :class:`VPTBlock`; every block is checked before any changes.

    Raises:
        ValueError: a block has no ViT with ``num_prefix_tokens`` above it.
    """
    plans = []
    for name, module, _pattern in matches:
        owner = prefix_token_owner(root, name)
        if owner is None:
            raise ValueError(
                f"vpt needs the number of class / register tokens in front of the patch tokens, but no module above "
                f"{name!r} has timm's num_prefix_tokens; inject into the ViT (or a module holding it)"
            )
        dim = next(layer for layer in module.modules() if isinstance(layer, nn.Linear)).in_features
        plans.append((name, module, owner.num_prefix_tokens, _prompt_bound(owner, dim)))
    for name, module, prefix_tokens, bound in plans:
        replace_module(root, name, VPTBlock(module, prefix_tokens, config, bound))
