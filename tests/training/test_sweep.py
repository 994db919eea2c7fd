"""Tests of ``scripts/sweep.py``: the planned runs and their overrides, up-front validation, and a tiny real sweep."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from medpeft.data import generate_demo_isic
from medpeft.experiment.config import ConfigError, load_config
from medpeft.training import sweep
from medpeft.training.sweep import plan_sweep

REPO = Path(__file__).resolve().parents[2]
BASE = str(REPO / "configs" / "demo_tcur.yaml")


@pytest.fixture(scope="module")
def sweep_script() -> ModuleType:
    """``scripts/sweep.py`` imported as a module, so tests call its ``main`` without a subprocess."""
    spec = importlib.util.spec_from_file_location("sweep_script", REPO / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the sweep starts a training subprocess."""

    def launch(*args, **kwargs):
        raise AssertionError(f"a run was launched: {args}")

    monkeypatch.setattr(sweep.subprocess, "run", launch)


def test_plan_overrides(tmp_path: Path) -> None:
    methods = ["tcurlora", "lora", "trm", "scratch", "decoder_only"]
    runs, decisions = plan_sweep(BASE, methods, [0, 1], ["trainer.max_epochs=1"], ["trm:adapter.rank=3"], tmp_path)
    assert [(r.method, r.seed) for r in runs] == [(m, s) for m in methods for s in (0, 1)]
    by_run = {(r.method, r.seed): r for r in runs}
    assert by_run["lora", 1].output_dir == tmp_path / "lora" / "seed1"
    # the base config's split_seed is null: pinned to the base seed 0 for all runs, and said so
    assert all("data.split_seed=0" in r.overrides for r in runs) and "split_seed" in decisions[0]

    configs = {key: load_config(BASE, run.overrides) for key, run in by_run.items()}
    assert configs["tcurlora", 0].adapter.rank == 8  # the base method keeps the base rank
    assert configs["lora", 0].adapter.rank == 8 and configs["lora", 0].name == "lora"  # default LoRA rank
    assert configs["trm", 1].adapter.rank == 3 and "adapter.rank=2" not in by_run["trm", 1].overrides  # --method-set
    scratch = configs["scratch", 1]
    assert scratch.adapter.method == "full" and scratch.model.pretrained is False and scratch.label == "scratch"
    assert configs["decoder_only", 0].model.pretrained == "checkpoints/demo_source_vit_tiny.safetensors"
    assert all(
        c.seed == s and c.data.split_seed == 0 and c.trainer["max_epochs"] == 1 for (_, s), c in configs.items()
    )
    assert configs["lora", 1].output_dir == str(tmp_path / "lora" / "seed1")

    pinned, decisions = plan_sweep(BASE, ["lora"], [0, 1], ["data.split_seed=7"], [], tmp_path)
    assert not decisions and all("data.split_seed=0" not in r.overrides for r in pinned)


def test_method_config_trains_a_method_from_its_own_file(tmp_path: Path) -> None:
    lora_file = str(REPO / "configs" / "demo_lora.yaml")
    runs, _ = plan_sweep(BASE, ["tcurlora", "lora"], [0], [], [], tmp_path, [f"lora:{lora_file}"])
    by_method = {r.method: r for r in runs}
    assert by_method["lora"].config == lora_file and by_method["tcurlora"].config == BASE
    assert by_method["lora"].command()[3] == lora_file
    lora = load_config(lora_file, by_method["lora"].overrides)
    assert lora.adapter.rank == load_config(lora_file).adapter.rank  # its own rank, not the sweep default 8
    assert lora.adapter.targets == load_config(lora_file).adapter.targets
    with pytest.raises(ConfigError, match="adapter.method lora, not trm"):
        plan_sweep(BASE, ["trm"], [0], [], [], tmp_path, [f"trm:{lora_file}"])
    with pytest.raises(ConfigError, match="METHOD:FILE"):
        plan_sweep(BASE, ["lora"], [0], [], [], tmp_path, ["lora"])


