"""Comparisons on synthetic per-image results of known truth (harness.report.compare,
harness.inference): verdicts, intervals against independent computations, code versions."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import inference
from harness.cli import main
from harness.config import RunConfig, experiment_id, experiment_identity, to_dict
from harness.errors import ConfigError
from harness.store import CORRECT_FILE

IMAGES = 2000


def _identity(method: str, **method_config) -> dict:
    config = to_dict(RunConfig(method=method, method_config=method_config))
    config["model"]["depth"] = 20
    identity = experiment_identity(config)
    return {
        "experiment_id": experiment_id(identity),
        "experiment_config": json.dumps(identity, sort_keys=True),
    }


def write_run(
    study: Path,
    method: str,
    penalty: tuple[str, float] | None,
    seed: int,
    correct: np.ndarray,
    flops: float = 8e7,
    code: str = "src abc / torch 2.14.1",
    mode: str = "deterministic",
    depth: int = 20,
) -> None:
    """One trial folder with its results row and per-image correctness."""
    name = f"{method}_d{depth}_{penalty[1] if penalty else 'v'}_s{seed}"
    folder = study / "trials" / name
    folder.mkdir(parents=True)
    key = f"test|{mode}|masked|"
    np.savez(folder / CORRECT_FILE, **{key: correct.astype(np.float32)})
    config = {penalty[0].rstrip("_"): penalty[1]} if penalty else {}
    identity = _identity(method, **config)
    if depth != 20:
        tree = json.loads(identity["experiment_config"])
        tree["model"]["depth"] = depth
        identity = {"experiment_id": experiment_id(tree), "experiment_config": json.dumps(tree)}
    row = {
        "trial_id": name,
        **identity,
        "method": method,
        "method_label": method.upper(),
        "variant": "sact",
        "dataset": "cifar10",
        "depth": depth,
        "time_penalty_name": penalty[0].rstrip("_") if penalty else "",
        "time_penalty": penalty[1] if penalty else 0.0,
        "seed": seed,
        "epochs": 10,
        "num_train": 15000,
        "num_val": 0,
        "code_version": code,
        "eval_mode": mode,
        "execution": "masked",
        "threshold": 0.5 if mode == "deterministic" else None,
        "split": "test",
        "num_images": len(correct),
        "accuracy": float(correct.mean()),
        "flops_per_image_mean": flops,
        "flops_fraction_of_vanilla": flops / 8.1e7,
        "per_image_key": key,
    }
    pd.DataFrame([row]).to_csv(folder / "results.csv", index=False)


def correctness(accuracy: float, seed: int, n: int = IMAGES) -> np.ndarray:
    """Exactly round(accuracy * n) correct images, at positions drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    out[rng.choice(n, int(round(accuracy * n)), replace=False)] = 1.0
    return out


def compare(study: Path, *flags: str, capsys) -> tuple[int, str, str]:
    code = main(["compare", str(study), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verdict_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("verdict:"))


def test_two_identical_experiments_are_equivalent_at_one_point(tmp_path, capsys):
    for seed in range(3):
        same = correctness(0.6 + 0.01 * seed, seed)
        write_run(tmp_path, "act", ("tau", 0.01), seed, same)
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, same)
    code, out, _ = compare(tmp_path, "--a", "method=pact", "--b", "method=act", capsys=capsys)
    assert code == 0
    assert "equivalent within ±1" in verdict_line(out)
    assert "+0.00 [+0.00, +0.00]" in out  # t and bootstrap: no difference at all


def test_a_three_point_shift_with_small_spread_is_better(tmp_path, capsys):
    for seed in range(3):
        base = 0.55 + 0.002 * seed
        write_run(tmp_path, "act", ("tau", 0.01), seed, correctness(base, seed))
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, correctness(base + 0.03, 10 + seed))
    code, out, _ = compare(
        tmp_path, "--a", "method=pact", "--b", "method=act", "--margin", "1", capsys=capsys
    )
    assert code == 0 and verdict_line(out).startswith("verdict: A better")
    code, out, _ = compare(tmp_path, "--a", "method=act", "--b", "method=pact", capsys=capsys)
    assert verdict_line(out).startswith("verdict: B better")
    # The paired t-interval against an independent computation: differences exactly 3 points.
    assert "A - B per seed: -3.00, -3.00, -3.00" in out


