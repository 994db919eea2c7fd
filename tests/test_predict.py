"""``scripts/predict.py``: masks at each input's own size, the same from a task file as from the run's checkpoint,
and an unreadable image reported without stopping the others."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.data import generate_demo_isic
from medpeft.evaluation.checkpoint import find_run_checkpoint, load_trained_network
from medpeft.experiment import load_config
from medpeft.prediction import load_network_input, main, predict_image

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=32", "data.batch_size=4", "data.augmentation=none", "model.pretrained=false",
    "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("predict")
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    root = generate_demo_isic(base / "demo")
    overrides = [*TINY, f"data.root={root}", f"output_dir={base / 'runs'}"]
    return train.main(["--config", str(REPO / "configs" / "demo_lora.yaml"), "--set", *overrides])


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (64, 20, 3), dtype=np.uint8)).save(folder / "tall.jpg", quality=90)
    return folder


def test_masks_have_the_inputs_size_and_match_between_task_and_run(run: Path, images: Path, tmp_path: Path) -> None:
    assert main(["--task", str(run / "task.safetensors"), "--input", str(images), "--out", str(tmp_path / "a")]) == 0
    assert main(["--run", str(run), "--input", str(images), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    for name, size in (("wide", (50, 37)), ("tall", (20, 64))):
        with Image.open(tmp_path / "a" / f"{name}.png") as a, Image.open(tmp_path / "b" / f"{name}.png") as b:
            assert a.size == b.size == size and a.mode == "L"
            assert np.array_equal(np.asarray(a), np.asarray(b))
            assert set(np.unique(np.asarray(a))) <= {0, 255}


def test_prediction_is_the_networks_argmax_at_native_size(run: Path, images: Path) -> None:
    """Hand-check one image: logits at 32 px, bilinear to 37 x 50, argmax."""
    net = load_trained_network(load_config(run / "config.yaml"), find_run_checkpoint(run))
    image, size = load_network_input(images / "wide.png", 32, 3)
    assert image.shape == (3, 32, 32) and size == (37, 50) and 0.0 <= image.min() and image.max() <= 1.0
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(net(image[None]), size=(37, 50), mode="bilinear")
    assert np.array_equal(predict_image(net, image, size), logits.argmax(1)[0].numpy().astype(np.uint8))


def test_an_unreadable_image_is_listed_and_the_rest_written(run: Path, images: Path, tmp_path: Path, capsys) -> None:
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    status = main(["--task", str(run / "task.safetensors"), "--input", str(images), "--out", str(tmp_path / "c")])
    assert status == 1 and sorted(p.name for p in (tmp_path / "c").iterdir()) == ["tall.png", "wide.png"]
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize(("dataset", "channels"), [("demo", 3)])
def test_network_input_is_what_evaluation_feeds(tmp_path: Path, dataset: str, channels: int) -> None:
    from medpeft.data import build_dataset

    root = generate_demo_isic(tmp_path / "demo")
    test = build_dataset(dataset, root, split="test", image_size=32)
    record = test.data[0]
    image, size = load_network_input(record["image"], 32, channels)
    torch.testing.assert_close(image, test[0]["image"], rtol=0, atol=0)
    with Image.open(record["image"]) as original:
        assert size == (original.height, original.width)


def test_nifti_mask_keeps_the_inputs_grid_affine_and_header(tmp_path: Path) -> None:
    import nibabel as nib

    from medpeft.data.volumes import percentile_normalise
    from medpeft.evaluation.inference import predict_volume
    from medpeft.models import build_segmenter
    from medpeft.prediction.volumes import predict_nifti

    cfg = load_config(REPO / "configs" / "acdc_lora.yaml", ["data.image_size=32", "model.pretrained=false"])
    torch.manual_seed(0)
    net = build_segmenter("resnet18", in_channels=1, num_classes=cfg.model.num_classes, img_size=32).eval()
    data = np.random.default_rng(0).integers(0, 800, (40, 30, 5)).astype(np.int16)  # (X, Y, Z), scanner units
    affine = np.array([[-1.4, 0, 0, 90.0], [0, 1.4, 0.1, -80.0], [0, 0, 8.0, 12.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "patient.nii.gz"))

    out = predict_nifti(net, cfg, tmp_path / "patient.nii.gz", tmp_path / "out" / "patient.nii.gz")
    mask = nib.load(out)
    assert mask.shape == (40, 30, 5) and np.allclose(mask.affine, affine)
    assert mask.header.get_zooms() == nib.load(tmp_path / "patient.nii.gz").header.get_zooms()
    labels = np.asarray(mask.dataobj)
    assert labels.dtype == np.uint8
    expected = predict_volume(net, torch.from_numpy(percentile_normalise(data.transpose(2, 1, 0))), 32, 1)
    assert np.array_equal(labels, expected.numpy().astype(np.uint8).transpose(2, 1, 0))


def test_a_2d_network_refuses_a_volume_and_says_why(run: Path, tmp_path: Path, capsys) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.int16), np.eye(4)), str(tmp_path / "v.nii.gz"))
    assert (
        main(["--task", str(run / "task.safetensors"), "--input", str(tmp_path / "v.nii.gz"), "--out", str(tmp_path)])
        == 1
    )
    assert "segments 2D images" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA runs (seeds 0 and 1) and a tCURLoRA run on one pretrained encoder file."""
    import shutil

    base = tmp_path_factory.mktemp("swap")
    pretrained = base / "encoder.safetensors"
    shutil.copy(REPO / "checkpoints" / "demo_source_vit_tiny.safetensors", pretrained)
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    root = generate_demo_isic(base / "demo")
    common = [*TINY[:3], *TINY[4:], f"data.root={root}", f"model.pretrained={pretrained}", "optim.encoder_lr=0.05"]
    runs = []
    for config, seed in (("demo_lora.yaml", 0), ("demo_lora.yaml", 1), ("demo_tcur.yaml", 0)):
        overrides = [*common, f"seed={seed}", f"output_dir={base / f'runs{seed}'}"]
        runs.append(train.main(["--config", str(REPO / "configs" / config), "--set", *overrides]) / "task.safetensors")
    return runs


