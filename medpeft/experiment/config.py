"""Typed experiment configuration: the schema of ``configs/*.yaml`` and its loader.

A config file has the sections ``data``, ``model``, ``adapter``, ``optim`` and ``trainer`` plus the top-level
keys ``seed`` and ``output_dir``. Each section is a small pydantic model whose type hints *are* the schema:
pydantic (strict, unknown keys forbidden) rejects unknown keys, wrong types, bad choices and missing required keys
before any work starts, and each section checks its value ranges in an after-validator. Every problem becomes one
line of a :class:`ConfigError` naming the dotted key path and where the value came from (the file or the ``--set``
override); only those messages, the "did you mean" hints and the range checks are ours.

Example:
    .. code-block:: python

        cfg = load_config("configs/demo_lora.yaml", ["adapter.rank=8", "trainer.max_epochs=2"])
        save_config(cfg, run_dir / "config.yaml")  # resolved: defaults filled in, re-loadable as is
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medpeft.adapters import ADAPTERS, get_adapter_method
from medpeft.data.augmentation import build_augmentation, resolve_augmentation
from medpeft.io import write_text_atomic

__all__ = [
    "FLAT_METHOD_OPTIONS",
    "RESERVED_TRAINER_KEYS",
    "TRAINING_MODES",
    "AdapterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "adapt_norm_default",
    "config_from_text",
    "encoder_lr_scale",
    "is_adapter_method",
    "load_config",
    "method_names",
    "save_config",
    "write_text_atomic",
]

#: The two methods that inject nothing and only choose which parameters train; every other method is an adapter
#: registered in :data:`medpeft.adapters.ADAPTERS` (``medpeft/adapters/methods.py`` lists them).
TRAINING_MODES: tuple[str, ...] = ("full", "decoder_only")
#: Options of the ``adapter`` section that several methods share, passed to a method when its options dataclass has a
#: field of that name (other options go in ``adapter.options``).
FLAT_METHOD_OPTIONS: tuple[str, ...] = ("rank", "alpha", "dropout", "order", "residual", "regularizer", "grouping")


def is_adapter_method(method: str) -> bool:
    """Whether ``method`` injects adapters (is registered), as opposed to ``full`` and ``decoder_only``."""
    return method in ADAPTERS


def method_names() -> tuple[str, ...]:
    """Every value ``adapter.method`` accepts: the two training modes, then the registered adapters."""
    return (*TRAINING_MODES, *ADAPTERS)


def adapt_norm_default(method: str) -> bool:
    """``adapter.adapt_norm`` when the config leaves it null: whether the encoder's BatchNorm statistics follow the
    target data. ``True`` for every shipped method, chosen by measurement (docs/results.md, section 0): on the ACDC ->
    BUSI transfer, letting the statistics follow the target data raised validation and test Dice of ``decoder_only``
    on three seeds of three, and of the adapters with it; the statistics are then saved with the adapter
    (``adapter.safetensors``, the task file), so the saved files still rebuild the trained network.
    ``adapt_norm: false`` keeps a frozen encoder bit-for-bit as pre-trained. An adapter method states its own in its
    registry entry (:attr:`~medpeft.adapters.base.AdapterMethod.adapt_norm`)."""
    return True if method in TRAINING_MODES else get_adapter_method(method).adapt_norm


def encoder_lr_scale(method: str) -> float:
    """``optim.encoder_lr`` = ``optim.lr`` times this when the config leaves it unset: 1 for ``full`` and
    ``decoder_only``, otherwise the method's registry entry (:attr:`~medpeft.adapters.base.AdapterMethod.
    encoder_lr_scale`). The shipped adapters' factors are the rates validation Dice chose on two tasks
    (docs/results.md section 0, and the README's demo sweep): LoRA and TRM 10x the decoder's rate on both, tCURLoRA
    100x on both (its trainable cores are a few hundred numbers); the baselines default to 10x, and
    ``scripts/sweep.py --tune-lr`` chooses every method's rate on validation from one grid."""
    return 1.0 if method in TRAINING_MODES else get_adapter_method(method).encoder_lr_scale


#: Trainer arguments that :mod:`medpeft.training.run` sets itself, with the config key to use instead (if any).
RESERVED_TRAINER_KEYS: dict[str, str | None] = {
    "logger": None,
    "callbacks": None,
    "default_root_dir": "output_dir",
    "enable_checkpointing": None,
    "gradient_clip_val": "optim.grad_clip",
}


class ConfigError(ValueError):
    """An invalid experiment config; the message is one line naming the key path and its source."""


class _FieldError(ValueError):
    """A range error raised by a section's ``__post_init__``; the loader prefixes the section and adds the source.

    Args:
        key: Key path relative to the dataclass that raised, e.g. ``"rank"`` or ``"trainer.logger"``.
        problem: What is wrong, phrased to follow the quoted key, e.g. ``"must be >= 1, got 0"``.
        hint: Text shown after the source, e.g. ``"; allowed: ..."``.
    """

    def __init__(self, key: str, problem: str, hint: str = "") -> None:
        super().__init__(f"'{key}' {problem}{hint}")
        self.key = key
        self.problem = problem
        self.hint = hint


def _did_you_mean(key: str, allowed: list[str]) -> str:
    """``"; did you mean 'x'? allowed: a, b, ..."`` (the suggestion only when a name is close, by difflib)."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    suggestion = f"; did you mean '{close[0]}'?" if close else ""
    return f"{suggestion}; allowed: {', '.join(allowed)}"


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise _FieldError(key, problem)


class _Section(BaseModel):
    """A config section: strict types (no ``"8"`` for ``8``, no ``true`` for ``1``), no unknown keys; a section
    whose keys are all commented out (``model:`` reads as ``null``) is an empty mapping."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        return {} if data is None else data


class DataConfig(_Section):
    """The ``data`` section: which dataset and how it is split and batched.

    Args:
        dataset: Dataset name known to :func:`medpeft.data.build_dataset` (``"demo"``, ``"isic2018"``, ...).
        root: Directory holding the dataset files; ``None`` lets the dataset use its own default.
        image_size: Side length in pixels that images and masks are resized to. Defaults to ``128``.
        batch_size: Images per training step (per device). Defaults to ``8``.
        num_workers: DataLoader worker processes. Defaults to ``0`` (load in the main process).
        val_fraction: Fraction of the cases held out for validation. Defaults to ``0.15``.
        test_fraction: Fraction of the cases held out for the final test. Defaults to ``0.15``.
        split_seed: Seed of the train/val/test split. ``None`` resolves to the top-level ``seed``, so changing
            ``seed`` alone re-draws the split; pin it to compare training seeds on one split.
        augmentation: Training augmentation: ``None`` for the dataset's own modality policy (``dermoscopy`` for
            ISIC and the demo, ``ultrasound`` for BUSI, ``slices`` for ACDC and Synapse), another policy name
            (``none`` switches it off), or a list of albumentations steps ``[{HorizontalFlip: {p: 0.5}}, ...]``;
            see :mod:`medpeft.data.augmentation`. Defaults to ``None``.
        test_resolution: Where 2D test images are scored at the end of training: ``"train"`` (``S x S``, the
            default) or ``"native"`` (each image's own size, as the ISIC challenge scores); volumes are always scored
            on their own voxel grid. ``scripts/evaluate.py --resolution`` chooses per evaluation.
        bad_cases: ``"error"`` (default): a broken case (unreadable or truncated file, unexpected mask values, image
            and mask of different sizes) stops the run with a message naming the file; ``"skip"``: every case is read
            once before training, broken ones are left out of their split, listed in the run's
            ``skipped_cases.json`` and counted in ``metrics.json``.
        train_cases: Train on only this many cases of the training split (a label budget, for the low-data regime
            and learning curves), counted as the split counts them: images of a 2D dataset, patients of ACDC and
            Synapse (every slice of their volumes). They are the first ``train_cases`` of a permutation drawn from
            ``split_seed``, so a smaller budget is a subset of a larger one; validation and test are unchanged.
            ``None`` (default) trains on all.
        options: Dataset-specific keyword arguments passed through to the data module unchecked.
    """

    dataset: str
    root: str | None = None
    image_size: int = 128
    batch_size: int = 8
    num_workers: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int | None = None
    augmentation: str | list[dict[str, Any]] | None = None
    test_resolution: str = "train"
    bad_cases: Literal["error", "skip"] = "error"
    train_cases: int | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_ranges(self) -> DataConfig:
        _require(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")
        resolutions = ("train", "native")
        problem = f"must be one of {resolutions}, got {self.test_resolution!r}"
        _require(self.test_resolution in resolutions, "test_resolution", problem)
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        budget = self.train_cases
        _require(budget is None or budget >= 1, "train_cases", f"must be >= 1 or null, got {budget}")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            _require(0.0 <= value < 1.0, key, f"must be in [0, 1), got {value}")
        total = self.val_fraction + self.test_fraction
        _require(total < 1.0, "test_fraction", f"plus val_fraction must be < 1 to leave training data, got {total}")
        _require("augment" not in self.options, "options.augment", "is not a dataset option; use data.augmentation")
        if self.augmentation is not None:
            try:
                build_augmentation(resolve_augmentation(self.augmentation, "none"))
            except ValueError as err:
                raise _FieldError("augmentation", f"is invalid: {err}") from None
        return self


class ModelConfig(_Section):
    """The ``model`` section, passed to :func:`medpeft.models.build_segmenter`.

    Args:
        encoder: timm model name of the encoder, e.g. ``"vit_tiny_patch16_224"``.
        pretrained: ``False`` for random init, ``True`` for timm's pretrained weights, or a path to a
            ``.safetensors`` file with encoder weights. Defaults to ``False``.
        decoder: ``"unetr"``, ``"unet"``, ``"linear"`` (light per-pixel head, any encoder) or ``"auto"`` (the
            one that fits the encoder: UNETR for ViT, U-Net otherwise). Defaults to ``"auto"``.
        in_channels: Image channels. Defaults to ``3``.
        num_classes: Output classes including background. Defaults to ``2`` (binary segmentation).
        decoder_channels: Widths of the decoder stages, deepest first; ``None`` uses the decoder's default
            (UNETR ``[128, 64, 32, 16]``, U-Net ``[128, 64, 32, 16, 16]``, linear ``[64]``). Defaults to ``None``.
        grad_checkpointing: Recompute the encoder's blocks in the backward pass instead of keeping their
            activations (:func:`medpeft.models.enable_grad_checkpointing`): the same gradients for far less peak
            training memory, at the cost of one more encoder forward per step. On a ViT-B at 224 px, batch 8 (CPU,
            benchmarks/results.md) LoRA, TRM and tCURLoRA then peak at 0.45-0.56 x full fine-tuning's memory instead
            of 0.72-0.97 x, for steps 1.3 x longer. Use it when a batch or image size does not fit in memory
            otherwise, above all with adapters, whose other training memory is small. It changes nothing at
            inference. Defaults to ``False``.
    """

    encoder: str
    pretrained: bool | str = False
    decoder: str = "auto"
    in_channels: int = 3
    num_classes: int = 2
    decoder_channels: list[int] | None = None
    grad_checkpointing: bool = False

    @model_validator(mode="after")
    def _check_ranges(self) -> ModelConfig:
        _require(self.in_channels >= 1, "in_channels", f"must be >= 1, got {self.in_channels}")
        classes = self.num_classes
        _require(classes >= 2, "num_classes", f"must be >= 2 (background + foreground), got {classes}")
        return self


class AdapterConfig(_Section):
    """The ``adapter`` section: how the encoder is fine-tuned. The decoder always trains.

    Options that the chosen ``method`` does not use are ignored, so one file can switch methods with a single
    ``--set adapter.method=...``.

    Args:
        method: ``"full"`` (every parameter trains), ``"decoder_only"`` (encoder frozen), or an adapter method
            injected into the encoder (``"lora"``, ``"trm"``, ``"tcurlora"`` and every method registered in
            :data:`medpeft.adapters.ADAPTERS`; ``python -m medpeft.adapters.table`` lists them).
        targets: Encoder layers to adapt: short names (``"attn"``, ``"mlp"``) or glob patterns over qualified
            module names (``"blocks.*.attn.qkv"``). Defaults to ``["attn", "mlp"]``.
        blocks: Indices of the transformer blocks to adapt; ``None`` adapts all of them.
        rank: Adapter rank; required for the adapter methods.
        alpha: LoRA scaling numerator (``scaling = alpha / rank``); ``None`` resolves to ``rank``, i.e. scaling 1.
        dropout: LoRA dropout on the adapter input. Defaults to ``0.0``.
        lora_plus_ratio: LoRA+ (Hayou et al., 2024): LoRA's ``B`` factors learn at ``optim.encoder_lr`` times this,
            its ``A`` factors at ``optim.encoder_lr``. Defaults to ``1.0`` (plain LoRA).
        order: TRM tensor-ring order (number of cores). Defaults to ``3``.
        residual: TRM: add the adapter as a residual to the frozen weight. Defaults to ``True``.
        regularizer: TRM core regularizer, ``"identity"``, ``"orthogonal"`` or ``None``. Defaults to
            ``"identity"``.
        reg_weight: Weight of :func:`medpeft.adapters.regularization_loss` added to the segmentation loss. Only TRM
            returns a non-zero term. ``1e-3`` keeps the penalty about two orders of magnitude below a Dice+CE loss
            near 1 at the start of training, so it shapes the cores without competing with the task.
        grouping: tCURLoRA: how weight matrices are stacked into the tensor that is decomposed, ``"shape"``
            (all matrices of one shape) or ``"name"`` (one tensor per target name). Defaults to ``"shape"``.
        adapt_norm: Let the encoder's BatchNorm running statistics follow the target data during training (they
            are then saved in ``adapter.safetensors`` with the adapter). ``False`` keeps them exactly as
            pre-trained: a frozen encoder stays frozen. ``None`` resolves to :func:`adapt_norm_default`. Only
            encoders with BatchNorm (ResNet, EfficientNet) are affected.
        options: The method's other options, by the names of its options dataclass (e.g. ``{bottleneck: 16}`` for
            ``houlsby``); checked against that dataclass when the config loads.
        budget: Adapter parameter budget: the method's size knob (rank, bottleneck width, prompt count, ...) is chosen
            when the network is built so that the adapter has as many parameters as possible without exceeding
            ``budget`` (:func:`medpeft.adapters.match_budget`), overriding a rank or knob given in the file; the
            knob chosen and the real count go into ``metrics.json``. ``None``: the knob as given.
    """

    method: str
    targets: list[str] = Field(default_factory=lambda: ["attn", "mlp"])
    blocks: list[int] | None = None
    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    lora_plus_ratio: float = 1.0
    order: int = 3
    residual: bool = True
    regularizer: Literal["identity", "orthogonal"] | None = "identity"
    reg_weight: float = 1e-3
    grouping: Literal["shape", "name"] = "shape"
    adapt_norm: bool | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    budget: int | None = None

    @model_validator(mode="after")
    def _check_ranges(self) -> AdapterConfig:
        if self.method not in method_names():
            close = difflib.get_close_matches(self.method, method_names(), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise _FieldError("method", f"must be one of {', '.join(method_names())}; got {self.method!r}", hint)
        if self.adapt_norm is None:
            self.adapt_norm = adapt_norm_default(self.method)
        if self.budget is not None:
            _require(self.budget >= 1, "budget", f"must be >= 1, got {self.budget}")
        knob = get_adapter_method(self.method).size_knob if is_adapter_method(self.method) else None
        if knob == "rank" and self.budget is None:
            _require(self.rank is not None, "rank", f"is required for method '{self.method}' (or set adapter.budget)")
        if self.rank is not None:
            _require(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
            if self.alpha is None and self.budget is None:  # with a budget the rank is chosen later, alpha with it
                self.alpha = float(self.rank)
        _require(len(self.targets) > 0, "targets", "must name at least one layer")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.lora_plus_ratio > 0.0, "lora_plus_ratio", f"must be > 0, got {self.lora_plus_ratio}")
        _require(self.order >= 2, "order", f"must be >= 2, got {self.order}")
        _require(self.reg_weight >= 0.0, "reg_weight", f"must be >= 0, got {self.reg_weight}")
        if is_adapter_method(self.method):
            self._check_options()
        return self

    def _check_options(self) -> None:
        """Validate :meth:`method_options` against the method's options dataclass, naming the key at fault."""
        config_cls = get_adapter_method(self.method).config_cls
        allowed = [field.name for field in dataclasses.fields(config_cls)]
        for key in self.options:
            if key in FLAT_METHOD_OPTIONS:
                raise _FieldError(f"options.{key}", f"is set in adapter.options; set adapter.{key} instead")
            if key not in allowed:
                raise _FieldError(f"options.{key}", f"is not an option of {self.method}", _did_you_mean(key, allowed))
        if self.budget is None:
            try:
                config_cls(**self.method_options())
            except (TypeError, ValueError) as err:
                raise _FieldError("options", f"are invalid for {self.method}: {err}") from None

    def method_options(self) -> dict[str, Any]:
        """The keyword options of :func:`medpeft.adapters.inject_adapters` for ``method``: the shared keys
        (:data:`FLAT_METHOD_OPTIONS`) its options dataclass has, then ``options``; ``rank`` is left out while unset."""
        if not is_adapter_method(self.method):
            return {}
        fields = {field.name for field in dataclasses.fields(get_adapter_method(self.method).config_cls)}
        shared = {key: getattr(self, key) for key in FLAT_METHOD_OPTIONS if key in fields}
        if shared.get("rank") is None:
            shared.pop("rank", None)
        if shared.get("alpha", 0.0) is None:
            shared.pop("alpha")
        return {**shared, **self.options}


class LossConfig(_Section):
    """The ``loss`` section: MONAI's ``DiceCELoss`` on softmax outputs (plus the adapters' regulariser).

    Args:
        dice_batch: Compute the Dice term over the whole batch instead of per image and then averaging. Per-image
            Dice of an image without the class is 0 or 1 whatever the lesion size, a noisy target on data
            with empty masks (BUSI's normal scans). Defaults to ``False``: on real BUSI from scratch validation
            preferred batch Dice (smoothing ``1e-5``) on three seeds and the test per-image Dice; the default stays
            until the transfer results, measured with it, are re-measured (docs/results.md, section 0).
        include_background: Include the background class in the Dice term. Defaults to ``True``.
        lambda_dice: Weight of the Dice term. Defaults to ``1.0``.
        lambda_ce: Weight of the cross-entropy term. Defaults to ``1.0``.
        lambda_dice_batch: Weight of a second Dice term computed over the whole batch (MONAI ``DiceLoss(batch=True)``,
            same background and smoothing settings), added to the one ``dice_batch`` describes. A per-image Dice term
            saturates on an image without the class once anything is predicted there (no gradient against a
            false-positive blob); a batch term counts those pixels in its denominator. Defaults to ``0.0`` (off).
        smooth: Constant added to the numerator and denominator of every Dice ratio (MONAI's ``smooth_nr`` and
            ``smooth_dr``). MONAI's ``1e-5`` leaves a per-image Dice term flat at 1 on an image without the class
            whatever is predicted there, and makes the Dice of a small structure swing between 0 and 1; ``1`` (the
            Dice of nnU-Net and many plain scripts) keeps a gradient on such images. Defaults to ``1.0``, chosen by
            validation Dice on real BUSI (medpeft ``full`` from scratch, seeds 0 and 1: best validation Dice 0.683
            and 0.700 against 0.665 and 0.693 with ``1e-5``; docs/results.md).
    """

    dice_batch: bool = False
    include_background: bool = True
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    lambda_dice_batch: float = 0.0
    smooth: float = 1.0

    @model_validator(mode="after")
    def _check_ranges(self) -> LossConfig:
        _require(self.lambda_dice >= 0.0, "lambda_dice", f"must be >= 0, got {self.lambda_dice}")
        _require(self.lambda_ce >= 0.0, "lambda_ce", f"must be >= 0, got {self.lambda_ce}")
        _require(self.lambda_dice_batch >= 0.0, "lambda_dice_batch", f"must be >= 0, got {self.lambda_dice_batch}")
        _require(self.lambda_dice + self.lambda_ce > 0.0, "lambda_ce", "and lambda_dice cannot both be 0")
        _require(self.smooth > 0.0, "smooth", f"must be > 0, got {self.smooth}")
        return self

    def dice_ce_options(self) -> dict[str, Any]:
        """Keyword arguments of MONAI's ``DiceCELoss`` beyond ``to_onehot_y`` and ``softmax``, plus
        ``lambda_dice_batch`` (the :class:`~medpeft.training.module.SegmentationModule` adds that term)."""
        return {
            "batch": self.dice_batch,
            "include_background": self.include_background,
            "lambda_dice": self.lambda_dice,
            "lambda_ce": self.lambda_ce,
            "smooth_nr": self.smooth,
            "smooth_dr": self.smooth,
            "lambda_dice_batch": self.lambda_dice_batch,
        }


class OptimConfig(_Section):
    """The ``optim`` section: AdamW with linear warmup then cosine decay, stepped every optimizer step.

    Args:
        lr: Peak learning rate. Defaults to ``1e-3``.
        weight_decay: AdamW decoupled weight decay, applied to matrices only (never to biases or norms).
            Defaults to ``1e-4``.
        warmup_steps: Linear warmup length: a value ``< 1`` is a fraction of all optimizer steps, otherwise a
            step count. Defaults to ``0.05``.
        grad_clip: Gradient-norm clipping threshold; ``0`` disables clipping. Defaults to ``1.0``.
        min_lr_ratio: Final learning rate as a fraction of ``lr`` at the end of the cosine. Defaults to ``0.01``.
        encoder_lr: Peak learning rate of the trainable encoder parameters (the adapters; every encoder weight for
            ``full``), while ``lr`` drives the decoder and head. ``None`` resolves to ``lr`` times the method's
            factor, :func:`encoder_lr_scale`.
        nonfinite_loss: ``"stop"`` (default): a NaN / infinite training loss ends the run with an error before
            it touches a weight, the BatchNorm statistics that batch moved put back, so ``last.ckpt`` (written
            then) is the state just before it; ``"skip"``: drop that batch, count it (``train/skipped_batches``)
            and go on (one process only: not under DDP).
    """

    lr: float = 1e-3
    encoder_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int | float = 0.05
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.01
    nonfinite_loss: str = "stop"

    @model_validator(mode="after")
    def _check_ranges(self) -> OptimConfig:
        _require(self.lr > 0.0, "lr", f"must be > 0, got {self.lr}")
        choices = ("stop", "skip")
        _require(
            self.nonfinite_loss in choices, "nonfinite_loss", f"must be one of {choices}, got {self.nonfinite_loss!r}"
        )
        _require(self.weight_decay >= 0.0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(self.grad_clip >= 0.0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if self.encoder_lr is not None:
            _require(self.encoder_lr > 0.0, "encoder_lr", f"must be > 0, got {self.encoder_lr}")
        return self


class PostprocessConfig(_Section):
    """The ``postprocess`` section: what is done to a predicted mask before it is scored or written.

    Args:
        min_component_size: Connected components of a foreground class smaller than this many pixels of the
            network's ``S x S`` grid are set to background (at another grid, e.g. native-size scoring or a volume, the
            threshold scales with the in-plane area). ``"auto"`` (default) chooses it at the end of training on the
            validation split, from :data:`~medpeft.evaluation.postprocess.MIN_COMPONENT_SIZES`, by Dice over all
            validation cases (a case without the class scores 1 when predicted empty and 0 otherwise; ties go to the
            smaller size, so ``0`` when nothing gains); the run's ``config.yaml``, task file and ``metrics.json``
            then hold the chosen number. ``0`` keeps every component. Chosen by measurement on real BUSI
            (docs/results.md): small false-positive blobs on normal scans are what the choice removes.
    """

    min_component_size: int | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _check_ranges(self) -> PostprocessConfig:
        size = self.min_component_size
        _require(size == "auto" or size >= 0, "min_component_size", f"must be 'auto' or an int >= 0, got {size!r}")
        return self


class Config(_Section):
    """A whole experiment: its sections plus the global seed and output directory.

    Args:
        data: See :class:`DataConfig`.
        model: See :class:`ModelConfig`.
        adapter: See :class:`AdapterConfig`.
        optim: See :class:`OptimConfig`.
        loss: See :class:`LossConfig`.
        postprocess: See :class:`PostprocessConfig`.
        trainer: Keyword arguments for :class:`pytorch_lightning.Trainer` (``max_epochs``, ``max_steps``,
            ``accelerator``, ``devices``, ``precision``, ...). Keys the Trainer does not accept and keys the
            training script sets itself (:data:`RESERVED_TRAINER_KEYS`) are rejected.
        seed: Global seed for Python, NumPy, torch and dataloader workers. Defaults to ``0``.
        output_dir: Parent directory of the run directories. Defaults to ``"runs"``.
        name: Label of the run in comparison tables (``scripts/compare.py`` groups runs by it, seeds averaged);
            ``None`` uses ``adapter.method``. Set it to tell apart runs of one method, e.g. ``scratch`` for
            ``full`` fine-tuning from a random initialisation.
        checkpoint_every_n_steps: ``checkpoints/last.ckpt`` is also written every this many optimizer steps (besides
            after every validation and when training raises), so a killed run resumed with ``--resume`` loses at
            most that many steps; ``0``: only after validations. Defaults to ``100``.
    """

    data: DataConfig
    model: ModelConfig
    adapter: AdapterConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    trainer: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    output_dir: str = "runs"
    name: str | None = None
    checkpoint_every_n_steps: int = 100

    @model_validator(mode="after")
    def _check_ranges(self) -> Config:
        n = self.checkpoint_every_n_steps
        _require(isinstance(n, int) and n >= 0, "checkpoint_every_n_steps", f"must be an int >= 0, got {n!r}")
        if self.data.split_seed is None:
            self.data.split_seed = self.seed
        if self.optim.encoder_lr is None:
            self.optim.encoder_lr = self.optim.lr * encoder_lr_scale(self.adapter.method)
        _check_trainer_keys(self.trainer)
        return self

    @property
    def label(self) -> str:
        """The run's label in comparison tables: ``name``, or ``adapter.method`` when unset."""
        return self.name or self.adapter.method

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested dicts and lists, in schema order (what :func:`save_config` writes)."""
        return self.model_dump()


def _check_trainer_keys(trainer: dict[str, Any]) -> None:
    from pytorch_lightning import Trainer  # deferred: Lightning is slow to import and only this check needs it

    accepted = [name for name in inspect.signature(Trainer.__init__).parameters if name != "self"]
    for key in trainer:
        if key in RESERVED_TRAINER_KEYS:
            instead = RESERVED_TRAINER_KEYS[key]
            hint = f"; use '{instead}' instead" if instead else ""
            raise _FieldError(f"trainer.{key}", "is set by the training script and cannot be configured", hint)
        if key not in accepted:
            allowed = ", ".join(k for k in accepted if k not in RESERVED_TRAINER_KEYS)
            problem = "is not an argument of pytorch_lightning.Trainer"
            raise _FieldError(f"trainer.{key}", problem, f"; allowed: {allowed}")


# ---------------------------------------------------------------------------------------------------------------
# YAML loading, overrides and type checking


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` as a float.

    PyYAML implements YAML 1.1, where a float needs a dot (``1.0e-3``), so ``lr: 1e-3`` would load as the string
    ``'1e-3'`` and fail the type check. YAML 1.2 and every other config tool read it as a number.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader subclass: no arbitrary objects