def test_two_noisy_seeds_are_inconclusive_and_say_how_many_seeds_would_decide(tmp_path, capsys):
    for seed, (a, b) in enumerate([(0.50, 0.53), (0.56, 0.52)]):
        write_run(tmp_path, "act", ("tau", 0.01), seed, correctness(b, seed))
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, correctness(a, 10 + seed))
    code, out, _ = compare(tmp_path, "--a", "method=pact", "--b", "method=act", capsys=capsys)
    assert code == 0 and verdict_line(out).startswith("verdict: inconclusive")
    # differences -3 and +4: t(0.975, 1) = 12.706, sd = 4.95, se = 3.5
    half = 12.706204736 * statistics.stdev([-3.0, 4.0]) / math.sqrt(2)
    assert f"+0.50 [{0.5 - half:+.2f}, {0.5 + half:+.2f}]" in out


def test_seeds_that_agree_but_few_test_images_say_the_images_are_what_is_missing(tmp_path, capsys):
    """A - B is -0.5 points at every seed (the paired t alone says equivalent within ±1), but
    on 200 test images the bootstrap over images is wide: the verdict stays inconclusive, and
    it must not claim that the seeds it already has would decide it."""
    for seed in range(3):
        write_run(tmp_path, "act", ("tau", 0.01), seed, correctness(0.505, seed, n=200))
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, correctness(0.50, 10 + seed, n=200))
    code, out, _ = compare(tmp_path, "--a", "method=pact", "--b", "method=act", capsys=capsys)
    line = verdict_line(out)
    assert code == 0 and line.startswith("verdict: inconclusive"), out
    assert "A - B per seed: -0.50, -0.50, -0.50" in out
    assert "the paired t alone would decide it at n = 3" in line
    assert "the 200 test images does not" in line and "about 3 seeds would decide" not in line


