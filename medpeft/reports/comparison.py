"""Method comparison across finished runs: the statistics behind ``scripts/compare.py``.

Runs are grouped by their label (``metrics.json`` ``name``, i.e. ``Config.label``). For each method:

- **mean**: the mean over seeds of the run-level metrics (each a mean over foreground classes of per-case means,
  as in ``metrics.json``), so a one-seed row shows exactly its run's numbers;
- **±**: with several seeds, the sample standard deviation (ddof = 1) of those run-level means across seeds; with
  one seed, the sample standard deviation across test cases of the per-case score (mean over classes of the
  case's defined values), from ``per_case.csv``; none for a one-seed run without ``per_case.csv``;
- **Dice interval**: with several seeds, mean ± the std across seeds; with one seed, the 95 % percentile bootstrap
  interval of the mean over test cases of the per-case Dice (:func:`scipy.stats.bootstrap`, 9,999 resamples, fixed
  random state, so a table is reproducible). The Pareto plot draws it;
- **Dice, all cases**: the mean over seeds of ``metrics.json``'s ``dice_all``, which scores every test case: a case
  without the class scores 1 when predicted empty and 0 with any false positive (shown when some test case lacks a
  class, e.g. BUSI's normal scans; elsewhere it equals Dice);
- **p**: a two-sided paired Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) of the per-case Dice by that
  same all-cases rule against the reference method, each method's per-case score first averaged over its seeds (so
  one pair is one test case), cases matched by id; ``1.0`` when every difference is zero. Pairing on the score
  the mean uses matters: dropping the cases a method leaves empty and correct would drop exactly the normal scans
  where the other method's false positives cost it. Runs whose ``per_case.csv`` lacks the voxel counts (older
  versions) are paired on the defined per-case Dice instead, with a note.

Runs that mix datasets, evaluation protocols or distance units are refused, as are runs of one label that differ
in encoder, parameter counts, image size or number of test cases (give them different ``name`` s instead).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import bootstrap, wilcoxon

from medpeft.reports.runs import DICE_ALL, METRICS, ComparisonError, Run

__all__ = [
    "METHOD_ORDER",
    "Comparison",
    "MethodSummary",
    "bootstrap_mean_interval",
    "paired_wilcoxon",
    "summarize_runs",
]

#: Row order of the table by the runs' ``method`` (baselines first); labels of one method follow alphabetically.
METHOD_ORDER: tuple[str, ...] = ("full", "decoder_only", "lora", "trm", "tcurlora")
#: ``metrics.json`` keys that must agree between the seeds of one label.
_SETUP_KEYS: tuple[str, ...] = ("encoder", "trainable_params", "total_params", "image_size", "n_test_cases")
#: ``metrics.json`` facts that must agree across the whole table, with their name in error messages.
_TABLE_KEYS: dict[str, str] = {"dataset": "datasets", "protocol": "protocols", "distance_unit": "distance units"}

StdKind = Literal["seeds", "cases", "none"]


@dataclass
class MethodSummary:
    """One row of the comparison: the runs of one label, aggregated.

    Args:
        name: The label (``metrics.json`` ``name``, else ``method``).
        runs: Its runs, one per seed, sorted by seed.
        mean: Metric -> mean over seeds of the run-level values (``None`` if no run defines it).
        std: Metric -> the ``±`` described by ``std_kind`` (``None`` where it cannot be computed).
        std_kind: ``"seeds"`` (std across seeds), ``"cases"`` (one seed: std across test cases) or ``"none"``.
        case_dice: Case id -> the per-case score the p-value pairs (``Comparison.paired_score``), averaged over the
            seeds that define it; ``None`` when a run has no ``per_case.csv``.
        p_value: Wilcoxon p against the reference; ``None`` for the reference itself or without per-case Dice.
        n_paired: Number of test cases paired in that test.
        dice_interval: ``(low, high)`` of the Dice uncertainty, of the kind ``dice_interval_kind`` says; ``None``
            for one seed without per-case Dice.
        dice_interval_kind: ``"seeds"`` (mean ± std across seeds), ``"bootstrap"`` (one seed: 95 % bootstrap
            interval of the mean over test cases) or ``"none"``.
    """

    name: str
    runs: list[Run]
    mean: dict[str, float | None]
    std: dict[str, float | None]
    std_kind: StdKind
    case_dice: dict[str, float] | None
    p_value: float | None = None
    n_paired: int | None = None
    dice_interval: tuple[float, float] | None = None
    dice_interval_kind: Literal["seeds", "bootstrap", "none"] = "none"

    def _first(self, key: str) -> int | float | str | None:
        return self.runs[0].metrics.get(key)

    @property
    def method(self) -> str:
        return str(self._first("method"))

    @property
    def encoder(self) -> str:
        return str(self._first("encoder"))

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def trainable_params(self) -> int:
        return int(self._first("trainable_params"))

    @property
    def total_params(self) -> int:
        return int(self._first("total_params"))

    @property
    def adapter_params(self) -> int | None:
        value = self._first("adapter_params")
        return None if value is None else int(value)

    @property
    def decoder_params(self) -> int | None:
        value = self._first("decoder_params")
        return None if value is None else int(value)

    @property
    def encoder_params_trained(self) -> int | None:
        """Parameters the method trains in or adds to the encoder: all of it (``full``), none (``decoder_only``),
        the adapters (PEFT); ``None`` for runs made before ``metrics.json`` recorded them."""
        trained, added = self._first("encoder_trainable_params"), self._first("adapter_params")
        if trained is None or added is None:
            return None
        return int(trained) + int(added)

    @property
    def n_cases(self) -> int:
        return int(self._first("n_test_cases"))

    @property
    def gflops(self) -> float | None:
        values = [v for v in (run.value("gflops") for run in self.runs) if v is not None]
        return sum(values) / len(values) if values else None


@dataclass
class Comparison:
    """The comparison table: its rows in table order and the facts its caption states.

    Args:
        methods: One summary per label.
        reference: The label the p-values test against.
        dataset: Dataset of every run.
        protocol: Evaluation protocol of every run (``"symmetric"`` or ``"transunet"``).
        distance_unit: Unit of HD95 and ASD (``"mm"``, ``"px"`` or ``"voxel"``).
        notes: Caveats to print under the table (duplicate runs, differing case sets, missing per-case files).
        paired_score: The per-case score the p-values and one-seed intervals use: ``"dice_all"`` (every case,
            :data:`~medpeft.reports.runs.DICE_ALL`), or ``"dice"`` (defined values only) when a run lacks it.
    """

    methods: list[MethodSummary]
    reference: str
    dataset: str
    protocol: str
    distance_unit: str
    notes: list[str] = field(default_factory=list)
    paired_score: str = DICE_ALL

    @property
    def shows_dice_all(self) -> bool:
        """Whether some test case lacks a class (so Dice over all cases differs from Dice)."""
        return any((run.metrics.get("empty_target") or {}).get("n", 0) > 0 for m in self.methods for run in m.runs)

    @property
    def n_test_cases(self) -> list[int]:
        """The distinct numbers of test cases of the rows, sorted."""
        return sorted({m.n_cases for m in self.methods})

    @property
    def image_sizes(self) -> list[int]:
        """The distinct image sizes (the GFLOPs are per image of that size), sorted."""
        return sorted(
            {int(run.metrics["image_size"]) for m in self.methods for run in m.runs if run.metrics.get("image_size")}
        )


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _std(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return statistics.stdev(defined) if len(defined) >= 2 else None


def bootstrap_mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (9,999 resamples, random state 0).

    Returns ``(v, v)`` when every value is ``v`` (no spread to resample), including a single value.
    """
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_mean_interval needs at least one value")
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    result = bootstrap(
        (data,), np.mean, confidence_level=confidence, n_resamples=9_999, method="percentile", random_state=0
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_wilcoxon(scores: dict[str, float], reference: dict[str, float]) -> tuple[float | None, int]:
    """Two-sided paired Wilcoxon signed-rank test of ``scores`` against ``reference``, matched by case id.

    Args:
        scores: Case id -> score of the tested method.
        reference: Case id -> score of the reference method.

    Returns:
        ``(p, n)``: the p-value over the ``n`` cases both define (``None`` when ``n`` is 0), ``1.0`` when every
        paired difference is zero (scipy would divide by zero there).
    """
    cases = sorted(scores.keys() & reference.keys())
    if not cases:
        return None, 0
    x = [scores[c] for c in cases]
    y = [reference[c] for c in cases]
    if all(a == b for a, b in zip(x, y)):
        return 1.0, len(cases)
    return float(wilcoxon(x, y, alternative="two-sided").pvalue), len(cases)


def _check_uniform(runs: list[Run]) -> None:
    for key, plural in _TABLE_KEYS.items():
        counts: dict[str, int] = {}
        for run in runs:
            value = getattr(run, key)
            counts[value] = counts.get(value, 0) + 1
        if len(counts) > 1:
            found = ", ".join(f"{value} ({n} run{'s' * (n > 1)})" for value, n in sorted(counts.items()))
            raise ComparisonError(f"runs mix {plural}: {found}; compare runs of one {key.replace('_', ' ')} at a time")


def _one_per_seed(name: str, runs: list[Run], notes: list[str]) -> list[Run]:
    """Keep the newest run (latest timestamped directory name) of each seed, noting the duplicates dropped."""
    by_seed: dict[int, list[Run]] = {}
    for run in runs:
        by_seed.setdefault(run.seed, []).append(run)
    kept = []
    for seed, candidates in sorted(by_seed.items()):
        candidates.sort(key=lambda run: (run.path.name, str(run.path)))
        if len(candidates) > 1:
            notes.append(f"{name} seed {seed}: {len(candidates)} runs found, using the newest ({candidates[-1].path})")
        kept.append(candidates[-1])
    return kept


def _check_setup(name: str, runs: list[Run]) -> None:
    for key in _SETUP_KEYS:
        values = {str(run.metrics.get(key)) for run in runs}
        if len(values) > 1:
            raise ComparisonError(
                f"runs named '{name}' differ in {key} ({', '.join(sorted(values))}); give each setup its own `name`"
            )


def _summarize_label(name: str, runs: list[Run], paired_score: str) -> MethodSummary:
    keys = (*METRICS, DICE_ALL)
    mean = {metric: _mean(run.value(metric) for run in runs) for metric in keys}
    std_kind: StdKind
    if len(runs) > 1:
        std_kind = "seeds"
        std = {metric: _std(run.value(metric) for run in runs) for metric in keys}
    elif runs[0].per_case is not None:
        std_kind = "cases"
        std = {metric: _std(case.get(metric) for case in runs[0].per_case.values()) for metric in keys}
    else:
        std_kind = "none"
        std = dict.fromkeys(keys)
    case_dice = None
    if all(run.per_case is not None for run in runs):
        per_seed = [{c: s[paired_score] for c, s in run.per_case.items() if paired_score in s} for run in runs]
        cases = sorted(set().union(*per_seed))
        case_dice = {c: _mean(seed.get(c) for seed in per_seed) for c in cases}
    summary = MethodSummary(name=name, runs=runs, mean=mean, std=std, std_kind=std_kind, case_dice=case_dice)
    dice, dice_std = mean["dice"], std["dice"]
    if std_kind == "seeds" and dice is not None and dice_std is not None:
        summary.dice_interval, summary.dice_interval_kind = (dice - dice_std, dice + dice_std), "seeds"
    elif len(runs) == 1 and case_dice:
        summary.dice_interval = bootstrap_mean_interval(list(case_dice.values()))
        summary.dice_interval_kind = "bootstrap"
    return summary


def _row_key(summary: MethodSummary) -> tuple[int, bool, str]:
    method = summary.method
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, summary.name != method, summary.name


def summarize_runs(runs: Sequence[Run], reference: str | None = None) -> Comparison:
    """Group runs by label, aggregate each group and test each against the reference (see the module docstring).

    Args:
        runs: Finished runs, at least one.
        reference: Label to test against; ``None`` picks ``"full"`` if present, else the first label
            alphabetically.

    Raises:
        ComparisonError: No runs, runs that mix datasets / protocols / distance units, one label with differing
            setups, or an unknown ``reference``.
    """
    if not runs:
        raise ComparisonError("no runs to compare")
    runs = list(runs)
    _check_uniform(runs)
    notes: list[str] = []
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    for name in sorted(groups):
        groups[name] = _one_per_seed(name, groups[name], notes)
        _check_setup(name, groups[name])
    with_per_case = [run for group in groups.values() for run in group if run.per_case is not None]
    paired_score = DICE_ALL if all(_has_dice_all(run) for run in with_per_case) else "dice"
    if paired_score != DICE_ALL:
        notes.append(
            "some per_case.csv lack gt_voxels / pred_voxels (an older version): p-values pair the defined per-case "
            "Dice, so a case left empty and correct by one method and painted by the other is not paired"
        )
    summaries = [_summarize_label(name, group, paired_score) for name, group in sorted(groups.items())]
    summaries.sort(key=_row_key)
    lacking = [
        f"{s.name} ({sum(run.per_case is None for run in s.runs)} of {len(s.runs)})"
        for s in summaries
        if s.case_dice is None
    ]
    if lacking:
        notes.append(
            "no per_case.csv (runs made by an older version), so no p-value and, with one seed, no ±: "
            + ", ".join(lacking)
        )

    names = sorted(groups)
    if reference is None:
        reference = "full" if "full" in groups else names[0]
    elif reference not in groups:
        raise ComparisonError(f"reference '{reference}' is not among the compared methods: {', '.join(names)}")
    ref = next(s for s in summaries if s.name == reference)
    for summary in summaries:
        if summary is ref or summary.case_dice is None or ref.case_dice is None:
            continue
        summary.p_value, summary.n_paired = paired_wilcoxon(summary.case_dice, ref.case_dice)
        n_union = len(summary.case_dice.keys() | ref.case_dice.keys())
        if summary.n_paired < n_union:
            notes.append(
                f"{summary.name}: paired on the {summary.n_paired} test cases that both it and {reference} score "
                f"(of {n_union}"
                + (
                    "; a case with empty ground truth and empty prediction has no defined Dice)"
                    if paired_score == "dice"
                    else ")"
                )
            )
    first = runs[0]
    return Comparison(
        methods=summaries,
        reference=reference,
        dataset=first.dataset,
        protocol=first.protocol,
        distance_unit=first.distance_unit,
        notes=notes,
        paired_score=paired_score,
    )


def _has_dice_all(run: Run) -> bool:
    return run.per_case is not None and all(DICE_ALL in case for case in run.per_case.values())
