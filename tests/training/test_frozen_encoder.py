"""Training rules of SegmentationModule: frozen encoders stay frozen, selection scores empty masks, LR groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from medpeft.adapters import adapter_parameters, load_adapter, save_adapter
from medpeft.experiment.config import AdapterConfig
from medpeft.experiment.network import apply_finetuning
from medpeft.models import build_segmenter, encoder_state_dict_for_timm
from medpeft.training.module import SegmentationModule

ADAPTER_OPTIONS = {
    "decoder_only": {},
    "lora": {"rank": 2},
    "trm": {"rank": 2},
    "tcurlora": {"rank": 1},
}


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            # statistics far from the random-init encoder's (mean 0.5, not 0) so a drifting BatchNorm shows
            "image": torch.rand(4, 1, 32, 32, generator=generator) * 3 + 2,
            "label": (torch.rand(4, 1, 32, 32, generator=generator) > 0.7).long(),
        }
        for _ in range(n)
    ]


def _pretrained_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    source = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32)
    with torch.no_grad():  # BatchNorm scales away from 1, like a trained network's
        for module in source.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    path = tmp_path / "pretrained.safetensors"
    save_file(dict(encoder_state_dict_for_timm(source.encoder)), str(path))
    return path


def _network(pretrained: Path, method: str, adapt_norm: bool = False) -> torch.nn.Module:
    torch.manual_seed(1)
    net = build_segmenter("resnet18", pretrained=str(pretrained), in_channels=1, num_classes=2, img_size=32)
    options = ADAPTER_OPTIONS[method]
    apply_finetuning(net, AdapterConfig(method=method, targets=["conv"], adapt_norm=adapt_norm, **options))
    return net


def _fit(net: torch.nn.Module, freeze_encoder_norm: bool) -> None:
    module = SegmentationModule(net, num_classes=2, lr=1e-2, warmup_steps=0, freeze_encoder_norm=freeze_encoder_norm)
    trainer = pl.Trainer(
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, accelerator="cpu", devices=1,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=DataLoader(_batches(), batch_size=None))


def _rebuilt(
    pretrained: Path, method: str, trained: torch.nn.Module, tmp_path: Path, adapt_norm: bool
) -> torch.nn.Module:
    """pretrained file + adapter file + decoder weights, in a fresh network."""
    fresh = _network(pretrained, method, adapt_norm)
    if method != "decoder_only":
        save_adapter(trained.encoder, tmp_path / "adapter.safetensors", norm_stats=adapt_norm)
        load_adapter(fresh.encoder, tmp_path / "adapter.safetensors")
    fresh.decoder.load_state_dict(trained.decoder.state_dict())
    return fresh


@pytest.mark.parametrize("method", list(ADAPTER_OPTIONS))
def test_frozen_encoder_is_unchanged_and_reproducible(method: str, tmp_path: Path) -> None:
    pretrained = _pretrained_file(tmp_path)
    net = _network(pretrained, method)
    adapter_ids = {id(p) for p in adapter_parameters(net.encoder)}
    adapter_names = {name for name, p in net.encoder.named_parameters() if id(p) in adapter_ids}
    before = {k: v.clone() for k, v in net.encoder.state_dict().items() if k not in adapter_names}
    adapters_before = [p.detach().clone() for p in adapter_parameters(net.encoder)]
    _fit(net, freeze_encoder_norm=True)

    after = net.encoder.state_dict()
    changed = [key for key, value in before.items() if not torch.equal(value, after[key])]
    assert changed == [], f"frozen encoder tensors changed: {changed[:5]}"
    if method != "decoder_only":  # the adapters did train
        assert all(not torch.equal(p, q) for p, q in zip(adapter_parameters(net.encoder), adapters_before))

    x = _batches(1)[0]["image"]
    rebuilt = _rebuilt(pretrained, method, net, tmp_path, adapt_norm=False)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), net.eval()(x), rtol=0, atol=1e-6)


def test_adapted_norm_statistics_move_and_travel_with_the_adapter(tmp_path: Path) -> None:
    pretrained = _pretrained_file(tmp_path)
    net = _network(pretrained, "lora", adapt_norm=True)
    mean_before = net.encoder.model.bn1.running_mean.clone()
    _fit(net, freeze_encoder_norm=False)
    assert not torch.equal(net.encoder.model.bn1.running_mean, mean_before)

    x = _batches(1)[0]["image"]
    rebuilt = _rebuilt(pretrained, "lora", net, tmp_path, adapt_norm=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), net.eval()(x), rtol=0, atol=1e-6)


class _FixedPrediction(torch.nn.Module):
    """A 'network' predicting foreground exactly where ``mask`` is set: ``[B, 2, H, W]`` logits."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([1 - self.mask, self.mask], dim=1).float()


@pytest.mark.parametrize(("predicted_pixels", "expected"), [(0, 1.0), (3, 0.0)])
def test_validation_dice_scores_empty_masks(predicted_pixels: int, expected: float) -> None:
    """An empty mask predicted empty scores 1, a false positive 0; MONAI's default would skip both."""
    mask = torch.zeros(1, 8, 8)
    mask.view(-1)[:predicted_pixels] = 1
    module = SegmentationModule(_FixedPrediction(mask), num_classes=2)
    module.validation_step({"image": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1, 1, 8, 8, dtype=torch.long)}, 0)
    assert module.val_dice.aggregate().item() == expected


def test_encoder_and_decoder_learning_rates() -> None:
    net = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32)
    apply_finetuning(net, AdapterConfig(method="lora", targets=["conv"], rank=2))
    module = SegmentationModule(net, num_classes=2, lr=1e-3, encoder_lr=5e-3)
    groups = module.parameter_groups()
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert {by_id[id(p)]["lr"] for p in adapter_parameters(net.encoder)} == {5e-3}
    assert {by_id[id(p)]["lr"] for p in net.decoder.parameters()} == {1e-3}
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in net.parameters())
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim < 2 for p in g["params"]))


def test_lora_plus_trains_b_faster_than_a() -> None:
    net = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32)
    apply_finetuning(net, AdapterConfig(method="lora", targets=["conv"], rank=2))
    module = SegmentationModule(net, num_classes=2, lr=1e-3, encoder_lr=5e-3, lora_b_lr_ratio=16.0)
    by_id = {id(p): g["lr"] for g in module.parameter_groups() for p in g["params"]}
    lora = {name: p for name, p in net.encoder.named_parameters() if "lora_" in name}
    assert len(lora) == 2 * 16  # A and B of the 16 residual-block convolutions
    for name, p in lora.items():
        assert by_id[id(p)] == (5e-3 * 16.0 if ".lora_B." in name else 5e-3), name
    assert {by_id[id(p)] for p in net.decoder.parameters()} == {1e-3}