def test_mixed_code_versions_are_refused_and_allowed_with_the_flag(tmp_path, capsys):
    for seed in range(3):
        code_version = "git 1111111 / torch 2.14.1" if seed else "git 2222222+dirty / torch 2.14.1"
        same = correctness(0.6, seed)
        write_run(tmp_path, "act", ("tau", 0.01), seed, same, code=code_version)
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, same, code=code_version)
    code, out, err = compare(tmp_path, "--a", "method=pact", "--b", "method=act", capsys=capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "2 code versions" in err and "git 2222222+dirty" in err
    code, out, _ = compare(
        tmp_path, "--a", "method=pact", "--b", "method=act", "--allow-mixed-code", capsys=capsys
    )
    assert code == 0 and "git 2222222+dirty" in out
    # The report refuses to pool the seeds too, and with the flag shows a code column.
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--allow-mixed-code" in capsys.readouterr().err
    out_dir = tmp_path / "r2"
    assert main(["report", str(tmp_path), "--out", str(out_dir), "--allow-mixed-code"]) == 0
    assert "| code" in (out_dir / "paper_table.md").read_text()


def test_bootstrap_over_seeds_and_images_against_a_direct_resampling():
    """Independent check: resample seeds and images by hand with numpy; the percentile
    interval of scipy's bootstrap must agree within Monte-Carlo error."""
    rng = np.random.default_rng(3)
    a = (rng.random((3, 400)) < np.array([[0.62], [0.58], [0.60]])).astype(float)
    b = (rng.random((3, 400)) < 0.55).astype(float)
    got = inference.bootstrap_seeds_and_images(a, b)
    diff = 100 * (a - b)
    draws = []
    for _ in range(4000):
        s = rng.integers(0, 3, 3)
        i = rng.integers(0, 400, 400)
        draws.append(diff[np.ix_(s, i)].mean())
    low, high = np.percentile(draws, [2.5, 97.5])
    assert got.estimate == pytest.approx(diff.mean())
    assert got.low95 == pytest.approx(low, abs=0.6) and got.high95 == pytest.approx(high, abs=0.6)


def test_verdict_rule_at_its_boundaries():
    def interval(low90, high90, low95, high95):
        return inference.Interval(0.0, low95, high95, low90, high90, "test", 3)

    assert inference.verdict(interval(-0.9, 0.9, -1.2, 1.2), 1.0) == inference.EQUIVALENT
    assert inference.verdict(interval(-1.0, 0.5, -1.2, 0.7), 1.0) == inference.INCONCLUSIVE
    assert inference.verdict(interval(0.2, 2.5, 0.1, 2.8), 1.0) == inference.A_BETTER
    assert inference.verdict(interval(-2.5, -0.2, -2.8, -0.1), 1.0) == inference.B_BETTER
    assert inference.verdict(None, 1.0) == inference.INCONCLUSIVE


def test_matched_flops_against_the_vanilla_series_interpolates(tmp_path, capsys):
    # vanilla d14 at 5e7 FLOPs: 50%, d20 at 8e7: 56% (3 seeds each, spread +-1)
    for depth, flops, acc in ((14, 5e7, 0.50), (20, 8e7, 0.56)):
        for seed, jitter in enumerate((-0.01, 0.0, 0.01)):
            write_run(
                tmp_path,
                "resnet",
                None,
                seed,
                correctness(acc + jitter, seed),
                flops=flops,
                mode="standard",
                depth=depth,
            )
    for seed, jitter in enumerate((-0.01, 0.0, 0.01)):  # ACT at 6.5e7: vanilla there = 53%
        write_run(
            tmp_path,
            "act",
            ("tau", 0.01),
            seed,
            correctness(0.58 + jitter, 20 + seed),
            flops=6.5e7,
            mode="act",
        )
    code, out, _ = compare(tmp_path, "--a", "method=act", "--b", "vanilla", capsys=capsys)
    assert code == 0
    assert "vanilla there: 53.00" in out and "+5.00 [" in out
    assert verdict_line(out).startswith("verdict: A better")


def test_curve_gap_against_a_hand_computed_area():
    # A: (1, 50), (3, 54); B: (2, 50), (4, 50): common range [2, 3]; A - B there runs 2 -> 4
    gap, low, high = inference.curve_gap([1, 3], [50, 54], [2, 4], [50, 50])
    assert (low, high) == (2, 3) and gap == pytest.approx(3.0)


def test_bad_selectors_get_one_line(tmp_path, capsys):
    write_run(tmp_path, "act", ("tau", 0.01), 0, correctness(0.5, 0))
    for flags, message in (
        (("--a", "method", "--b", "method=act"), "is not key=value"),
        (("--a", "nokey=1", "--b", "method=act"), "unknown key 'nokey'"),
        (("--a", "method=act", "--b", "method=act", "--margin", "-1"), "--margin -1.0"),
        (("--a", "method=act", "--b", "method=sact"), "no row on the test split matches"),
    ):
        code, _, err = compare(tmp_path, *flags, capsys=capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, (flags, err)
    with pytest.raises(ConfigError, match="vanilla"):
        from harness.report.compare import run_compare

        run_compare([tmp_path], "vanilla", "method=act")


def test_the_report_makes_the_declared_comparisons_at_the_declared_margin(tmp_path):
    import yaml

    from harness.report import make_report

    for seed in range(3):
        base = 0.55 + 0.002 * seed
        write_run(tmp_path, "act", ("tau", 0.01), seed, correctness(base, seed))
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, correctness(base + 0.03, 10 + seed))
    declared = {
        "preset": "synthetic",
        "equivalence_margin": 2.0,
        "comparisons": [
            {"a": "method=pact", "b": "method=act"},
            {"a": "method=pact", "b": "vanilla"},  # no vanilla series: a reason, not a crash
        ],
        "trials": [],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(declared))
    out = tmp_path / "report"
    written = {p.name for p in make_report([tmp_path], out)}
    assert "comparisons.md" in written
    text = (out / "comparisons.md").read_text()
    assert "Margin ±2 accuracy points, declared by" in text and "study.yaml" in text
    assert "verdict: A better (margin ±2 points" in text
    assert "not computed: compare: PACT d20 lambda 0.01 (deterministic) has 0 vanilla" in text
    assert "## comparisons" in (out / "report.md").read_text()


def test_one_seed_is_inconclusive_even_when_the_images_alone_would_separate(tmp_path, capsys):
    write_run(tmp_path, "act", ("tau", 0.01), 0, correctness(0.50, 0))
    write_run(tmp_path, "pact", ("lambda_", 0.01), 0, correctness(0.60, 1))
    code, out, _ = compare(tmp_path, "--a", "method=pact", "--b", "method=act", capsys=capsys)
    assert code == 0
    # the image bootstrap alone lies far above 0 (a 10-point gap on 2,000 images) ...
    bootstrap = next(line for line in out.splitlines() if "bootstrap seeds x images" in line)
    low = float(bootstrap.split("[")[1].split(",")[0])
    assert low > 5
    # ... but one seed says nothing about training noise
    assert verdict_line(out).startswith("verdict: inconclusive") and "one seed" in out


def test_linear_interval_of_a_difference_is_welchs_interval():
    a = np.array([51.0, 53.5, 52.0, 55.0])
    b = np.array([50.0, 49.0, 52.5])
    ours = inference.linear_interval([1.0, -1.0], [a, b], "test")
    from scipy import stats

    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert ours.estimate == pytest.approx(a.mean() - b.mean())
    assert (ours.low95, ours.high95) == pytest.approx((welch.low, welch.high))
    welch90 = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.90)
    assert (ours.low90, ours.high90) == pytest.approx((welch90.low, welch90.high))
    assert inference.linear_interval([1.0, -1.0], [a, b[:1]], "test") is None


