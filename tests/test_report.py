"""Report: seed aggregation against hand-computed statistics, files written, bad input."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.report import aggregate, load_results, make_report


def rows():
    base = {
        "dataset": "cifar10",
        "variant": "sact",
        "split": "test",
        "execution": "masked",
        "units_executed_mean": 6.0,
    }
    out = []
    for seed, (acc, flops) in enumerate([(0.80, 1.0e8), (0.84, 1.2e8), (0.83, 1.1e8)]):
        out.append(
            {
                **base,
                "trial_id": f"act_s{seed}",
                "method": "act",
                "depth": 14,
                "time_penalty_name": "tau",
                "time_penalty": 0.01,
                "seed": seed,
                "eval_mode": "act",
                "threshold": None,
                "accuracy": acc,
                "flops_per_image_mean": flops,
                "peak_memory_bytes": 1000 + seed,
            }
        )
    for depth, acc, flops in [(8, 0.70, 0.5e8), (14, 0.82, 1.3e8)]:
        out.append(
            {
                **base,
                "trial_id": f"resnet_d{depth}",
                "method": "resnet",
                "depth": depth,
                "time_penalty_name": None,
                "time_penalty": 0.0,
                "seed": 0,
                "eval_mode": "standard",
                "threshold": None,
                "accuracy": acc,
                "flops_per_image_mean": flops,
                "peak_memory_bytes": 500,
            }
        )
    return out


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study"
    (path / "trials").mkdir(parents=True)
    frame = pd.DataFrame(rows())
    # one table per trial directory, plus a duplicate of the first trial's rows at the top
    for trial, group in frame.groupby("trial_id"):
        (path / "trials" / trial).mkdir()
        group.to_csv(path / "trials" / trial / "results.csv", index=False)
    return path


def test_seed_statistics(study):
    table = aggregate(load_results([study]))
    act = table[table["method"] == "act"].iloc[0]
    accs, flops = [0.80, 0.84, 0.83], [1.0e8, 1.2e8, 1.1e8]
    assert act["seeds"] == 3
    assert act["accuracy_mean"] == pytest.approx(statistics.mean(accs))
    assert act["accuracy_std_over_seeds"] == pytest.approx(statistics.stdev(accs))
    assert act["flops_per_image"] == pytest.approx(statistics.mean(flops))
    assert act["flops_per_image_std_over_seeds"] == pytest.approx(statistics.stdev(flops))
    vanilla = table[table["method"] == "resnet"].sort_values("depth")
    assert vanilla["depth"].tolist() == [8, 14]
    assert vanilla["accuracy_std_over_seeds"].tolist() == [0.0, 0.0]


def test_duplicate_rows_are_counted_once(study, tmp_path):
    extra = tmp_path / "dup.csv"
    pd.DataFrame(rows()[:1]).to_csv(extra, index=False)
    frame = load_results([study, extra])
    assert len(frame) == len(rows())


def test_files_written_through_the_cli(study, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(study), "--out", str(out)]) == 0
    for name in (
        "table.md",
        "table.tex",
        "table.csv",
        "accuracy_vs_flops.png",
        "accuracy_vs_flops.pdf",
        "memory.png",
        "memory.pdf",
    ):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "table.md").read_text()
    assert "FLOPs convention" in markdown and "act" in markdown
    assert "\\toprule" in (out / "table.tex").read_text()
    printed = capsys.readouterr().out
    assert "accuracy_vs_flops.png" in printed


def test_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        make_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no results.csv"):
        make_report([tmp_path / "empty"], tmp_path / "out")


def test_per_image_export_sums_resized_block_maps(tmp_path):
    """The production path: evaluate_modes writes the default mode's first pass per image."""
    import numpy as np
    import torch

    from harness.config import EvalConfig
    from harness.contract import EvalSpec, ModelSpec
    from harness.evaluate import PER_IMAGE_MAPS, evaluate_modes
    from methods.pact import PACTConfig
    from methods.pact.model import build_spatial_pact

    torch.manual_seed(0)
    model = build_spatial_pact(ModelSpec("cifar10", 14, "sact"), PACTConfig()).eval()
    gen = torch.Generator().manual_seed(1)
    loader = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,))) for _ in "ab"]
    spec = EvalSpec("deterministic", "masked", 0.5)
    eval_cfg = EvalConfig(modes=("deterministic",), execution="masked", repeats=1)
    rows = evaluate_modes(
        model, loader, eval_cfg, torch.device("cpu"), per_image_path=tmp_path / "p.npz"
    )
    assert [r["eval_mode"] for r in rows] == ["deterministic"]
    arrays = np.load(tmp_path / "p.npz")
    assert PER_IMAGE_MAPS >= 8  # every image of this loader gets its map
    assert arrays["units"].shape == (8, 3) and arrays["ponder_map"].shape == (8, 32, 32)
    assert str(arrays["eval_mode"]) == "deterministic"
    with torch.no_grad():
        out = model(loader[0][0], spec)
    # block maps are 32x32, 16x16, 8x8: nearest upsampling repeats each value 1, 2x2, 4x4 times
    expected = sum(
        p.repeat_interleave(32 // p.shape[-1], -1).repeat_interleave(32 // p.shape[-2], -2)
        for p in out.ponder_cost
    )
    np.testing.assert_allclose(arrays["ponder_map"][:4], expected.numpy(), rtol=1e-6)
    units = torch.stack([u.double().flatten(1).mean(1) for u in out.units_executed], 1)
    np.testing.assert_allclose(arrays["units"][:4], units.numpy())


def test_units_histogram_and_ponder_maps_from_runs(study, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for trial in ("act_s0", "act_s1"):
        np.savez(
            study / "trials" / trial / "per_image.npz",
            units=rng.integers(1, 4, (50, 3)).astype(float),
            ponder=rng.random((50, 3)),
            correct=rng.random(50) > 0.5,
            ponder_map=rng.random((6, 32, 32)),
            eval_mode=np.array("act"),
        )
    out = tmp_path / "report"
    written = {p.name for p in make_report([study], out)}
    assert {"units_histogram.png", "ponder_maps.png", "ponder_maps.pdf"} <= written
    assert (out / "ponder_maps.png").stat().st_size > 0
