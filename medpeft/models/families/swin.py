"""Swin Transformer (timm ``swin_transformer``): hierarchical, four stages at strides 4, 8, 16, 32.

timm returns Swin's maps channels-last; they are permuted to NCHW in :meth:`EncoderFamily.features`. The network is
built for ``data.image_size`` with a window that tiles the grid (:func:`swin_window_size`); relative-position bias
tables are resized to it on load by timm's ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from medpeft.models.families.base import EncoderFamily, register_family

__all__ = ["SWIN", "SwinFamily", "swin_window_size"]

# all timm Swin variants have four stages; window sizes are chosen against the third one
_SWIN_STAGES = 4


def swin_window_size(name: str, img_size: int) -> int:
    """Pick a Swin window size that tiles the patch grid of ``img_size`` without padding.

    timm 1.0.31 accepts any ``img_size`` for Swin, but when the window does not divide a stage's grid it pads
    the tokens with zeros *inside* the attention windows, and those padded tokens are attended to unmasked.
    Choosing a window that divides the third stage's grid (and hence the first two) avoids that; the fourth
    stage's grid is usually smaller than the window, where timm shrinks the window to the grid. Among the
    divisors the one closest to the pretrained window is taken (ties to the larger), so 224 px keeps 7.

    Args:
        name: timm Swin model name; the pretrained window and patch size are read from it (``window7``,
            ``patch4``), defaulting to 7 and 4.
        img_size: Input side length in pixels.

    Returns:
        The window size (square) to pass to timm.
    """
    ref = int(m.group(1)) if (m := re.search(r"window(\d+)", name)) else 7
    patch = int(m.group(1)) if (m := re.search(r"patch(\d+)", name)) else 4
    stage3_grid = max(1, img_size // patch // 2 ** (_SWIN_STAGES - 2))
    divisors = [d for d in range(1, stage3_grid + 1) if stage3_grid % d == 0]
    return min(divisors, key=lambda d: (abs(d - ref), -d))


class SwinFamily(EncoderFamily):
    """Swin encoders; see the module docstring."""

    name = "swin"
    models = "swin_*"
    timm_modules = ("swin_transformer",)
    auto_decoder = "unet"
    sized_by_image = True
    presets: ClassVar[dict[str, str]] = {
        "attn": "window attention of every block: qkv and proj",
        "mlp": "the block MLP: fc1, fc2",
        "conv": "none (the only convolution is the patch embedding)",
    }
    blocks = "blocks of all four stages in forward order: 0..11 on swin_tiny (2 + 2 + 6 + 2)"
    tcurlora = (
        "by shape, so per stage (widths differ): each stage's q, k, v and proj in one tensor, fc1 / fc2 one each"
    )
    example_config = "model.encoder=swin_tiny_patch4_window7_224"

    def timm_kwargs(self, name: str, img_size: int) -> dict[str, Any]:
        return {"img_size": img_size, "window_size": swin_window_size(name, img_size)}


SWIN = register_family(SwinFamily())