def test_the_curve_gap_is_linear_in_the_point_means_with_hand_computed_weights():
    # A: (1, a1), (3, a2); B: (2, b1), (4, b2); over [2, 3] the mean of (x - 1) / 2 is 0.75
    # and of (x - 2) / 2 is 0.25, so gap = 0.25 a1 + 0.75 a2 - 0.75 b1 - 0.25 b2.
    def gap(means):
        return inference.curve_gap([1, 3], means[:2], [2, 4], means[2:])[0]

    weights = inference.linear_weights(gap, 4)
    assert weights == pytest.approx([0.25, 0.75, -0.75, -0.25])
    with pytest.raises(ValueError, match="not linear"):
        inference.linear_weights(lambda m: m[0] * m[1] + 1.0, 2)


def test_seeds_needed_of_one_group_equals_the_paired_rule():
    d = [0.4, 1.9, -0.6]
    assert inference.linear_seeds_needed([1.0], [np.array(d)], 1.0) == inference.seeds_needed(
        d, 1.0
    )


def test_curves_report_matched_flops_differences_with_intervals(tmp_path, capsys):
    # ACT: (4e7, 50%), (8e7, 56%); PACT: (5e7, 54%), (7e7, 57%); seeds spread -1, 0, +1 point.
    # Common range [5e7, 7e7]; at 5.5e7 (25% in) PACT 54.75, ACT 52.25: +2.50.
    for method, name, points in (
        ("act", "tau", ((0.01, 8e7, 0.56), (0.1, 4e7, 0.50))),
        ("pact", "lambda_", ((0.01, 7e7, 0.57), (0.1, 5e7, 0.54))),
    ):
        for penalty, flops, acc in points:
            for seed, jitter in enumerate((-0.01, 0.0, 0.01)):
                write_run(
                    tmp_path,
                    method,
                    (name, penalty),
                    seed,
                    correctness(acc + jitter, seed),
                    flops=flops,
                    mode="deterministic" if method == "pact" else "act",
                )
    code, out, _ = compare(
        tmp_path, "--a", "method=pact", "--b", "method=act", "--curve", capsys=capsys
    )
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("  at ")]
    assert len(lines) == 3
    assert "0.0550 GFLOPs (25% into the range): A - B +2.50 [" in lines[0]
    # var = (0.75^2 + 0.25^2 + 0.625^2 + 0.375^2) / 3 points^2: the 95% half-width is t * 0.62
    assert lines[0].endswith("A better")
    assert "n = 3 seeds per point" in verdict_line(out)


