"""The report's figures read right: categories as points without a connecting line, numbers on a
line, a distillation study's teacher and baseline as reference lines, and every paired comparison
as a forest plot (one row per arm, a line at zero). Checked on the matplotlib Axes themselves."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from rich.console import Console

from labkit.report import build_report, load_jobs
from labkit.report.cli import main
from labkit.report.distill import find_distill_jobs, method_results, write_methods_report
from labkit.report.figures import (
    TRAIN_LOSS,
    draw_accuracy_vs,
    is_categorical,
    make_figures,
    reference_levels,
    x_axis_keys,
)
from labkit.report.forest import ForestRow, comparison_rows, draw_forest
from labkit.report.loss_curves import mean_curve
from labkit.report.stats import comparisons, estimate
from labkit.tracking.figures import pyplot

from .test_report import PNG, completed, make_job

#: student test accuracy (%) per method and seed; the baseline of seed s is BASELINE[s]
BASELINE = [88.0, 89.0, 90.0]
GAINS = {"kd": [0.5, 0.7, 0.3], "fitnet": [1.5, 1.2, 1.8], "at": [-3.0, -3.5, -2.5]}
TEACHER = 93.0


@pytest.fixture
def methods_study(tmp_path):
    """distill.py jobs: three methods x three seeds, each paired with its seed's baseline."""
    folder = tmp_path / "methods"
    n = 0
    for method, gains in GAINS.items():
        for seed, gain in enumerate(gains):
            job = make_job(folder, str(n), [f"distill.method={method}", f"trainer.seed={seed}"], {
                "status": "completed", "teacher_test_acc": TEACHER / 100, "seed": seed, "method": method,
                "student_baseline_test_acc": BASELINE[seed] / 100,
                "student_distill_test_acc": (BASELINE[seed] + gain) / 100, "method_label": method})
            (job / ".hydra" / "config.yaml").write_text(
                yaml.safe_dump({"optimized_metric": "student_distill_best_val_acc"}))
            n += 1
    return folder


@pytest.fixture
def axes():
    plt = pyplot()
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def data_lines(ax):
    """Every Line2D of the axes but the reference lines (teacher, baseline, zero)."""
    return [line for line in ax.lines if line.get_gid() not in ("reference", "zero")]


def test_what_counts_as_a_category():
    assert is_categorical(["kd", "at"]) and is_categorical([[1, 1], [2, 2]]) and is_categorical([True, False])
    assert is_categorical([2, "wide"]) and not is_categorical([2, 4, 8]) and not is_categorical([0.5, 4])


def test_a_categorical_sweep_has_points_and_no_connecting_line(methods_study, axes):
    jobs = load_jobs(methods_study)
    assert x_axis_keys(jobs) == ["distill.method"]
    draw_accuracy_vs(axes, jobs, "distill.method")
    [bars] = axes.containers  # one series: the methods, mean and CI over the seeds
    data = bars.lines[0]
    assert data.get_linestyle() == "None" and data.get_marker() == "o"
    assert list(data.get_xdata()) == [0, 1, 2]
    assert list(data.get_ydata()) == pytest.approx([89.5, 90.5, 86.0])  # 89 + mean gain
    assert all(line.get_linestyle() == "None" for line in data_lines(axes))
    assert [t.get_text() for t in axes.get_xticklabels()] == ["kd", "fitnet", "at"]


def test_a_distillation_figure_draws_the_teacher_and_the_baseline(methods_study, axes):
    jobs = load_jobs(methods_study)
    draw_accuracy_vs(axes, jobs, "distill.method")
    references = {line.get_label().split(":")[0]: line
                  for line in axes.lines if line.get_gid() == "reference"}
    assert set(references) == {"teacher", "baseline student"}
    for name, level in (("teacher", TEACHER), ("baseline student", sum(BASELINE) / 3)):
        line = references[name]
        assert line.get_linestyle() != "None" and list(line.get_ydata()) == pytest.approx([level, level])
        assert f"{level:.2f} %" in line.get_label()


def test_a_reference_that_changes_along_the_axis_is_no_horizontal_line(tmp_path):
    for n, width in enumerate((8, 16)):  # the student's width changes the baseline itself
        job = make_job(tmp_path, str(n), [f"student.width={width}"], {
            "status": "completed", "teacher_test_acc": 0.9, "student_baseline_test_acc": 0.8 + 0.05 * n,
            "student_distill_test_acc": 0.82 + 0.05 * n})
        (job / ".hydra" / "config.yaml").write_text("optimized_metric: student_distill_best_val_acc\n")
    assert [r.name for r in reference_levels(load_jobs(tmp_path), "student.width")] == ["teacher"]


