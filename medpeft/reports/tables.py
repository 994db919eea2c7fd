"""The comparison as paper-ready files: a markdown table, a machine-readable CSV, a booktabs LaTeX table and the
Pareto plot.

Columns: method, encoder, trainable parameters (and % of all parameters), GFLOPs, Dice, Dice over all cases (where
some test case lacks a class: false positives there count 0, empty predictions 1), IoU, HD95, ASD (with the
distance unit), the Dice interval (95 % bootstrap CI over test cases for one seed, mean ± std over seeds otherwise),
n (seeds) and the Wilcoxon p against the reference with the number of paired cases (paired on the per-case Dice over
all cases, the rule of that column). Dice and IoU
have 4 decimals, HD95, ASD and GFLOPs 2. The best value of each column is bold (Dice / IoU highest, HD95 / ASD,
parameters and GFLOPs lowest), compared as displayed, so ties are all bold.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from medpeft.io import write_text_atomic
from medpeft.reports.comparison import Comparison, MethodSummary
from medpeft.reports.pareto import plot_pareto
from medpeft.reports.runs import DICE_ALL, METRICS

__all__ = ["render_csv", "render_latex", "render_markdown", "write_comparison"]

_DECIMALS = {"dice": 4, DICE_ALL: 4, "iou": 4, "hd95": 2, "asd": 2}
_LABELS = {"dice": "Dice", DICE_ALL: "Dice, all cases", "iou": "IoU", "hd95": "HD95", "asd": "ASD"}
_HIGHER_IS_BETTER = {"dice": True, DICE_ALL: True, "iou": True, "hd95": False, "asd": False}
_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


@dataclass
class _Cell:
    text: str
    best: bool = False


def _mark_best(cells: list[_Cell], keys: list[float | None], higher_is_better: bool) -> None:
    """Mark the cells whose (displayed, rounded) key is the best of the column."""
    defined = [k for k in keys if k is not None]
    if not defined:
        return
    best = max(defined) if higher_is_better else min(defined)
    for cell, key in zip(cells, keys):
        cell.best = key == best


def _format_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3f}" if p >= 1e-3 else f"{p:.1e}"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.3g} %" if whole else "n/a"


def _columns(comparison: Comparison) -> tuple[list[str], list[list[_Cell]]]:
    """Return the header and the cells (one list per column) of the table, best values marked."""
    rows = comparison.methods
    unit = comparison.distance_unit
    header = ["method", "encoder", "trainable params (% of total)", "GFLOPs"]
    metrics = list(METRICS)
    if comparison.shows_dice_all:
        metrics.insert(1, DICE_ALL)
    header += [_LABELS[m] if m in ("dice", DICE_ALL, "iou") else f"{_LABELS[m]} ({unit})" for m in metrics]
    header += ["Dice interval", "n", f"p vs {comparison.reference} (pairs)"]

    columns = [[_Cell(m.name) for m in rows], [_Cell(m.encoder) for m in rows]]
    params = [_Cell(f"{m.trainable_params:,d} ({_percent(m.trainable_params, m.total_params)})") for m in rows]
    _mark_best(params, [m.trainable_params for m in rows], higher_is_better=False)
    gflops = [_Cell("n/a" if m.gflops is None else f"{m.gflops:.2f}") for m in rows]
    _mark_best(gflops, [None if m.gflops is None else round(m.gflops, 2) for m in rows], higher_is_better=False)
    columns += [params, gflops]
    for metric in metrics:
        decimals = _DECIMALS[metric]
        cells = []
        for m in rows:
            mean, std = m.mean[metric], m.std[metric]
            text = "n/a" if mean is None else f"{mean:.{decimals}f}"
            cells.append(_Cell(text if mean is None or std is None else f"{text} ± {std:.{decimals}f}"))
        keys = [None if m.mean[metric] is None else round(m.mean[metric], decimals) for m in rows]
        _mark_best(cells, keys, _HIGHER_IS_BETTER[metric])
        columns.append(cells)
    columns.append([_Cell(_interval_cell(m.dice_interval)) for m in rows])
    columns.append([_Cell(str(len(m.runs))) for m in rows])
    columns.append([_Cell(_p_cell(m, comparison.reference)) for m in rows])
    return header, columns


def _interval_cell(interval: tuple[float, float] | None) -> str:
    return "n/a" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def _p_cell(summary: MethodSummary, reference: str) -> str:
    if summary.name == reference:
        return "ref"
    if summary.n_paired is None:
        return "n/a"
    return f"{_format_p(summary.p_value)} ({summary.n_paired})"


def _caption(comparison: Comparison) -> str:
    n_cases = comparison.n_test_cases
    cases = f"{n_cases[0]} test cases" if len(n_cases) == 1 else f"{', '.join(map(str, n_cases))} test cases by run"
    sizes = comparison.image_sizes
    size = f" at {' / '.join(f'{s} px' for s in sizes)}" if sizes else ""
    return (
        f"Dataset {comparison.dataset}, protocol {comparison.protocol}, HD95 and ASD in {comparison.distance_unit}, "
        f"{cases}; GFLOPs per image{size} (FLOPs: multiply-add = 2); best value per column in bold."
    )


def _footnotes(comparison: Comparison) -> list[str]:
    kinds = {m.std_kind for m in comparison.methods}
    std = []
    if "seeds" in kinds:
        std.append("sample std (ddof = 1) across seeds of the run means where n > 1")
    if "cases" in kinds:
        std.append("sample std across test cases of the per-case mean over classes where n = 1")
    notes = [f"±: {'; '.join(std)}." if std else "±: none (one seed without per-case results)."]
    intervals = _interval_label({m.dice_interval_kind for m in comparison.methods})
    notes.append(
        f"Dice interval: {intervals} (mean ± std where n > 1; percentile bootstrap, 9,999 resamples, where n = 1)."
    )
    if comparison.paired_score == DICE_ALL:
        score = (
            "per-case Dice over all cases (a case without the class scores 1 when predicted empty and 0 with a false "
            "positive, the rule of Dice, all cases; where every case has the class it is the case's Dice)"
        )
    else:
        score = "per-case Dice (defined cases only)"
    notes.append(
        f"p: two-sided paired Wilcoxon signed-rank test of the {score} against {comparison.reference}, each case's "
        "score first averaged over a method's seeds, so one pair is one test case; in brackets the number of "
        "paired test cases. The one-seed Dice interval bootstraps the same per-case score."
    )
    notes.append("n: number of seeds.")
    return notes + [f"Note: {note}." for note in comparison.notes]


def render_markdown(comparison: Comparison, title: str | None = None) -> str:
    """Return the comparison as markdown: optional heading, caption, table, footnotes."""
    header, columns = _columns(comparison)
    lines = [f"## {title}", ""] if title else []
    lines += [_caption(comparison), ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    for row in zip(*columns):
        lines.append("| " + " | ".join(f"**{c.text}**" if c.best else c.text for c in row) + " |")
    lines.append("")
    lines += [f"{note}  " for note in _footnotes(comparison)]
    return "\n".join(lines).rstrip() + "\n"


def _latex_escape(text: str) -> str:
    escaped = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)
    return escaped.replace("±", r"$\pm$")


def render_latex(comparison: Comparison, title: str | None = None) -> str:
    """Return the comparison as a booktabs ``table`` (needs ``\\usepackage{booktabs}``), footnotes below it."""
    header, columns = _columns(comparison)

    def cell(c: _Cell) -> str:
        return rf"\textbf{{{_latex_escape(c.text)}}}" if c.best else _latex_escape(c.text)

    caption = _latex_escape(_caption(comparison))
    lines = [
        r"% generated by scripts/compare.py; needs \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_latex_escape(title) + '. ' if title else ''}{caption}}}",
        r"\label{tab:comparison}",
        r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(cell(c) for c in row) + r" \\" for row in zip(*columns)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip\footnotesize"]
    lines += [_latex_escape(note) + r"\\" for note in _footnotes(comparison)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _csv_row(m: MethodSummary, comparison: Comparison) -> dict[str, float | int | str | None]:
    row: dict[str, float | int | str | None] = {
        "method": m.name,
        "base_method": m.method,
        "encoder": m.encoder,
        "n_seeds": len(m.runs),
        "seeds": " ".join(map(str, m.seeds)),
        "n_cases": m.n_cases,
        "trainable_params": m.trainable_params,
        "total_params": m.total_params,
        "trainable_fraction": m.trainable_params / m.total_params if m.total_params else None,
        "adapter_params": m.adapter_params,
        "gflops": m.gflops,
    }
    for metric in (*METRICS, DICE_ALL):
        row[f"{metric}_mean"] = m.mean[metric]
        row[f"{metric}_std"] = m.std[metric]
    low, high = m.dice_interval or (None, None)
    row.update(dice_interval_low=low, dice_interval_high=high, dice_interval_kind=m.dice_interval_kind)
    row.update(encoder_params_trained=m.encoder_params_trained, decoder_params=m.decoder_params)
    row.update(
        std_kind=m.std_kind,
        p_value=m.p_value,
        n_paired=m.n_paired,
        paired_score=comparison.paired_score,
        reference=comparison.reference,
        dataset=comparison.dataset,
        protocol=comparison.protocol,
        distance_unit=comparison.distance_unit,
    )
    return row


def render_csv(comparison: Comparison) -> str:
    """Return the comparison as CSV: one row per method, means and stds in separate columns, full precision; an
    empty field is an undefined value."""
    rows = [_csv_row(m, comparison) for m in comparison.methods]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # csv writes None as an empty field
    return buffer.getvalue()


def _encoder_params(m: MethodSummary) -> int:
    """x of the Pareto plot; runs older than ``encoder_trainable_params`` fall back to all trainable parameters."""
    trained = m.encoder_params_trained
    return m.trainable_params if trained is None else trained


def _interval_label(kinds: set[str]) -> str:
    names = {"seeds": "± std across seeds", "bootstrap": "95 % bootstrap CI of the mean over test cases"}
    return "; ".join(names[k] for k in sorted(kinds) if k in names) or "none"


def write_comparison(
    comparison: Comparison, out_dir: str | os.PathLike[str], title: str | None = None
) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv``, ``comparison.tex`` and ``pareto.png`` to ``out_dir``, each
    atomically, and return their paths by kind (``md``, ``csv``, ``tex``, ``png``)."""
    out = Path(out_dir)
    paths = {kind: out / f"comparison.{kind}" for kind in ("md", "csv", "tex")} | {"png": out / "pareto.png"}
    write_text_atomic(paths["md"], render_markdown(comparison, title))
    write_text_atomic(paths["csv"], render_csv(comparison))
    write_text_atomic(paths["tex"], render_latex(comparison, title))
    plotted = [m for m in comparison.methods if m.mean["dice"] is not None]
    decoder = {m.decoder_params for m in plotted}
    plot_pareto(
        paths["png"],
        labels=[m.name for m in plotted],
        encoder_params=[_encoder_params(m) for m in plotted],
        dice=[m.mean["dice"] for m in plotted],
        dice_interval=[m.dice_interval for m in plotted],
        interval_label=_interval_label({m.dice_interval_kind for m in plotted}),
        decoder_params=decoder.pop() if len(decoder) == 1 and None not in decoder else None,
        title=title,
    )
    return paths