def test_pair_verdicts_take_the_wider_of_the_t_and_bootstrap_intervals(tmp_path, capsys):
    """A percentile bootstrap over three seeds is far narrower than the t-interval; the verdict
    holds only under both (their envelope). Three seed differences +1.2, +3.5, +2.0 points: the
    paired t (df 2) crosses 0, so the verdict is inconclusive whatever the bootstrap says."""
    t = inference.Interval(2.23, -0.65, 5.12, 0.27, 4.2, "t", 3)
    narrow = inference.Interval(2.23, 1.2, 3.5, 1.3, 3.3, "bootstrap", 3)
    both = inference.envelope(t, narrow)
    assert (both.low95, both.high95, both.low90, both.high90) == (-0.65, 5.12, 0.27, 4.2)
    assert inference.verdict(narrow, 1.0) == inference.A_BETTER
    assert inference.verdict(both, 1.0) == inference.INCONCLUSIVE
    assert inference.envelope(None, narrow) is narrow and inference.envelope(t, None) is t
    for seed, gain in enumerate((0.012, 0.035, 0.020)):
        write_run(tmp_path, "act", ("tau", 0.01), seed, correctness(0.50, 100 + seed), mode="act")
        write_run(tmp_path, "pact", ("lambda_", 0.01), seed, correctness(0.50 + gain, seed))
    code, out, _ = compare(tmp_path, "--a", "method=pact", "--b", "method=act", capsys=capsys)
    assert code == 0
    assert "basis: the wider of paired t over 3 seeds and" in verdict_line(out)
    assert verdict_line(out).startswith("verdict: inconclusive")


def test_a_difference_of_differences_is_welchs_interval_of_the_two_gaps(tmp_path, capsys):
    """(A - B) - (C - D): the per-seed gaps of two conditions (here two budgets, epochs 10 and
    3), independent trainings, so the interval is Welch's on the two sets of gaps."""
    gaps = {10: (0.010, 0.020, 0.015), 3: (-0.030, -0.020, -0.035)}
    for epochs, deltas in gaps.items():
        study = tmp_path / f"e{epochs}"
        for seed, delta in enumerate(deltas):
            write_run(study, "act", ("tau", 0.01), seed, correctness(0.50, 100 + seed), mode="act")
            write_run(study, "pact", ("lambda_", 0.01), seed, correctness(0.50 + delta, seed))
        for csv in study.rglob("results.csv"):  # the budget as a column the selectors can use
            frame = pd.read_csv(csv)
            frame["epochs"] = epochs
            tree = json.loads(frame["experiment_config"].iloc[0])
            tree["optim"]["epochs"] = epochs
            frame["experiment_config"] = json.dumps(tree)
            frame["experiment_id"] = experiment_id(tree)
            frame.to_csv(csv, index=False)
    code, out, _ = compare(
        tmp_path / "e10",
        str(tmp_path / "e3"),
        "--a",
        "method=pact,epochs=10",
        "--b",
        "method=act,epochs=10",
        "--minus-a",
        "method=pact,epochs=3",
        "--minus-b",
        "method=act,epochs=3",
        capsys=capsys,
    )
    assert code == 0, out
    from scipy import stats

    first = [100 * d for d in gaps[10]]
    second = [100 * d for d in gaps[3]]
    welch = stats.ttest_ind(first, second, equal_var=False).confidence_interval(0.95)
    line = next(x for x in out.splitlines() if x.startswith("(A - B) - (C - D)"))
    assert f"{statistics.mean(first) - statistics.mean(second):+.2f} [{welch.low:+.2f}, " in line
    assert verdict_line(out).startswith("verdict: A better")
    # the four sides' labels say the budget in which they differ (they read alike otherwise)
    sides = next(x for x in out.splitlines() if x.startswith("A: "))
    assert sides.count("[optim.epochs=10]") == 2 and "data." not in sides
    sides = next(x for x in out.splitlines() if x.startswith("C: "))
    assert sides.count("[optim.epochs=3]") == 2
    code = main(
        [
            "compare",
            str(tmp_path / "e10"),
            "--a",
            "method=pact",
            "--b",
            "method=act",
            "--minus-a",
            "method=pact",
        ]
    )
    assert code == 2 and "--minus-a and --minus-b go together" in capsys.readouterr().err
