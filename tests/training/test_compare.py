"""Tests of the method comparison (``scripts/compare.py``) on hand-written run directories with known answers."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from medpeft.reports import compare, paired_wilcoxon, pareto_front
from medpeft.reports.comparison import bootstrap_mean_interval
from medpeft.reports.tables import render_markdown

REPO = Path(__file__).resolve().parents[2]
CASES = ["c1", "c2", "c3", "c4", "c5", "c6"]


@pytest.fixture(scope="module")
def compare_script() -> ModuleType:
    """``scripts/compare.py`` imported as a module, so tests call its ``main`` without a subprocess."""
    spec = importlib.util.spec_from_file_location("compare_script", REPO / "scripts" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(
    root: Path,
    name: str | None,
    method: str,
    seed: int,
    scores: dict[str, float],
    case_dice: dict[str, list[float | None]] | None,
    *,
    trainable: int,
    total: int,
    gflops: float = 2.0,
    protocol: str = "symmetric",
) -> Path:
    """Write a finished run directory: ``scores`` holds dice/iou/hd95/asd, ``case_dice`` per case one Dice per
    foreground class (``None``: undefined); ``name=None`` and ``case_dice=None`` imitate an older version's run."""
    run_dir = root / (name or method) / f"seed{seed}" / "demo" / f"20260101-00000{seed}"
    run_dir.mkdir(parents=True)
    metrics = {
        "method": method,
        "encoder": "vit_tiny_patch16_224",
        "dataset": "demo",
        "seed": seed,
        **scores,
        "per_class": {},
        "n_test_cases": len(CASES),
        "protocol": protocol,
        "distance_unit": "px",
        "total_params": total,
        "trainable_params": trainable,
        "adapter_params": 0,
        "gflops": gflops,
        "image_size": 32,
        "train_seconds": 1.0,
    }
    if name is not None:
        metrics["name"] = name
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "config.yaml").write_text(f"name: {name}\nseed: {seed}\n")
    if case_dice is not None:
        lines = ["case,class,class_name,dice,iou,hd95,asd"]
        for case, per_class in case_dice.items():
            for c, dice in enumerate(per_class, start=1):
                lines.append(f"{case},{c},class{c},{'' if dice is None else dice},,,")
        (run_dir / "per_case.csv").write_text("\n".join(lines) + "\n")
    return run_dir


def metrics(dice: float, iou: float, hd95: float, asd: float) -> dict[str, float]:
    return {"dice": dice, "iou": iou, "hd95": hd95, "asd": asd}


# per-case Dice (one class) of the two seeds of each multi-seed method
FULL = ([0.90, 0.91, 0.89, 0.92, 0.88, 0.90], [0.92, 0.93, 0.91, 0.90, 0.90, 0.94])
LORA = ([0.88, 0.92, 0.90, 0.91, 0.89, 0.93], [0.90, 0.94, 0.92, 0.95, 0.93, 0.91])
TCUR = ([0.87, 0.88, 0.86, 0.90, 0.85], [0.89, 0.90, 0.90, 0.88, 0.87])  # case c6 missing
# decoder_only, one seed, two classes per case (one undefined): per-case means 0.85, 0.70, 0.85, 0.80, 0.90, 0.80
DECODER = {"c1": [0.8, 0.9], "c2": [0.7, None], "c3": [0.9, 0.8], "c4": [0.8, 0.8], "c5": [0.9, 0.9], "c6": [0.8, 0.8]}


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    """3 methods x 2 seeds and 1 method x 1 seed, with hand-chosen run-level metrics."""
    root = tmp_path / "runs"
    for seed, scores in enumerate([metrics(0.90, 0.82, 5.0, 2.0), metrics(0.92, 0.84, 7.0, 2.0)]):
        make_run(
            root, "full", "full", seed, scores, dict(zip(CASES, ([d] for d in FULL[seed]))), trainable=1000, total=1000
        )
    for seed, scores in enumerate([metrics(0.89, 0.80, 4.0, 1.5), metrics(0.93, 0.86, 6.0, 2.5)]):
        make_run(
            root, "lora", "lora", seed, scores, dict(zip(CASES, ([d] for d in LORA[seed]))), trainable=120, total=1100
        )
    for seed, scores in enumerate([metrics(0.88, 0.79, 8.0, 3.0), metrics(0.90, 0.81, 8.0, 3.0)]):
        per_case = dict(zip(CASES[:5], ([d] for d in TCUR[seed])))
        make_run(root, "tcurlora", "tcurlora", seed, scores, per_case, trainable=101, total=1001)
    scores = metrics(0.85, 0.75, 10.0, 4.0)
    make_run(root, "decoder_only", "decoder_only", 0, scores, DECODER, trainable=100, total=1000, gflops=1.999)
    return root


