#!/usr/bin/env python
"""Reference pipeline: BUSI lesion segmentation with plain segmentation-models-pytorch and Hugging Face peft.

This is the competitor medpeft is measured against: one self-contained script, written the way a user of smp and
peft would write it, that imports nothing from medpeft. It reads the same cases as a medpeft run (that run's
``split.json``) and scores them with a rule stated here, so the two can be compared case by case.

Recipe:

* Data: BUSI in its official flat layout, ``<root>/Dataset_BUSI_with_GT/<class>/<class> (N).png`` with masks
  ``<class> (N)_mask.png``, ``_mask_1.png``, ... (merged by union); ``--data-root`` may also be that folder itself.
  Case ids are the image stems (``"benign (4)"``). Images are read as grey (``convert("L")``).
* Preprocessing: each image is resized to ``--size`` squared (bilinear, antialias, ``align_corners=False``) and
  scaled to [0, 1]; its mask with pixel-centre nearest sampling (``nearest-exact``), so both stay aligned. All
  splits are preloaded as tensors. The network sees ``(x - mean) / std`` with the statistics its encoder's weights
  expect (``ENCODERS``): for resnet18 0.449 / 0.226, ImageNet's averaged over RGB, the usual smp statistics for a
  one-channel resnet18 and the ones a medpeft source network was trained on; for tf_efficientnet_lite0 0.5 / 0.5.
* Model: ``smp.Unet(<--encoder>, encoder_weights=None, in_channels=1, classes=1)`` with smp's default decoder
  widths (``--decoder-channels``); ``--encoder`` is ``resnet18`` or ``tf_efficientnet_lite0`` (smp's
  ``tu-tf_efficientnet_lite0``); ``--init`` loads a medpeft export (``scripts/pretrain.py --with-decoder``) or a
  timm-named encoder file (``scripts/convert_weights.py``: the ImageNet Lite-0 weights) wherever names and shapes
  fit.
* Modes: ``full`` trains everything; ``decoder_only`` freezes the encoder; ``lora`` adds peft LoRA (``r = alpha =
  --rank``) to every conv inside the residual blocks (``encoder.layerN.K.conv1/conv2``; Lite-0: the pointwise
  ``conv_pw`` / ``conv_pwl`` of every block) and trains it with the decoder
  and head. In both frozen-encoder modes the encoder's BatchNorm layers stay in eval mode, so their running
  statistics are frozen as well.
* Training: smp ``DiceLoss(binary, from_logits)`` + ``BCEWithLogitsLoss``; AdamW (``--lr``, weight decay 1e-4);
  cosine decay per step over all steps; batch 16; ``--epochs``; random horizontal flips only; everything seeded.
* Selection and scoring: after each epoch the val split is scored and the best weights (mean Dice over all val
  images) are kept; the test split is scored once with them. Per image at ``--size`` px, prediction = logits > 0,
  Dice = 2|P&G| / (|P| + |G|); empty G and empty P counts 1 (an empty field in ``per_case.csv``), empty G with any
  predicted pixel counts 0.

Outputs in ``--out``: ``per_case.csv`` (``case,class,dice,iou,hd95,asd,gt_voxels,pred_voxels``, class 1; undefined
scores are empty fields as in medpeft's file; hd95 and asd are not computed) and ``metrics.json``, both atomically.

Usage:
    python benchmarks/reference_pipeline.py --data-root ../shared/real-data/busi256 --split RUN_DIR/split.json \\
        --mode full --epochs 30 --seed 0 --out runs/reference/full/seed0
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

__all__ = ["build_model", "load_busi_split", "main", "score"]

CLASSES = ("benign", "malignant", "normal")
COLUMNS = ("case", "class", "dice", "iou", "hd95", "asd", "gt_voxels", "pred_voxels")


class Encoder(NamedTuple):
    """An smp encoder choice: its smp name, the input statistics its weights expect (one grey channel), the
    regex of the layers LoRA adapts (peft fullmatches a str against each module name), and the prefix its timm
    weights take inside the smp model."""

    smp_name: str
    mean: float
    std: float
    lora_targets: str
    weights_prefix: str


ENCODERS = {
    # ImageNet's mean / std averaged over RGB, the usual smp statistics for a one-channel resnet18
    "resnet18": Encoder("resnet18", 0.449, 0.226, r"encoder\.layer[1-4]\.\d+\.conv[12]", "encoder."),
    # TF EfficientNet-Lite expects (x - 0.5) / 0.5 (timm's pretrained config); LoRA on its pointwise convolutions
    "tf_efficientnet_lite0": Encoder(
        "tu-tf_efficientnet_lite0", 0.5, 0.5, r"encoder\.model\.blocks\.\d+\.\d+\.conv_pwl?", "encoder.model."
    ),
}
BATCH_SIZE = 16
DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp's default U-Net widths
_MASK_RE = re.compile(r"^(.+)_mask(?:_\d+)?\.png$", re.IGNORECASE)


def _index_busi(root: Path) -> dict[str, tuple[Path, list[Path]]]:
    """Case id (image stem) -> (image file, mask files) for every image of the three class folders."""
    base = root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root
    if not all((base / name).is_dir() for name in CLASSES):
        raise FileNotFoundError(f"{root} holds neither Dataset_BUSI_with_GT nor the class folders {CLASSES}")
    index: dict[str, tuple[Path, list[Path]]] = {}
    for label_class in CLASSES:
        files = sorted((base / label_class).glob("*.png"))
        for path in files:
            if not _MASK_RE.match(path.name):
                index[path.stem] = (path, [])
        for path in files:
            if (match := _MASK_RE.match(path.name)) and match.group(1) in index:
                index[match.group(1)][1].append(path)
    return index


Split = tuple[list[str], torch.Tensor, torch.Tensor]  # case ids, images [N, 1, S, S], masks [N, 1, S, S]


def _read_grey(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("L")))  # [H, W] uint8


def load_busi_split(root: Path, split_file: Path, size: int) -> dict[str, Split]:
    """Each split as (case ids, images float32 [N, 1, S, S] in [0, 1], masks bool [N, 1, S, S])."""
    index, split = _index_busi(root), json.loads(split_file.read_text())
    if not all(isinstance(split.get(name), list) for name in ("train", "val", "test")):
        raise ValueError(f"{split_file} must hold lists 'train', 'val' and 'test' of case ids, got {sorted(split)}")
    missing = [case for name in ("train", "val", "test") for case in split[name] if case not in index]
    if missing:
        raise ValueError(f"{len(missing)} case id(s) of {split_file} not found under {root}: {missing[:10]}")
    out = {}
    for name in ("train", "val", "test"):
        images, masks = [], []
        for case in split[name]:
            image_path, mask_paths = index[case]
            if not mask_paths:
                raise FileNotFoundError(f"case {case!r} has no mask file next to {image_path}")
            grey = _read_grey(image_path)  # [H, W]
            union = torch.zeros_like(grey, dtype=torch.bool)
            for path in mask_paths:  # _mask, _mask_1, ...: further lesions of the same image
                union |= _read_grey(path) > 127  # masks hold {0, 255}
            image = F.interpolate(
                grey[None, None].float() / 255, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )  # [1, 1, S, S]
            mask = F.interpolate(union[None, None].float(), size=(size, size), mode="nearest-exact")
            images.append(image.clamp(0, 1))
            masks.append(mask > 0.5)
        if not images:
            raise ValueError(f"the {name} split of {split_file} is empty")
        out[name] = (list(split[name]), torch.cat(images), torch.cat(masks))
    return out


def _load_init(model: nn.Module, path: Path, encoder: str = "resnet18") -> tuple[int, int]:
    """Copy a medpeft export into the smp U-Net where names and shapes fit; return (loaded, skipped) counts.

    medpeft writes the encoder under plain timm names (``conv1.weight``, ``layer1.0.conv1.weight``, the same as
    smp's resnet18 encoder; ``conv_stem.weight``, ``blocks.0.0.conv_dw.weight`` inside smp's ``tu-`` wrapper), its
    U-Net decoder (smp's ``UnetDecoder``) under ``decoder.unet.`` and its 1x1 head as ``decoder.head``; the file is
    float16 (``scripts/pretrain.py``) or float32 (``scripts/convert_weights.py``). smp's segmentation head is a 3x3
    conv, so the head never fits. An RGB first convolution is summed over its input channels for the grey input
    (what timm's ``adapt_input_conv`` does for one channel).
    """
    own = model.state_dict()
    prefix = ENCODERS[encoder].weights_prefix
    fits, skipped = {}, []
    for key, value in load_file(str(path)).items():
        if key.startswith("decoder.head."):
            target = "segmentation_head.0." + key.removeprefix("decoder.head.")
        elif key.startswith("decoder."):
            target = "decoder." + key.removeprefix("decoder.").removeprefix("unet.")
        else:
            target = prefix + key.removeprefix("encoder.").removeprefix("model.")
        if target in own and value.ndim == 4 and value.shape[1] == 3 and own[target].shape[1] == 1:
            value = value.sum(1, keepdim=True)
        if target in own and own[target].shape == value.shape:
            fits[target] = value.to(own[target].dtype)  # float16 -> float32 (num_batches_tracked stays int64)
        else:
            skipped.append(key)
    if "segmentation_head.0.bias" in fits and "segmentation_head.0.weight" not in fits:  # smp's head is a 3x3 conv
        skipped.append("decoder.head.bias")  # a bias alone would be half a head: keep the fresh init
        del fits["segmentation_head.0.bias"]
    if not any(key.startswith("encoder.") for key in fits):
        raise ValueError(f"no encoder tensor of {path} fits smp's {encoder} (file keys: {sorted(skipped)[:5]} ...)")
    model.load_state_dict(fits, strict=False)
    print(f"--init {path}: loaded {len(fits)} tensors, skipped {len(skipped)}: {', '.join(skipped[:6])}")
    return len(fits), len(skipped)


def build_model(
    mode: str,
    rank: int,
    init: Path | None,
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
    encoder: str = "resnet18",
) -> nn.Module:
    """The U-Net on ``encoder`` (a key of ENCODERS), optionally initialised from ``init``, ``mode``'s parameters
    trainable."""
    model = smp.Unet(
        ENCODERS[encoder].smp_name,
        encoder_weights=None,
        in_channels=1,
        classes=1,
        decoder_channels=tuple(decoder_channels),
    )
    if init is not None:
        _load_init(model, init, encoder)
    if mode == "decoder_only":
        model.encoder.requires_grad_(False)
    elif mode == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        model = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=ENCODERS[encoder].lora_targets), model
        )
        # peft freezes every non-LoRA parameter; the decoder and head are new for the task and train in full
        model.decoder.requires_grad_(True)
        model.segmentation_head.requires_grad_(True)
    return model


def _set_train(model: nn.Module, mode: str) -> None:
    model.train()
    if mode != "full":  # frozen encoder: BatchNorm in eval mode, so its running mean/var are not updated either
        for module in model.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@torch.no_grad()
def score(
    model: nn.Module, images: torch.Tensor, masks: torch.Tensor, mean: float = 0.449, std: float = 0.226
) -> list[tuple[int, int, int, float]]:
    """Per image (|G|, |P|, |P&G|, Dice) with the rule of the module docstring (empty G and P -> Dice 1)."""
    model.eval()
    rows = []
    for start in range(0, len(images), 64):
        pred = model((images[start : start + 64] - mean) / std) > 0  # [B, 1, S, S]
        gt = masks[start : start + 64]
        counts = zip(gt.sum((1, 2, 3)).tolist(), pred.sum((1, 2, 3)).tolist(), (pred & gt).sum((1, 2, 3)).tolist())
        rows += [(g, p, i, 1.0 if g + p == 0 else 2 * i / (g + p)) for g, p, i in counts]
    return rows


def _write_atomic(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> tuple[dict, nn.Module]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="split.json of a medpeft run")
    parser.add_argument("--mode", choices=("full", "decoder_only", "lora"), default="full")
    parser.add_argument("--init", type=Path, default=None, help="medpeft export (.safetensors)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument(
        "--decoder-channels", type=int, nargs=5, default=DECODER_CHANNELS,
        help="U-Net decoder widths, deepest first (smp's default; a --init file's decoder must have the same)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder", choices=sorted(ENCODERS), default="resnet18",
        help="smp encoder (and the input statistics its weights expect); --init gives its weights",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    data = load_busi_split(args.data_root, args.split, args.size)
    model = build_model(args.mode, args.rank, args.init, args.decoder_channels, args.encoder)
    stats = ENCODERS[args.encoder].mean, ENCODERS[args.encoder].std
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    print(f"mode {args.mode}: {trainable:,} trainable of {sum(p.numel() for p in model.parameters()):,} parameters")

    _, train_x, train_y = data["train"]
    n = len(train_x)
    # batches of 16 in a random order; a last batch of one image is dropped (BatchNorm cannot train on one)
    steps_per_epoch = -(-n // BATCH_SIZE) - (n % BATCH_SIZE == 1 and n > 1)
    dice_loss, bce = smp.losses.DiceLoss(mode="binary", from_logits=True), nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(args.seed)
    best_dice, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        _set_train(model, args.mode)
        order = torch.randperm(n, generator=generator)
        bar = tqdm(
            [order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE] for i in range(steps_per_epoch)],
            desc=f"epoch {epoch}/{args.epochs}",
        )
        for batch in bar:
            x, y = train_x[batch], train_y[batch].float()  # [B, 1, S, S] each
            flip = (torch.rand(len(batch), generator=generator) < 0.5)[:, None, None, None]
            x, y = torch.where(flip, x.flip(-1), x), torch.where(flip, y.flip(-1), y)
            logits = model((x - stats[0]) / stats[1])
            loss = dice_loss(logits, y) + bce(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        val_dice = float(np.mean([row[3] for row in score(model, *data["val"][1:], *stats)]))
        if val_dice > best_dice:
            best_dice, best_epoch = val_dice, epoch
            best_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        tqdm.write(f"epoch {epoch}: val Dice {val_dice:.4f} (best {best_dice:.4f} at epoch {best_epoch})")
    train_seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)

    cases, test_x, test_y = data["test"]
    rows = score(model, test_x, test_y, *stats)
    lesion = [d for g, _, _, d in rows if g > 0]
    metrics = {
        "mode": args.mode, "encoder": args.encoder, "seed": args.seed, "epochs": args.epochs, "size": args.size, "lr": args.lr,
        "rank": args.rank if args.mode == "lora" else None, "init": str(args.init) if args.init else None,
        "trainable_params": trainable, "train_seconds": round(train_seconds, 2),
        "best_epoch": best_epoch, "best_val_dice": best_dice,
        "dice_all": float(np.mean([row[3] for row in rows])),
        "dice_lesion": float(np.mean(lesion)) if lesion else None,
        "normal_false_positives": sum(g == 0 and p > 0 for g, p, _, _ in rows),
        "n_test": len(rows), "n_normal": sum(g == 0 for g, _, _, _ in rows),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # csv's default \r\n line ends, as medpeft's DictWriter writes
    writer.writerow(COLUMNS)
    for case, (g, p, i, dice) in zip(cases, rows):
        undefined = g + p == 0  # nothing to segment and nothing predicted: Dice and IoU undefined (empty fields)
        writer.writerow([case, 1, "" if undefined else dice, "" if undefined else i / (g + p - i), "", "", g, p])
    _write_atomic(args.out / "per_case.csv", buffer.getvalue())
    _write_atomic(args.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    lesion_text = "n/a" if metrics["dice_lesion"] is None else f"{metrics['dice_lesion']:.4f}"
    print(
        f"reference {args.mode} seed {args.seed}: test Dice all {metrics['dice_all']:.4f}, lesion {lesion_text}, "
        f"normal FP {metrics['normal_false_positives']}/{metrics['n_normal']}, {trainable:,} trainable, "
        f"{train_seconds:.0f} s -> {args.out}"
    )
    return metrics, model


if __name__ == "__main__":
    main()
