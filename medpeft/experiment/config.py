"""Typed experiment configuration: the schema of ``configs/*.yaml`` and its loader.

A config file has the sections ``data``, ``model``, ``adapter``, ``optim`` and ``trainer`` plus the top-level
keys ``seed`` and ``output_dir``. Each section is a small dataclass whose type hints *are* the schema (the
LightningCLI idea of "the signature is the schema", without jsonargparse): :func:`load_config` walks the hints
to reject unknown keys, wrong types, bad choices and missing required keys before any work starts, and each
dataclass checks its value ranges in ``__post_init__``. Every error is a :class:`ConfigError` whose one-line
message names the dotted key path and where the value came from (the file or the ``--set`` override).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medpeft.data.augmentation import build_augmentation, resolve_augmentation
from medpeft.io import write_text_atomic

__all__ = [
    "ADAPT_NORM_DEFAULTS",
    "ENCODER_LR_SCALES",
    "AdapterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PEFT_METHODS",
    "RESERVED_TRAINER_KEYS",
    "config_from_text",
    "load_config",
    "save_config",
    "write_text_atomic",
]

Method = Literal["full", "decoder_only", "lora", "trm", "tcurlora"]
#: Methods that inject adapters into the encoder (the other two only change which parameters train).
PEFT_METHODS: tuple[str, ...] = ("lora", "trm", "tcurlora")
#: Whether each method lets the encoder's BatchNorm statistics adapt (``adapter.adapt_norm: null``). ``full`` trains
#: everything; the frozen-encoder methods keep the pre-trained statistics (docs/results.md measures both).
ADAPT_NORM_DEFAULTS: dict[str, bool] = {
    "full": True,
    "decoder_only": False,
    "lora": False,
    "trm": False,
    "tcurlora": False,
}
#: ``optim.encoder_lr`` = ``optim.lr`` times this factor when the config leaves it unset (docs/results.md: sweep).
ENCODER_LR_SCALES: dict[str, float] = {
    "full": 1.0,
    "decoder_only": 1.0,
    "lora": 1.0,
    "trm": 1.0,
    "tcurlora": 1.0,
}
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


@dataclass
class DataConfig:
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
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")
        resolutions = ("train", "native")
        problem = f"must be one of {resolutions}, got {self.test_resolution!r}"
        _require(self.test_resolution in resolutions, "test_resolution", problem)
        _require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
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


@dataclass
class ModelConfig:
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
    """

    encoder: str
    pretrained: bool | str = False
    decoder: str = "auto"
    in_channels: int = 3
    num_classes: int = 2
    decoder_channels: list[int] | None = None

    def __post_init__(self) -> None:
        _require(self.in_channels >= 1, "in_channels", f"must be >= 1, got {self.in_channels}")
        classes = self.num_classes
        _require(classes >= 2, "num_classes", f"must be >= 2 (background + foreground), got {classes}")


