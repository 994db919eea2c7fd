"""Smoke tests of benchmarks/reference_pipeline.py (the plain smp + peft competitor) on a tiny fake BUSI folder."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_pipeline.py"
_spec = importlib.util.spec_from_file_location("reference_pipeline", _SCRIPT)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

# case -> lesion rectangles (top, left, bottom, right) in a 32 x 40 (H x W) image; one mask file per rectangle
_CASES = {
    "benign (1)": [(4, 4, 14, 16)],
    "benign (2)": [(10, 20, 24, 34), (2, 2, 6, 8)],  # two mask files: _mask and _mask_1, merged by union
    "benign (5)": [(8, 8, 20, 30)],
    "malignant (3)": [(12, 6, 28, 22)],
    "normal (1)": [],
    "normal (7)": [],
}
_SPLIT = {
    "train": ["benign (1)", "malignant (3)", "normal (1)"],
    "val": ["benign (2)"],
    "test": ["benign (5)", "normal (7)"],
}


def _base_tensors(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state under plain names (peft's ``base_layer`` dropped), without the LoRA tensors."""
    state = encoder.state_dict()
    return {k.replace(".base_layer", ""): v.clone() for k, v in state.items() if "lora_" not in k}


def _fake_busi(root: Path) -> Path:
    base = root / "Dataset_BUSI_with_GT"
    rng = np.random.default_rng(0)
    for label_class in ref.CLASSES:
        (base / label_class).mkdir(parents=True)
    for case, boxes in _CASES.items():
        folder = base / case.split(" ")[0]
        image = rng.integers(0, 120, (32, 40), dtype=np.uint8)
        masks = [np.zeros((32, 40), np.uint8) for _ in boxes] or [np.zeros((32, 40), np.uint8)]
        for mask, (top, left, bottom, right) in zip(masks, boxes):
            mask[top:bottom, left:right] = 255
            image[top:bottom, left:right] += 100  # a brighter lesion
        Image.fromarray(image).convert("RGB").save(folder / f"{case}.png")  # convert("L") must undo this
        for index, mask in enumerate(masks):
            Image.fromarray(mask).save(folder / f"{case}_mask{'' if index == 0 else f'_{index}'}.png")
    return base


@pytest.fixture()
def busi(tmp_path: Path) -> tuple[Path, Path]:
    base = _fake_busi(tmp_path / "data")
    split = tmp_path / "split.json"
    split.write_text(json.dumps(_SPLIT))
    return base, split


def test_loads_split_with_union_masks(busi: tuple[Path, Path]) -> None:
    base, split = busi
    data = ref.load_busi_split(base.parent, split, size=32)  # the folder holding Dataset_BUSI_with_GT
    names, images, masks = data["val"]
    assert names == ["benign (2)"] and images.shape == (1, 1, 32, 32) and masks.dtype == torch.bool
    assert 0.0 <= images.min() and images.max() <= 1.0
    # both rectangles, resized 40 -> 32 wide with pixel-centre nearest sampling: columns 20..33 -> 16..26, 2..7 -> 2..5
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[10:24, 16:27] = True
    expected[2:6, 2:6] = True
    assert torch.equal(masks[0, 0], expected)
    assert ref.load_busi_split(base, split, size=32)["test"][2][1].sum() == 0  # the folder itself works too


def test_unknown_case_id_is_named(busi: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = busi
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**_SPLIT, "test": ["benign (5)", "benign (99)"]}))
    with pytest.raises(ValueError, match=r"benign \(99\)"):
        ref.load_busi_split(base, bad, size=32)


def test_score_rule() -> None:
    class Constant(torch.nn.Module):  # predicts exactly the given masks
        def __init__(self, pred: torch.Tensor) -> None:
            super().__init__()
            self.pred = pred

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pred.float() * 2 - 1

    gt = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    pred = torch.zeros_like(gt)
    gt[0, 0, :2] = True  # 8 pixels, half predicted
    pred[0, 0, 0] = True
    pred[2, 0, 0, 0] = True  # empty G, one false-positive pixel; image 1: both empty
    rows = ref.score(Constant(pred), torch.zeros(3, 1, 4, 4), gt)
    assert rows == [(8, 4, 4, 2 * 4 / 12), (0, 0, 0, 1.0), (0, 1, 0, 0.0)]


