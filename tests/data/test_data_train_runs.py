"""``scripts/train.py --config configs/<dataset>_lora.yaml --set data.root=<fixture> trainer.max_steps=2`` end to end
for every real dataset, on tiny fixtures in the official layouts; 3D datasets are scored per volume in mm."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
from builders import ACDC_SHAPE, make_acdc_patient, write_busi, write_isic
from test_data_synapse import TEST_DEPTHS, make_transunet

REPO = Path(__file__).resolve().parents[2]
# Small and offline: 32 px (the ViT is built for it), no hub weights, CPU, one validation batch.
SMALL = [
    "trainer.max_steps=2",
    "model.pretrained=false",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
]


def _train(config: str, root: Path, out: Path) -> tuple[Path, dict]:
    spec = importlib.util.spec_from_file_location("train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run_dir = module.main(["--config", str(REPO / "configs" / config), "--set", f"data.root={root}", *SMALL,
                           f"output_dir={out}"])  # fmt: skip
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def _per_case(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "per_case.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_isic_lora(tmp_path: Path) -> None:
    write_isic(tmp_path / "isic", ks=range(12))
    run_dir, metrics = _train("isic_lora.yaml", tmp_path / "isic", tmp_path / "runs")
    test_cases = json.loads((run_dir / "split.json").read_text())["test"]
    assert metrics["dataset"] == "isic2018" and metrics["distance_unit"] == "px"
    assert metrics["n_test_cases"] == len(test_cases) >= 1


def test_busi_lora(tmp_path: Path) -> None:
    write_busi(tmp_path / "busi")
    run_dir, metrics = _train("busi_lora.yaml", tmp_path / "busi", tmp_path / "runs")
    assert metrics["dataset"] == "busi" and metrics["method"] == "lora"
    assert {row["class_name"] for row in _per_case(run_dir)} == {"lesion"}


def test_acdc_lora_scores_whole_volumes_in_mm(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for number in range(1, 11):
        make_acdc_patient(tmp_path / "acdc" / "training", number, rng)
    run_dir, metrics = _train("acdc_lora.yaml", tmp_path / "acdc", tmp_path / "runs")
    split = json.loads((run_dir / "split.json").read_text())  # slice names: patientXXX_<ED|ES>_zNN
    test_volumes = {name.rsplit("_z", 1)[0] for name in split["test"]}
    rows = _per_case(run_dir)
    assert metrics["distance_unit"] == "mm" and metrics["n_test_cases"] == len(test_volumes) >= 2
    assert {row["case"] for row in rows} == test_volumes  # one case per volume, not per slice
    assert {row["class_name"] for row in rows} == {"RV", "MYO", "LV"}
    # scored at the native grid: voxel counts are of whole (X, Y, Z) = (20, 24, 4) volumes, not 32 x 32 slices
    counts = {row["case"]: 0 for row in rows}
    for row in rows:
        counts[row["case"]] += int(row["gt_voxels"])
    assert all(0 < n <= int(np.prod(ACDC_SHAPE)) for n in counts.values())
    assert metrics["hd95"] is None or metrics["hd95"] >= 0.0


def test_synapse_lora_scores_test_volumes_in_voxels(tmp_path: Path) -> None:
    make_transunet(tmp_path / "synapse")
    run_dir, metrics = _train("synapse_lora.yaml", tmp_path / "synapse", tmp_path / "runs")
    rows = _per_case(run_dir)
    assert {row["case"] for row in rows} == set(TEST_DEPTHS)  # TransUNet's test volumes
    assert len({row["class_name"] for row in rows}) == 8
    assert metrics["distance_unit"] == "voxel"  # TransUNet's files store no spacing
