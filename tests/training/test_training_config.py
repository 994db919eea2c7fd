"""Tests of the typed experiment config: validation errors name the key path and source, overrides are typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpeft.experiment.config import Config, ConfigError, load_config, save_config

MINIMAL = """\
data:
  dataset: demo
model:
  encoder: vit_tiny_patch16_224
adapter:
  method: lora
  rank: 4
optim:
  lr: 1e-3
trainer:
  max_epochs: 1
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(MINIMAL)
    return path


def _error(path: Path, overrides: list[str] = (), text: str | None = None) -> str:
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_minimal_config_fills_defaults_and_resolves(config_file: Path) -> None:
    cfg = load_config(config_file)
    assert isinstance(cfg, Config)
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1 would read `1e-3` as a string
    assert cfg.data.image_size == 128 and cfg.adapter.targets == ["attn", "mlp"]
    assert cfg.adapter.alpha == 4.0 and cfg.data.split_seed == cfg.seed == 0
    assert cfg.trainer == {"max_epochs": 1}


def test_overrides_parse_types(config_file: Path) -> None:
    cfg = load_config(
        config_file,
        [
            "data.batch_size=8",
            "optim.lr=1e-3",
            "adapter.residual=false",
            "adapter.blocks=[1, 2]",
            "adapter.regularizer=null",
            "model.pretrained=ckpt/x.safetensors",
            "data.options.n_images=12",
            "trainer.max_steps=2",
            "adapter.alpha=8",
            "seed=3",
        ],
    )
    assert cfg.data.batch_size == 8 and isinstance(cfg.data.batch_size, int)
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.adapter.residual is False and cfg.adapter.blocks == [1, 2] and cfg.adapter.regularizer is None
    assert cfg.model.pretrained == "ckpt/x.safetensors"
    assert cfg.data.options == {"n_images": 12} and cfg.trainer == {"max_epochs": 1, "max_steps": 2}
    assert cfg.adapter.alpha == 8.0 and isinstance(cfg.adapter.alpha, float)
    assert cfg.seed == 3 and cfg.data.split_seed == 3


def test_unknown_key_names_path_file_and_allowed(config_file: Path) -> None:
    message = _error(config_file, text=MINIMAL.replace("  rank: 4", "  rnak: 4"))
    assert "unknown key 'adapter.rnak'" in message and str(config_file) in message
    assert "did you mean 'rank'?" in message
    assert "allowed: method, targets" in message


def test_wrong_type_names_path(config_file: Path) -> None:
    message = _error(config_file, text=MINIMAL + "seed: one\n")
    assert message.startswith("'seed' must be int, got str 'one'")
    message = _error(config_file, ["data.batch_size=eight"], text=MINIMAL)
    assert "'data.batch_size' must be int, got str 'eight'" in message
    assert "--set data.batch_size=eight" in message
    assert "'data.batch_size' must be int, got bool" in _error(config_file, ["data.batch_size=true"])


def test_every_problem_gets_its_own_line(config_file: Path) -> None:
    config_file.write_text(MINIMAL.replace("  rank: 4", "  rnak: 4") + "seed: one\n")
    with pytest.raises(ConfigError) as info:
        load_config(config_file, ["data.batch_size=0", "optim.lr=fast"])
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("'data.batch_size' must be >= 1, got 0 in override --set data.batch_size=0")
    assert lines[1].startswith("unknown key 'adapter.rnak'")
    assert lines[2].startswith("'optim.lr' must be float, got str 'fast' in override --set optim.lr=fast")
    assert lines[3].startswith("'seed' must be int, got str 'one'")


def test_bad_choice_lists_choices(config_file: Path) -> None:
    message = _error(config_file, text=MINIMAL.replace("method: lora", "method: loraa"))
    assert "'adapter.method' must be one of full, decoder_only, lora, trm, tcurlora, " in message
    assert "got 'loraa'" in message and "did you mean 'lora'?" in message
    assert str(config_file) in message


def test_missing_required_key(config_file: Path) -> None:
    message = _error(config_file, text=MINIMAL.replace("  encoder: vit_tiny_patch16_224\n", ""))
    assert "missing required key 'model.encoder'" in message
    message = _error(config_file, ["adapter.method=trm", "adapter.rank=null"], text=MINIMAL)
    assert "'adapter.rank' is required for method 'trm'" in message


def test_unknown_override_key(config_file: Path) -> None:
    message = _error(config_file, ["optim.learning_rate=0.1"])
    assert "unknown key 'optim.learning_rate'" in message and "--set optim.learning_rate=0.1" in message
    assert "must look like key.sub=value" in _error(config_file, ["adapter.rank"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epoch=3", "'trainer.max_epoch' is not an argument of pytorch_lightning.Trainer"),
        ("trainer.logger=false", "'trainer.logger' is set by the training script"),
        ("trainer.callbacks=[]", "'trainer.callbacks' is set by the training script"),
        ("trainer.default_root_dir=/tmp", "use 'output_dir' instead"),
        ("trainer.gradient_clip_val=0.5", "use 'optim.grad_clip' instead"),
    ],
)
def test_trainer_keys_checked_against_trainer_signature(config_file: Path, override: str, expected: str) -> None:
    assert expected in _error(config_file, [override])


def test_range_errors_name_path(config_file: Path) -> None:
    assert "'adapter.rank' must be >= 1, got 0" in _error(config_file, ["adapter.rank=0"])
    assert "'optim.lr' must be > 0" in _error(config_file, ["optim.lr=0"])
    assert "'data.val_fraction' must be in [0, 1)" in _error(config_file, ["data.val_fraction=1.5"])
    assert "'loss.smooth' must be > 0, got 0" in _error(config_file, ["loss.smooth=0"])
    assert "'data.train_cases' must be >= 1 or null, got 0" in _error(config_file, ["data.train_cases=0"])


def test_resolved_config_round_trips(config_file: Path, tmp_path: Path) -> None:
    cfg = load_config(config_file, ["adapter.blocks=[0]", "data.options.n_images=6", "trainer.max_steps=2"])
    saved = tmp_path / "run" / "config.yaml"
    saved.parent.mkdir()
    save_config(cfg, saved)
    assert load_config(saved) == cfg
    assert [p.name for p in saved.parent.iterdir()] == ["config.yaml"]  # no temp file left behind


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