@pytest.mark.parametrize("mode", ["full", "decoder_only", "lora"])
def test_one_epoch(busi: tuple[Path, Path], tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base, split = busi
    initial: dict[str, torch.Tensor] = {}
    build = ref.build_model

    def spy(*args, **kwargs):  # keep the encoder tensors (buffers included) as built
        model = build(*args, **kwargs)
        initial.update(_base_tensors(model.encoder))
        return model

    monkeypatch.setattr(ref, "build_model", spy)
    out = tmp_path / "out"
    argv = ["--data-root", str(base), "--split", str(split), "--mode", mode, "--epochs", "1", "--size", "32"]
    metrics, model = ref.main([*argv, "--seed", "0", "--out", str(out)])

    with open(out / "per_case.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == ref.COLUMNS
    assert [row["case"] for row in rows] == _SPLIT["test"]
    for row in rows:
        both_empty = row["gt_voxels"] == "0" and row["pred_voxels"] == "0"
        assert (row["dice"] == "") == both_empty and (row["iou"] == "") == both_empty
        assert row["class"] == "1" and row["hd95"] == row["asd"] == ""
    assert int(rows[0]["gt_voxels"]) > 0 and rows[1]["gt_voxels"] == "0"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["n_test"] == 2 and metrics["n_normal"] == 1 and metrics["mode"] == mode
    assert metrics["dice_lesion"] == pytest.approx(float(rows[0]["dice"]))

    encoder_state = _base_tensors(model.encoder)
    assert encoder_state.keys() == initial.keys()
    if mode == "decoder_only":
        assert all(torch.equal(encoder_state[k], v) for k, v in initial.items())
    elif mode == "full":
        assert not torch.equal(encoder_state["bn1.running_mean"], initial["bn1.running_mean"])
    else:  # lora: base weights and BatchNorm statistics frozen, adapters only on the residual-block convs
        assert all(torch.equal(encoder_state[k], v) for k, v in initial.items())
        adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
        assert len(adapted) == 16 and all(n.split(".")[-1] in ("conv1", "conv2") for n in adapted)


def test_init_from_medpeft_export(busi: tuple[Path, Path], tmp_path: Path) -> None:
    """A medpeft --with-decoder export loads fully, except the head (other class count, and smp's head is 3x3)."""
    safetensors = pytest.importorskip("safetensors.torch")
    from medpeft.models.pretrained import DECODER_PREFIX, encoder_state_dict_for_timm
    from medpeft.models.segmenter import build_segmenter

    net = build_segmenter(
        encoder="resnet18", decoder="auto", in_channels=1, num_classes=4, img_size=32,
        decoder_channels=ref.DECODER_CHANNELS,
    )  # fmt: skip
    state = dict(encoder_state_dict_for_timm(net.encoder))
    state.update({f"{DECODER_PREFIX}{k}": v for k, v in net.decoder.state_dict().items()})  # as scripts/pretrain.py
    path = tmp_path / "export.safetensors"
    safetensors.save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    model = ref.build_model("full", 4, None)
    loaded, skipped = ref._load_init(model, path)
    assert (loaded, skipped) == (len(state) - 2, 2)
    assert torch.equal(model.encoder.layer1[0].conv1.weight, state["layer1.0.conv1.weight"].half().float())
    assert model.decoder.blocks[0].conv1[0].weight.dtype == torch.float32


def test_init_from_timm_named_lite0_file_sums_the_rgb_stem(tmp_path: Path) -> None:
    """A timm-named RGB Lite-0 file (scripts/convert_weights.py) fills every tensor of smp's tu- encoder; the stem is
    summed over RGB for the grey input, which equals the RGB stem applied to a grey image repeated three times."""
    safetensors = pytest.importorskip("safetensors.torch")
    import timm

    plain = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in plain.state_dict().items() if not k.startswith(("conv_head", "bn2"))}
    path = tmp_path / "lite0.safetensors"
    safetensors.save_file(state, str(path))
    model = ref.build_model("lora", 4, path, encoder="tf_efficientnet_lite0")
    own = model.state_dict()
    encoder_keys = [k for k in own if k.startswith("encoder.") and "lora_" not in k]
    assert len(encoder_keys) == len(state)
    for key in encoder_keys:
        name = key.removeprefix("encoder.model.").replace("base_layer.", "")  # peft wraps the adapted convs
        expected = state[name].sum(1, keepdim=True) if name == "conv_stem.weight" else state[name]
        assert torch.equal(own[key], expected), key
    grey = torch.rand(1, 1, 8, 8)
    stem = model.encoder.model.conv_stem
    torch.testing.assert_close(stem(grey), plain.conv_stem(grey.expand(-1, 3, -1, -1)))
    lora = [name for name, _ in model.named_modules() if name.endswith("lora_A")]
    assert lora and all(".conv_pw" in name for name in lora)