class _Sources:
    """Tells which file or ``--set`` override a key path came from, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.overrides: dict[str, str] = {}

    def of(self, key: str) -> str:
        for path, text in self.overrides.items():
            if key == path or key.startswith(path + ".") or path.startswith(key + "."):
                return f"override --set {text}"
        return self.file


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _literal_choices(tp: Any) -> list[Any] | None:
    """Return the allowed values if ``tp`` is a ``Literal`` (optionally ``| None``), else ``None``."""
    arms = typing.get_args(tp) if _is_union(tp) else (tp,)
    if not any(typing.get_origin(a) is Literal for a in arms) or not all(
        typing.get_origin(a) is Literal or a is type(None) for a in arms
    ):
        return None
    return [v for a in arms for v in (typing.get_args(a) if a is not type(None) else (None,))]


def _describe(tp: Any) -> str:
    if _is_union(tp):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict or tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, _Section)


def _field_path(loc: tuple[int | str, ...]) -> tuple[list[str], Any]:
    """The longest prefix of a pydantic error location that names config keys, and the last key's type hint.

    What follows it is pydantic's own detail (a union arm, a list index) or an unknown key.
    """
    section: Any = Config
    path: list[str] = []
    hint: Any = Config
    for part in loc:
        if section is None or not isinstance(part, str) or part not in section.model_fields:
            break
        path.append(part)
        hint = section.model_fields[part].annotation
        section = hint if _is_section(hint) else None
    return path, hint


def _lookup(raw: Any, path: list[str]) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _problem(error: dict[str, Any], raw: dict[str, Any], sources: _Sources) -> str:
    """One line for one pydantic error, in our words: key path, what is wrong, and where the value came from."""
    path, hint = _field_path(error["loc"])
    key = ".".join(path)
    kind = error["type"]
    cause = error.get("ctx", {}).get("error")
    if kind == "value_error" and isinstance(cause, _FieldError):  # a range check of ours
        key = ".".join([*path, cause.key])
        return f"'{key}' {cause.problem} in {sources.of(key)}{cause.hint}"
    if kind == "extra_forbidden":
        unknown = str(error["loc"][len(path)])
        key = ".".join([*path, unknown])
        allowed = list((hint if path else Config).model_fields)
        return f"unknown key '{key}' in {sources.of(key)}{_did_you_mean(unknown, allowed)}"
    if kind == "missing":
        return f"missing required key '{key}' in {sources.of(key)}"
    value = _lookup(raw, path)
    if _is_section(hint):
        return (
            f"'{key or 'the top level'}' must be a mapping, got {type(value).__name__} {value!r} in {sources.of(key)}"
        )
    choices = _literal_choices(hint)
    if choices is not None:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        return f"'{key}' must be one of {shown}; got {value!r} in {sources.of(key)}"
    if kind == "value_error":
        return f"'{key}' {cause or error['msg']} in {sources.of(key)}"
    return f"'{key}' must be {_describe(hint)}, got {type(value).__name__} {value!r} in {sources.of(key)}"


def _validate(raw: dict[str, Any], sources: _Sources) -> Config:
    """Build the config with pydantic; every problem it finds becomes one line of the :class:`ConfigError`."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        lines = list(dict.fromkeys(_problem(error, raw, sources) for error in err.errors()))  # union arms repeat
        raise ConfigError("\n".join(lines)) from None


