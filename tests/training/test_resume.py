"""``scripts/train.py --resume``: a run SIGKILLed mid-training continues in its directory, nothing lost or repeated."""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from medpeft.data import generate_demo_isic
from medpeft.evaluation.checkpoint import find_run_checkpoint
from medpeft.training.resume import checkpoint_step, restore_log_history

REPO = Path(__file__).resolve().parents[2]
STEPS = 40
TINY = [
    "data.image_size=32",
    "data.batch_size=4",
    "data.augmentation=none",
    "model.pretrained=false",
    f"trainer.max_steps={STEPS}",
    "trainer.limit_train_batches=10",  # 4 epochs of 10 steps: the kill lands mid-epoch
    "trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "checkpoint_every_n_steps=3",
]


def _train(args: list[str], script: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO), **(env or {})}
    script = script or [str(REPO / "scripts" / "train.py")]
    return subprocess.Popen([sys.executable, *script, *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _run_dir(parent: Path) -> Path:
    return next(p.parent for p in parent.rglob("config.yaml"))


def _loss_by_step(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [(int(r["step"]), float(r["train/loss_step"])) for r in csv.DictReader(handle) if r["train/loss_step"]]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_isic(tmp_path_factory.mktemp("data") / "demo")


def test_sigkilled_run_resumes_without_losing_or_repeating_a_step(demo_root: Path, tmp_path: Path) -> None:
    base = ["--config", str(REPO / "configs" / "demo_tcur.yaml"), "--set", *TINY, f"data.root={demo_root}"]
    reference = _train([*base, f"output_dir={tmp_path / 'whole'}"])
    assert reference.wait(timeout=300) == 0, reference.stdout.read()

    killed = _train([*base, f"output_dir={tmp_path / 'killed'}"])
    deadline = time.monotonic() + 300
    while killed.poll() is None and time.monotonic() < deadline:
        found = list((tmp_path / "killed").rglob("last.ckpt"))
        if found:
            try:
                if checkpoint_step(found[0]) >= 12:
                    killed.send_signal(signal.SIGKILL)
                    break
            except Exception:  # noqa: BLE001, S110 - caught mid-write (any unpickling error): look again
                pass
        time.sleep(0.02)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    run_dir = _run_dir(tmp_path / "killed")
    assert not (run_dir / "metrics.json").exists()
    resumed_from = checkpoint_step(run_dir / "checkpoints" / "last.ckpt")
    assert 12 <= resumed_from < STEPS

    resumed = _train(["--resume", str(run_dir)])
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"from optimizer step {resumed_from}" in output

    whole = _loss_by_step(_run_dir(tmp_path / "whole"))
    again = _loss_by_step(run_dir)
    steps = [step for step, _ in again]
    assert steps == sorted(set(steps)) == [step for step, _ in whole]  # every step logged once, none missing
    # before the checkpoint the history is the original run's, identical to the uninterrupted one
    assert [loss for step, loss in again if step < resumed_from] == [
        loss for step, loss in whole if step < resumed_from
    ]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == resumed_from
    reference_metrics = json.loads((_run_dir(tmp_path / "whole") / "metrics.json").read_text())
    assert metrics["n_test_cases"] == reference_metrics["n_test_cases"]
    # after the resume the loader's shuffle restarts from the seed: same data, other order (module docstring);
    # on this 40-step run that moved the test Dice by less than 0.05
    assert abs(metrics["dice"] - reference_metrics["dice"]) < 0.05
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS

    finished = _train(["--resume", str(run_dir)])
    assert "already finished" in finished.communicate(timeout=120)[0]


def test_resume_after_a_kill_behind_an_improving_validation_tests_the_best_checkpoint(
    demo_root: Path, tmp_path: Path
) -> None:
    # validation Dice 0.1, 0.5, 0.3, 0.2 (scripted); killed right after epoch 1's validation improved the best, before
    # any later save. The resumed run must know epoch 1 is best: keep its file alone and test it.
    steps_per_epoch = 3
    overrides = [*TINY, f"trainer.limit_train_batches={steps_per_epoch}", "trainer.max_steps=-1",
                 "trainer.max_epochs=4", "checkpoint_every_n_steps=0", f"data.root={demo_root}"]  # fmt: skip
    worker = [str(REPO / "tests" / "training" / "workers" / "scripted_val_dice.py")]
    config = ["--config", str(REPO / "configs" / "demo_tcur.yaml"), "--set", *overrides, f"output_dir={tmp_path}"]
    killed = _train(config, worker, {"MEDPEFT_TEST_KILL_EPOCH": "2"})
    output = killed.communicate(timeout=300)[0]
    assert killed.returncode == -signal.SIGKILL, output
    run_dir = _run_dir(tmp_path)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 2 * steps_per_epoch

    resumed = _train(["--resume", str(run_dir)], worker)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    best = f"best-epoch001-step{2 * steps_per_epoch:06d}.ckpt"
    assert [p.name for p in (run_dir / "checkpoints").glob("best-*.ckpt")] == [best]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_checkpoint"] == f"checkpoints/{best}"
    assert find_run_checkpoint(run_dir).name == best
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        logged = [float(row["val/dice"]) for row in csv.DictReader(handle) if row.get("val/dice")]
    assert logged == pytest.approx(
        [0.1, 0.5, 0.3, 0.2]
    )  # the tested checkpoint is the one with the best logged val/dice


def test_run_checkpoint_is_found_from_last_ckpt_among_stray_best_files(demo_root: Path, tmp_path: Path) -> None:
    # killed after epoch 2's validation, which did not improve on epoch 1: last.ckpt is written after it all the same;
    # then a stray, newer best-*.ckpt beside the real one in this unfinished run: last.ckpt's record wins
    overrides = [*TINY, "trainer.limit_train_batches=3", "trainer.max_steps=-1", "trainer.max_epochs=4",
                 "checkpoint_every_n_steps=0", f"data.root={demo_root}"]  # fmt: skip
    worker = [str(REPO / "tests" / "training" / "workers" / "scripted_val_dice.py")]
    config = ["--config", str(REPO / "configs" / "demo_tcur.yaml"), "--set", *overrides, f"output_dir={tmp_path}"]
    killed = _train(config, worker, {"MEDPEFT_TEST_KILL_EPOCH": "3"})
    assert killed.wait(timeout=300) == -signal.SIGKILL
    run_dir = _run_dir(tmp_path)
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 9
    (run_dir / "checkpoints" / "best-epoch009-step000099.ckpt").write_bytes(b"stray")
    assert find_run_checkpoint(run_dir).name == "best-epoch001-step000006.ckpt"
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(FileNotFoundError, match="several best checkpoints"):
        find_run_checkpoint(run_dir)


def test_log_history_keeps_rows_before_the_step_and_appends(tmp_path: Path) -> None:
    logger = CSVLogger(save_dir=tmp_path, name="csv", version="")
    path = Path(logger.log_dir) / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("epoch,step,train/loss_step,val/dice\n0,0,1.0,\n0,1,0.9,\n0,2,0.8,\n0,2,,0.5\n0,3,0.7,\n")
    assert restore_log_history(logger, before_step=2) == 2
    logger.log_metrics({"train/loss_step": 0.6, "epoch": 0}, step=2)
    logger.save()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["step"], r["train/loss_step"]) for r in rows] == [("0", "1.0"), ("1", "0.9"), ("2", "0.6")]
    assert set(rows[0]) == {"epoch", "step", "train/loss_step", "val/dice"}


def test_resume_refuses_config_or_overrides(tmp_path: Path) -> None:
    done = _train(["--resume", str(tmp_path), "--set", "seed=1"])
    assert done.wait(timeout=120) == 2 and "drop --config and --set" in done.stdout.read()


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious checkpoint would do with os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("loader", ["evaluate", "resume"])
def test_a_malicious_checkpoint_is_refused_not_executed(tmp_path: Path, loader: str) -> None:
    from medpeft.evaluation.checkpoint import load_network_state

    marker = tmp_path / "executed"
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 3, "state_dict": {"net.w": torch.zeros(1)}, "evil": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        if loader == "evaluate":
            load_network_state(torch.nn.Linear(1, 1), path)
        else:
            checkpoint_step(path)  # --resume reads the step this way before Lightning loads the file
    assert not marker.exists()
