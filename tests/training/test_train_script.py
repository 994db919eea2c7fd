"""End-to-end tests of ``scripts/train.py``: tiny train-then-test runs per fine-tuning mode, and user errors."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch

from medpeft.data import generate_demo_isic
from medpeft.evaluation.checkpoint import load_trained_network
from medpeft.evaluation.command import main as evaluate_main
from medpeft.experiment.config import load_config
from medpeft.experiment.data import datamodule_from_config
from medpeft.experiment.task_file import load_task
from medpeft.training.module import warmup_cosine
from medpeft.training.run import make_run_dir, trainer_options

REPO = Path(__file__).resolve().parents[2]

METRIC_KEYS = {
    "dice", "iou", "hd95", "asd", "per_class", "trainable_params", "adapter_params", "decoder_params",
    "encoder_params", "total_params", "adapter_fraction_of_encoder", "gflops", "method", "encoder", "dataset",
    "seed", "n_test_cases", "best_checkpoint", "train_seconds", "name", "protocol", "distance_unit", "std",
    "n_excluded", "trainable_fraction", "flop_convention", "adapter_file_bytes", "train_images_per_second",
}  # fmt: skip


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_isic(tmp_path_factory.mktemp("data") / "demo")


@pytest.mark.parametrize(
    ("config", "method"),
    [
        ("demo_full.yaml", "full"),
        ("demo_decoder_only.yaml", "decoder_only"),
        ("demo_lora.yaml", "lora"),
        ("demo_trm.yaml", "trm"),
        ("demo_tcur.yaml", "tcurlora"),
    ],
)
def test_tiny_run_per_mode(
    train_script, tiny_run, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, method: str
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative output_dir, as in the shipped configs
    overrides = [*tiny_run, f"data.root={demo_root}", "output_dir=runs"]
    run_dir = train_script.main(["--config", str(REPO / "configs" / config), "--set", *overrides])

    assert run_dir == Path("runs") / Path(config).stem / run_dir.name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    test_cases = json.loads((run_dir / "split.json").read_text())["test"]
    assert metrics["method"] == metrics["name"] == method and metrics["dataset"] == "demo"
    assert metrics["n_test_cases"] == len(test_cases) and metrics["protocol"] == "symmetric"
    assert metrics["distance_unit"] == "px" and 0.0 <= metrics["dice"] <= 1.0 and set(metrics["per_class"]) == {"1"}
    with open(run_dir / "per_case.csv", newline="") as handle:
        assert sorted(row["case"] for row in csv.DictReader(handle)) == sorted(test_cases)
    assert (run_dir / "summary.json").is_file() and len(list((run_dir / "overlays").glob("*.png"))) == 3
    assert metrics["gflops"] > 0 and metrics["train_seconds"] > 0
    # merged adapters cost nothing at inference: the same count as the plain network's, never more than unmerged
    assert metrics["gflops"] <= metrics["gflops_unmerged"]
    if method in ("full", "decoder_only"):
        assert metrics["gflops"] == metrics["gflops_unmerged"]
    assert (run_dir / metrics["best_checkpoint"]).is_file() and "best-" in Path(metrics["best_checkpoint"]).name
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "split.json").is_file()
    assert load_config(run_dir / "config.yaml").adapter.method == method

    # the task file (here with the whole encoder: model.pretrained is false) rebuilds the run's network exactly
    task_net, _ = load_task(run_dir / "task.safetensors")
    run_net = load_trained_network(load_config(run_dir / "config.yaml"), run_dir / metrics["best_checkpoint"])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(task_net(x), run_net(x), rtol=0, atol=0)

    peft = method in ("lora", "trm", "tcurlora")
    assert (run_dir / "adapter.safetensors").is_file() == peft
    assert (metrics["adapter_params"] > 0) == peft
    if method == "full":
        assert metrics["trainable_params"] == metrics["total_params"]
    else:
        assert metrics["trainable_params"] == metrics["decoder_params"] + metrics["adapter_params"]


def test_config_error_exits_2_with_one_line(train_script, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        train_script.main(["--config", str(REPO / "configs" / "demo_lora.yaml"), "--set", "adapter.rnak=2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown key 'adapter.rnak'" in err and "did you mean 'rank'?" in err


def test_missing_isic_root_exits_2(train_script, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_ISIC2018"
    argv = ["--config", str(REPO / "configs" / "isic_tcur.yaml"), "--set", f"data.root={missing}"]
    with pytest.raises(SystemExit) as info:
        train_script.main([*argv, f"output_dir={tmp_path / 'runs'}", "model.pretrained=false"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    first_line = err.splitlines()[0]  # the data package adds hint lines (expected layout, download page)
    assert str(missing) in first_line and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # the data is checked before a run directory is made


def test_help_documents_arguments(train_script, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        train_script.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert "--config FILE" in text and "--set KEY=VALUE" in text


def test_warmup_cosine_schedule() -> None:
    factors = [warmup_cosine(step, warmup_steps=2, total_steps=10, min_lr_ratio=0.1) for step in range(12)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[2:]))
    assert factors[10] == pytest.approx(0.1) and factors[11] == pytest.approx(0.1)


def test_trainer_options_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_options({}) == {"deterministic": "warn", "enable_model_summary": False, "precision": "16-mixed"}
    assert trainer_options({"precision": "32-true"})["precision"] == "32-true"
    assert "precision" not in trainer_options({"accelerator": "cpu"})
    assert trainer_options({"deterministic": True})["deterministic"] is True


def test_run_dirs_never_collide(tmp_path: Path) -> None:
    first, second = make_run_dir(tmp_path, "exp"), make_run_dir(tmp_path, "exp")
    assert first != second and first.parent == second.parent == tmp_path / "exp"
    assert first.is_dir() and second.is_dir()


def test_tasks_of_one_slurm_job_share_a_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.delenv("MEDPEFT_RUN_DIR", raising=False)
    first, second = make_run_dir(tmp_path, "exp"), make_run_dir(tmp_path, "exp")  # two srun tasks
    assert first == second == tmp_path / "exp" / "slurm-4242" and first.is_dir()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task (an interactive allocation): timestamped as usual
    assert make_run_dir(tmp_path, "exp").name != "slurm-4242"


def test_skipped_cases_are_listed_counted_and_left_out_of_the_test(
    train_script, tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = generate_demo_isic(tmp_path / "demo")
    config = REPO / "configs" / "demo_decoder_only.yaml"
    overrides = [*tiny_run, f"data.root={root}", "output_dir=runs", "data.bad_cases=skip"]
    data = datamodule_from_config(load_config(config, overrides))
    data.setup()
    broken_cases = {"train": data.split["train"][3], "test": data.split["test"][0]}  # one each side of training
    inputs = root / "ISIC2018_Task1-2_Training_Input"
    for case in broken_cases.values():
        (inputs / f"{case}.jpg").write_bytes((inputs / f"{case}.jpg").read_bytes()[:300])
    monkeypatch.chdir(tmp_path)
    run_dir = train_script.main(["--config", str(config), "--set", *overrides])
    metrics = json.loads((run_dir / "metrics.json").read_text())  # the run reached its end
    assert metrics["skipped_cases"] == 2 and metrics["n_test_cases"] == len(data.split["test"]) - 1
    skipped = json.loads((run_dir / "skipped_cases.json").read_text())
    assert {(entry["split"], entry["case"]) for entry in skipped} == set(broken_cases.items())
    assert {entry["file"] for entry in skipped} == {str(inputs / f"{case}.jpg") for case in broken_cases.values()}
    split = json.loads((run_dir / "split.json").read_text())
    assert all(case not in ids for ids in split.values() for case in broken_cases.values())
    with open(run_dir / "per_case.csv", newline="") as handle:
        tested = {row["case"] for row in csv.DictReader(handle)}
    assert tested == set(split["test"])
    # scripts/evaluate.py scores the same cases from the run's split.json, without reading the broken file
    summary = evaluate_main(["--run", str(run_dir), "--no-overlays", "--out", str(tmp_path / "again")])
    assert summary["n_cases"] == metrics["n_test_cases"]


def test_label_budget_reaches_the_run(
    train_script, tiny_run, demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = [*tiny_run, f"data.root={demo_root}", "output_dir=runs", "data.train_cases=12"]
    run_dir = train_script.main(["--config", str(REPO / "configs" / "demo_lora.yaml"), "--set", *overrides])
    split = json.loads((run_dir / "split.json").read_text())
    assert [len(split[name]) for name in ("train", "val", "test")] == [12, 45, 45]
