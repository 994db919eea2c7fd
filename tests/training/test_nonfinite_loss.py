"""A NaN / infinite training loss stops the run before it touches a weight, or skips the batch when configured."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from medpeft.experiment.config import OptimConfig
from medpeft.models import build_segmenter
from medpeft.training.module import NonFiniteLossError, SegmentationModule
from medpeft.training.resume import RunCheckpoint


def _batches(poisoned: set[int], n: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(n):
        image = torch.rand(2, 1, 32, 32, generator=generator)
        if i in poisoned:
            image[0, 0, 0, 0] = float("nan")  # one bad pixel, as a corrupt file would give
        batches.append({"image": image, "label": (torch.rand(2, 1, 32, 32, generator=generator) > 0.5).long()})
    return batches


def _fit(poisoned: set[int], policy: str) -> tuple[SegmentationModule, dict[str, torch.Tensor], pl.Trainer]:
    torch.manual_seed(0)
    net = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32, decoder="linear")
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    module = SegmentationModule(net, num_classes=2, lr=1e-2, warmup_steps=0, nonfinite_loss=policy)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(_batches(poisoned), batch_size=None))
    return module, before, trainer


def test_stop_raises_naming_the_step() -> None:
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, optimizer step 2.*nonfinite_loss: skip"):
        _fit({2}, "stop")


def test_stop_keeps_every_weight_as_it_was() -> None:
    torch.manual_seed(0)
    net = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32, decoder="linear")
    module = SegmentationModule(net, num_classes=2, lr=1e-2, warmup_steps=0)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    with pytest.raises(NonFiniteLossError):
        module.training_step(_batches({0})[0], 0)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key  # the BatchNorm statistics too: the forward saw NaN


def test_stop_writes_last_checkpoint_with_the_state_before_the_bad_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32, decoder="linear")
    module = SegmentationModule(net, num_classes=2, lr=1e-2, warmup_steps=0, nonfinite_loss="stop")
    states: list[dict[str, torch.Tensor]] = []

    class RecordState(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: object) -> None:
            states.append({k: v.detach().clone() for k, v in pl_module.net.state_dict().items()})

    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[RecordState(), RunCheckpoint(tmp_path, every_n_steps=0)],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    with pytest.raises(NonFiniteLossError):
        trainer.fit(module, train_dataloaders=DataLoader(_batches({2}), batch_size=None))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2
    for key, value in states[-1].items():  # the state after batch 1, statistics included
        assert torch.equal(saved["state_dict"][f"net.{key}"], value), key


def test_skip_drops_the_bad_batches_and_counts_them() -> None:
    module, before, _ = _fit({1, 3}, "skip")
    assert module.skipped_batches == 2
    after = module.net.state_dict()
    assert all(torch.isfinite(v.float()).all() for v in after.values())
    assert not torch.equal(after["decoder.head.weight"], before["decoder.head.weight"])  # the good ones trained


def test_skipped_batches_change_no_weight() -> None:
    module, before, trainer = _fit({0, 1, 2, 3}, "skip")
    assert module.skipped_batches == 4 and trainer.global_step == 4  # the schedule still advances
    for key, value in module.net.state_dict().items():
        assert torch.equal(value, before[key]), key  # BatchNorm statistics too: the forward saw NaN


def test_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="nonfinite_loss.*'stop', 'skip'"):
        OptimConfig(nonfinite_loss="ignore")
