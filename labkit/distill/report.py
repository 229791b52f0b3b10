"""The comparison a reviewer reads: comparison.md and comparison.png of one distillation job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from labkit.tracking.figures import pyplot, save_figure

LABELS = {
    "teacher": "teacher",
    "student_baseline": "student baseline",
    "student_distill": "student distilled",
}


def gap_closed(teacher_acc: float, baseline_acc: float, distilled_acc: float) -> float | None:
    """Share (%) of the teacher-baseline accuracy gap the distilled student recovers;
    None when the teacher is not better than the baseline (no gap to close)."""
    gap = teacher_acc - baseline_acc
    return None if gap <= 0 else 100.0 * (distilled_acc - baseline_acc) / gap


def _fmt_gap(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def method_name(summary: dict[str, Any]) -> str:
    """The method and its settings, e.g. ``kd (T=4, alpha=0.5); CE x 0.5``."""
    if summary.get("method_label"):
        return str(summary["method_label"])
    # a stage or job from before methods
    return f"kd (T={summary.get('temperature', 0):g}, alpha={summary.get('alpha', 0):g})"


# each method's term in the distilled student's loss (conf/distill.yaml names the weights)
FORMULAS = {
    "kd": "kd: alpha * T^2 * KL(teacher || student at T)",
    "fitnet": "fitnet: weight * MSE(connector(student hint), teacher hint)",
    "at": "at: weight * sum over points of mean((Q_s - Q_t)^2), Q the L2-normalised attention maps",
    "rkd": "rkd: distance_weight * Huber(distances) + angle_weight * Huber(angles) of embeddings",
    "dkd": "dkd: T^2 * (alpha * KL(target/rest) + beta * KL(non-target classes)), warmed up",
    "dist": "dist: T^2 * (beta * (1 - inter-class r) + gamma * (1 - intra-class r)), r Pearson's",
}


def method_formulas(method: Any) -> str:
    """The terms of ``method`` (``kd``, ``kd+at``, ``[kd, at]``), each with its formula."""
    names = [n.strip() for n in (method.split("+") if isinstance(method, str) else map(str, method))]
    return "; ".join(FORMULAS.get(name, f"{name}: see labkit/distill/methods") for name in names)


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
    """The original lab's columns (model, test acc %, test loss, params) plus gap closed (%)."""
    teacher, baseline, distilled = (summaries[k] for k in LABELS)
    gap = gap_closed(teacher["test_acc"], baseline["test_acc"], distilled["test_acc"])
    rows = ["| model | test acc (%) | test loss | params | gap closed (%) |",
            "|---|---:|---:|---:|---:|"]
    for stage, label in LABELS.items():
        s = summaries[stage]
        name = f"{label} ({s.get('model', '?')})"
        if stage == "student_distill":
            name = f"{label}: {method_name(s)}"
        closed = {"teacher": "", "student_baseline": "0.0", "student_distill": _fmt_gap(gap)}[stage]
        rows.append(f"| {name} | {100 * s['test_acc']:.2f} | {s['test_loss']:.4f} | "
                    f"{s['params']:,} | {closed} |")
    return "\n".join(rows)


def comparison_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    distilled, baseline = summaries["student_distill"], summaries["student_baseline"]
    same_init = baseline.get("initial_weights_sha256") == distilled.get("initial_weights_sha256")
    notes = [
        f"- distilled student's loss: {distilled.get('ce_weight', 1 - distilled.get('alpha', 0)):g} x CE + "
        f"the {distilled.get('method', 'kd')} term(s) ({method_formulas(distilled.get('method', 'kd'))}; "
        f"conf/distill.yaml); teacher outputs: {distilled.get('teacher_outputs')}.",
        f"- both students started from the same initial weights: {'yes' if same_init else 'NO'} "
        f"(sha256 {baseline.get('initial_weights_sha256')} / {distilled.get('initial_weights_sha256')}).",
        f"- epochs: teacher {summaries['teacher'].get('epochs_completed')}, students "
        f"{baseline.get('epochs_completed')}; test accuracy on the "
        f"{distilled.get('test_size', '?')}-image test set; gap closed = (distilled - baseline) / "
        f"(teacher - baseline).",
    ]
    if distilled.get("connector_params"):
        notes.append(f"- params: the deployed student; {distilled['connector_params']:,} connector "
                     f"parameters trained with it ({distilled.get('training_params'):,} in training) are "
                     "not deployed.")
    if summaries["teacher"].get("reused_from"):
        notes.append(f"- teacher reused from {summaries['teacher']['reused_from']} (trained by an "
                     "earlier job).")
    if summaries["teacher"].get("status") == "loaded":
        notes.append(f"- teacher loaded from {summaries['teacher'].get('source')}, not trained here.")
    return "# Knowledge distillation\n\n" + comparison_table(summaries) + "\n\n" + "\n".join(notes) + "\n"


def plot_comparison(summaries: dict[str, dict[str, Any]], histories: dict[str, list[dict[str, Any]]],
                    path: Path) -> Path:
    """Validation accuracy per epoch of the three models, and a bar chart of test accuracy."""
    plt = pyplot()
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for stage, label in LABELS.items():
        rows = [r for r in histories.get(stage, []) if r.get("val_acc") is not None]
        if rows:
            curves.plot([r["epoch"] for r in rows], [100 * r["val_acc"] for r in rows], "-o",
                        markersize=3, label=label)
        elif summaries[stage].get("best_val_acc") is not None:  # a loaded teacher: one value
            curves.axhline(100 * summaries[stage]["best_val_acc"], linestyle="--", label=f"{label} (loaded)")
    curves.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    curves.grid(alpha=0.3)
    curves.legend()
    accs = [100 * summaries[s]["test_acc"] for s in LABELS]
    names = [*list(LABELS.values())[:2], f"distilled: {summaries['student_distill'].get('method', 'kd')}"]
    drawn = bars.bar(names, accs, color=["tab:blue", "tab:orange", "tab:green"])
    bars.bar_label(drawn, fmt="%.2f")
    low = min(accs)
    bars.set_ylim(max(0.0, low - max(2.0, 0.5 * (max(accs) - low))), min(100.0, max(accs) + 1.0))
    bars.set(ylabel="test accuracy (%)", title="test accuracy")
    return save_figure(fig, path)


def write_comparison(run_dir: Path, summaries: dict[str, dict[str, Any]],
                     histories: dict[str, list[dict[str, Any]]], console: Console | None = None) -> None:
    """Write comparison.md and comparison.png into the run directory and show the table."""
    text = comparison_markdown(summaries)
    (Path(run_dir) / "comparison.md").write_text(text)
    plot_comparison(summaries, histories, Path(run_dir) / "comparison.png")
    if console is not None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)