def table_rows(markdown: str) -> dict[str, list[str]]:
    """Method -> cells of the markdown table's body rows."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")][2:]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0].strip("*"): row for row in rows}


def test_means_stds_and_wilcoxon_known_answers(runs_root: Path, tmp_path: Path) -> None:
    comparison = compare([runs_root], tmp_path / "out")
    rows = {m.name: m for m in comparison.methods}
    assert [m.name for m in comparison.methods] == ["full", "decoder_only", "lora", "tcurlora"]
    assert comparison.reference == "full"

    # several seeds: mean and sample std (ddof=1) of the run-level values across seeds
    assert rows["full"].std_kind == "seeds"
    assert rows["full"].mean["dice"] == pytest.approx(0.91)
    assert rows["full"].std["dice"] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert rows["lora"].mean["hd95"] == pytest.approx(5.0) and rows["lora"].std["hd95"] == pytest.approx(math.sqrt(2))
    assert rows["tcurlora"].std["hd95"] == pytest.approx(0.0)
    # one seed: the run's own mean, and the std across cases of the per-case mean over defined classes
    assert rows["decoder_only"].std_kind == "cases"
    assert rows["decoder_only"].mean["dice"] == pytest.approx(0.85)
    assert rows["decoder_only"].std["dice"] == pytest.approx(0.0683130, abs=1e-6)  # sqrt(0.0233333 / 5)
    assert rows["decoder_only"].std["iou"] is None  # no per-case IoU in the file

    # paired Wilcoxon of the per-case Dice averaged over seeds, against full's
    full = [(a + b) / 2 for a, b in zip(*FULL)]
    lora = [(a + b) / 2 for a, b in zip(*LORA)]
    assert rows["lora"].p_value == pytest.approx(wilcoxon(lora, full).pvalue) and rows["lora"].n_paired == 6
    tcur = [(a + b) / 2 for a, b in zip(*TCUR)]
    assert rows["tcurlora"].p_value == pytest.approx(wilcoxon(tcur, full[:5]).pvalue)
    assert rows["tcurlora"].n_paired == 5
    assert any("tcurlora" in note and "paired on the 5 test cases" in note for note in comparison.notes)
    decoder = [0.85, 0.70, 0.85, 0.80, 0.90, 0.80]
    assert rows["decoder_only"].p_value == pytest.approx(wilcoxon(decoder, full).pvalue)
    assert rows["full"].p_value is None


def test_files_and_best_marking(compare_script: ModuleType, runs_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    compare_script.main([str(runs_root), "--out", str(out), "--title", "Demo sweep"])
    printed = capsys.readouterr().out
    markdown = (out / "comparison.md").read_text()
    assert markdown in printed and markdown.startswith("## Demo sweep")
    assert "Dataset demo, protocol symmetric, HD95 and ASD in px, 6 test cases" in markdown
    assert "FLOPs: multiply-add = 2" in markdown

    rows = table_rows(markdown)
    assert rows["full"][4] == "**0.9100 ± 0.0141**" and rows["lora"][4] == "**0.9100 ± 0.0283**"  # Dice tie
    assert rows["tcurlora"][4] == "0.8900 ± 0.0141" and rows["decoder_only"][4] == "0.8500 ± 0.0683"
    assert rows["lora"][6] == "**5.00 ± 1.41**" and not rows["full"][6].startswith("**")  # HD95: lowest
    assert rows["full"][7].startswith("**") and rows["lora"][7].startswith("**")  # ASD tie at 2.00
    assert rows["decoder_only"][2] == "**100 (10 %)**" and rows["full"][2] == "1,000 (100 %)"
    assert all(row[3] == "**2.00**" for row in rows.values())  # 1.999 shows as 2.00: a tie
    assert rows["full"][8] == "[0.8959, 0.9241]"  # two seeds: mean ± std
    low, high = (float(b) for b in rows["decoder_only"][8].strip("[]").split(","))  # one seed: bootstrap
    assert 0.70 < low < 0.8167 < high < 0.90
    assert rows["full"][10] == "ref" and rows["tcurlora"][10].endswith("(5)")
    assert "Dice interval: 95 % bootstrap CI of the mean over test cases; ± std across seeds" in markdown

    with open(out / "comparison.csv", newline="") as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    assert set(table) == {"full", "lora", "tcurlora", "decoder_only"}
    assert float(table["full"]["dice_mean"]) == pytest.approx(0.91) and table["full"]["n_seeds"] == "2"
    assert float(table["full"]["dice_std"]) == pytest.approx(math.sqrt(2) * 0.01)
    assert table["full"]["p_value"] == "" and table["decoder_only"]["std_kind"] == "cases"
    assert table["tcurlora"]["n_paired"] == "5" and table["lora"]["n_cases"] == "6"
    assert (
        table["decoder_only"]["dice_interval_kind"] == "bootstrap" and table["full"]["dice_interval_kind"] == "seeds"
    )

    tex = (out / "comparison.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"decoder\_only" in tex
    assert r"\textbf{0.9100 $\pm$ 0.0141}" in tex and r"(10 \%)" in tex
    with Image.open(out / "pareto.png") as image:
        image.verify()
        assert image.format == "PNG"


def test_identical_per_case_dice_gives_p_one(tmp_path: Path) -> None:
    dice = {case: [0.9] for case in CASES}
    make_run(tmp_path, "full", "full", 0, metrics(0.9, 0.8, 5, 2), dice, trainable=10, total=10)
    make_run(tmp_path, "lora", "lora", 0, metrics(0.9, 0.8, 5, 2), dice, trainable=5, total=12)
    rows = {m.name: m for m in compare([tmp_path]).methods}
    assert rows["lora"].p_value == 1.0 and rows["lora"].n_paired == 6
    assert paired_wilcoxon({"a": 0.5}, {"b": 0.5}) == (None, 0)


def test_older_runs_without_name_or_per_case(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, None, "trm", seed, metrics(0.8 + seed / 10, 0.7, 5, 2), None, trainable=5, total=10)
    make_run(tmp_path, None, "decoder_only", 0, metrics(0.8, 0.7, 5, 2), None, trainable=4, total=10)
    comparison = compare([tmp_path])
    rows = {m.name: m for m in comparison.methods}
    assert comparison.reference == "decoder_only"  # no full: the first name alphabetically
    assert rows["trm"].std["dice"] == pytest.approx(math.sqrt(2) * 0.05) and rows["trm"].p_value is None
    assert rows["decoder_only"].std_kind == "none" and rows["decoder_only"].std["dice"] is None
    assert any("no per_case.csv" in note for note in comparison.notes)


@pytest.mark.parametrize("problem", ["protocols", "nothing", "reference"])
def test_refusals_exit_2(compare_script: ModuleType, tmp_path: Path, capsys, problem: str) -> None:
    dice = {case: [0.9] for case in CASES}
    make_run(tmp_path, "full", "full", 0, metrics(0.9, 0.8, 5, 2), dice, trainable=10, total=10)
    args = [str(tmp_path), "--out", str(tmp_path / "out")]
    if problem == "protocols":
        make_run(
            tmp_path, "lora", "lora", 0, metrics(0.9, 0.8, 5, 2), dice, trainable=5, total=12, protocol="transunet"
        )
    elif problem == "nothing":
        (tmp_path / "empty").mkdir()
        args[0] = str(tmp_path / "empty")
    else:
        args += ["--reference", "lora"]
    with pytest.raises(SystemExit) as exit_info:
        compare_script.main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    expected = {"protocols": "runs mix protocols", "nothing": "no finished run", "reference": "reference 'lora'"}
    assert expected[problem] in error
    assert not (tmp_path / "out").exists()


def test_pareto_front() -> None:
    # (params, dice): 1 dominates 3 (fewer params, higher Dice); 0 and 2 trade off; 4 ties 0 exactly
    params = [100, 10, 1000, 50, 100]
    dice = [0.90, 0.85, 0.95, 0.80, 0.90]
    assert pareto_front(params, dice) == [1, 0, 4, 2]


def test_bootstrap_interval_matches_the_normal_approximation() -> None:
    values = np.random.default_rng(0).normal(0.7, 0.2, size=400)
    half_width = 1.96 * values.std(ddof=1) / math.sqrt(values.size)  # CLT: the bootstrap agrees for n = 400
    low, high = bootstrap_mean_interval(values)
    assert low == pytest.approx(values.mean() - half_width, abs=0.004)
    assert high == pytest.approx(values.mean() + half_width, abs=0.004)
    assert bootstrap_mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5) and bootstrap_mean_interval([0.3]) == (0.3, 0.3)


def test_pareto_x_is_what_the_encoder_trains_or_adds(tmp_path: Path) -> None:
    scores = metrics(0.9, 0.8, 1.0, 1.0)
    counts = {"full": (5000, 0), "decoder_only": (0, 0), "lora": (0, 96)}
    for method, (encoder_trained, adapter) in counts.items():
        run = make_run(
            tmp_path, method, method, 0, scores, None, trainable=100 + encoder_trained + adapter, total=5100
        )
        facts = json.loads((run / "metrics.json").read_text())
        facts.update(encoder_trainable_params=encoder_trained, adapter_params=adapter, decoder_params=100)
        (run / "metrics.json").write_text(json.dumps(facts))
    rows = {m.name: m for m in compare([tmp_path]).methods}
    assert {name: m.encoder_params_trained for name, m in rows.items()} == {
        "full": 5000,
        "decoder_only": 0,
        "lora": 96,
    }
    assert rows["lora"].decoder_params == 100


def test_wilcoxon_pairs_the_all_cases_dice_false_positives_on_empty_images_included(tmp_path: Path) -> None:
    # 10 lesion images and 10 normal scans. "painter" segments lesions better but marks a lesion on every normal scan;
    # "careful" leaves them empty. Means over all images: painter 0.40, careful 0.70.
    lesion = [f"lesion{i}" for i in range(10)]
    normal = [f"normal{i}" for i in range(10)]
    painter = {case: 0.755 + 0.01 * i for i, case in enumerate(lesion)}
    careful = {case: 0.355 + 0.01 * i for i, case in enumerate(lesion)}
    for name, lesion_dice, normal_pred in (("painter", painter, 50), ("careful", careful, 0)):
        all_cases = [*lesion_dice.values(), *([0.0 if normal_pred else 1.0] * 10)]
        scores = {**metrics(sum(lesion_dice.values()) / 10, 0.5, 5.0, 2.0), "dice_all": sum(all_cases) / 20}
        run_dir = make_run(tmp_path, name, "lora", 0, scores, None, trainable=5, total=10)
        metrics_file = run_dir / "metrics.json"
        record = json.loads(metrics_file.read_text())
        record["n_test_cases"] = 20
        record["empty_target"] = {"n": 10, "false_positives": 10 if normal_pred else 0}
        metrics_file.write_text(json.dumps(record))
        lines = ["case,class,class_name,dice,iou,hd95,asd,gt_voxels,pred_voxels"]
        lines += [f"{case},1,lesion,{dice},,,,100,90" for case, dice in lesion_dice.items()]
        lines += [f"{case},1,lesion,{0.0 if normal_pred else ''},,,,0,{normal_pred}" for case in normal]
        (run_dir / "per_case.csv").write_text("\n".join(lines) + "\n")

    comparison = compare([tmp_path], reference="careful")
    rows = {m.name: m for m in comparison.methods}
    assert rows["painter"].mean["dice_all"] == pytest.approx(0.40)
    assert rows["careful"].mean["dice_all"] == pytest.approx(0.70)
    assert rows["painter"].n_paired == 20  # the normal scans are paired too
    expected = wilcoxon([*painter.values(), *[0.0] * 10], [*careful.values(), *[1.0] * 10]).pvalue
    assert rows["painter"].p_value == pytest.approx(expected)
    lesions_only = wilcoxon(list(painter.values()), list(careful.values())).pvalue  # what dropping them gives
    assert lesions_only < 0.01 < rows["painter"].p_value
    markdown = render_markdown(comparison)
    assert "| Dice, all cases |" in markdown and "0.4000" in markdown and "0.7000" in markdown
    assert "per-case Dice over all cases" in markdown
