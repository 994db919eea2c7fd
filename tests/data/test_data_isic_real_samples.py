"""Read the 7 real ISIC image/mask pairs of the shared samples through the reader (skipped where absent).

See ../shared/real-samples/PROVENANCE.md, section 1: full-resolution foreground fractions range from 1.2 %
(ISIC_0014597) to 92.2 % (ISIC_0009995).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medpeft.data import build_dataset

REAL_ISIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "real-samples" / "isic2018"
IDS = ["0001769", "0009995", "0010459", "0012660", "0014572", "0014597", "0014608"]


@pytest.fixture(scope="module")
def items() -> dict[str, dict]:
    if not REAL_ISIC.is_dir():
        pytest.skip(f"real ISIC samples not found at {REAL_ISIC}")
    ds = build_dataset("isic2018", REAL_ISIC, split="train", image_size=256, val_fraction=0.0, test_fraction=0.0)
    loaded = [ds[i] for i in range(len(ds))]
    return {item["name"]: item for item in loaded}


def test_all_seven_pairs_are_read(items: dict[str, dict]) -> None:
    assert sorted(items) == [f"ISIC_{i}" for i in IDS]
    for item in items.values():
        assert item["image"].shape == (3, 256, 256) and item["label"].shape == (1, 256, 256)
        assert set(item["label"].unique().tolist()) == {0, 1}
        assert item["image"].std() > 0.05  # a real photograph, not a blank decode


def test_foreground_fractions_match_provenance(items: dict[str, dict]) -> None:
    fractions = {name: item["label"].float().mean().item() for name, item in items.items()}
    assert fractions["ISIC_0014597"] == pytest.approx(0.012, abs=0.005)
    assert fractions["ISIC_0009995"] == pytest.approx(0.922, abs=0.02)
    assert min(fractions, key=fractions.get) == "ISIC_0014597"
    assert max(fractions, key=fractions.get) == "ISIC_0009995"


def test_lesions_are_darker_than_surrounding_skin(items: dict[str, dict]) -> None:
    # Alignment check on real data: a mask flipped or paired with the wrong image would break this.
    for name, item in items.items():
        grey, lesion = item["image"].mean(0), item["label"][0].bool()
        if name != "ISIC_0009995":  # almost no skin left around that lesion
            assert grey[lesion].mean() < grey[~lesion].mean() - 0.05, name
