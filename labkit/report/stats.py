"""Uncertainty over seeds: mean, sd and a 95 % confidence interval per configuration, and paired
differences between two arms of a sweep (same seed = same data order and initialisation).

Intervals are Student-t intervals of the mean from SciPy (``scipy.stats.ttest_1samp`` /
``ttest_rel``): with the 3-5 seeds a CPU study affords, a bootstrap would resample too few
values to be trusted, and the t interval is what a reader can recompute by hand. A paired
difference cancels what the arms share (the seed's data order and initial weights), so it is
far tighter than comparing two unpaired means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from labkit.report.jobs import Job, ReportError
from labkit.report.table import accuracy_key, format_value, swept_keys
from labkit.run_folder import FINISHED

CONFIDENCE = 0.95
#: job states whose numbers are results (a diverged run's accuracy is a measurement too)
RESULT_STATES = FINISHED


def is_replicate_key(key: str) -> bool:
    """Seeds are repetitions, not a factor: statistics are taken over them."""
    return key.split(".")[-1].endswith("seed")


@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values with their sample sd and the t interval of the mean (None for n < 2)."""

    n: int
    mean: float
    sd: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def half_width(self) -> float:
        return 0.0 if self.low is None or self.high is None else (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """Mean, sd (n - 1) and the ``confidence`` t interval of the mean of ``values``."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("no values to estimate from")
    mean = math.fsum(values) / n
    if n < 2:
        return Estimate(n, mean)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    if sd == 0:  # identical values: a zero-width interval (SciPy would return NaN)
        return Estimate(n, mean, 0.0, mean, mean)
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return Estimate(n, mean, sd, float(interval.low), float(interval.high))


def geometric_estimate(values: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """The geometric mean of positive ``values`` with the t interval of the mean of their
    logarithms, mapped back (``sd`` is that of the logarithms). For losses that span orders of
    magnitude and are drawn on a log axis: an arithmetic interval there reaches below zero."""
    logs = estimate([math.log(v) for v in values], confidence)
    if logs.low is None or logs.high is None:
        return Estimate(logs.n, math.exp(logs.mean))
    return Estimate(logs.n, math.exp(logs.mean), logs.sd, math.exp(logs.low), math.exp(logs.high))


def paired_estimate(baseline: Sequence[float], arm: Sequence[float],
                    confidence: float = CONFIDENCE) -> Estimate:
    """The mean of ``arm - baseline`` over pairs, with its paired t interval."""
    differences = [a - b for a, b in zip(arm, baseline, strict=True)]
    base = estimate(differences, confidence)
    if base.n < 2 or base.sd == 0:
        return base
    interval = stats.ttest_rel(arm, baseline).confidence_interval(confidence)
    return Estimate(base.n, base.mean, base.sd, float(interval.low), float(interval.high))


def results(jobs: Sequence[Job], key: str | None = None) -> list[Job]:
    """Jobs with a number under ``key`` (default: the report's accuracy) and a result state."""
    key = key or accuracy_key(jobs)
    return [j for j in jobs if j.status in RESULT_STATES and isinstance(j.summary.get(key), int | float)
            and not isinstance(j.summary.get(key), bool)]


def factor_keys(jobs: Sequence[Job]) -> list[str]:
    """The swept keys that are factors (everything but the seeds)."""
    return [k for k in swept_keys(jobs) if not is_replicate_key(k)]


def replicate_keys(jobs: Sequence[Job]) -> list[str]:
    return [k for k in swept_keys(jobs) if is_replicate_key(k)]


def _values(job: Job, keys: Sequence[str]) -> tuple[str, ...]:
    return tuple(format_value(job.overrides.get(k)) for k in keys)


@dataclass
class SeedRow:
    """One configuration (the factors' values) and its metric over seeds (in %)."""

    values: tuple[str, ...]
    estimate: Estimate


def over_seeds(jobs: Sequence[Job], key: str | None = None) -> tuple[list[str], list[SeedRow]]:
    """The factor keys and one row per configuration with the mean, sd and CI of ``key`` (in %)."""
    key = key or accuracy_key(jobs)
    factors = factor_keys(jobs)
    groups: dict[tuple[str, ...], list[float]] = {}
    for job in results(jobs, key):
        groups.setdefault(_values(job, factors), []).append(100 * float(job.summary[key]))
    return factors, [SeedRow(values, estimate(accs)) for values, accs in groups.items()]


@dataclass
class Comparison:
    """``arm`` against ``baseline`` of one key at fixed values of the other factors (``context``),
    paired over seeds: differences in percentage points."""

    key: str
    baseline: str
    arm: str
    context: dict[str, str]
    difference: Estimate
    seeds: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        """The comparison in words, saying whether the interval excludes zero."""
        where = ", ".join(f"{k}={v}" for k, v in self.context.items())
        head = f"{self.key}={self.arm} vs {self.baseline}" + (f" at {where}" if where else "")
        d = self.difference
        if d.n < 2:
            return (f"{head}: {d.mean:+.2f} points from {d.n} pair; one seed gives no interval "
                    f"(sweep trainer.seed=0,1,2)")
        verdict = (f"the interval excludes zero: {self.arm} is {'higher' if d.mean > 0 else 'lower'}"
                   if d.excludes_zero else "the interval includes zero: no difference shown at this "
                   "number of seeds")
        return (f"{head}: {d.mean:+.2f} points, 95 % CI [{d.low:+.2f}, {d.high:+.2f}] over {d.n} "
                f"paired seeds; {verdict}")


def compare(jobs: Sequence[Job], key: str, metric: str | None = None) -> list[Comparison]:
    """Every value of ``key`` against its baseline (false for a flag, else the first value swept)
    at each combination of the other factors, paired by the seeds' values."""
    metric = metric or accuracy_key(jobs)
    done = [j for j in results(jobs, metric) if key in j.overrides]
    raw = [j.overrides[key] for j in done]
    levels = list(dict.fromkeys(format_value(v) for v in raw))
    if len(levels) < 2:
        return []
    baseline = "false" if all(isinstance(v, bool) for v in raw) and "false" in levels else levels[0]
    others = [k for k in factor_keys(jobs) if k != key]
    seeds = replicate_keys(jobs)
    cells: dict[tuple[str, ...], dict[str, dict[tuple[str, ...], float]]] = {}
    for job in done:
        cell = cells.setdefault(_values(job, others), {})
        cell.setdefault(format_value(job.overrides[key]), {})[_values(job, seeds)] = \
            100 * float(job.summary[metric])
    comparisons = []
    for context, arms in cells.items():
        base = arms.get(baseline, {})
        for level in levels:
            if level == baseline or level not in arms:
                continue
            paired = [s for s in arms[level] if s in base]
            if not paired:
                continue
            comparisons.append(Comparison(
                key, baseline, level, dict(zip(others, context, strict=True)),
                paired_estimate([base[s] for s in paired], [arms[level][s] for s in paired]),
                [", ".join(s) for s in paired]))
    return comparisons


def compare_columns(jobs: Sequence[Job], baseline: str, arm: str, label: str) -> list[Comparison]:
    """Two numbers of the same job (distill.py: the distilled vs the baseline student, trained from
    one initialisation on one data order), paired within each job, per configuration."""
    factors = factor_keys(jobs)
    groups: dict[tuple[str, ...], tuple[list[float], list[float]]] = {}
    for job in results(jobs, arm):
        if isinstance(job.summary.get(baseline), int | float):
            base, other = groups.setdefault(_values(job, factors), ([], []))
            base.append(100 * float(job.summary[baseline]))
            other.append(100 * float(job.summary[arm]))
    return [Comparison(label, baseline, arm, dict(zip(factors, values, strict=True)),
                       paired_estimate(base, other)) for values, (base, other) in groups.items()]


def swept_flags(jobs: Sequence[Job]) -> list[str]:
    """Factor keys whose values are booleans: compared automatically."""
    done = results(jobs)
    flags = []
    for key in factor_keys(jobs):
        values = [j.overrides[key] for j in done if key in j.overrides]
        if values and all(isinstance(v, bool) for v in values):
            flags.append(key)
    return flags


def comparisons(jobs: Sequence[Job], keys: Sequence[str] = ()) -> list[Comparison]:
    """The paired comparisons of a report: ``keys`` (``--compare``), every swept flag, and the
    distilled vs the baseline student when the jobs are distill.py's."""
    factors = factor_keys(jobs)
    for key in keys:
        if key not in factors:
            raise ReportError(f"--compare {key}: not a swept key of these jobs; swept: "
                              f"{', '.join(factors) or 'none'}")
    found: list[Comparison] = []
    for key in dict.fromkeys([*keys, *swept_flags(jobs)]):
        found += compare(jobs, key)
    if results(jobs, "student_distill_test_acc"):
        found += compare_columns(jobs, "student_baseline_test_acc", "student_distill_test_acc",
                                 "distilled vs baseline student")
    return found


def has_seeds(jobs: Sequence[Job]) -> bool:
    """True when some configuration was run with more than one seed."""
    return any(row.estimate.n > 1 for row in over_seeds(jobs)[1]) if accuracy_key(jobs) else False


def estimate_cells(e: Estimate) -> list[str]:
    """``n``, mean, sd and the interval as table cells (percent)."""
    if e.n < 2:
        return [str(e.n), f"{e.mean:.2f}", "-", "-"]
    return [str(e.n), f"{e.mean:.2f}", f"{e.sd:.2f}", f"[{e.low:.2f}, {e.high:.2f}]"]


def seeds_table(jobs: Sequence[Job]) -> tuple[list[str], list[list[str]]] | None:
    """Header and cells of the over-seeds table, None when nothing was repeated."""
    if not has_seeds(jobs):
        return None
    factors, rows = over_seeds(jobs)
    name = str(accuracy_key(jobs)).replace("_", " ")
    header = [*factors, "seeds", f"{name} % mean", "sd", "95 % CI"]
    return header, [[*row.values, *estimate_cells(row.estimate)] for row in rows]


@dataclass
class Uncertainty:
    """The report's uncertainty section: the over-seeds table and the paired comparisons."""

    seeds: tuple[list[str], list[list[str]]] | None
    comparisons: list[Comparison]

    def markdown(self) -> list[str]:
        lines: list[str] = []
        if self.seeds:
            header, cells = self.seeds
            n_keys = len(header) - 4
            lines += ["## Over seeds", "",
                      "Mean, standard deviation and 95 % confidence interval (Student t) of the mean over "
                      "the seeds of each configuration, in %.", "",
                      "| " + " | ".join(header) + " |",
                      "|" + "|".join(":--" if i < n_keys else "--:" for i in range(len(header))) + "|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
            lines.append("")
        if self.comparisons:
            lines += ["## Paired comparisons", "",
                      "Difference in percentage points, paired by seed (same data order and "
                      "initialisation), with its 95 % confidence interval.", ""]
            lines += [f"- {c.sentence()}" for c in self.comparisons]
            lines.append("")
        return lines

    def print(self, console: Any) -> None:
        """The same on the console: a rich table and one line per comparison."""
        if self.seeds:
            from rich.table import Table

            header, cells = self.seeds
            table = Table(title="over seeds (95 % CI of the mean)")
            for i, name in enumerate(header):
                table.add_column(name, justify="left" if i < len(header) - 4 else "right")
            for row in cells:
                table.add_row(*row)
            console.print(table)
        for c in self.comparisons:
            console.print(f"paired: {c.sentence()}", highlight=False)


def uncertainty(jobs: Sequence[Job], keys: Sequence[str] = ()) -> Uncertainty:
    """What the report shows about uncertainty for ``jobs`` (``keys``: ``--compare``)."""
    return Uncertainty(seeds_table(jobs) if accuracy_key(jobs) else None,
                       comparisons(jobs, keys) if accuracy_key(jobs) else [])
