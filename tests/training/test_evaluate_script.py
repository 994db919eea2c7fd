"""``scripts/evaluate.py`` reproduces the test metrics ``scripts/train.py`` wrote, and is repeatable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from medpeft.data import generate_demo_isic

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.image_size=32",
    "data.batch_size=4",
    "model.pretrained=false",
    "trainer.max_steps=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tcur_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("evaluate")
    root = generate_demo_isic(base / "demo")
    overrides = [*TINY, f"data.root={root}", f"output_dir={base / 'runs'}"]
    return _script("train").main(["--config", str(REPO / "configs" / "demo_tcur.yaml"), "--set", *overrides])


def test_evaluate_reproduces_train_metrics_exactly(tcur_run: Path, tmp_path: Path) -> None:
    evaluate = _script("evaluate").main
    summary = evaluate(["--run", str(tcur_run), "--out", str(tmp_path / "a"), "--device", "cpu"])
    metrics = json.loads((tcur_run / "metrics.json").read_text())
    for name in ("dice", "iou", "hd95", "asd"):
        assert summary["overall"][name]["mean"] == metrics[name], name  # exact, not approximate
    assert (tmp_path / "a" / "per_case.csv").read_bytes() == (tcur_run / "per_case.csv").read_bytes()

    evaluate(["--run", str(tcur_run), "--out", str(tmp_path / "b"), "--device", "cpu", "--no-overlays"])
    assert (tmp_path / "b" / "summary.json").read_bytes() == (tmp_path / "a" / "summary.json").read_bytes()
    assert {p.name.split("_")[0] for p in (tmp_path / "a" / "overlays").glob("*.png")} == {"best", "median", "worst"}


def test_evaluate_a_checkpoint_with_the_transunet_protocol(tcur_run: Path, tmp_path: Path) -> None:
    checkpoint = tcur_run / "checkpoints" / "last.ckpt"
    argv = ["--checkpoint", str(checkpoint), "--protocol", "transunet", "--split", "val", "--out", str(tmp_path)]
    summary = _script("evaluate").main([*argv, "--device", "cpu"])
    assert summary["protocol"] == "transunet" and summary["distance_unit"] == "voxel" and summary["split"] == "val"
    assert summary["overall"]["dice"]["n_excluded"] == 0  # that protocol scores every case
    val_cases = json.loads((tcur_run / "split.json").read_text())["val"]
    assert summary["n_cases"] == len(val_cases)


def test_missing_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        _script("evaluate").main(["--run", str(tmp_path / "nope")])
    assert info.value.code == 2 and str(tmp_path / "nope") in capsys.readouterr().err


def test_evaluate_at_native_resolution(tcur_run: Path) -> None:
    summary = _script("evaluate").main(["--run", str(tcur_run), "--resolution", "native", "--device", "cpu"])
    assert summary["resolution"] == "native"
    assert (tcur_run / "eval" / "test-symmetric-native" / "summary.json").is_file()