def test_numeric_sweeps_keep_their_line_and_several_series_sit_side_by_side(tmp_path, axes):
    for n, (depth, residual) in enumerate((d, r) for d in (2, 4, 8) for r in ("false", "true")):
        make_job(tmp_path / "depth", str(n), [f"model.depth={depth}", f"model.residual={residual}"],
                 completed(0.9 + 0.01 * n))
    draw_accuracy_vs(axes, load_jobs(tmp_path / "depth"), "model.depth")
    assert [line.get_linestyle() for line in data_lines(axes) if len(line.get_xdata()) == 3] == ["-", "-"]

    plt = pyplot()
    fig, ax = plt.subplots()
    for n, (layers, norm) in enumerate((lo, nm) for lo in ("[1,1]", "[2,2]") for nm in ("false", "true")):
        make_job(tmp_path / "layers", str(n), [f"model.layers={layers}", f"model.norm={norm}"],
                 completed(0.5 + 0.1 * n))
    draw_accuracy_vs(ax, load_jobs(tmp_path / "layers"), "model.layers")
    xs = [list(c.lines[0].get_xdata()) for c in ax.containers]
    plt.close(fig)
    assert len(xs) == 2 and all(line.get_linestyle() == "None" for line in data_lines(ax))
    assert xs[0][0] < 0 < xs[1][0] and xs[0][1] < 1 < xs[1][1]  # dodged around each category


def test_a_lone_flag_is_a_categorical_axis(tmp_path, axes):
    for n, residual in enumerate(("false", "true", "false", "true")):
        make_job(tmp_path, str(n), [f"model.residual={residual}", f"trainer.seed={n // 2}"], completed(0.9))
    jobs = load_jobs(tmp_path)
    assert x_axis_keys(jobs) == ["model.residual"]
    draw_accuracy_vs(axes, jobs, "model.residual")
    assert [t.get_text() for t in axes.get_xticklabels()] == ["false", "true"]
    assert all(line.get_linestyle() == "None" for line in data_lines(axes))


def forest_rows_of(ax):
    return [t.get_text() for t in ax.get_yticklabels()]


def zero_lines(ax):
    return [line for line in ax.lines if line.get_gid() == "zero"]


def test_forest_plot_has_one_row_per_arm_and_a_line_at_zero(axes):
    rows = [ForestRow("kd", estimate([0.5, 0.7, 0.3])), ForestRow("at", estimate([-3.0, -3.5, -2.5])),
            ForestRow("one seed", estimate([1.0]))]
    draw_forest(axes, rows)
    assert forest_rows_of(axes) == ["kd", "at", "one seed"]
    assert len(axes.containers) == 3
    for container, row in zip(axes.containers, rows, strict=True):
        point = container.lines[0]
        assert point.get_linestyle() == "None"
        assert list(point.get_xdata()) == pytest.approx([row.difference.mean])
    assert axes.containers[2].has_xerr is False  # one seed: a point and no interval
    [zero] = zero_lines(axes)
    assert list(zero.get_xdata()) == [0, 0]
    low, high = axes.get_xlim()
    assert low < -3.5 and high > 0.7  # every interval inside the frame


def test_paired_comparisons_of_the_report_are_forest_plots(tmp_path):
    n = 0
    for depth in (2, 8):
        for residual in ("false", "true"):
            for seed in range(3):
                acc = 0.9 - 0.01 * depth * (residual == "false") + 0.002 * seed
                make_job(tmp_path, str(n), [f"model.depth={depth}", f"model.residual={residual}",
                                            f"trainer.seed={seed}"], completed(acc))
                n += 1
    found = comparisons(load_jobs(tmp_path), ["model.depth"])
    depth = [c for c in found if c.key == "model.depth"]
    title, rows = comparison_rows(depth)
    assert title == "model.depth: 8 − 2, paired by seed"
    assert [r.label for r in rows] == ["residual=false", "residual=true"]
    residual = [c for c in found if c.key == "model.residual"]
    title, rows = comparison_rows(residual)
    assert title == "model.residual: true − false, paired by seed"
    assert [r.label for r in rows] == ["depth=2", "depth=8"]
    assert rows[1].difference.mean == pytest.approx(8.0)  # residual - plain at depth 8, in points

    report = build_report(tmp_path, console=Console(file=io.StringIO()), compare=["model.depth"])
    names = {p.name for p in report.figures}
    assert {"paired_model.depth.png", "paired_model.residual.png", "test_acc_vs_model.depth.png"} <= names
    for figure in report.figures:
        assert figure.read_bytes().startswith(PNG) and f"]({figure.name})" in report.markdown.read_text()


