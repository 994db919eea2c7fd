"""Method x seed sweeps behind ``scripts/sweep.py``: train every combination, then compare them.

Each run is a subprocess ``python scripts/train.py --config BASE --set ...`` (so one crashing run is reported and
the sweep goes on) writing to ``<out>/<method>/seed<seed>/<config stem>/<timestamp>/``. A combination whose folder
already holds a ``metrics.json`` is skipped, and one whose run started but did not finish is continued with
``scripts/train.py --resume`` from its last checkpoint, so an interrupted sweep resumes where it stopped. At the end the
comparison of :mod:`medpeft.reports` is written to ``<out>/comparison/``.

``--method-config METHOD:FILE`` gives one method its own config instead of the base (how ``make demo`` runs the
five ``configs/demo_*.yaml``, each with the settings measured for its method); that file's ``adapter.method`` must
be the method, and its rank is kept.

Per run the sweep sets ``adapter.method``, ``seed``, ``name`` (the method, the row label of the comparison) and
``output_dir``, after the ``--set`` overrides and before the ``--method-set`` ones:

- methods other than the base config's get the default rank of :data:`DEFAULT_RANKS` (a rank means something
  different for each method, so a base rank is kept for the base method only; ``--method-set lora:adapter.rank=4``
  sets another, and ``--set adapter.rank=N`` while another adapter method is swept is an error, not a silent drop);
- the pseudo-method ``scratch`` is ``full`` fine-tuning with ``model.pretrained=false``, the from-scratch baseline;
- all runs share one train/val/test split: the paired tests of the comparison match test cases across methods, and
  seeds should vary the training, not the data. If ``data.split_seed`` is null in the base config (the split then
  follows ``seed``), it is pinned to the base ``seed`` for every run and the sweep says so.

- ``--budget N`` gives every adapter method ``adapter.budget=N`` (its size knob chosen to fit N adapter parameters,
  :func:`medpeft.adapters.match_budget`) instead of a default rank;
- a method that does not adapt weight layers (VPT, bottleneck adapters, BitFit, ...) and is not the base config's gets
  its registry ``default_targets`` in place of the base config's targets;
- ``--tune-lr R1,R2,...`` chooses each method's encoder learning rate on validation from that one grid before the
  final seeds train (:mod:`medpeft.training.tuning`).

Every run's config is validated before the first run starts.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from medpeft.adapters import get_adapter_method
from medpeft.cli import exit_with_error
from medpeft.experiment.config import ConfigError, is_adapter_method, load_config, method_names, write_text_atomic
from medpeft.reports.compare import compare
from medpeft.reports.runs import ComparisonError
from medpeft.reports.tables import render_markdown
from medpeft.training.tuning import (
    UNTUNED_METHODS,
    TuningChoice,
    format_rate,
    tuning_markdown,
    validation_score,
    write_tuning,
)

__all__ = ["DEFAULT_RANKS", "SWEEP_METHODS", "SweepRun", "build_parser", "main", "plan_sweep"]

#: Adapter rank of a swept method that is not the base config's: the README demo settings for TRM (R = 2) and
#: tCURLoRA (r = 1), and the common LoRA default r = 8 (Hu et al. 2021 use 4 to 64).
DEFAULT_RANKS: dict[str, int] = {"lora": 8, "trm": 2, "tcurlora": 1}
#: Rank of a swept method with a ``rank`` knob that :data:`DEFAULT_RANKS` does not name (peft's methods).
FALLBACK_RANK = 8
#: Methods a sweep accepts: every fine-tuning method (:func:`~medpeft.experiment.config.method_names`) plus ``scratch``
#: (``full`` from random weights).
SWEEP_METHODS: tuple[str, ...] = (*method_names(), "scratch")
#: Keys the sweep sets itself for every run.
_SWEEP_KEYS: tuple[str, ...] = ("adapter.method", "seed", "name", "output_dir")
_TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"


@dataclass(frozen=True)
class SweepRun:
    """One method x seed combination of a sweep.

    Args:
        method: Row label: a fine-tuning method or ``scratch``.
        seed: Training seed.
        output_dir: The run's ``output_dir``; its run directory is created below it.
        overrides: The ``--set`` overrides of ``scripts/train.py`` for this run.
        config: The YAML config it trains from (the base, or its method's ``--method-config``).
    """

    method: str
    seed: int
    output_dir: Path
    overrides: tuple[str, ...]
    config: str

    def command(self) -> list[str]:
        """The ``scripts/train.py`` command line of this run: ``--resume`` when an unfinished run exists."""
        unfinished = self.unfinished_run()
        if unfinished is not None:
            return [sys.executable, str(_TRAIN_SCRIPT), "--resume", str(unfinished)]
        return [sys.executable, str(_TRAIN_SCRIPT), "--config", self.config, "--set", *self.overrides]

    def unfinished_run(self) -> Path | None:
        """The newest run directory below :attr:`output_dir` that started (``config.yaml``) but did not finish."""
        started = sorted(path.parent for path in self.output_dir.rglob("config.yaml"))
        unfinished = [run for run in started if not (run / "metrics.json").is_file()]
        return unfinished[-1] if unfinished else None

    def is_done(self) -> bool:
        """Whether a finished run (a ``metrics.json``) exists below :attr:`output_dir`."""
        return any(self.output_dir.rglob("metrics.json"))


def _has_rank_knob(method: str) -> bool:
    return is_adapter_method(method) and get_adapter_method(method).size_knob == "rank"


def _split_follows_seed(config: str, sets: list[str]) -> bool:
    """Whether ``data.split_seed`` resolves from ``seed`` (null in the config): then two seeds give two splits."""
    return (
        load_config(config, [*sets, "seed=0"]).data.split_seed
        != load_config(config, [*sets, "seed=1"]).data.split_seed
    )


def _overrides_of(overrides: list[str], key: str) -> list[str]:
    """The ``KEY=VALUE`` texts among ``overrides`` that set ``key``."""
    return [text for text in overrides if text.partition("=")[0].strip() == key]


def _check_free_keys(overrides: list[str], option: str) -> None:
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key in _SWEEP_KEYS:
            raise ConfigError(f"{option} {text}: '{key}' is set by the sweep for each run; allowed: other keys")


def _parse_method_sets(texts: list[str], methods: list[str]) -> dict[str, list[str]]:
    """Split ``METHOD:KEY=VALUE`` texts into per-method override lists."""
    by_method: dict[str, list[str]] = {m: [] for m in methods}
    for text in texts:
        method, sep, override = text.partition(":")
        if not sep or "=" not in override or "=" in method:
            raise ConfigError(f"--method-set {text!r} must look like METHOD:KEY=VALUE, e.g. lora:adapter.rank=4")
        if method not in by_method:
            raise ConfigError(f"--method-set {text}: '{method}' is not a swept method ({', '.join(methods)})")
        by_method[method].append(override)
    for method, overrides in by_method.items():
        _check_free_keys(overrides, f"--method-set {method}:")
    return by_method


def _parse_method_configs(texts: list[str], methods: list[str]) -> dict[str, str]:
    """Split ``METHOD:FILE`` texts into method -> config, checking each file is that method's."""
    configs: dict[str, str] = {}
    for text in texts:
        method, sep, path = text.partition(":")
        if not sep or not path:
            raise ConfigError(f"--method-config {text!r} must look like METHOD:FILE, e.g. lora:configs/demo_lora.yaml")
        if method not in methods:
            raise ConfigError(f"--method-config {text}: '{method}' is not a swept method ({', '.join(methods)})")
        found = load_config(path).adapter.method
        if found != ("full" if method == "scratch" else method):
            raise ConfigError(f"--method-config {text}: {path} has adapter.method {found}, not {method}")
        configs[method] = path
    return configs


def plan_sweep(
    config: str,
    methods: list[str],
    seeds: list[int],
    sets: list[str],
    method_sets: list[str],
    out: Path,
    method_configs: list[str] = (),
    budget: int | None = None,
) -> tuple[list[SweepRun], list[str]]:
    """Plan the runs of a sweep and validate each run's config.

    Args:
        config: Base YAML config.
        methods: Methods to sweep (:data:`SWEEP_METHODS`).
        seeds: Training seeds.
        sets: ``KEY=VALUE`` overrides for every run.
        method_sets: ``METHOD:KEY=VALUE`` overrides for the runs of one method, applied last.
        out: Sweep folder; run ``(m, s)`` writes to ``out/m/seed<s>``.
        method_configs: ``METHOD:FILE``: that method's runs train from ``FILE`` instead of ``config``.
        budget: Adapter parameter budget of every adapter method (``adapter.budget``); ``None``: their ranks.

    Returns:
        The runs, method-major, and the decisions to tell the user (e.g. a pinned split seed).

    Raises:
        ConfigError: An unknown or repeated method or seed, a malformed or sweep-owned override, an
            ``adapter.rank`` in ``sets`` that another adapter method would silently not get, or a run whose config
            is invalid (the message names the run).
    """
    unknown = [m for m in methods if m not in SWEEP_METHODS]
    if unknown or not methods or len(set(methods)) < len(methods):
        raise ConfigError(f"--methods {','.join(methods)}: give distinct methods among {', '.join(SWEEP_METHODS)}")
    if not seeds or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds {','.join(map(str, seeds))}: give distinct integer seeds")
    _check_free_keys(sets, "--set")
    per_method = _parse_method_sets(method_sets, methods)
    own_config = _parse_method_configs(list(method_configs), methods)
    base = load_config(config, sets)
    decisions = []
    shared = list(sets)
    if _split_follows_seed(config, sets):
        shared.append(f"data.split_seed={base.seed}")
        decisions.append(
            f"data.split_seed is null in {config}: pinned to the base seed {base.seed} for every run, so all "
            "methods and seeds are tested on one split"
        )
    shared_rank = _overrides_of(sets, "adapter.rank")
    runs = []
    for method in methods:
        trained = "full" if method == "scratch" else method
        fixed = [f"adapter.method={trained}"]
        if method == "scratch":
            fixed.append("model.pretrained=false")
        own_rank = bool(_overrides_of(per_method[method], "adapter.rank"))
        if (
            _has_rank_knob(trained)
            and trained != base.adapter.method
            and not own_rank
            and method not in own_config
            and base.adapter.budget is None
            and budget is None
        ):
            if shared_rank:
                raise ConfigError(
                    f"--set {shared_rank[-1]} reaches only the base method {base.adapter.method} (a rank means "
                    f"something different for each method); give {method} its own: "
                    f"--method-set {method}:adapter.rank=N"
                )
            fixed.append(f"adapter.rank={DEFAULT_RANKS.get(trained, FALLBACK_RANK)}")
        if is_adapter_method(trained) and budget is not None:
            fixed.append(f"adapter.budget={budget}")
        targets = get_adapter_method(trained).default_targets if is_adapter_method(trained) else None
        if targets and trained != base.adapter.method and method not in own_config:
            fixed.append(f"adapter.targets=[{','.join(targets)}]")
        run_config = own_config.get(method, config)
        for seed in seeds:
            output_dir = out / method / f"seed{seed}"
            overrides = (*shared, *fixed, f"seed={seed}", f"name={method}", f"output_dir={output_dir}")
            overrides += tuple(per_method[method])
            try:
                load_config(run_config, overrides)
            except ConfigError as err:
                raise ConfigError(f"run {method} seed {seed}: {err}") from None
            runs.append(SweepRun(method, seed, output_dir, overrides, run_config))
    return runs, decisions


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``scripts/sweep.py``."""
    parser = argparse.ArgumentParser(
        prog="sweep.py",
        description=(
            "Train every method x seed combination of a base config (each a scripts/train.py subprocess, skipped "
            "when already finished), then write the comparison (scripts/compare.py) to <out>/comparison/. Exits "
            "with status 1 if a run failed, 2 on invalid arguments or configs (before any run starts)."
        ),
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="base YAML config (see configs/)")
    parser.add_argument(
        "--methods",
        required=True,
        metavar="M1,M2",
        help=f"comma-separated methods among {','.join(SWEEP_METHODS)} (scratch: full from random weights)",
    )
    parser.add_argument("--seeds", default="0", metavar="S1,S2", help="comma-separated training seeds (default 0)")
    parser.add_argument(
        "--set",
        dest="sets",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="config override for every run, as in train.py. Repeatable.",
    )
    parser.add_argument(
        "--method-set",
        dest="method_sets",
        metavar="METHOD:KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help=(
            "override for one method's runs, e.g. lora:adapter.rank=4 (default ranks: "
            f"{', '.join(f'{m} {r}' for m, r in DEFAULT_RANKS.items())} unless the base config's method). Repeatable."
        ),
    )
    parser.add_argument(
        "--method-config",
        dest="method_configs",
        metavar="METHOD:FILE",
        nargs="+",
        action="extend",
        default=[],
        help="train one method from its own config instead of the base (its adapter.method must match). Repeatable.",
    )
    parser.add_argument(
        "--budget",
        type=int,
        metavar="N",
        help="adapter parameter budget of every adapter method: each one's size knob is chosen to fit N parameters",
    )
    parser.add_argument(
        "--tune-lr",
        metavar="R1,R2",
        help=(
            "shared grid of encoder learning rates: each method (decoder_only excepted) trains once per rate on the "
            "first seed, the best validation Dice chooses its rate, the final seeds train with it"
        ),
    )
    parser.add_argument("--out", metavar="DIR", help="sweep folder (default runs/sweep/<config stem>)")
    parser.add_argument("--reference", metavar="NAME", help="reference method of the comparison's Wilcoxon tests")
    parser.add_argument(
        "--title", metavar="TEXT", help="title of the comparison table and plot (default: config stem)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the commands, train nothing")
    return parser


def _elapsed(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        exit_with_error(f"--seeds {text}: give comma-separated integers, e.g. 0,1,2")


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",")]
    except ValueError:
        exit_with_error(f"--tune-lr {text}: give comma-separated learning rates, e.g. 1e-4,1e-3,1e-2")
    if len(set(rates)) < len(rates) or any(r <= 0 for r in rates):
        exit_with_error(f"--tune-lr {text}: give distinct positive rates")
    return sorted(rates)


def _plan_tuning(plan: tuple, grid: list[float]) -> list[SweepRun]:
    """The tuning runs: each tuned method once per rate, on the first seed, under ``<out>/tuning/lr<rate>/``."""
    config, methods, seeds, sets, method_sets, out, method_configs, budget = plan
    tuned = [m for m in methods if m not in UNTUNED_METHODS]
    kept_sets = [t for t in method_sets if t.partition(":")[0] in tuned]
    kept_configs = [t for t in method_configs if t.partition(":")[0] in tuned]
    runs = []
    for rate in grid:
        planned, _ = plan_sweep(
            config, tuned, seeds[:1], [*sets, f"optim.encoder_lr={rate}"], kept_sets,
            out / "tuning" / f"lr{format_rate(rate)}", kept_configs, budget,
        )  # fmt: skip
        runs += planned
    return runs


def _choose_rates(tuning: list[SweepRun], grid: list[float]) -> list[TuningChoice]:
    by_method: dict[str, dict[float, float]] = {}
    for run in tuning:
        rate = float(next(t for t in run.overrides if t.startswith("optim.encoder_lr=")).partition("=")[2])
        by_method.setdefault(run.method, {})[rate] = validation_score(run.output_dir)
    return [TuningChoice(method, scores) for method, scores in by_method.items()]


def _final_runs_after_tuning(plan: tuple, choices: list[TuningChoice], tuning: list[SweepRun]) -> list[SweepRun]:
    """Every method's final seeds at its chosen rate; the first seed's run is its tuning run at that rate."""
    config, methods, seeds, sets, method_sets, out, method_configs, budget = plan
    chosen = {c.method: c.rate for c in choices}
    runs = []
    for method in methods:
        extra = [f"optim.encoder_lr={chosen[method]}"] if method in chosen else []
        planned, _ = plan_sweep(
            config, [method], seeds, [*sets, *extra], [t for t in method_sets if t.startswith(f"{method}:")], out,
            [t for t in method_configs if t.startswith(f"{method}:")], budget,
        )  # fmt: skip
        if method in chosen:
            first = next(
                r for r in tuning if r.method == method and f"optim.encoder_lr={chosen[method]}" in r.overrides
            )
            planned[0] = first
        runs += planned
    return runs


def _train(
    runs: list[SweepRun], dry_run: bool, start: float, title: str, out: Path, notes: list[str], label: str = "",
    unit: str = "seed",
) -> list[str]:  # fmt: skip
    """Train the runs not yet done, one subprocess each; return the failed ones' names. ``unit`` names what the
    runs of one method differ by (seeds, or the tuning's rates)."""
    done = [run.is_done() for run in runs]
    n_methods = len({run.method for run in runs})
    n_each = len(runs) // n_methods
    print(
        f"{title}: {len(runs)} runs ({n_methods} methods x {n_each} {unit}{'s' * (n_each > 1)}), {sum(done)} to skip "
        f"(done), {len(runs) - sum(done)} to train -> {out}"
    )
    for note in notes:
        print(f"note: {note}")
    failed = []
    for i, (run, skip) in enumerate(zip(runs, done), start=1):
        head = f"{label}[{i}/{len(runs)}] {run.method} seed {run.seed}"
        if skip:
            print(f"{head}: skip (done)", flush=True)
            continue
        if dry_run:
            print(f"{head}: train\n  {shlex.join(run.command())}")
            continue
        resuming = run.unfinished_run()
        action = f"resuming {resuming}" if resuming else f"training -> {run.output_dir}"
        print(f"{head}: {action}", flush=True)
        run_start = time.monotonic()
        status = subprocess.run(run.command(), check=False).returncode
        if status != 0:
            result = f"FAILED (exit status {status})"
        elif not run.is_done():
            result = "FAILED (no metrics.json written)"
        else:
            result = "done"
        if result != "done":
            failed.append(f"{run.method} seed {run.seed}")
        took, total = _elapsed(time.monotonic() - run_start), _elapsed(time.monotonic() - start)
        print(f"{head}: {result} in {took} (sweep elapsed {total})", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run ``sweep.py --config BASE --methods M1,M2 [--seeds S1,S2] [--set ...] [--method-set ...]
    [--method-config ...] [--budget N] [--tune-lr R1,R2] [--out DIR] [--reference NAME] [--dry-run]``.

    Returns:
        The exit status: 0 when every run finished (and the comparison was written), 1 when a run failed.

    Raises:
        SystemExit: With status 2 on invalid arguments or an invalid run config, before any run starts, or when the
            finished runs cannot be compared.
    """
    args = build_parser().parse_args(argv)
    stem = Path(args.config).stem
    out = Path(args.out) if args.out else Path("runs") / "sweep" / stem
    methods = [m.strip() for m in args.methods.split(",")]

    grid = _parse_rates(args.tune_lr) if args.tune_lr else None
    if grid and _overrides_of([*args.sets, *(t.partition(":")[2] for t in args.method_sets)], "optim.encoder_lr"):
        exit_with_error("--tune-lr chooses optim.encoder_lr; do not also set it with --set or --method-set")
    start = time.monotonic()
    failed: list[str] = []
    seeds = _parse_seeds(args.seeds)
    plan = (args.config, methods, seeds, args.sets, args.method_sets, out, args.method_configs, args.budget)
    if grid:
        try:
            tuning = _plan_tuning(plan, grid)
        except ConfigError as err:
            exit_with_error(str(err))
        title = f"tuning {stem} over {len(grid)} encoder learning rates ({args.tune_lr}), seed {seeds[0]}"
        failed += _train(tuning, args.dry_run, start, title, out / "tuning", [], label="tuning ", unit="rate")
        if args.dry_run:
            print("(the final runs are planned once the tuning runs have finished)")
            return 0
        if failed:
            print(f"sweep: {len(failed)} tuning runs failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        choices = _choose_rates(tuning, grid)
        write_tuning(choices, grid, out / "tuning.json")
        print(tuning_markdown(choices, grid, seeds[0]), end="")
        runs, decisions = _final_runs_after_tuning(plan, choices, tuning), []
    else:
        try:
            runs, decisions = plan_sweep(*plan)
        except ConfigError as err:
            exit_with_error(str(err))
    failed += _train(runs, args.dry_run, start, f"sweep {stem}", out, decisions)
    if args.dry_run:
        return 0
    if failed:
        print(
            f"sweep: {len(failed)} of {len(runs) + (len(tuning) if grid else 0)} runs failed: {', '.join(failed)}",
            file=sys.stderr,
        )
    try:
        comparison = compare(
            [run.output_dir for run in runs if run.output_dir.is_dir()],  # a failed run may have left no folder
            out / "comparison",
            reference=args.reference,
            title=args.title or stem,
        )
    except ComparisonError as err:
        exit_with_error(f"comparison: {err}")
    finished = [str(run.output_dir) for run in runs if run.output_dir.is_dir()]
    # the runs the table compares (with --tune-lr, seed 0's are tuning runs): scripts/compare.py $(cat runs.txt) ...
    write_text_atomic(out / "comparison" / "runs.txt", "\n".join(finished) + "\n")
    if grid:
        write_text_atomic(out / "comparison" / "tuning.md", tuning_markdown(choices, grid, seeds[0]))
    print(render_markdown(comparison, title=args.title or stem), end="")
    print(f"\ncomparison written to {out / 'comparison'}")
    return 1 if failed else 0
