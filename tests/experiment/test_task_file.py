"""Task files: a run's trained tensors plus its config; rebuilt, they give exactly the run's own outputs, and they
refuse base encoder weights other than those the run trained on."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medpeft.data import generate_demo_isic
from medpeft.evaluation.checkpoint import find_run_checkpoint, load_trained_network
from medpeft.experiment import load_config
from medpeft.experiment.network import apply_finetuning, segmenter_from_config
from medpeft.experiment.task_file import TaskFileError, load_task, read_task_metadata, save_task
from medpeft.models import build_segmenter, encoder_state_dict_for_timm

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.image_size=32", "data.batch_size=4", "data.augmentation=none", "trainer.max_steps=3",
    "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
    "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "optim.encoder_lr=0.1",
]  # fmt: skip


def _train(config: str, overrides: list[str]) -> Path:
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--config", str(REPO / "configs" / config), "--set", *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("task")
    pretrained = base / "encoder.safetensors"
    shutil.copy(REPO / "checkpoints" / "demo_source_vit_tiny.safetensors", pretrained)
    root = generate_demo_isic(base / "demo")
    overrides = [*TINY, f"data.root={root}", f"output_dir={base / 'runs'}", f"model.pretrained={pretrained}"]
    return _train("demo_tcur.yaml", overrides), pretrained


def test_task_file_rebuilds_exactly_the_runs_network(run: tuple[Path, Path]) -> None:
    run_dir, _ = run
    task = run_dir / "task.safetensors"
    net, cfg = load_task(task)
    reference = load_trained_network(load_config(run_dir / "config.yaml"), find_run_checkpoint(run_dir))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)
    assert cfg.adapter.method == "tcurlora" and read_task_metadata(task)["class_names"] == ["background", "lesion"]
    assert not any(key.startswith("encoder.") for key in load_file(task))  # the base encoder stays out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    checkpoint_bytes = find_run_checkpoint(run_dir).stat().st_size
    assert metrics["task_file_bytes"] == task.stat().st_size < checkpoint_bytes / 20


def test_task_file_refuses_other_base_weights(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, pretrained = run
    original = pretrained.read_bytes()
    try:
        tensors = load_file(pretrained)
        key = next(iter(tensors))
        tensors[key] = tensors[key] + 1  # another encoder under the same name
        save_file(tensors, str(pretrained))
        with pytest.raises(TaskFileError, match="SHA-256 .* now has"):
            load_task(run_dir / "task.safetensors")
    finally:
        pretrained.write_bytes(original)


def test_not_a_task_file_is_named(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(TaskFileError, match="plain.safetensors is not a medpeft task file"):
        load_task(tmp_path / "plain.safetensors")


def test_decoder_only_task_on_an_encoder_without_batchnorm_leaves_the_encoder_out(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    """``adapt_norm`` (true by default) moves nothing in a ViT: its ``decoder_only`` task is the decoder alone."""
    _, pretrained = run
    root = generate_demo_isic(tmp_path / "demo")
    overrides = [*TINY, f"data.root={root}", f"output_dir={tmp_path / 'runs'}", f"model.pretrained={pretrained}"]
    run_dir = _train("demo_decoder_only.yaml", overrides)
    task = run_dir / "task.safetensors"
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.adapter.adapt_norm is True
    assert not any(key.startswith("encoder.") for key in load_file(task))
    net, _ = load_task(task)
    reference = load_trained_network(cfg, find_run_checkpoint(run_dir))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)


def test_decoder_only_task_with_adapted_batchnorm_carries_the_encoder(tmp_path: Path) -> None:
    """A ResNet's adapted statistics are part of the trained network: the task file keeps them and rebuilds it."""
    torch.manual_seed(0)
    source = build_segmenter("resnet18", in_channels=1, num_classes=2, img_size=32)
    pretrained = tmp_path / "resnet18.safetensors"
    save_file(dict(encoder_state_dict_for_timm(source.encoder)), str(pretrained))
    overrides = ["adapter.method=decoder_only", f"model.pretrained={pretrained}", "data.image_size=32"]
    cfg = load_config(REPO / "configs" / "experiments" / "busi_from_acdc.yaml", overrides)
    assert cfg.adapter.adapt_norm is True
    net = segmenter_from_config(cfg)
    apply_finetuning(net, cfg.adapter)
    with torch.no_grad():  # what training with adapted statistics does to them
        for module in net.encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.add_(0.5)
                module.running_var.mul_(2.0)
    save_task(net, cfg, tmp_path / "task.safetensors")
    assert any(key.startswith("encoder.") for key in load_file(tmp_path / "task.safetensors"))
    loaded, _ = load_task(tmp_path / "task.safetensors")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)