def test_dry_run_prints_plan_and_commands(sweep_script: ModuleType, tmp_path: Path, capsys, no_launch) -> None:
    finished = tmp_path / "lora" / "seed0" / "demo_tcur" / "20260101-000000"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text(json.dumps({"method": "lora"}))
    args = ["--config", BASE, "--methods", "lora,scratch", "--seeds", "0", "--out", str(tmp_path), "--dry-run"]
    assert sweep_script.main(args) == 0
    out = capsys.readouterr().out
    assert (
        out.splitlines()[0]
        == f"sweep demo_tcur: 2 runs (2 methods x 1 seed), 1 to skip (done), 1 to train -> {tmp_path}"
    )
    assert "[1/2] lora seed 0: skip (done)" in out and "[2/2] scratch seed 0: train" in out
    command = next(line for line in out.splitlines() if "scripts/train.py" in line)
    assert f"--config {BASE} --set data.split_seed=0 adapter.method=full model.pretrained=false seed=0" in command
    assert command.endswith(f"name=scratch output_dir={tmp_path / 'scratch' / 'seed0'}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method-set", "lora:adapter.rank=0"], "run lora seed 0: 'adapter.rank' must be >= 1"),
        (["--set", "adapter.method=trm"], "'adapter.method' is set by the sweep"),
        (["--method-set", "trm:adapter.rank=2"], "'trm' is not a swept method"),
        (["--set", "adapter.rank=4"], "--set adapter.rank=4 reaches only the base method tcurlora"),
        (["--methods", "lora,lora"], "give distinct methods"),
        (["--seeds", "0,x"], "give comma-separated integers"),
    ],
)
def test_invalid_sweep_fails_before_any_run(
    sweep_script: ModuleType, tmp_path: Path, capsys, no_launch, args: list[str], message: str
) -> None:
    base_args = ["--config", BASE, "--methods", "lora,scratch", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        sweep_script.main(base_args + args)  # later --methods wins over the base one
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error
    assert not any(tmp_path.iterdir())


def test_plan_rejects_unknown_method(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give distinct methods among full, decoder_only"):
        plan_sweep(BASE, ["lora", "lorra"], [0], [], [], tmp_path)


def test_failed_run_is_reported_and_sweep_goes_on(
    sweep_script: ModuleType, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_train(command: list[str], check: bool) -> subprocess.CompletedProcess:
        overrides = dict(text.split("=", 1) for text in command[command.index("--set") + 1 :])
        if overrides["name"] == "lora":
            return subprocess.CompletedProcess(command, returncode=1)
        run_dir = Path(overrides["output_dir"]) / "demo_tcur" / "20260101-000000"
        run_dir.mkdir(parents=True)
        metrics = {"name": overrides["name"], "method": overrides["adapter.method"], "encoder": "vit", "seed": 0}
        metrics |= {"dataset": "demo", "dice": 0.9, "iou": 0.8, "hd95": 5.0, "asd": 2.0, "n_test_cases": 1}
        metrics |= {"trainable_params": 10, "total_params": 20, "gflops": 1.0, "image_size": 32}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return subprocess.CompletedProcess(command, returncode=0)

    monkeypatch.setattr(sweep.subprocess, "run", fake_train)
    args = ["--config", BASE, "--methods", "lora,trm", "--out", str(tmp_path)]
    assert sweep_script.main(args) == 1
    captured = capsys.readouterr()
    assert "[1/2] lora seed 0: FAILED (exit status 1)" in captured.out and "[2/2] trm seed 0: done in" in captured.out
    assert "1 of 2 runs failed: lora seed 0" in captured.err
    assert "| trm |" in captured.out and (tmp_path / "comparison" / "comparison.md").is_file()


@pytest.mark.slow
def test_real_sweep_then_resume(sweep_script: ModuleType, tmp_path: Path, capsys) -> None:
    # 40 small images in the ISIC layout (the demo's own layout, read by the same reader): a few seconds per run
    root = generate_demo_isic(tmp_path / "isic", n_images=40, size=64)
    out = tmp_path / "sweep"
    tiny = [
        "trainer.max_steps=2",
        "trainer.max_epochs=1",
        "data.image_size=32",  # the ViT is built for 32 px and the 128 px source weights are resized to it
        "data.dataset=isic2018",
        f"data.root={root}",
        "data.batch_size=4",
        f"model.pretrained={REPO / 'checkpoints' / 'demo_source_vit_tiny.safetensors'}",
        "trainer.limit_val_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
    ]
    args = ["--config", BASE, "--methods", "tcurlora,lora", "--seeds", "0", "--out", str(out), "--set", *tiny]
    assert sweep_script.main(args) == 0
    first = capsys.readouterr().out
    assert "[1/2] tcurlora seed 0: done in" in first and "[2/2] lora seed 0: done in" in first
    with open(out / "comparison" / "comparison.csv", newline="") as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"tcurlora", "lora"} and rows["tcurlora"]["reference"] == "lora"
    assert (
        int(rows["lora"]["adapter_params"]) > int(rows["tcurlora"]["adapter_params"]) > 0
    )  # LoRA r 8 vs tCURLoRA r 8 (n3 r^2 each)
    assert (out / "comparison" / "pareto.png").is_file()

    assert sweep_script.main(args) == 0
    second = capsys.readouterr().out
    assert "0 to train" in second.splitlines()[0]
    assert second.count("skip (done)") == 3  # the plan line and one line per run


def test_unfinished_run_is_resumed_not_restarted(tmp_path: Path) -> None:
    runs, _ = plan_sweep(BASE, ["lora"], [0], [], [], tmp_path)
    run = runs[0]
    assert run.unfinished_run() is None and "--config" in run.command()
    started = run.output_dir / "demo_tcur" / "20260101-000000"
    started.mkdir(parents=True)
    (started / "config.yaml").write_text("seed: 0\n")  # a run killed before it wrote metrics.json
    assert run.command()[2:] == ["--resume", str(started)] and not run.is_done()
    (started / "metrics.json").write_text("{}")
    assert run.is_done() and run.unfinished_run() is None
