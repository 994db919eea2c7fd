"""Worker of ``test_ddp.py``: train each adapter method 3 steps under Lightning DDP (2 CPU processes, gloo) and
save every rank's trainable tensors to ``<out>/<method>-rank<r>.safetensors``; with ``--grad-checkpointing`` the
encoder is checkpointed (:func:`medpeft.models.enable_grad_checkpointing`).

Lightning's DDP launcher re-runs this file once for rank 1 (``LOCAL_RANK=1``), as it does ``scripts/train.py``.
Usage: ``python ddp_adapters.py OUT_DIR [--grad-checkpointing]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from medpeft.experiment.config import AdapterConfig
from medpeft.experiment.network import apply_finetuning
from medpeft.models import build_segmenter, enable_grad_checkpointing
from medpeft.training.module import SegmentationModule

OPTIONS = {"lora": {"rank": 2}, "trm": {"rank": 2}, "tcurlora": {"rank": 2}}


class SaveTrainable(pl.Callback):
    """At the end of training, each rank writes its own copy of the trainable tensors."""

    def __init__(self, path_pattern: str) -> None:
        self.path_pattern = path_pattern

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        tensors = {k: p.detach().contiguous() for k, p in module.named_parameters() if p.requires_grad}
        save_file(tensors, self.path_pattern.format(rank=trainer.global_rank))


def main(out: Path, grad_checkpointing: bool) -> None:
    for method, options in OPTIONS.items():
        pl.seed_everything(0, workers=True)
        net = build_segmenter("vit_tiny_patch16_224", in_channels=3, num_classes=2, img_size=32, decoder="linear")
        if grad_checkpointing:
            enable_grad_checkpointing(net.encoder)
        apply_finetuning(net, AdapterConfig(method=method, targets=["attn", "mlp"], **options))
        generator = torch.Generator().manual_seed(0)
        data = [
            {"image": torch.rand(3, 32, 32, generator=generator), "label": (torch.rand(1, 32, 32) > 0.5).long()}
            for _ in range(12)
        ]
        module = SegmentationModule(net, num_classes=2, lr=1e-2, encoder_lr=1e-1, warmup_steps=0)
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",  # gloo on CPU; find_unused_parameters stays False: every trainable tensor needs a grad
            max_steps=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[SaveTrainable(str(out / f"{method}-rank{{rank}}.safetensors"))],
        )
        # each rank gets its own half of the data (Lightning's DistributedSampler), so the ranks only agree if DDP
        # averages their gradients
        trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2, shuffle=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--grad-checkpointing" in sys.argv[2:])