def test_swapping_task_files_on_one_encoder_equals_loading_each(two_tasks: list[Path], images: Path, tmp_path: Path):
    first, second, _ = two_tasks
    assert (
        main(["--task", str(first), "--task", str(second), "--input", str(images), "--out", str(tmp_path / "s")]) == 0
    )
    assert main(["--task", str(second), "--input", str(images), "--out", str(tmp_path / "alone")]) == 0
    swapped = tmp_path / "s" / second.parent.name
    assert (tmp_path / "s" / first.parent.name / "wide.png").is_file()
    for name in ("wide.png", "tall.png"):
        with Image.open(swapped / name) as a, Image.open(tmp_path / "alone" / name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_swap_changes_the_network_into_the_other_task(two_tasks: list[Path], images: Path) -> None:
    from medpeft.experiment.task_file import load_task, swap_task

    first, second, _ = two_tasks
    image = load_network_input(images / "wide.png", 32, 3)[0][None]
    net, cfg = load_task(first)
    with torch.no_grad():
        before = net(image)
        swap_task(net, cfg, second)
        after = net(image)
        alone = load_task(second)[0](image)
    torch.testing.assert_close(after, alone, rtol=0, atol=1e-6)
    assert (before - alone).abs().max() > 1e-3  # the two tasks differ, so the swap did something


def test_a_task_of_another_adapter_cannot_share_the_network(two_tasks: list[Path]) -> None:
    from medpeft.experiment.task_file import TaskFileError, load_task, swap_task

    net, cfg = load_task(two_tasks[0])
    with pytest.raises(TaskFileError, match="adapter section"):
        swap_task(net, cfg, two_tasks[2])


def test_overlays_blend_only_the_predicted_foreground(images: Path, tmp_path: Path) -> None:
    from medpeft.data.montage import class_colours
    from medpeft.prediction.images import write_overlay

    mask = np.zeros((37, 50), np.uint8)  # wide.png is 50 x 37
    mask[5:30, 10:35] = 1
    write_overlay(images / "wide.png", mask, 2, tmp_path / "overlay.png")
    with Image.open(tmp_path / "overlay.png") as blended, Image.open(images / "wide.png") as original:
        blended, original = np.asarray(blended).astype(float), np.asarray(original).astype(float)
    foreground = mask > 0
    assert blended.shape == original.shape
    assert np.array_equal(blended[~foreground], original[~foreground])
    colour = class_colours(2)[1] * 255.0
    before = np.abs(original[foreground] - colour).sum(axis=1)
    after = np.abs(blended[foreground] - colour).sum(axis=1)
    assert np.all(after < before)  # every predicted pixel moved towards the class colour


def test_predict_writes_overlays_of_its_masks(run: Path, images: Path, tmp_path: Path) -> None:
    args = ["--task", str(run / "task.safetensors"), "--input", str(images / "wide.png"), "--out", str(tmp_path)]
    assert main([*args, "--overlays"]) == 0
    with Image.open(tmp_path / "overlays" / "wide.png") as blended, Image.open(images / "wide.png") as original:
        blended, original = np.asarray(blended), np.asarray(original)
    with Image.open(tmp_path / "wide.png") as mask:
        foreground = np.asarray(mask) > 0
    assert blended.shape == original.shape
    changed = np.any(blended != original, axis=-1)
    assert not np.any(changed & ~foreground)  # what changed is what the mask predicts
