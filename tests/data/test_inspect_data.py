"""Tests of the dataset inspection (medpeft.data.inspection, scripts/inspect_data.py) on the tiny reader fixtures.

Class frequencies are checked against numbers worked out by hand from the fixtures (see tests/data/builders.py):

* ISIC: case ``k`` is 48x40 (WxH) with foreground rows ``[0, 4 + 4k)``, so at ``--image-size 40`` (rows kept, and
  the column resize cannot change a mask that depends on the row only) its lesion fraction is ``(1 + k) / 10``;
  over k = 0..7 that is 36 / 80 = 0.45.
* BUSI (32x32, read at 32 px): lesion pixels 64 + 64 + 64 (benign 1, 3, and 2 = 30 + 20 + 20 - 6 overlap)
  + 10 * (4 + ... + 10) + 10 * (1 + ... + 6) + 60 (benign 11) = 952 of 21 * 1024; 17 of 21 images have a lesion.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from builders import ACDC_SHAPE, make_acdc_patient, write_busi, write_isic
from PIL import Image

from medpeft.data import build_dataset, build_volume_dataset
from medpeft.data.inspection import inspect_dataset
from medpeft.data.montage import save_montage

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """``scripts/inspect_data.py`` imported as a module, so tests call its ``main`` without a subprocess."""
    spec = importlib.util.spec_from_file_location("inspect_data_script", REPO / "scripts" / "inspect_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def isic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("isic") / "isic2018"
    write_isic(root)
    return root


@pytest.fixture(scope="module")
def busi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("busi")
    write_busi(root)
    return root


@pytest.fixture(scope="module")
def acdc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """Six patients (12 volumes) with zooms (1.5, 1.25, 10); returns the root and every label as written."""
    root = tmp_path_factory.mktemp("acdc")
    rng = np.random.default_rng(0)
    written = [make_acdc_patient(root / "training", n, rng) for n in range(1, 7)]
    return root, [label for frames in written for _, label in frames.values()]


def _fraction(report: dict, class_id: int, key: str = "fraction") -> float:
    return report["labels"]["classes"][class_id][key]


def test_isic_counts_shapes_and_hand_computed_frequency(isic_root: Path) -> None:
    report, samples = inspect_dataset("isic2018", isic_root, image_size=40, samples=2)
    counts = report["counts"]
    assert counts == {s: len(build_dataset("isic2018", isic_root, s, seed=0).case_ids) for s in SPLITS} | {"total": 8}
    assert sum(counts[s] for s in SPLITS) == 8 and report["unit"] == "images"
    assert report["shapes"]["most_common"] == [[[40, 48], 8]] and report["shapes"]["distinct"] == 1
    assert report["labels"]["values"] == [0, 1] and report["class_names"] == ["background", "lesion"]
    assert _fraction(report, 1) == pytest.approx(0.45) and _fraction(report, 0) == pytest.approx(0.55)
    assert _fraction(report, 1, "case_fraction") == 1.0
    assert "spacing" not in report and "near_duplicates" not in report
    assert [s.split for s in samples] == ["train", "train", "val", "test"]
    assert samples[0].image.shape == (3, 40, 40) and samples[0].label.shape == (40, 40)
    json.dumps(report)  # plain data only


def test_busi_frequency_near_duplicates_and_options(busi_root: Path) -> None:
    report, _ = inspect_dataset("busi", busi_root, image_size=32, samples=0)
    assert report["counts"]["total"] == sum(report["counts"][s] for s in SPLITS) == 21
    assert _fraction(report, 1) == pytest.approx(952 / (21 * 32 * 32))
    assert _fraction(report, 1, "case_fraction") == pytest.approx(17 / 21)
    assert report["near_duplicates"]["groups"] == 2 and report["near_duplicates"]["images"] == 4
    assert ["benign (1)", "benign (3)"] in report["near_duplicates"]["examples"]

    without_normal, _ = inspect_dataset("busi", busi_root, image_size=32, samples=0, options={"include_normal": False})
    assert without_normal["counts"]["total"] == 17 and _fraction(without_normal, 1, "case_fraction") == 1.0


@pytest.mark.filterwarnings("ignore:not stratifying")  # 6 patients are too few to stratify by diagnosis
def test_acdc_volumes_spacing_and_voxel_frequency(acdc: tuple[Path, list[np.ndarray]], tmp_path: Path) -> None:
    root, labels = acdc
    report, samples = inspect_dataset("acdc", root, samples=1)
    volumes = {s: build_volume_dataset("acdc", root, split=s, seed=0) for s in SPLITS}
    assert report["counts"] == {s: len(volumes[s]) for s in SPLITS} | {"total": 12}
    assert report["slices"]["total"] == 12 * ACDC_SHAPE[2] and report["unit"] == "volumes"
    assert report["shapes"]["most_common"] == [[[4, 24, 20], 12]]  # (X, Y, Z) = (20, 24, 4) -> [D, H, W]
    # zooms (sx, sy, sz) = (1.5, 1.25, 10) are reported as (sz, sy, sx)
    assert report["spacing"]["most_common"] == [[[10.0, 1.25, 1.5], 12]]
    assert report["spacing"]["min"] == report["spacing"]["median"] == report["spacing"]["max"] == [10.0, 1.25, 1.5]
    expected = np.bincount(np.concatenate([label.ravel() for label in labels]), minlength=4) / (12 * 20 * 24 * 4)
    assert [_fraction(report, c) for c in range(4)] == pytest.approx(expected.tolist())
    assert report["labels"]["values"] == [0, 1, 2, 3] and report["class_names"] == ["background", "RV", "MYO", "LV"]

    # 3D samples are the slice with the most foreground, at native in-plane size
    assert len(samples) == 3 and all(s.image.shape == (1, 24, 20) and s.label.shape == (24, 20) for s in samples)
    path = save_montage(samples, report["class_names"], tmp_path / "deep" / "montage.png", title="acdc")
    with Image.open(path) as img:
        img.verify()
    assert [p.name for p in path.parent.iterdir()] == ["montage.png"]  # no temporary file left behind


def test_cli_json_report_montage_and_default_out(
    script: ModuleType, busi_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    script.main(["--dataset", "busi", "--root", str(busi_root), "--json", "--image-size", "32", "--samples", "2"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the JSON object alone; the progress bar is on stderr
    assert report["counts"]["total"] == 21 and "reading busi" in captured.err
    out = tmp_path / "runs" / "inspect" / "busi"
    assert Path(report["montage"]) == Path("runs/inspect/busi/montage.png")
    with Image.open(out / "montage.png") as img:
        img.verify()
        assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert json.loads((out / "report.json").read_text()) == report


def test_cli_text_report(script: ModuleType, isic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script.main(["--dataset", "isic2018", "--root", str(isic_root), "--out", str(tmp_path), "--image-size", "40"])
    text = capsys.readouterr().out
    assert "train 6 | val 1 | test 1 | total 8 images" in text
    assert "40 x 48 (8)" in text and "45.00%" in text and f"montage: {tmp_path / 'montage.png'}" in text
    assert (tmp_path / "montage.png").is_file()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--dataset", "busi", "--root", "{missing}"], "{missing}"),
        (["--dataset", "bussi", "--root", "{missing}"], "unknown dataset 'bussi'"),
        (["--dataset", "busi", "--root", "{busi}", "--option", "dedup=0.9"], "has no option 'dedup'"),
        (["--dataset", "busi", "--root", "{busi}", "--option", "seed=1"], "option 'seed' is set by the inspection"),
        (["--dataset", "busi", "--root", "{busi}", "--option", "include_normal"], "must look like KEY=VALUE"),
    ],
)
def test_errors_exit_2_without_traceback(
    script: ModuleType,
    busi_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    expected: str,
) -> None:
    paths = {"missing": str(tmp_path / "no_such_busi"), "busi": str(busi_root)}
    with pytest.raises(SystemExit) as info:
        script.main([arg.format(**paths) for arg in argv] + ["--out", str(tmp_path / "out")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    first_line = err.splitlines()[0]  # a missing dataset adds hint lines (expected layout, download page)
    assert first_line.startswith("error: ") and expected.format(**paths) in first_line and "Traceback" not in err
    assert not (tmp_path / "out").exists()
