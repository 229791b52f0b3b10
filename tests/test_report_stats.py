"""Uncertainty in the report: mean, sd and 95 % CI over seeds, paired differences, on generated
run folders whose numbers are known, checked against a hand computation."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from labkit.report import build_report, load_jobs
from labkit.report.cli import main
from labkit.report.figures import accuracy_series
from labkit.report.stats import comparisons, estimate, over_seeds, paired_estimate

from .test_report import completed, make_job

#: the 97.5 % quantile of Student's t with 2 degrees of freedom (printed tables: 4.303)
T_975_DF2 = 4.302652729911275

# test accuracy (%) per depth, arm and seed: residual is 3, 4, 3 points better at depth 8
ACC = {
    (2, False): [90.0, 92.0, 91.0], (2, True): [90.5, 91.5, 91.0],
    (8, False): [80.0, 82.0, 81.0], (8, True): [83.0, 86.0, 84.0],
}


@pytest.fixture
def seeded_study(tmp_path):
    folder = tmp_path / "multirun"
    n = 0
    for (depth, residual), accs in ACC.items():
        for seed, acc in enumerate(accs):
            make_job(folder, str(n), [f"model.depth={depth}", f"model.residual={str(residual).lower()}",
                                      f"trainer.seed={seed}"], completed(acc / 100))
            n += 1
    return folder


def by_hand(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sd and the t interval: mean -/+ t(0.975, n-1) * sd / sqrt(n)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975_DF2 * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_estimate_matches_the_hand_computation():
    e = estimate([90.0, 92.0, 91.0])
    mean, sd, low, high = by_hand([90.0, 92.0, 91.0])
    assert (e.n, e.mean, e.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert (e.low, e.high) == (pytest.approx(low), pytest.approx(high))
    assert (low, high) == pytest.approx((91.0 - 2.4841, 91.0 + 2.4841), abs=1e-4)
    assert estimate([5.0]).low is None and estimate([2.0, 2.0]).half_width == 0.0


def test_paired_difference_is_tighter_than_the_unpaired_means():
    plain, residual = ACC[(8, False)], ACC[(8, True)]
    d = paired_estimate(plain, residual)
    mean, sd, low, high = by_hand([r - p for p, r in zip(plain, residual, strict=True)])  # 3, 4, 3
    assert (d.mean, d.sd, d.low, d.high) == pytest.approx((mean, sd, low, high))
    assert (low, high) == pytest.approx((1.8991, 4.7676), abs=1e-4) and d.excludes_zero
    unpaired = estimate(residual).half_width + estimate(plain).half_width
    assert d.half_width < unpaired


def test_report_rows_and_paired_comparisons(seeded_study):
    jobs = load_jobs(seeded_study)
    factors, rows = over_seeds(jobs)
    assert factors == ["model.depth", "model.residual"]
    row = {r.values: r.estimate for r in rows}[("8", "true")]
    assert row.n == 3 and (row.low, row.high) == pytest.approx(by_hand(ACC[(8, True)])[2:])

    found = {c.context["model.depth"]: c for c in comparisons(jobs)}  # a swept flag: automatic
    deep, shallow = found["8"], found["2"]
    assert (deep.baseline, deep.arm, deep.difference.n) == ("false", "true", 3)
    assert (deep.difference.low, deep.difference.high) == pytest.approx((1.8991, 4.7676), abs=1e-4)
    assert "excludes zero: true is higher" in deep.sentence()
    assert "includes zero" in shallow.sentence() and not shallow.difference.excludes_zero

    out = io.StringIO()
    report = build_report(seeded_study, console=Console(file=out, width=200), figures=True)
    text = report.markdown.read_text()
    assert "## Over seeds" in text and "| 8 | true | 3 | 84.33 | 1.53 | [80.54, 88.13] |" in text
    assert ("model.residual=true vs false at model.depth=8: +3.33 points, 95 % CI [+1.90, +4.77] over 3 "
            "paired seeds; the interval excludes zero") in text
    assert "paired: model.residual=true vs false at model.depth=8" in out.getvalue()
    _, series = accuracy_series(jobs, "model.depth")  # the figure's error bars are the CI
    line = {s.label: s for s in series}["residual=true"]
    assert line.errors[line.xs.index(8)] == pytest.approx(estimate(ACC[(8, True)]).half_width)


def test_compare_option_pairs_any_swept_key(seeded_study, capsys):
    assert main([str(seeded_study), "--no-figures", "--compare", "model.depth"]) == 0
    text = (seeded_study / "report.md").read_text()
    assert "model.depth=8 vs 2 at model.residual=false: -10.00 points" in text
    assert main([str(seeded_study), "--no-figures", "--compare", "model.width"]) == 2
    assert "--compare model.width: not a swept key" in capsys.readouterr().err


def test_one_seed_gives_no_interval_and_says_so(tmp_path):
    for i, residual in enumerate(("false", "true")):
        make_job(tmp_path, str(i), [f"model.residual={residual}"], completed(0.9 + 0.01 * i))
    jobs = load_jobs(tmp_path)
    [only] = comparisons(jobs)
    assert only.difference.n == 1 and "one seed gives no interval" in only.sentence()
    text = build_report(tmp_path, console=Console(file=io.StringIO()), figures=False).markdown.read_text()
    assert "## Over seeds" not in text and "## Paired comparisons" in text


def test_distilled_vs_baseline_student_is_paired_within_each_job(tmp_path):
    gains = [(0.90, 0.92), (0.91, 0.92), (0.89, 0.92)]  # +2, +1, +3 points
    for seed, (base, distilled) in enumerate(gains):
        make_job(tmp_path, str(seed), [f"trainer.seed={seed}"], {
            "status": "completed", "student_baseline_test_acc": base, "student_distill_test_acc": distilled,
            "teacher_test_acc": 0.95})
    [c] = [c for c in comparisons(load_jobs(tmp_path)) if c.key == "distilled vs baseline student"]
    mean, _, low, high = by_hand([2.0, 1.0, 3.0])
    assert (c.difference.mean, c.difference.low, c.difference.high) == pytest.approx((mean, low, high))
    assert c.difference.excludes_zero is (low > 0)
