"""The shipped ``configs/*.yaml``: each loads, and each dataset family's five configs differ only in the adapter."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from medpeft.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAMILIES = ("isic", "busi", "acdc", "synapse", "demo")
METHODS = {"tcur": "tcurlora", "trm": "trm", "lora": "lora", "full": "full", "decoder_only": "decoder_only"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.num_classes >= 2 and cfg.data.dataset


@pytest.mark.parametrize("family", FAMILIES)
def test_family_configs_differ_only_in_the_adapter(family: str) -> None:
    """Same data, split, encoder, seed and budget for all five methods, so their metrics compare. The one
    allowed exception: ``full`` may give the encoder a smaller learning rate (it moves every pretrained weight)."""
    configs = {name: load_config(CONFIGS / f"{family}_{name}.yaml") for name in METHODS}
    reference = dataclasses.asdict(configs["tcur"])
    del reference["adapter"]
    for name, cfg in configs.items():
        assert cfg.adapter.method == METHODS[name], f"{family}_{name}.yaml"
        if name == "full":
            assert cfg.optim.encoder_lr <= configs["tcur"].optim.encoder_lr
            optim = dataclasses.replace(cfg.optim, encoder_lr=configs["tcur"].optim.encoder_lr)
            cfg = dataclasses.replace(cfg, optim=optim)
        other = dataclasses.asdict(cfg)
        del other["adapter"]
        assert other == reference, f"{family}_{name}.yaml differs from {family}_tcur.yaml outside 'adapter'"