@dataclass
class AdapterConfig:
    """The ``adapter`` section: how the encoder is fine-tuned. The decoder always trains.

    Options that the chosen ``method`` does not use are ignored, so one file can switch methods with a single
    ``--set adapter.method=...``.

    Args:
        method: ``"full"`` (every parameter trains), ``"decoder_only"`` (encoder frozen), or an adapter injected
            into the encoder: ``"lora"``, ``"trm"``, ``"tcurlora"``.
        targets: Encoder layers to adapt: short names (``"attn"``, ``"mlp"``) or glob patterns over qualified
            module names (``"blocks.*.attn.qkv"``). Defaults to ``["attn", "mlp"]``.
        blocks: Indices of the transformer blocks to adapt; ``None`` adapts all of them.
        rank: Adapter rank; required for the adapter methods.
        alpha: LoRA scaling numerator (``scaling = alpha / rank``); ``None`` resolves to ``rank``, i.e. scaling 1.
        dropout: LoRA dropout on the adapter input. Defaults to ``0.0``.
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
            pre-trained: a frozen encoder stays frozen. ``None`` resolves to the method's default in
            :data:`ADAPT_NORM_DEFAULTS`. Only encoders with BatchNorm (ResNet) are affected.
    """

    method: Method
    targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    blocks: list[int] | None = None
    rank: int | None = None
    alpha: float | None = None
    dropout: float = 0.0
    order: int = 3
    residual: bool = True
    regularizer: Literal["identity", "orthogonal"] | None = "identity"
    reg_weight: float = 1e-3
    grouping: Literal["shape", "name"] = "shape"
    adapt_norm: bool | None = None

    def __post_init__(self) -> None:
        if self.adapt_norm is None:
            self.adapt_norm = ADAPT_NORM_DEFAULTS[self.method]
        if self.method in PEFT_METHODS:
            _require(self.rank is not None, "rank", f"is required for method '{self.method}'")
        if self.rank is not None:
            _require(self.rank >= 1, "rank", f"must be >= 1, got {self.rank}")
            if self.alpha is None:
                self.alpha = float(self.rank)
        _require(len(self.targets) > 0, "targets", "must name at least one layer")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.order >= 2, "order", f"must be >= 2, got {self.order}")
        _require(self.reg_weight >= 0.0, "reg_weight", f"must be >= 0, got {self.reg_weight}")

    def method_options(self) -> dict[str, Any]:
        """Return the keyword options of :func:`medpeft.adapters.inject_adapters` specific to ``method``."""
        if self.method == "lora":
            return {"alpha": self.alpha, "dropout": self.dropout}
        if self.method == "trm":
            return {"order": self.order, "residual": self.residual, "regularizer": self.regularizer}
        if self.method == "tcurlora":
            return {"grouping": self.grouping}
        return {}


@dataclass
class LossConfig:
    """The ``loss`` section: MONAI's ``DiceCELoss`` on softmax outputs (plus the adapters' regulariser).

    Args:
        dice_batch: Compute the Dice term over the whole batch instead of per image and then averaging. Per-image
            Dice of an image without the class is 0 or 1 whatever the lesion size, a noisy target on data
            with empty masks (BUSI's normal scans). Defaults to ``False``.
        include_background: Include the background class in the Dice term. Defaults to ``True``.
        lambda_dice: Weight of the Dice term. Defaults to ``1.0``.
        lambda_ce: Weight of the cross-entropy term. Defaults to ``1.0``.
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
    smooth: float = 1.0

    def __post_init__(self) -> None:
        _require(self.lambda_dice >= 0.0, "lambda_dice", f"must be >= 0, got {self.lambda_dice}")
        _require(self.lambda_ce >= 0.0, "lambda_ce", f"must be >= 0, got {self.lambda_ce}")
        _require(self.lambda_dice + self.lambda_ce > 0.0, "lambda_ce", "and lambda_dice cannot both be 0")
        _require(self.smooth > 0.0, "smooth", f"must be > 0, got {self.smooth}")

    def dice_ce_options(self) -> dict[str, Any]:
        """Keyword arguments of MONAI's ``DiceCELoss`` beyond ``to_onehot_y`` and ``softmax``."""
        return {
            "batch": self.dice_batch,
            "include_background": self.include_background,
            "lambda_dice": self.lambda_dice,
            "lambda_ce": self.lambda_ce,
            "smooth_nr": self.smooth,
            "smooth_dr": self.smooth,
        }