def test_the_methods_table_has_its_forest_plot(methods_study, capsys, tmp_path):
    summaries = [job.summary for job in find_distill_jobs([methods_study])]
    results = method_results(summaries)
    assert [m.label for m in results] == ["fitnet", "kd", "at"]  # the table's order: best first
    assert results[0].difference.mean == pytest.approx(1.5)
    # kd closes 0.5 of a 5-point gap, 0.7 of 4, 0.3 of 3 (teacher 93 %, baselines 88, 89, 90 %)
    assert results[1].gaps_closed == pytest.approx([10.0, 17.5, 10.0])

    md = write_methods_report(methods_study, summaries)
    assert (methods_study / "methods_forest.png").read_bytes().startswith(PNG)
    assert "](methods_forest.png)" in md.read_text()
    kd_row = next(line for line in md.read_text().splitlines() if line.startswith("| kd |"))
    assert kd_row.endswith("| 3 of 3 | 12.50 ± 4.33 |")  # wins, then gap closed (mean ± sd)
    assert main(["distill", str(methods_study), "-o", str(tmp_path / "forest.png")]) == 0
    assert (tmp_path / "forest.png").read_bytes().startswith(PNG) and "wrote" in capsys.readouterr().out
    # and the jobs report of the same sweep: the accuracy figure and the distilled - baseline forest
    report = build_report(methods_study, console=Console(file=io.StringIO()))
    assert {"test_acc_vs_distill.method.png", "paired_distilled_vs_baseline_student.png"} <= {
        p.name for p in report.figures}


def test_a_depth_study_draws_final_training_loss_and_seed_averaged_loss_curves(tmp_path):
    """Degradation is about fitting: the report draws the final training loss against the swept
    value (mean and CI over seeds) and the training-loss curves averaged over seeds, one panel per
    variant, one line per depth."""
    folder = tmp_path / "depth"
    n = 0
    for layers in ("[1,1]", "[4,4]"):
        for residual in ("false", "true"):
            for seed in (0, 1):
                loss = 0.01 * (1 + seed) * (50 if layers == "[4,4]" and residual == "false" else 1)
                job = make_job(folder, str(n), [f"model.layers={layers}", f"model.residual={residual}",
                                                f"trainer.seed={seed}"],
                               {**completed(0.8), "final_train_loss": loss}, epochs=3)
                rows = [{"epoch": e, "train_loss": loss * (4 - e) + seed, "val_acc": 0.5} for e in (1, 2, 3)]
                (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
                n += 1
    jobs = load_jobs(folder)
    plt = pyplot()
    fig, ax = plt.subplots()
    draw_accuracy_vs(ax, jobs, "model.layers", TRAIN_LOSS)
    plain = next(c for c in ax.containers if "residual=false" in c.get_label())
    # geometric means over the seeds (losses 0.01 and 0.02; 0.5 and 1.0)
    assert list(plain.lines[0].get_ydata()) == pytest.approx([0.02 ** 0.5 / 10, 0.5 ** 0.5])
    plt.close(fig)
    epochs, estimates = mean_curve([j for j in jobs if j.overrides["model.layers"] == [1, 1]
                                    and j.overrides["model.residual"] is False])
    losses = [(0.03, 1.06), (0.02, 1.04), (0.01, 1.02)]  # per epoch, seeds 0 and 1
    assert epochs == [1, 2, 3]
    assert [e.mean for e in estimates] == pytest.approx([(a * b) ** 0.5 for a, b in losses])
    assert all(0 < e.low < e.mean < e.high for e in estimates)  # an interval that stays positive
    names = {p.name for p in make_figures(jobs, folder)}
    assert {"train_loss_vs_model.layers.png", "train_loss_curves_by_model.layers.png"} <= names
    assert all((folder / name).read_bytes().startswith(PNG) for name in names)
