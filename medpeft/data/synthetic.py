"""Deterministic synthetic data for the embedded demo: a dermoscopy-like target task and a different source task.

The demo must run anywhere without downloads, and it must be a real transfer: an encoder is pre-trained on the
SOURCE task and then adapted (PEFT) to the TARGET task. Both tasks are binary segmentation written in the ISIC 2018
Task 1 on-disk layout (see :mod:`medpeft.data.isic`), so the same reader, transforms and checks apply to them.

TARGET (:func:`generate_demo_isic`, dataset ``"demo"``): skin-coloured background with a smooth illumination
gradient, vignetting and fine skin texture; one irregular lesion per image (star-shaped outline from random Fourier
harmonics, 8-45 % of the image, brown-to-dark pigment with internal texture, blotches and a fuzzy border); dark hairs
as smooth random curves crossing the image, also over the lesion; sensor noise; occasional ruler marks, air bubbles
and the dark circular field of view of a dermoscope; one to three small round lesion-coloured spots that are not
annotated (look-alikes). Hairs are as dark as pigment and the spots share its colour, so neither darkness nor
colour segments the lesion: shape, texture and context must be learned.

SOURCE (:func:`generate_source_task`, dataset ``"demo_source"``): grey-ish, weakly tinted backgrounds with noise
and grating textures, and several ellipses / polygons with their own texture as foreground, lighter or darker than
the background at random. It teaches generic edges, textures and blobs, but has no skin colour, pigment, hairs or
lesion shapes, so it does not solve the target.

Determinism: image ``i`` is drawn from ``numpy.random.default_rng([seed, task, i])`` and encoded with fixed Pillow
settings (JPEG quality 92, PNG without metadata), so the same seed gives the same bytes, and the first ``k`` images
do not depend on ``n_images``. Only numpy and Pillow are used; 300 images of 128 px take a few seconds.

Writing is atomic: a set is generated into a hidden temporary sibling folder and renamed into place, so an
interrupted run never leaves a half dataset. A folder that already holds the expected number of files is reused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from medpeft.data.isic import TRAIN_GROUND_TRUTH, TRAIN_INPUT, build_isic2018
from medpeft.data.registry import SegmentationDataset, register_dataset

__all__ = [
    "build_demo",
    "build_demo_source",
    "generate_demo_isic",
    "generate_source_task",
    "render_lesion_case",
    "render_source_case",
]

# Task tags keep the random streams of the two tasks apart even when they use the same seed.
_TARGET_TASK, _SOURCE_TASK = 0, 1
_SUPERSAMPLE = 4  # curves and polygons are drawn at 4x and box-filtered down, for anti-aliased edges


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in ``[0, 1]``: ``(yy, xx)``, each ``[size, size]`` float32."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise: a ``cells x cells`` Gaussian grid upsampled bicubically, rescaled to unit std.

    Returns:
        float32 ``[size, size]`` with mean ~0 and std 1.
    """
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
    return (field - field.mean()) / (field.std() + 1e-6)


