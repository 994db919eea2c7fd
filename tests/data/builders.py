"""Fixture builders shared by the data tests: tiny datasets written in the official on-disk layouts.

Imported by the test modules of this folder as ``from builders import ...`` (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medpeft.data.busi import BUSI_FOLDER
from medpeft.data.isic import TRAIN_GROUND_TRUTH, TRAIN_INPUT

__all__ = [
    "ACDC_DTYPES",
    "ACDC_FIXTURE_GROUPS",
    "ACDC_GROUPS",
    "ACDC_SHAPE",
    "ACDC_ZOOMS",
    "BUSI_SIZE",
    "acdc_volume",
    "busi_noise",
    "busi_rect",
    "make_acdc_patient",
    "save_l",
    "write_acdc_nifti",
    "write_busi",
    "write_isic",
    "write_isic_case",
]

BUSI_SIZE = 32
# ACDC volumes: (X, Y, Z) = (20, 24, 4) with zooms (1.5, 1.25, 10) and the real data's header quirk (affine
# diag(-1, -1, 1) without voxel sizes), so spacing must come from the header.
ACDC_SHAPE = (20, 24, 4)  # (X, Y, Z) as stored
ACDC_ZOOMS = (1.5, 1.25, 10.0)  # (sx, sy, sz) in mm
ACDC_DTYPES = (np.int16, np.uint8, np.float32)
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")  # the real data has 20 patients in each
ACDC_FIXTURE_GROUPS = ACDC_GROUPS[:3]


# ---------------------------------------------------------------------------------------------------------- ISIC


def write_isic_case(input_dir: Path, gt_dir: Path, k: int) -> None:
    """Case ``ISIC_{k:07d}``: a 48x40 (WxH) image whose foreground rows ``[0, 4 + 4k)`` are bright, others dark.

    The foreground fraction grows with ``k`` and the image shows its own mask, so pairing and alignment can be
    checked from the loaded tensors alone.
    """
    mask = np.zeros((40, 48), np.uint8)
    mask[: 4 + 4 * k] = 255
    image = np.where(mask[..., None] > 0, 220, 20).astype(np.uint8).repeat(3, axis=2)
    Image.fromarray(image).save(input_dir / f"ISIC_{k:07d}.jpg", quality=95)
    Image.fromarray(mask).save(gt_dir / f"ISIC_{k:07d}_segmentation.png")


def write_isic(
    root: Path, ks: range = range(8), input_name: str = TRAIN_INPUT, gt_name: str = TRAIN_GROUND_TRUTH
) -> tuple[Path, Path]:
    """Write the cases ``k`` in ``ks`` (see :func:`write_isic_case`); returns the input and ground-truth folders."""
    input_dir, gt_dir = root / input_name, root / gt_name
    input_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    for k in ks:
        write_isic_case(input_dir, gt_dir, k)
    return input_dir, gt_dir


# ---------------------------------------------------------------------------------------------------------- BUSI


def busi_noise(seed: int) -> np.ndarray:
    """Uniform uint8 noise ``[32, 32]``: noise images do not correlate, so they are never near-duplicates."""
    return np.random.default_rng(seed).integers(0, 256, (BUSI_SIZE, BUSI_SIZE), dtype=np.uint8)


def busi_rect(rows: slice, cols: slice) -> np.ndarray:
    """A 0 / 255 uint8 mask ``[32, 32]`` with the rectangle ``[rows, cols]`` set."""
    mask = np.zeros((BUSI_SIZE, BUSI_SIZE), np.uint8)
    mask[rows, cols] = 255
    return mask


def save_l(array: np.ndarray, path: Path) -> None:
    """Save a uint8 ``[H, W]`` array as a grey PNG."""
    Image.fromarray(array).save(path)


def write_busi(root: Path) -> Path:
    """Write the BUSI fixture under ``root/Dataset_BUSI_with_GT`` and return that folder.

    11 benign, 6 malignant and 4 normal 32x32 noise images (names with spaces and parentheses). The only
    near-duplicate groups are the two planted ones: ``benign (3)`` is ``benign (1)`` plus noise and a caliper cross,
    and ``benign (11)`` is a byte-identical copy of ``malignant (6)``.
    """
    base = root / BUSI_FOLDER
    folders = {name: base / name for name in ("benign", "malignant", "normal")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    benign, malignant, normal = folders["benign"], folders["malignant"], folders["normal"]

    # benign (1): grey stored as RGB, with a 1-bit mask of 8x8 = 64 pixels.
    grey = busi_noise(1)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(benign / "benign (1).png")
    Image.fromarray(busi_rect(slice(2, 10), slice(2, 10)) > 0).convert("1").save(benign / "benign (1)_mask.png")
    # benign (3): near-duplicate of benign (1): sensor noise and a bright caliper cross.
    rng = np.random.default_rng(100)
    twin = np.clip(grey + rng.normal(0.0, 8.0, grey.shape), 0, 255).astype(np.uint8)
    twin[14:19, 16] = twin[16, 14:19] = 255
    save_l(twin, benign / "benign (3).png")
    save_l(busi_rect(slice(2, 10), slice(2, 10)), benign / "benign (3)_mask.png")
    # benign (2): three masks, L + RGBA (alpha 255 everywhere) + mode 1; the mode-1 one overlaps the first.
    save_l(busi_noise(2), benign / "benign (2).png")
    save_l(busi_rect(slice(0, 5), slice(0, 6)), benign / "benign (2)_mask.png")
    rgba = np.full((BUSI_SIZE, BUSI_SIZE, 4), 255, np.uint8)
    rgba[..., :3] = busi_rect(slice(20, 24), slice(20, 25))[..., None]
    Image.fromarray(rgba, mode="RGBA").save(benign / "benign (2)_mask_1.png")
    Image.fromarray(busi_rect(slice(3, 7), slice(3, 8)) > 0).convert("1").save(benign / "benign (2)_mask_2.png")
    for k in range(4, 11):
        save_l(busi_noise(k), benign / f"benign ({k}).png")
        save_l(busi_rect(slice(0, k), slice(0, 10)), benign / f"benign ({k})_mask.png")

    for k in range(1, 7):
        save_l(busi_rect(slice(10, 20), slice(5, 5 + k)), malignant / f"malignant ({k})_mask.png")
        if k == 1:  # a tinted RGB image: its channels differ, so the grey value is the luma
            tinted = np.stack([busi_noise(101), busi_noise(102), busi_noise(103)], axis=-1)
            Image.fromarray(tinted).save(malignant / "malignant (1).png")
        else:
            save_l(busi_noise(100 + k), malignant / f"malignant ({k}).png")
    # benign (11) is malignant (6), byte for byte, filed under another class.
    shutil.copyfile(malignant / "malignant (6).png", benign / "benign (11).png")
    save_l(busi_rect(slice(10, 20), slice(5, 11)), benign / "benign (11)_mask.png")

    for k in range(1, 5):
        save_l(busi_noise(200 + k), normal / f"normal ({k}).png")
        Image.fromarray(np.zeros((BUSI_SIZE, BUSI_SIZE, 3), np.uint8)).save(normal / f"normal ({k})_mask.png")
    (benign / ".DS_Store").write_bytes(b"\0")  # ignored
    return base


# ---------------------------------------------------------------------------------------------------------- ACDC


def write_acdc_nifti(path: Path, data: np.ndarray) -> None:
    """Save ``data`` (X, Y, Z) as NIfTI with zooms :data:`ACDC_ZOOMS` in the header only."""
    img = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]))  # no voxel size in the affine, as in ACDC
    img.header.set_zooms(ACDC_ZOOMS)
    nib.save(img, path)


def acdc_volume(rng: np.random.Generator, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A random image of ``dtype`` (with one hot outlier) and a label holding all four classes, both (X, Y, Z)."""
    label = rng.integers(0, 4, size=ACDC_SHAPE).astype(np.uint8)
    label[:4, :4, :] = 0  # background corner, and every class is present somewhere
    high = {np.int16: 900, np.uint8: 200, np.float32: 3.5}[dtype]
    image = (rng.random(ACDC_SHAPE) * high).astype(dtype)
    image[0, 0, 0] = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1e4  # clipped by the percentiles
    return image, label


def make_acdc_patient(
    folder: Path,
    number: int,
    rng: np.random.Generator,
    ed: int = 1,
    es: int = 12,
    labelled: bool = True,
    group: str | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Write one patient folder; returns ``{frame: (image, label)}`` as written (X, Y, Z)."""
    patient = f"patient{number:03d}"
    folder = folder / patient
    folder.mkdir(parents=True)
    group = group or ACDC_FIXTURE_GROUPS[number % len(ACDC_FIXTURE_GROUPS)]
    (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: {group}\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
    dtype = ACDC_DTYPES[number % len(ACDC_DTYPES)]
    written = {}
    for frame in (ed, es):
        image, label = acdc_volume(rng, dtype)
        write_acdc_nifti(folder / f"{patient}_frame{frame:02d}.nii.gz", image)
        if labelled:
            write_acdc_nifti(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", label)
        written[frame] = (image, label)
    # Distractors that must be ignored: an unlabelled middle frame and the 4D cine file.
    write_acdc_nifti(folder / f"{patient}_frame05.nii.gz", acdc_volume(rng, dtype)[0])
    (folder / f"{patient}_4d.nii.gz").write_bytes(b"not read")
    return written
