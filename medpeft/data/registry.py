"""Dataset registry and the contract every dataset builder fulfils.

Datasets are referred to by name (``"isic2018"``, ``"demo"``, ...), timm-style: a builder function is registered
with :func:`register_dataset` and called through :func:`build_dataset`. Every builder takes
``(root, split, **options)`` and returns a :class:`SegmentationDataset` whose items are
``{"image": float32 [C, S, S] in [0, 1], "label": int64 [1, S, S], "name": str}``. The number of classes, their names
and the number of input channels are registered alongside the builder, so a model can be sized (and a metrics table
labelled) before any file is read.

Errors follow one rule: they name the file or folder at fault. A missing dataset raises
:class:`DatasetNotFoundError`; a bad file raises :class:`~medpeft.data.transforms.CaseFileError` (a ``ValueError``).

.. code-block:: python

    @register_dataset("isic2018", num_classes=2, in_channels=3, class_names=("background", "lesion"))
    def build_isic2018(root, split="train", **options) -> SegmentationDataset: ...

    ds = build_dataset("isic2018", "datasets/isic2018", split="val", image_size=256)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset
from monai.transforms import Compose

from medpeft.data.transforms import CaseFileError

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "SegmentationDataset",
    "build_dataset",
    "dataset_info",
    "make_dataset",
    "register_dataset",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's root folder, or a folder it must contain, does not exist or holds no cases."""


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a registered dataset without reading it.

    Args:
        num_classes: Number of label classes, background included.
        in_channels: Number of image channels.
        default_root: Root used when the caller passes ``root=None``.
        prepare: Optional ``prepare(root)`` hook that creates the data (e.g. the synthetic demo); ``None`` for data
            that must be downloaded by the user.
        class_names: Name of each class id ``0 .. num_classes - 1``, background first (``len == num_classes``).
    """

    num_classes: int
    in_channels: int
    default_root: str | None = None
    prepare: Callable[[Path], Any] | None = None
    class_names: tuple[str, ...] = ()


DATASETS: dict[str, Callable[..., SegmentationDataset]] = {}
_INFO: dict[str, DatasetInfo] = {}


def register_dataset(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    default_root: str | None = None,
    prepare: Callable[[Path], Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> Callable[[Callable[..., SegmentationDataset]], Callable[..., SegmentationDataset]]:
    """Register a dataset builder under ``name`` (decorator).

    Args:
        name: Lower-case name used in configs.
        num_classes: Number of label classes, background included.
        in_channels: Number of image channels.
        default_root: Root used when ``build_dataset`` gets ``root=None``.
        prepare: Optional hook creating the data under a root (see :class:`DatasetInfo`).
        class_names: Name of each class id, background first; ``None`` gives ``"background", "class 1", ...``.

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: If ``name`` is not lower-case or is already registered, or ``class_names`` does not have
            ``num_classes`` entries.
    """
    if name != name.lower() or not name:
        raise ValueError(f"dataset names must be non-empty and lower-case, got {name!r}")
    names = ("background", *(f"class {c}" for c in range(1, num_classes))) if class_names is None else class_names
    if len(names) != num_classes:
        raise ValueError(f"dataset {name!r}: {len(names)} class_names {list(names)} for num_classes={num_classes}")

    def decorator(builder: Callable[..., SegmentationDataset]) -> Callable[..., SegmentationDataset]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered (by {DATASETS[name].__qualname__})")
        DATASETS[name] = builder
        _INFO[name] = DatasetInfo(num_classes, in_channels, default_root, prepare, tuple(names))
        return builder

    return decorator


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(DATASETS)}")


def dataset_info(name: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` registered for ``name``.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the registered names.
    """
    _check_name(name)
    return _INFO[name]


def build_dataset(name: str, root: str | os.PathLike[str] | None, split: str, **kwargs: Any) -> SegmentationDataset:
    """Build one split of a registered dataset.

    Args:
        name: Registered dataset name.
        root: Dataset folder; ``None`` uses the dataset's registered default root.
        split: ``"train"``, ``"val"`` or ``"test"``.
        **kwargs: Builder options (``image_size``, ``seed``, ``val_fraction``, ``test_fraction``, ``augment``,
            ``cache_rate``, ...).

    Returns:
        The dataset for that split.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the registered names.
        DatasetNotFoundError: If ``root`` is ``None`` and the dataset has no default root.
    """
    info = dataset_info(name)
    if root is None:
        if info.default_root is None:
            raise DatasetNotFoundError(
                f"dataset {name!r} has no default location; set data.root in the config (or --set data.root=PATH)"
            )
        root = info.default_root
    return DATASETS[name](root, split=split, **kwargs)


@contextmanager
def _unwrap_case_errors() -> Iterator[None]:
    """Re-raise a :class:`CaseFileError` that MONAI wrapped into ``RuntimeError("applying transform ...")``."""
    try:
        yield
    except RuntimeError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, CaseFileError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


class SegmentationDataset(Dataset):
    """A MONAI ``Dataset`` of case records that reports bad files as :class:`CaseFileError`.

    MONAI wraps every exception raised inside a transform into ``RuntimeError("applying transform ...")``; this
    class re-raises the original ``CaseFileError`` instead, so the user sees which file is broken.

    Args:
        data: Case records ``{"image": path, "label": path, "name": case_id}``.
        transform: Pipeline from :func:`~medpeft.data.transforms.build_transforms`.

    Attributes:
        case_ids: The ``name`` of every record, in order.
    """

    def __init__(self, data: Sequence[dict[str, Any]], transform: Compose) -> None:
        super().__init__(data=data, transform=transform)
        self.case_ids: list[str] = [record["name"] for record in data]

    def _transform(self, index: int) -> Any:
        with _unwrap_case_errors():
            return super()._transform(index)


class _CachedSegmentationDataset(SegmentationDataset, CacheDataset):
    """:class:`SegmentationDataset` that keeps the deterministic part of the pipeline in memory (``CacheDataset``)."""

    def __init__(self, data: Sequence[dict[str, Any]], transform: Compose, cache_rate: float) -> None:
        self.case_ids = [record["name"] for record in data]
        CacheDataset.__init__(self, data=data, transform=transform, cache_rate=cache_rate, progress=False)

    def _load_cache_item(self, idx: int) -> Any:
        # Called while the cache is filled, i.e. inside __init__, so bad files surface at construction.
        with _unwrap_case_errors():
            return super()._load_cache_item(idx)


def make_dataset(
    records: Sequence[dict[str, Any]], transform: Compose, cache_rate: float = 0.0, seed: int | None = None
) -> SegmentationDataset:
    """Wrap case records and a pipeline into a dataset, optionally cached.

    Args:
        records: Case records ``{"image": path, "label": path, "name": case_id}``.
        transform: The MONAI pipeline.
        cache_rate: Fraction of cases whose deterministic transforms are cached in memory (``CacheDataset``);
            ``0`` gives a plain MONAI ``Dataset`` that reads files on every access.
        seed: Seed of the pipeline's random transforms (``Compose.set_random_state``); ``None`` leaves them as
            they are. MONAI's ``DataLoader`` reseeds them per worker from its own generator.

    Returns:
        The dataset.

    Raises:
        ValueError: If ``cache_rate`` is outside ``[0, 1]``.
    """
    if not 0.0 <= cache_rate <= 1.0:
        raise ValueError(f"cache_rate must be in [0, 1], got {cache_rate}")
    if seed is not None:
        transform.set_random_state(seed=seed)
    if cache_rate > 0.0:
        return _CachedSegmentationDataset(records, transform, cache_rate)
    return SegmentationDataset(records, transform)