def _downsample_alpha(canvas: Image.Image, size: int) -> np.ndarray:
    """Box-filter a supersampled 0/255 ``L`` canvas to ``[size, size]`` coverage in ``[0, 1]``."""
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-composite ``colour`` (``[3]`` or ``[H, W, 3]``) over ``image`` ``[H, W, 3]`` with ``alpha`` ``[H, W]``."""
    a = alpha[..., None]
    return image * (1.0 - a) + colour * a


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# TARGET: dermoscopy-like lesions
# ----------------------------------------------------------------------------------------------------------------


def _skin(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Skin background with illumination gradient, vignetting and fine texture: ``[size, size, 3]`` in ~[0, 1]."""
    tone = np.array([0.88, 0.66, 0.56], dtype=np.float32) * rng.uniform(0.78, 1.08)
    tone += rng.uniform([-0.04, -0.06, -0.06], [0.05, 0.03, 0.05]).astype(np.float32)  # pinkish to yellowish skin
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    cx, cy = rng.uniform(0.35, 0.65, size=2)
    radius2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5
    illumination = (1.0 + gx * (xx - 0.5) + gy * (yy - 0.5)) * (1.0 - rng.uniform(0.05, 0.35) * radius2)
    texture = 0.035 * _smooth_noise(rng, size, max(4, size // 4)) + 0.02 * _smooth_noise(rng, size, size // 2)
    return tone * (illumination + texture)[..., None]


def _lesion_geometry(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one star-shaped lesion outline.

    The outline radius is ``r0 * (1 + sum_k a_k cos(k * theta + phi_k))`` for harmonics ``k = 2..7``; ``r0`` is
    chosen so the area ``pi r0^2 (1 + sum_k a_k^2 / 2)`` is a random 8-45 % of the image.

    Returns:
        ``(inside, depth, rel_dist)``, each ``[H, W]``: the lesion mask; the signed distance to the outline in units
        of ``r0`` (positive inside); and the distance from the centre relative to the local outline radius.
    """
    k = np.arange(2, 8, dtype=np.float32)
    irregularity = rng.uniform(0.2, 1.0)
    amplitude = irregularity * rng.uniform(0.0, 0.28, size=k.size) / k**0.7
    phase = rng.uniform(0.0, 2.0 * np.pi, size=k.size)
    area = rng.uniform(0.08, 0.45)
    r0 = np.sqrt(area / (np.pi * (1.0 + 0.5 * np.sum(amplitude**2))))
    margin = min(1.05 * r0, 0.5)
    cx, cy = rng.uniform(margin, 1.0 - margin, size=2)

    dy, dx = yy - cy, xx - cx
    dist = np.sqrt(dx**2 + dy**2)
    theta = np.arctan2(dy, dx)
    harmonics = np.cos(k[:, None, None] * theta + phase[:, None, None])  # [K, 1, 1] x [H, W] -> [K, H, W]
    outline = r0 * (1.0 + np.tensordot(amplitude, harmonics, axes=1))  # sum over K -> [H, W]
    return dist < outline, (outline - dist) / r0, dist / outline


def _lesion_colour(
    rng: np.random.Generator, size: int, inside: np.ndarray, rel_dist: np.ndarray, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Pigment with a darker centre, pigment network, blotches and optional blue-grey veil: ``[H, W, 3]``."""
    lightness = rng.uniform(0.22, 0.58)
    colour = np.array([1.0, 0.66, 0.48], dtype=np.float32) * lightness  # brown; small lightness -> near black
    centre_dark = 1.0 - rng.uniform(0.0, 0.4) * np.clip(1.0 - rel_dist, 0.0, 1.0)
    mottling = 1.0 + 0.18 * _smooth_noise(rng, size, 10)
    # Pigment network: a reticular pattern from two crossed gratings at a random angle and period.
    angle, period = rng.uniform(0.0, np.pi), rng.uniform(0.035, 0.07)
    u = np.cos(angle) * xx + np.sin(angle) * yy
    v = -np.sin(angle) * xx + np.cos(angle) * yy
    network = np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period)
    shade = centre_dark * mottling * (1.0 - rng.uniform(0.0, 0.18) * np.clip(network, 0.0, 1.0))
    pigment = colour * shade[..., None]

    blotch = np.clip(_smooth_noise(rng, size, 8) - rng.uniform(0.6, 1.4), 0.0, 0.6) / 0.6  # sparse dark patches
    pigment = _blend(pigment, blotch * inside, np.array([0.16, 0.09, 0.07], dtype=np.float32))
    if rng.random() < 0.3:
        veil = np.clip(_smooth_noise(rng, size, 6) - 0.3, 0.0, 1.0) * 0.6
        pigment = _blend(pigment, veil * inside, np.array([0.42, 0.46, 0.56], dtype=np.float32))
    return pigment


def _random_curve(rng: np.random.Generator, size: int, n_points: int = 48) -> list[tuple[float, float]]:
    """A smooth cubic Bezier curve entering and leaving through random image borders, in supersampled pixels."""
    scale = size * _SUPERSAMPLE

    def border_point() -> np.ndarray:
        t, side = rng.uniform(-0.1, 1.1), rng.integers(4)
        return np.array([(t, -0.05), (1.05, t), (t, 1.05), (-0.05, t)][side])

    p0, p3 = border_point(), border_point()
    p1, p2 = rng.uniform(0.0, 1.0, size=(2, 2))
    t = np.linspace(0.0, 1.0, n_points)[:, None]  # [P, 1]
    curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3  # [P, 2]
    return [(float(x), float(y)) for x, y in curve * scale]


def _hairs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coverage ``[H, W]`` in ``[0, 1]`` of 0-8 hairs, each 0.7-2.2 px wide."""
    canvas = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    n_hairs = 0 if rng.random() < 0.2 else int(rng.integers(1, 9))
    for _ in range(n_hairs):
        width = max(1, round(rng.uniform(0.7, 2.2) * _SUPERSAMPLE))
        draw.line(_random_curve(rng, size), fill=255, width=width, joint="curve")
    return _downsample_alpha(canvas, size)


def _ruler(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A light ruler band with dark ticks along a random image edge: ``(band, ticks)``, each ``[H, W]`` in {0, 1}."""
    band, ticks = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    width = max(3, int(size * rng.uniform(0.06, 0.1)))
    band[-width:] = 1.0
    step = int(rng.integers(3, 6))
    for i, column in enumerate(range(int(rng.integers(step)), size, step)):
        length = width * (0.8 if i % 5 == 0 else 0.45)  # every fifth tick is long, like on a millimetre scale
        ticks[size - width : size - width + max(1, int(length)), column] = 1.0
    turns = int(rng.integers(4))
    return np.rot90(band, turns), np.rot90(ticks, turns)


def _bubbles(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Air bubbles of the immersion fluid: ``(rim, interior)`` coverage, each ``[H, W]`` in ``[0, 1]``."""
    rim, interior = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.03, 0.11)
        cx, cy = rng.uniform(0.05, 0.95, size=2)
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        rim = np.maximum(rim, np.exp(-(((dist - radius) * size / 0.8) ** 2)))
        interior = np.maximum(interior, (dist < radius).astype(np.float32))
    return rim, interior


def _look_alike_spots(rng: np.random.Generator, lesion: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Small round pigmented spots beside the lesion (freckles, dots): coverage ``[H, W]`` in ``[0, 1]``.

    They share the lesion's colour but not its size, outline or texture and are not annotated, so a model must
    tell the lesion from look-alikes by shape and context, not by colour: features a frozen source-task encoder
    does not provide, which is what makes adapting the encoder pay off in the demo.
    """
    spots = np.zeros(lesion.shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(0.03, 0.07)
        for _attempt in range(10):  # keep each spot clear of the lesion
            cx, cy = rng.uniform(0.08, 0.92, size=2)
            dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            if not (lesion & (dist < radius * 1.6)).any():
                spots = np.maximum(spots, np.clip((radius - dist) * lesion.shape[0] / 1.5, 0.0, 1.0))
                break
    return spots


def render_lesion_case(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one synthetic dermoscopy image.

    Args:
        rng: Random generator; the image is a deterministic function of its state.
        size: Side of the square image in pixels.

    Returns:
        ``(image, mask, hair)``: uint8 ``[size, size, 3]``, bool ``[size, size]`` lesion mask, and float32
        ``[size, size]`` hair coverage in ``[0, 1]`` (returned so tests can check that hairs are as dark as pigment).
    """
    yy, xx = _grid(size)
    image = _skin(rng, size, yy, xx)

    # Redraw the rare outline that ends up outside 6-47 % after clipping at the image border.
    for _ in range(20):
        inside, depth, rel_dist = _lesion_geometry(rng, yy, xx)
        if 0.06 <= inside.mean() <= 0.47:
            break
    # Fuzzy border: coverage rises smoothly across the outline (0.5 exactly on it); a little noise keeps the
    # visible edge from following the annotated outline perfectly, as in real data.
    softness = rng.uniform(0.03, 0.15)
    coverage = 0.5 * (1.0 + np.tanh((depth + 0.04 * _smooth_noise(rng, size, 16)) / softness))
    opacity = rng.uniform(0.65, 1.0)  # faint lesions exist, and are the hard cases
    pigment = _lesion_colour(rng, size, inside, rel_dist, yy, xx)
    image = _blend(image, coverage * opacity, pigment)
    spots = _look_alike_spots(rng, inside, yy, xx)
    image = _blend(image, spots * opacity, pigment.mean(axis=(0, 1)))  # lesion-coloured, flat, not annotated

    hair = _hairs(rng, size)
    hair_colour = np.array([0.16, 0.11, 0.08], dtype=np.float32) * rng.uniform(0.6, 1.6)
    image = _blend(image, hair, hair_colour)

    if rng.random() < 0.12:
        band, ticks = _ruler(rng, size)
        image = _blend(image, band * 0.85, np.array([0.92, 0.9, 0.86], dtype=np.float32))
        image = _blend(image, ticks, np.array([0.1, 0.1, 0.1], dtype=np.float32))
    if rng.random() < 0.2:
        rim, interior = _bubbles(rng, size, yy, xx)
        image = _blend(image, interior * 0.15, np.ones(3, dtype=np.float32))
        image = _blend(image, rim * 0.8, np.ones(3, dtype=np.float32))
    mask = inside
    if rng.random() < 0.2:
        # Dark circular field of view of a contact dermoscope; the annotated lesion stops at its edge.
        radius = rng.uniform(0.6, 0.75)
        dist = np.sqrt((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
        image = _blend(image, np.clip((dist - radius) * size / 3.0, 0.0, 1.0), np.full(3, 0.02, np.float32))
        mask = inside & (dist < radius)

    image = image + rng.uniform(0.005, 0.025) * rng.standard_normal(image.shape).astype(np.float32)
    return _to_uint8(image), mask, hair


# ----------------------------------------------------------------------------------------------------------------
# SOURCE: textured shapes on textured backgrounds
# ----------------------------------------------------------------------------------------------------------------


def _texture(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Zero-mean texture ``[H, W]``: smooth noise at a random scale plus a random oriented grating."""
    angle, period = rng.uniform(0.0, np.pi), rng.uniform(0.04, 0.25)
    grating = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period + rng.uniform(0.0, 2 * np.pi))
    noise = _smooth_noise(rng, size, int(rng.integers(4, max(5, size // 3))))
    return rng.uniform(0.0, 0.1) * grating + rng.uniform(0.02, 0.1) * noise


def _shape_coverage(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coverage ``[H, W]`` in ``[0, 1]`` of one ellipse or polygon with sharp corners."""
    scale = size * _SUPERSAMPLE
    canvas = Image.new("L", (scale, scale), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.1, 0.9, size=2) * scale
    radius = rng.uniform(0.07, 0.22) * scale
    if rng.random() < 0.4:
        rx, ry = radius * rng.uniform(0.5, 1.0, size=2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        n_vertices = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0.0, 2 * np.pi, size=n_vertices))
        radii = radius * rng.uniform(0.5, 1.0, size=n_vertices)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)], fill=255)
    return _downsample_alpha(canvas, size)


def render_source_case(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Render one image of the source task.

    Args:
        rng: Random generator; the image is a deterministic function of its state.
        size: Side of the square image in pixels.

    Returns:
        ``(image, mask)``: uint8 ``[size, size, 3]`` and bool ``[size, size]`` foreground (union of the shapes).
    """
    yy, xx = _grid(size)
    grey = rng.uniform(0.3, 0.75)
    tint = rng.uniform(-0.05, 0.05, size=3).astype(np.float32)  # weak tint: mostly grey, never skin-like
    image = (grey + _texture(rng, size, yy, xx))[..., None] + tint

    for _ in range(20):
        coverages = [_shape_coverage(rng, size) for _ in range(int(rng.integers(2, 7)))]
        union = np.max(coverages, axis=0)
        if 0.08 <= (union > 0.5).mean() <= 0.5:
            break
    for coverage in coverages:
        # Each shape is lighter or darker than the background at random, so polarity carries no label.
        level = grey + rng.choice([-1.0, 1.0]) * rng.uniform(0.12, 0.35)
        shape_tint = rng.uniform(-0.08, 0.08, size=3).astype(np.float32)
        fill = (level + _texture(rng, size, yy, xx))[..., None] + shape_tint
        image = _blend(image, coverage, fill)

    image = image + rng.uniform(0.005, 0.03) * rng.standard_normal(image.shape).astype(np.float32)
    return _to_uint8(image), union > 0.5


# ----------------------------------------------------------------------------------------------------------------
# Writing sets in the ISIC layout
# ----------------------------------------------------------------------------------------------------------------


def _count_files(root: Path) -> tuple[int, int]:
    """Number of entries in the input and ground-truth folders of ``root`` (0 where a folder is missing)."""

    def count(folder: Path) -> int:
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    return count(root / TRAIN_INPUT), count(root / TRAIN_GROUND_TRUTH)


def _write_set(
    root: str | os.PathLike[str],
    n_images: int,
    seed: int,
    task: int,
    render: Callable[[np.random.Generator], tuple[np.ndarray, ...]],
) -> Path:
    """Generate ``n_images`` cases into ``root`` in the ISIC layout, atomically and idempotently."""
    root = Path(root)
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if root.is_dir() and any(root.iterdir()):
        if _count_files(root) == (n_images, n_images):
            return root
        n_inputs, n_masks = _count_files(root)
        raise FileExistsError(
            f"'{root}' exists but does not hold a generated set of {n_images} images "
            f"({TRAIN_INPUT}: {n_inputs} files, {TRAIN_GROUND_TRUTH}: {n_masks} files); "
            f"delete it or choose another root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        (staging / TRAIN_INPUT).mkdir()
        (staging / TRAIN_GROUND_TRUTH).mkdir()
        for i in range(n_images):
            image, mask = render(np.random.default_rng([seed, task, i]))[:2]
            case_id = f"ISIC_{i:07d}"
            Image.fromarray(image).save(staging / TRAIN_INPUT / f"{case_id}.jpg", quality=92)
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                staging / TRAIN_GROUND_TRUTH / f"{case_id}_segmentation.png"
            )
        try:
            os.rename(staging, root)  # atomic; also replaces an empty folder
        except OSError:
            # Another process finished the same set first: keep its copy if it is complete.
            if _count_files(root) != (n_images, n_images):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def generate_demo_isic(root: str | os.PathLike[str], n_images: int = 300, size: int = 128, seed: int = 0) -> Path:
    """Write the synthetic dermoscopy TARGET task in the ISIC 2018 Task 1 layout.

    Produces ``<root>/ISIC2018_Task1-2_Training_Input/ISIC_<i:07d>.jpg`` (RGB, JPEG quality 92) and
    ``<root>/ISIC2018_Task1_Training_GroundTruth/ISIC_<i:07d>_segmentation.png`` (``L``, values 0 / 255), and
    nothing else. Does nothing if ``root`` already holds ``n_images`` files in each folder.

    Args:
        root: Destination folder.
        n_images: Number of image / mask pairs.
        size: Side of the square images in pixels.
        seed: Seed; the same seed gives byte-identical files.

    Returns:
        ``root``.

    Raises:
        FileExistsError: If ``root`` is non-empty but does not hold ``n_images`` pairs.
        ValueError: If ``n_images < 1``.
    """
    return _write_set(root, n_images, seed, _TARGET_TASK, lambda rng: render_lesion_case(rng, size))


def generate_source_task(root: str | os.PathLike[str], n_images: int = 400, size: int = 128, seed: int = 0) -> Path:
    """Write the synthetic SOURCE task (textured shapes) in the ISIC 2018 Task 1 layout.

    Same layout, atomicity and idempotence as :func:`generate_demo_isic`.

    Args:
        root: Destination folder.
        n_images: Number of image / mask pairs.
        size: Side of the square images in pixels.
        seed: Seed; the same seed gives byte-identical files.

    Returns:
        ``root``.

    Raises:
        FileExistsError: If ``root`` is non-empty but does not hold ``n_images`` pairs.
        ValueError: If ``n_images < 1``.
    """
    return _write_set(root, n_images, seed, _SOURCE_TASK, lambda rng: render_source_case(rng, size))


@register_dataset(
    "demo",
    num_classes=2,
    in_channels=3,
    default_root="datasets/demo",
    prepare=generate_demo_isic,
    class_names=("background", "lesion"),
)
def build_demo(root: str | os.PathLike[str], split: str = "train", **options: Any) -> SegmentationDataset:
    """The synthetic TARGET task: generated into ``root`` on first use, then read like ISIC 2018.

    Args:
        root: Folder of the generated set (default ``datasets/demo``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        **options: Options of :func:`~medpeft.data.isic.build_isic2018`.
    """
    return build_isic2018(generate_demo_isic(root), split=split, **options)


@register_dataset(
    "demo_source",
    num_classes=2,
    in_channels=3,
    default_root="datasets/demo_source",
    prepare=generate_source_task,
    class_names=("background", "shape"),
)
def build_demo_source(root: str | os.PathLike[str], split: str = "train", **options: Any) -> SegmentationDataset:
    """The synthetic SOURCE task (encoder pre-training): generated into ``root`` on first use, then read like ISIC.

    Args:
        root: Folder of the generated set (default ``datasets/demo_source``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        **options: Options of :func:`~medpeft.data.isic.build_isic2018`.
    """
    return build_isic2018(generate_source_task(root), split=split, **options)