@dataclass
class OptimConfig:
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
            factor in :data:`ENCODER_LR_SCALES`.
        nonfinite_loss: ``"stop"`` (default): a NaN / infinite training loss ends the run with an error before
            it touches a weight, the checkpoints written so far being the last good ones; ``"skip"``: drop that
            batch, count it (``train/skipped_batches``) and go on (one process only: not under DDP).
    """

    lr: float = 1e-3
    encoder_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_steps: int | float = 0.05
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.01
    nonfinite_loss: str = "stop"

    def __post_init__(self) -> None:
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


@dataclass
class Config:
    """A whole experiment: the five sections plus the global seed and output directory.

    Args:
        data: See :class:`DataConfig`.
        model: See :class:`ModelConfig`.
        adapter: See :class:`AdapterConfig`.
        optim: See :class:`OptimConfig`.
        loss: See :class:`LossConfig`.
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
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    output_dir: str = "runs"
    name: str | None = None
    checkpoint_every_n_steps: int = 100

    def __post_init__(self) -> None:
        n = self.checkpoint_every_n_steps
        _require(isinstance(n, int) and n >= 0, "checkpoint_every_n_steps", f"must be an int >= 0, got {n!r}")
        if self.data.split_seed is None:
            self.data.split_seed = self.seed
        if self.optim.encoder_lr is None:
            self.optim.encoder_lr = self.optim.lr * ENCODER_LR_SCALES[self.adapter.method]
        _check_trainer_keys(self.trainer)

    @property
    def label(self) -> str:
        """The run's label in comparison tables: ``name``, or ``adapter.method`` when unset."""
        return self.name or self.adapter.method

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain nested dicts and lists, in schema order (what :func:`save_config` writes)."""
        return dataclasses.asdict(self)


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
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


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


def _fail(problem: str, key: str, sources: _Sources, hint: str = "") -> typing.NoReturn:
    raise ConfigError(f"{problem} in {sources.of(key)}{hint}")


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


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (already YAML-parsed) fits the type hint ``tp``; ints are accepted for floats."""
    if tp is Any:
        return True
    if _is_union(tp):
        return any(_matches(value, a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(tp)[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:  # bool is a subclass of int, but `batch_size: true` is a mistake
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _coerce(value: Any, tp: Any) -> Any:
    """Convert an int to float where the hint is exactly ``float`` so the resolved config is typed faithfully."""
    if tp is float and isinstance(value, int):
        return float(value)
    if _is_union(tp) and not any(_matches(value, a) for a in typing.get_args(tp) if a is not float):
        return _coerce(value, float) if float in typing.get_args(tp) else value
    return value


def _build(cls: type, raw: Any, prefix: str, sources: _Sources) -> Any:
    """Type-check the mapping ``raw`` against dataclass ``cls`` (recursively) and construct it."""
    where = prefix or "the top level"
    if raw is None:  # a section whose keys are all commented out, e.g. `model:`
        raw = {}
    if not isinstance(raw, dict):
        _fail(f"'{where}' must be a mapping, got {type(raw).__name__} {raw!r}", prefix, sources)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else str(key)
            _fail(f"unknown key '{path}'", path, sources, hint=_did_you_mean(str(key), list(fields)))
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if name not in raw:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                _fail(f"missing required key '{path}'", path, sources)
            continue
        value = raw[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, path, sources)
        elif not _matches(value, tp):
            choices = _literal_choices(tp)
            if choices is not None:
                shown = ", ".join("null" if c is None else str(c) for c in choices)
                _fail(f"'{path}' must be one of {shown}; got {value!r}", path, sources)
            _fail(f"'{path}' must be {_describe(tp)}, got {type(value).__name__} {value!r}", path, sources)
        else:
            kwargs[name] = _coerce(value, tp)
    try:
        return cls(**kwargs)
    except _FieldError as err:
        path = f"{prefix}.{err.key}" if prefix else err.key
        _fail(f"'{path}' {err.problem}", path, sources, err.hint)


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
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                raise ConfigError(f"unknown key '{path}' in override --set {text}{_did_you_mean(part, names)}")
            tp = typing.get_type_hints(cls)[part]
            cls = tp if dataclasses.is_dataclass(tp) else None
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
            choice or range, or a trainer key is not accepted. The message names the key path and its source.
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
    return _build(Config, raw, "", sources)


def config_from_text(text: str, source: str) -> Config:
    """Validate a config held as YAML text (e.g. inside a task file); ``source`` names it in error messages."""
    try:
        raw = _parse(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} does not hold a valid YAML config: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a mapping of config sections")
    return _build(Config, raw, "", _Sources(source))


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML (atomically); :func:`load_config` reads it back to an equal config."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False))