def _apply_override(raw: dict[str, Any], text: str, sources: _Sources) -> None:
    """Apply one ``key.sub=value`` override to the raw mapping, checking the key path against the schema.

    Keys below a free mapping (``trainer``, ``data.options``) are not checked here; ``trainer`` keys are checked
    against the Trainer signature when the config is built.
    """
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    parts = key.split(".")
    cls: Any = Config
    node = raw
    for i, part in enumerate(parts):
        path = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if cls is not None:
            names = list(cls.model_fields)
            if part not in names:
                raise ConfigError(f"unknown key '{path}' in override --set {text}{_did_you_mean(part, names)}")
            tp = cls.model_fields[part].annotation
            cls = tp if _is_section(tp) else None
            if not last and cls is None and not (typing.get_origin(tp) is dict or tp is dict):
                raise ConfigError(f"'{path}' is not a section, so '{key}' cannot be set in override --set {text}")
        if last:
            node[part] = _parse(value_text)
        else:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"'{path}' is not a mapping in {sources.file}, so override --set {text} cannot apply"
                )
            node = child
    sources.overrides[key] = text


def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML experiment config, apply ``--set`` overrides and validate everything.

    Args:
        path: YAML file with the sections described in :class:`Config`.
        overrides: ``"key.sub=value"`` strings applied in order; each value is parsed as YAML, so ``8``, ``1e-3``,
            ``true``, ``[1, 2]`` and ``null`` get their natural types.

    Returns:
        The validated config with defaults filled in and ``adapter.alpha`` / ``data.split_seed`` resolved.

    Raises:
        ConfigError: The file is missing or not YAML, a key is unknown or missing, a value has the wrong type,
            choice or range, or a trainer key is not accepted. One line per problem, naming the key path and its
            source.
    """
    file = str(path)
    try:
        raw = _parse(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config file {file}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        first = " ".join(str(err).split())
        raise ConfigError(f"{file} is not valid YAML: {first}") from None
    raw = {} if raw is None else raw
    sources = _Sources(file)
    if not isinstance(raw, dict):
        raise ConfigError(f"{file} must contain a mapping of sections, got {type(raw).__name__}")
    for text in overrides:
        _apply_override(raw, text, sources)
    return _validate(raw, sources)


def config_from_text(text: str, source: str) -> Config:
    """Validate a config held as YAML text (e.g. inside a task file); ``source`` names it in error messages."""
    try:
        raw = _parse(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} does not hold a valid YAML config: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping of config sections")
    return _validate(raw, _Sources(source))


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back to an equal config."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False))
