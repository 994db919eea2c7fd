"""The LightningModule that trains and validates a built segmentation network.

It follows Lightning's ``backbone_image_classifier.py`` example: the network is a plain ``nn.Module`` built
(and, for PEFT, injected with adapters) outside and handed in; this module only adds the loss, the optimizer and
schedule, and the validation Dice (MONAI's ``DiceMetric`` in its per-batch call -> ``aggregate()`` -> ``reset()``
cycle) that selects the checkpoint. Held-out testing lives in :mod:`medpeft.evaluation`.

Two rules keep training honest:

* **Frozen means frozen.** With ``freeze_encoder_norm`` (every method but ``full``, unless the config adapts the
  statistics) the encoder's BatchNorm layers stay in eval mode whenever the module is put in train mode, so their
  running statistics never move: the pre-trained file plus the adapter and decoder reproduce the trained network.
* **Selection scores what the test scores.** Validation Dice counts a false positive on an image (or slice) whose
  class is absent as 0 and an empty prediction there as 1 (``DiceMetric(ignore_empty=False)``); MONAI's default
  would skip such images, so checkpoints that paint lesions into normal scans would be preferred.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from monai.metrics import DiceMetric
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medpeft.adapters import prepare_adapters, regularization_loss, step_adapters
from medpeft.experiment.config import LossConfig

__all__ = ["NonFiniteLossError", "SegmentationModule", "warmup_cosine"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (``optim.nonfinite_loss: stop``)."""


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to ``min_lr_ratio``.

    Warmup starts at ``1 / warmup_steps`` rather than 0 so that the first optimizer step is not wasted.

    Args:
        step: Optimizer steps taken so far (0 for the first step).
        warmup_steps: Length of the linear warmup; 0 disables it.
        total_steps: All optimizer steps of the run; the cosine ends here.
        min_lr_ratio: Multiplier reached at ``total_steps`` (and kept after it).

    Returns:
        The factor that ``LambdaLR`` multiplies the peak learning rate by.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _PlusBatchDice(nn.Module):
    """``DiceCELoss`` plus ``weight`` times a Dice loss over the whole batch (``loss.lambda_dice_batch``)."""

    def __init__(self, dice_ce: DiceCELoss, weight: float, options: dict[str, Any]) -> None:
        super().__init__()
        self.dice_ce = dice_ce
        self.weight = weight
        self.batch_dice = DiceLoss(
            to_onehot_y=True,
            softmax=True,
            batch=True,
            include_background=options.get("include_background", True),
            smooth_nr=options.get("smooth_nr", 1e-5),
            smooth_dr=options.get("smooth_dr", 1e-5),
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.dice_ce(logits, labels) + self.weight * self.batch_dice(logits, labels)


class SegmentationModule(pl.LightningModule):
    """Train and validate a segmentation network with Dice+CE loss; validation Dice (MONAI) selects checkpoints.

    Loss is MONAI's ``DiceCELoss(to_onehot_y=True, softmax=True)`` plus ``reg_weight`` times the adapters'
    :func:`~medpeft.adapters.regularization_loss` (non-zero for TRM only). Only parameters with
    ``requires_grad=True`` are optimized (AdamW; no weight decay on 1-D parameters: biases, norms, scales),
    with a per-step linear-warmup + cosine schedule. Metrics are computed on argmax predictions over the
    foreground classes only.

    Held-out testing is not a Lightning loop here: :func:`medpeft.evaluation.evaluate_split` scores the test split
    per case (per volume for 3D data), for ``scripts/train.py`` and ``scripts/evaluate.py`` alike.

    Args:
        net: The segmenter, with ``net.encoder`` (where adapters live) and ``forward(x [B, C, H, W]) -> logits
            [B, K, H, W]``; already frozen / injected as the fine-tuning method requires.
        num_classes: ``K``, classes including background.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay for matrices and kernels.
        warmup_steps: Warmup length; a value ``< 1`` is a fraction of ``trainer.estimated_stepping_batches``.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        reg_weight: Weight of the adapter regularization term.
        encoder_lr: Peak learning rate of the trainable encoder parameters (adapters, or every encoder weight for
            ``full``); ``None`` uses ``lr``. Decoder and head always use ``lr``.
        lora_b_lr_ratio: LoRA+ (Hayou et al., 2024): LoRA's ``B`` factors train at ``encoder_lr`` times this, the ``A``
            factors at ``encoder_lr``. ``1`` is plain LoRA.
        freeze_encoder_norm: Keep the encoder's BatchNorm layers in eval mode during training (running statistics
            unchanged).
        loss_options: Keyword arguments of ``DiceCELoss`` beyond ``to_onehot_y`` and ``softmax`` (``batch``,
            ``include_background``, ``lambda_dice``, ``lambda_ce``, ``smooth_nr``, ``smooth_dr``), plus
            ``lambda_dice_batch``, the weight of an added batch Dice term; ``None``: the config's defaults
            (:class:`~medpeft.experiment.config.LossConfig`).
        nonfinite_loss: What a NaN or infinite training loss does. Either way the BatchNorm running statistics
            that batch's forward moved are put back first, so nothing of it stays in the network. ``"stop"`` raises
            :class:`NonFiniteLossError` before any weight is touched (``last.ckpt`` then holds the state just
            before the batch); ``"skip"`` drops the batch (no backward, no weight update; the learning-rate
            schedule still advances), counts it in ``skipped_batches`` and logs ``train/skipped_batches``.
            Skipping is for one process: under DDP every rank must step together.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_steps: float = 0.05,
        min_lr_ratio: float = 0.01,
        reg_weight: float = 1e-3,
        encoder_lr: float | None = None,
        lora_b_lr_ratio: float = 1.0,
        freeze_encoder_norm: bool = False,
        loss_options: dict[str, Any] | None = None,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        options = LossConfig().dice_ce_options() if loss_options is None else dict(loss_options)
        batch_weight = options.pop("lambda_dice_batch", 0.0)
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, **options)
        self.loss = dice_ce if not batch_weight else _PlusBatchDice(dice_ce, batch_weight, options)
        self.val_dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=False)
        self.skipped_batches = 0
        # Lightning 2.x does not call train() when fit starts: it keeps (and after validation restores) each
        # submodule's mode as found, so the frozen norms must be in eval mode from here on.
        self.train(self.training)

    def train(self, mode: bool = True) -> SegmentationModule:
        """Put the module in ``mode``; frozen encoder norms stay in eval mode whoever calls this."""
        super().train(mode)
        if mode and self.hparams.freeze_encoder_norm:
            for module in self.net.encoder.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        # labels: (B, 1, H, W) or (B, H, W) class indices -> (B, K, H, W) one-hot, the metrics' input contract
        labels = labels.reshape(labels.shape[0], *labels.shape[-2:]).long()
        return F.one_hot(labels, self.hparams.num_classes).permute(0, 3, 1, 2).float()

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.net(batch["image"])
        loss = self.loss(logits, batch["label"])
        return loss, self._one_hot(logits.argmax(dim=1)), self._one_hot(batch["label"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        # a non-finite batch must not leave its mark through the forward either (skipped, or stopping a run whose
        # last.ckpt is then written): keep the norm statistics the forward moves, to put them back
        saved = self._moving_norm_statistics()
        task_loss = self.loss(self.net(batch["image"]), batch["label"])
        loss = task_loss + self.hparams.reg_weight * regularization_loss(self.net.encoder)
        if not torch.isfinite(loss):
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
            return self._on_nonfinite_loss(loss, batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _moving_norm_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(buffer, copy)`` of the running statistics a training-mode forward will update (BatchNorm)."""
        return [
            (buffer, buffer.detach().clone())
            for module in self.net.modules()
            if isinstance(module, _BatchNorm) and module.training and module.track_running_stats
            for buffer in module.buffers(recurse=False)
        ]

    def _on_nonfinite_loss(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """Stop with a message naming where it happened, or skip the batch and count it (``nonfinite_loss``)."""
        where = f"epoch {self.current_epoch}, optimizer step {self.global_step}"
        if self.hparams.nonfinite_loss == "skip":
            self.skipped_batches += 1
            self.log(
                "train/skipped_batches", float(self.skipped_batches), on_step=True, batch_size=len(batch["image"])
            )
            rank_zero_warn(f"non-finite training loss ({loss.item()}) at {where}: batch skipped")
            return
        raise NonFiniteLossError(
            f"the training loss is {loss.item()} at {where}; no weight or statistic was updated with it, and "
            "checkpoints/last.ckpt holds the state just before this batch (--resume continues from it). Lower optim.lr / "
            "optim.encoder_lr, keep optim.grad_clip on, check the batch's images for NaN, or set "
            "optim.nonfinite_loss: skip to drop such batches"
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, pred, target = self._step(batch)
        self.val_dice(y_pred=pred, y=target)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["image"]))

    def on_validation_epoch_end(self) -> None:
        # DiceMetric gathers its buffers across ranks in aggregate(); an all-empty epoch aggregates to 0
        self.log("val/dice", self.val_dice.aggregate().item(), prog_bar=True, sync_dist=True)
        self.val_dice.reset()

    def on_fit_start(self) -> None:
        prepare_adapters(self.net.encoder, int(self.trainer.estimated_stepping_batches))  # AdaLoRA's schedule
        total = sum(p.numel() for p in self.net.parameters())
        trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        share = 100 * trainable / max(1, total)
        self.print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the optimizer step, gradients still present: AdaLoRA's rank allocator (a no-op for other methods)
        step_adapters(self.net.encoder, self.trainer.global_step)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: encoder (LoRA+: its ``B`` factors apart) or decoder/head learning rate, crossed with weight
        decay on matrices only."""
        encoder_ids = {id(p) for p in self.net.encoder.parameters()}
        encoder_lr = self.hparams.lr if self.hparams.encoder_lr is None else self.hparams.encoder_lr
        lora_b_ratio = self.hparams.get("lora_b_lr_ratio", 1.0)
        groups = []
        for param_name, p in self.net.named_parameters():
            if not p.requires_grad:
                continue
            part, lr = ("encoder", encoder_lr) if id(p) in encoder_ids else ("decoder", self.hparams.lr)
            if lora_b_ratio != 1.0 and ".lora_B." in param_name:
                part, lr = "encoder_lora_B", encoder_lr * lora_b_ratio
            decay = self.hparams.weight_decay if p.ndim >= 2 else 0.0
            name = part if p.ndim >= 2 else f"{part}_no_decay"  # unique names: LearningRateMonitor logs by name
            group = next((g for g in groups if g["name"] == name), None)
            if group is None:
                group = {"name": name, "lr": lr, "weight_decay": decay, "params": []}
                groups.append(group)
            group["params"].append(p)
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.hparams.lr)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the learning-rate schedule needs a finite run; set trainer.max_steps or max_epochs")
        warmup = self.hparams.warmup_steps
        warmup = int(warmup * total) if warmup < 1 else int(warmup)
        schedule = partial(
            warmup_cosine, warmup_steps=warmup, total_steps=int(total), min_lr_ratio=self.hparams.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
