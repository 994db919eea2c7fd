"""The shipped ``configs/*.yaml``: each loads, and each dataset family's five configs differ only in the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpeft.experiment.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAMILIES = ("isic", "busi", "acdc", "synapse", "demo")
METHODS = {"tcur": "tcurlora", "trm": "trm", "lora": "lora", "full": "full", "decoder_only": "decoder_only"}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model.num_classes >= 2 and cfg.data.dataset


@pytest.mark.parametrize("family", FAMILIES)
def test_family_configs_differ_only_in_the_adapter(family: str) -> None:
    """Same data, split, encoder, decoder, seed and budget for all five methods, so their metrics compare. The one
    allowed difference outside ``adapter``: each method's own encoder learning rate (what trains in the encoder
    differs in kind: a whole pretrained encoder, LoRA's B A, tCURLoRA's dU between weight-scaled C and R)."""
    configs = {name: load_config(CONFIGS / f"{family}_{name}.yaml") for name in METHODS}

    def outside_adapter(cfg) -> dict:
        fields = cfg.to_dict()
        del fields["adapter"], fields["optim"]["encoder_lr"]
        return fields

    reference = outside_adapter(configs["tcur"])
    for name, cfg in configs.items():
        assert cfg.adapter.method == METHODS[name], f"{family}_{name}.yaml"
        assert outside_adapter(cfg) == reference, (
            f"{family}_{name}.yaml differs from {family}_tcur.yaml outside 'adapter'"
        )


def test_make_demo_sweeps_the_five_demo_configs() -> None:
    """``make demo`` trains each method from its own demo config, so the README's settings are the files'."""
    makefile = (CONFIGS.parent / "Makefile").read_text()
    for name, method in METHODS.items():
        assert f"{method}:configs/demo_{name}.yaml" in makefile or f"--config configs/demo_{name}.yaml" in makefile
