"""Report: seed aggregation against hand-computed statistics, files written, bad input."""

from __future__ import annotations

import json
import re
import statistics

import pandas as pd
import pytest

from harness.cli import main
from harness.config import RunConfig, experiment_id, experiment_identity, to_dict
from harness.errors import ConfigError
from harness.report import (
    _default_mode_rows,
    _majority_values,
    aggregate,
    load_results,
    make_report,
    modes_table,
    paper_table,
)


def experiment(method: str, depth: int, **method_config) -> dict:
    """The experiment columns a finished run writes (harness.runs.trial_columns)."""
    config = to_dict(RunConfig(method=method, method_config=method_config))
    config["model"]["depth"] = depth
    identity = experiment_identity(config)
    return {
        "experiment_id": experiment_id(identity),
        "experiment_config": json.dumps(identity, sort_keys=True),
    }


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
                **experiment("act", 14, tau=0.01),
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
                **experiment("resnet", depth),
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
    # one table per trial directory (duplicated input: test_duplicate_rows_are_counted_once)
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
    """The first ACT seed reached three ways (its trial folder via the study, the folder
    itself, a copy of its table): one row, and the seed statistics of three seeds."""
    extra = tmp_path / "dup.csv"
    pd.DataFrame(rows()[:1]).to_csv(extra, index=False)
    frame = load_results([study, extra, study / "trials" / "act_s0"])
    assert len(frame) == len(rows())
    act = aggregate(frame).query("method == 'act'").iloc[0]
    assert act["seeds"] == 3
    assert act["accuracy_mean"] == pytest.approx(statistics.mean([0.80, 0.84, 0.83]))


def test_files_written_through_the_cli(study, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(study), "--out", str(out)]) == 0
    for name in (
        "paper_table.md",
        "paper_table.tex",
        "results_table.csv",
        "accuracy_vs_flops.png",
        "accuracy_vs_flops.pdf",
        "memory.png",
        "memory.pdf",
        "report.md",
    ):
        assert (out / name).stat().st_size > 0, name
    markdown = (out / "paper_table.md").read_text()
    assert "2 x multiply-accumulates" in markdown and "| act " in markdown
    # ACT: 3 seeds -> mean 82.33 +- stdev 2.08; vanilla ResNet-14 FLOPs 1.3e8: ACT 84.6% of it
    assert "82.33 ± 2.08" in markdown and "84.6" in markdown
    assert "\\toprule" in (out / "paper_table.tex").read_text()
    index = (out / "report.md").read_text()
    assert "![accuracy_vs_flops](accuracy_vs_flops.png)" in index
    printed = capsys.readouterr().out
    assert "report.md" in printed


def test_modes_table_puts_each_experiments_modes_side_by_side_in_order(tmp_path):
    # PACT at two penalties (written in reverse order), three modes each, 2 seeds; ACT (one mode)
    # has no row. Each cell is the mean over seeds of that mode.
    frame = pd.DataFrame(rows())
    pact = []
    for lam in (0.03, 0.01):
        for seed in (0, 1):
            for mode, acc, flops, memory in (
                ("deterministic", 0.70 + lam + seed / 100, 0.9e8, 700),
                ("sampled", 0.68 + lam, 0.8e8, 700),
                ("stochastic", 0.69 + lam, 1.3e8, 900),
            ):
                pact.append(
                    {
                        **rows()[0],
                        "trial_id": f"pact_l{lam}_s{seed}",
                        **experiment("pact", 14, **{"lambda": lam}),
                        "method": "pact",
                        "time_penalty_name": "lambda",
                        "time_penalty": lam,
                        "seed": seed,
                        "eval_mode": mode,
                        "accuracy": acc,
                        "flops_per_image_mean": flops,
                        "peak_memory_bytes": memory * 2**20,
                        # seed 1 of the deterministic mode was not verified: its cell is marked
                        "flops_verified": ""
                        if (mode, seed) == ("deterministic", 1)
                        else "flop-counter",
                    }
                )
    pd.concat([frame, pd.DataFrame(pact)]).to_csv(tmp_path / "results.csv", index=False)
    table = aggregate(load_results([tmp_path / "results.csv"]))
    modes = modes_table(table)
    assert modes.iloc[0]["deterministic GFLOPs"] == "0.0900 *"  # one pooled seed unverified
    assert modes["penalty"].tolist() == ["lambda 0.01", "lambda 0.03"]
    first = modes.iloc[0]
    assert first["deterministic acc %"] == "71.50"  # (0.71 + 0.72) / 2
    assert first["sampled acc %"] == "69.00" and first["stochastic GFLOPs"] == "0.1300"
    assert first["deterministic MiB"] == "700.0" and first["stochastic MiB"] == "900.0"
    assert set(modes["method"]) == {"PACT (reconstruction)"}
    # An ablation-sized figure keeps each experiment's paper-table mode only.
    kept = _default_mode_rows(table)
    assert set(zip(kept["method"], kept["eval_mode"], strict=True)) == {
        ("act", "act"),
        ("pact", "deterministic"),
        ("resnet", "standard"),
    }
    assert len(kept) == 2 + 1 + 2  # two PACT penalties, ACT, vanilla ResNet-8/14


def test_figure_legends_name_only_the_fields_where_a_curve_departs_from_its_method():
    frame = pd.DataFrame(
        {
            "experiment_id": ["a", "b", "c", "d"],
            "method_label": ["PACT", "PACT", "PACT", "ACT"],
            "method_config.prior": ["geometric", "geometric", "bernoulli", "-"],
            "method_config.anneal": ["exp", "none", "exp", "-"],
        }
    )
    keys = ["method_config.prior", "method_config.anneal"]
    majority = _majority_values(frame, keys)
    assert majority[("PACT", "method_config.prior")] == "geometric"
    assert majority[("PACT", "method_config.anneal")] == "exp"
    assert majority[("ACT", "method_config.prior")] == "-"  # shown never: "-" is skipped


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
    # each map's image, min-max scaled to uint8 (an analytic check on the first image)
    first = loader[0][0][0]
    scaled = (first - first.min()) / (first.max() - first.min())
    assert arrays["thumbnails"].shape == (8, 32, 32, 3) and arrays["thumbnails"].dtype == np.uint8
    np.testing.assert_array_equal(
        arrays["thumbnails"][0], (255 * scaled).round().byte().permute(1, 2, 0).numpy()
    )
    units = torch.stack([u.double().flatten(1).mean(1) for u in out.units_executed], 1)
    np.testing.assert_allclose(arrays["units"][:4], units.numpy())
    # units executed per position, by hand from the masks: [B, L, h, w] -> count over L,
    # each block's count map repeated up to 32x32, summed over the three blocks
    by_hand = sum(
        m.sum(1).repeat_interleave(32 // m.shape[-1], -1).repeat_interleave(32 // m.shape[-2], -2)
        for m in out.units_ran
    )
    assert arrays["units_map"].shape == (8, 32, 32)
    assert np.issubdtype(arrays["units_map"].dtype, np.integer)
    np.testing.assert_array_equal(arrays["units_map"][:4], by_hand.numpy())
    # nearest upsampling by whole factors keeps each block's mean over positions: the map's
    # mean is the per-image units summed over blocks
    np.testing.assert_allclose(arrays["units_map"].mean((1, 2)), arrays["units"].sum(1), rtol=1e-6)
    # at least one unit per block (a halting method runs unit 1), at most all of them
    assert arrays["units_map"].min() >= 3 and arrays["units_map"].max() <= 3 * 2


def test_ponder_maps_are_kept_for_images_spread_over_the_split():
    """A split stored class by class (the shared CIFAR-10 npz is) must not give maps of one
    class only: the kept maps are every len(dataset) // max_maps-th image, across batches."""
    import torch

    from harness.contract import EvalSpec, ModelSpec
    from harness.evaluate import evaluate, thumbnails
    from methods.pact import PACTConfig
    from methods.pact.model import build_spatial_pact

    torch.manual_seed(0)
    model = build_spatial_pact(ModelSpec("cifar10", 8, "sact"), PACTConfig()).eval()
    images = torch.randn(22, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(22) // 5  # sorted by class

    class Loader:  # batches of 4 (the last one 2), with the dataset it walks
        dataset = list(range(22))

        def __iter__(self):
            return ((images[i : i + 4], labels[i : i + 4]) for i in range(0, 22, 4))

    spec = EvalSpec("deterministic", "masked", 0.5)
    stats = evaluate(model, Loader(), spec, torch.device("cpu"), max_maps=5)
    assert stats.map_index.tolist() == [0, 4, 8, 12, 16]  # stride 22 // 5 = 4
    assert sorted(set(labels[stats.map_index].tolist())) == [0, 1, 2, 3]  # four classes, not one
    torch.testing.assert_close(stats.thumbnails, thumbnails(images[stats.map_index]))
    with torch.no_grad():
        out = model(images[stats.map_index], spec)
    full = sum(
        torch.nn.functional.interpolate(p[:, None].float(), size=(32, 32), mode="nearest")
        for p in out.ponder_cost
    )[:, 0]
    torch.testing.assert_close(stats.ponder_map, full)


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
            thumbnails=rng.integers(0, 256, (6, 32, 32, 3)).astype(np.uint8),
            eval_mode=np.array("act"),
        )
    out = tmp_path / "report"
    written = {p.name for p in make_report([study], out)}
    assert {"units_histogram.png", "ponder_maps.png", "ponder_maps.pdf"} <= written
    assert (out / "ponder_maps.png").stat().st_size > 0


def test_runs_that_differ_in_one_method_field_are_never_pooled(tmp_path):
    """Same method, depth, penalty and seed; only PACT's prior differs: two rows, two
    experiments, the differing field shown as a column."""
    base = rows()[0] | {"method": "pact", "time_penalty_name": "lambda", "seed": 0}
    a = base | {"trial_id": "x", **experiment("pact", 14, prior="truncated_geometric")}
    b = base | {"trial_id": "x", **experiment("pact", 14, prior="bernoulli"), "accuracy": 0.5}
    for folder, row in (("one", a), ("two", b)):  # the same run name under two folders
        (tmp_path / folder).mkdir()
        pd.DataFrame([row]).to_csv(tmp_path / folder / "results.csv", index=False)
    table = aggregate(load_results([tmp_path / "one", tmp_path / "two"]))
    assert len(table) == 2 and table["seeds"].tolist() == [1, 1]
    assert sorted(table["method_config.prior"]) == ["bernoulli", "truncated_geometric"]
    assert sorted(table["accuracy_mean"]) == [0.5, 0.8]


def test_legacy_rows_take_their_experiment_from_the_stored_config(tmp_path):
    """Tables written before rows carried experiment_config: the run's config.yaml decides;
    without one, a run is reported alone and a warning says so."""
    import yaml

    for seed, lr in ((0, 0.1), (1, 0.05)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        row = {k: v for k, v in rows()[seed].items() if not k.startswith("experiment")}
        pd.DataFrame([row | {"trial_id": run.name}]).to_csv(run / "results.csv", index=False)
        config = to_dict(RunConfig(method="act", method_config={"tau": 0.01}, seed=seed))
        config["optim"]["lr"] = lr
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    table = aggregate(load_results([tmp_path]))
    assert len(table) == 2 and sorted(table["optim.lr"]) == ["0.05", "0.1"]


def test_unusable_tables_are_skipped_with_a_warning_naming_them(study, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "results.csv").write_bytes(b"\x00\x01\x02binary\xff\xfe")
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("a,b\n1,2\n")
    empty = tmp_path / "empty_table"
    empty.mkdir()
    (empty / "results.csv").write_text("")
    warnings: list[str] = []
    frame = load_results([study, junk, other, empty], warn=warnings.append)
    assert len(frame) == len(rows())
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    err = "\n".join(warnings)
    assert f"skipping {other / 'results.csv'}: lacks the column(s)" in err
    assert f"skipping {junk / 'results.csv'}" in err and f"skipping {empty / 'results.csv'}" in err
    with pytest.raises(ConfigError, match="none of the inputs holds a usable results table"):
        load_results([other])


def test_a_study_with_one_seed_and_no_vanilla_still_reports(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    pd.DataFrame(rows()[:1]).to_csv(one / "results.csv", index=False)
    written = {p.name for p in make_report([one], tmp_path / "out")}
    assert {"paper_table.md", "accuracy_vs_flops.png", "report.md"} <= written
    table = (tmp_path / "out" / "paper_table.md").read_text()
    # One seed: the mean alone (no spread was measured); no vanilla: % of vanilla unknown.
    assert " 80.00 |" in table and "80.00 ±" not in table
    assert re.search(r"\|\s+-\s+\|", table)


def test_a_run_from_an_older_config_pools_with_an_equal_newer_one(tmp_path):
    """A config.yaml written before a key existed (here data.preprocessing and data.val_seed)
    and with a since-retired key gets the current defaults: the two seeds are one experiment."""
    import yaml

    new = to_dict(RunConfig(method="act", method_config={"tau": 0.01}))
    old = json.loads(json.dumps(new))
    del old["data"]["preprocessing"], old["data"]["val_seed"]
    old["test_crash_at_epoch"] = None  # a key the harness no longer has
    for seed, config in ((0, old), (1, new)):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        row = {k: v for k, v in rows()[seed].items() if not k.startswith("experiment")}
        pd.DataFrame([row | {"trial_id": run.name}]).to_csv(run / "results.csv", index=False)
        (run / "config.yaml").write_text(yaml.safe_dump(config | {"seed": seed}))
    table = aggregate(load_results([tmp_path]))
    assert len(table) == 1 and table["seeds"].tolist() == [2]
    assert table["method_label"].tolist() == ["ACT"]  # filled from the registry


def test_aggregation_outputs_exactly_the_schemas_seed_statistics(study):
    """The aggregated table: the schema's key and first columns, then one column per declared
    seed statistic (:class:`harness.results.Seeds`) of the columns the rows hold."""
    from harness import results

    frame = load_results([study])
    table = aggregate(frame)
    expected_stats = []
    for column in results.COLUMNS:
        if column.seeds is None or column.name not in frame:
            continue
        names = (column.seeds.count, column.seeds.mean, column.seeds.std)
        expected_stats += [n for n in names if n]
    keys = [c.name for c in results.columns_aggregated("key") if c.name in frame]
    first = [c.name for c in results.columns_aggregated("first") if c.name in frame]
    # plus the code versions each row pools (from provenance; none stored here: unknown)
    assert sorted(table.columns) == sorted({*keys, *first, *expected_stats, "code"})
    assert set(table["code"]) == {"unknown"} and not table.attrs["show_code"]
    act = table[table["method"] == "act"].iloc[0]
    assert act["peak_memory_bytes"] == pytest.approx(1001.0)  # mean of 1000, 1001, 1002


def test_a_methods_table_note_appears_only_under_tables_with_its_rows(study, tmp_path):
    from harness.registry import get_method

    note = get_method("pact").table_note
    assert note  # PACT declares that its rows are a reconstruction
    make_report([study], tmp_path / "no_pact")
    assert note not in (tmp_path / "no_pact" / "paper_table.md").read_text()
    pact = [r | {"method": "pact", "time_penalty_name": "lambda"} for r in rows()[:1]]
    pact[0].update(
        experiment("pact", 14, lambda_=0.01), trial_id="pact_s0", eval_mode="deterministic"
    )
    (study / "trials" / "pact_s0").mkdir()
    pd.DataFrame(pact).to_csv(study / "trials" / "pact_s0" / "results.csv", index=False)
    make_report([study], tmp_path / "with_pact")
    assert note in (tmp_path / "with_pact" / "paper_table.md").read_text()
    assert note in (tmp_path / "with_pact" / "paper_table.tex").read_text()


# ------------------------------------------------------------------------- figures (issue 21)
def _act_row(tau: float, seed: int, accuracy: float, flops: float, **extra) -> dict:
    return {
        **rows()[0],
        "trial_id": f"act_t{tau}_s{seed}",
        **experiment("act", 14, tau=tau),
        "time_penalty": tau,
        "seed": seed,
        "accuracy": accuracy,
        "flops_per_image_mean": flops,
        "num_images": 2000,
        **extra,
    }


def _pact_row(lam: float, seed: int, mode: str, accuracy: float, flops: float, **extra) -> dict:
    return _act_row(0.01, seed, accuracy, flops) | {
        "trial_id": f"pact_l{lam}_s{seed}",
        **experiment("pact", 14, **{"lambda": lam}),
        "method": "pact",
        "time_penalty_name": "lambda",
        "time_penalty": lam,
        "eval_mode": mode,
        **extra,
    }


def _table(tmp_path, table_rows: list[dict]) -> pd.DataFrame:
    pd.DataFrame(table_rows).to_csv(tmp_path / "results.csv", index=False)
    return aggregate(load_results([tmp_path / "results.csv"]))


def _curve(panel, start: str):
    (curve,) = [c for c in panel.curves if c.name.startswith(start) and c.style != "sweep"]
    return curve


def test_curves_join_points_in_flops_order_and_one_flops_families_stay_unjoined(tmp_path):
    """ACT's penalties 0.01, 0.03, 0.1 cost 1.1e8, 0.8e8, 1.0e8 FLOPs: the curve runs
    0.8 -> 1.0 -> 1.1 (labels follow their points). PACT's stochastic mode runs every unit:
    its three penalties sit within 0.1% of 1.3e8 and are drawn as unjoined points, dodged
    sideways; its deterministic mode spreads over FLOPs and is joined."""
    from harness.report.aggregate import accuracy_figure, at_one_flops_value

    table_rows = [
        _act_row(tau, seed, acc, flops)
        for tau, acc, flops in ((0.01, 0.80, 1.1e8), (0.03, 0.70, 0.8e8), (0.1, 0.75, 1.0e8))
        for seed in (0, 1)
    ]
    for lam, stochastic_flops in ((0.01, 1.3001e8), (0.03, 1.2999e8), (0.1, 1.3e8)):
        table_rows += [
            _pact_row(lam, 0, "stochastic", 0.6 + lam, stochastic_flops),
            _pact_row(lam, 0, "deterministic", 0.6 + lam, 1.3e8 - lam * 1e9),
        ]
    panel = accuracy_figure(_table(tmp_path, table_rows)).panels[0]
    act = _curve(panel, "ACT")
    assert act.style == "method"
    assert act.x == pytest.approx([0.08, 0.10, 0.11])
    assert act.y == pytest.approx([70.0, 75.0, 80.0])
    assert act.labels == ["tau 0.03", "tau 0.1", "tau 0.01"]
    stochastic = _curve(panel, "PACT (reconstruction) (stochastic)")
    assert stochastic.style == "points" and "points not joined" in stochastic.name
    assert len(set(stochastic.dodge)) == 3 and sum(stochastic.dodge) == pytest.approx(0.0)
    assert None not in stochastic.labels  # every unjoined point keeps its penalty label
    deterministic = _curve(panel, "PACT (reconstruction) (deterministic)")
    assert deterministic.style == "method" and deterministic.dodge == []
    assert deterministic.x == pytest.approx([0.03, 0.10, 0.12])  # 1.3e8 - lambda * 1e9
    # the 0.1% rule itself: 0.09% apart is one value, 0.2% apart is not, one point never
    assert at_one_flops_value([1.0, 1.0009]) and not at_one_flops_value([1.0, 1.002])
    assert not at_one_flops_value([1.0])


def test_error_bars_say_what_they_are_and_n(study, tmp_path):
    """ACT has 3 seeds (bars: the sample SD), each vanilla depth 1 seed (no bar)."""
    from harness.report.aggregate import accuracy_figure

    panel = accuracy_figure(aggregate(load_results([study]))).panels[0]
    assert panel.notes[0] == (
        "error bars: ±1 sample SD over seeds (y: accuracy, x: FLOPs), n = 1-3 seeds per point; "
        "no bar where n = 1"
    )
    act = _curve(panel, "ACT")
    assert act.n == [3] and act.yerr == pytest.approx([100 * statistics.stdev([0.80, 0.84, 0.83])])
    assert act.xerr == pytest.approx([statistics.stdev([1.0e8, 1.2e8, 1.1e8]) / 1e9])
    vanilla = _curve(panel, "vanilla")
    assert vanilla.n == [1, 1] and vanilla.labels == ["d8", "d14"]
    one = aggregate(load_results([study]))
    one = one[one["method"] == "resnet"]
    only = accuracy_figure(one).panels[0]
    assert only.notes[0] == "one seed per point: no error bars (no spread measured)"


def test_ranges_narrower_than_the_noise_get_a_wider_axis_and_a_note(tmp_path):
    """Three models at 0.79, 0.80, 0.81 GFLOPs (span 2.5% of the mean 0.80): the x axis is
    widened to 0.80 ± 5% = [0.76, 0.84]. Accuracies 63.0, 64.0, 63.5% on 2000 test images:
    span 1.0 point, under the binomial 95% half-width 1.96 sqrt(0.635 * 0.365 / 2000) =
    2.110 points: noted."""
    from harness.report.aggregate import accuracy_figure

    table_rows = [
        _act_row(tau, 0, acc, flops)
        for tau, acc, flops in ((0.01, 0.630, 0.79e8), (0.03, 0.640, 0.80e8), (0.1, 0.635, 0.81e8))
    ]
    panel = accuracy_figure(_table(tmp_path, table_rows)).panels[0]
    assert panel.xlim == pytest.approx((0.076, 0.084))
    half = 100 * 1.959964 * (0.635 * 0.365 / 2000) ** 0.5
    assert f"{half:.1f}" == "2.1"
    assert any("x axis widened to ±5% of the mean FLOPs" in n and "2.5%" in n for n in panel.notes)
    assert any(
        n.startswith("accuracy span 1.0 points < ±2.1, the binomial 95% half-width of one test")
        for n in panel.notes
    )
    # spread-out points: matplotlib's range, no note
    wide = [
        _act_row(tau, 0, acc, flops)
        for tau, acc, flops in ((0.01, 0.50, 0.5e8), (0.1, 0.80, 1.0e8))
    ]
    (tmp_path / "wide").mkdir()
    panel = accuracy_figure(_table(tmp_path / "wide", wide)).panels[0]
    assert panel.xlim is None and len(panel.notes) == 1  # the error-bar note only


def test_memory_bars_per_penalty_ordered_by_depth_with_seed_ranges(tmp_path):
    """Vanilla at depths 20, 8, 14 (written in that order) comes out d8, d14, d20 (numeric,
    not text order); ACT's two penalties are two bars, each the mean of three seeds' peaks
    with their min-max as the range."""
    from harness.report.aggregate import memory_figure

    mib = 2**20
    table_rows = []
    for depth in (20, 8, 14):
        table_rows.append(
            rows()[3]
            | {
                "trial_id": f"resnet_d{depth}",
                **experiment("resnet", depth),
                "depth": depth,
                "peak_memory_bytes": depth * mib,
                "peak_memory_median_bytes": depth * mib,
            }
        )
    peaks = {0.1: (60, 70, 95), 0.01: (100, 90, 110)}
    for tau, values in peaks.items():
        for seed, peak in enumerate(values):
            table_rows.append(
                _act_row(tau, seed, 0.8, 1e8)
                | {
                    "peak_memory_bytes": peak * mib,
                    "peak_memory_median_bytes": (peak - 10) * mib,
                    "memory_batches": 4,
                    "peak_memory_device": "cpu",
                }
            )
    pd.DataFrame(table_rows).to_csv(tmp_path / "results.csv", index=False)
    frame = load_results([tmp_path / "results.csv"])
    figure = memory_figure(aggregate(frame), frame)
    bars = figure.bars
    assert bars["configuration"].tolist() == [
        "ResNet / standard / d8",
        "ResNet / standard / d14",
        "ResNet / standard / d20",
        "ACT / act / d14 / tau 0.01",
        "ACT / act / d14 / tau 0.1",
    ]
    act = bars.iloc[3:]
    assert act["mean MiB"].tolist() == pytest.approx([100.0, 75.0])
    assert act["min MiB"].tolist() == [90.0, 60.0] and act["max MiB"].tolist() == [110.0, 95.0]
    assert act["seeds"].tolist() == [3, 3] and bars["seeds"].iloc[0] == 1
    assert bars["min MiB"].iloc[0] == bars["max MiB"].iloc[0] == 8.0  # one seed: no range
    assert "n = 1-3 seeds per bar" in figure.notes[0]
    # ACT measured over 4 batches; the vanilla rows carry no batch count: an older protocol
    assert figure.notes[-1] == (
        "measured on cpu: max over the first 4 evaluation batches; one evaluation batch "
        "(runs stored before memory was measured over the pass)"
    )
    # the median over batches: a marker, mean over seeds ((100+90+110)/3 - 10, (60+70+95)/3 - 10)
    assert act["median MiB"].tolist() == pytest.approx([90.0, 65.0])
    # without the per-seed rows: the means, no range
    plain = memory_figure(aggregate(frame)).bars
    assert (plain["min MiB"] == plain["mean MiB"]).all()


def _run(method: str, label: str, penalty: tuple[str, float], seed: int, **method_config):
    """A run as load_per_image returns it (no files): label, units and its configuration."""
    import numpy as np

    from harness.report.load import canonical_identity

    name, value = penalty
    config = to_dict(RunConfig(method=method, method_config={name: value, **method_config}))
    record = {
        "method": method,
        "method_label": label,
        "time_penalty_name": name,
        "time_penalty": value,
        "seed": seed,
    }
    arrays = {
        "units": np.full((5, 3), 2.0),
        "adaptive": True,
        "record": record,
        "experiment_config": canonical_identity(config),
    }
    return f"{label} d20 {name}={value:g} s{seed} (x, 5 test imgs)", arrays


def test_histogram_titles_name_the_fields_that_tell_panels_apart():
    """Three PACT runs, two with the default prior and one with bernoulli, and an ACT run:
    the bernoulli panel says prior=bernoulli, the figure states the common prior; ACT (which
    has no prior) names none; seeds and penalties are in the label already."""
    from harness.report.aggregate import histogram_figure, run_fields

    runs = [
        _run("pact", "PACT", ("lambda", 0.01), 0),
        _run("act", "ACT", ("tau", 0.01), 0),
        _run("pact", "PACT", ("lambda", 0.01), 0, prior="bernoulli"),
        _run("pact", "PACT", ("lambda", 0.03), 1),
    ]
    fields, common = run_fields(runs)
    assert fields == [[], [], ["prior=bernoulli"], []]
    assert common == ["PACT: prior=truncated_geometric"]
    figure = histogram_figure(runs)
    titles = [title for title, _ in figure.panels]
    assert titles[0].startswith("ACT") and not any("prior" in t for t in titles[:1])
    assert sum("prior=bernoulli" in t for t in titles) == 1
    assert figure.notes == ["fields a title does not name: PACT: prior=truncated_geometric"]
    # no common value (one run each): both panels name it
    fields, common = run_fields([runs[0], runs[2]])
    assert fields == [["prior=truncated_geometric"], ["prior=bernoulli"]] and common == []


def _spatial_run(folder, method: str, label: str, penalty: tuple[str, float], mode: str):
    """A real spatial model evaluated on 4 random images: per_image.npz as evaluate_modes
    writes it, beside the results row load_per_image reads its record from."""
    import torch

    from harness.config import EvalConfig
    from harness.contract import ModelSpec
    from harness.evaluate import evaluate_modes
    from methods.pact import PACTConfig
    from methods.pact.model import build_spatial_pact
    from methods.sact import SACTConfig
    from methods.sact.model import build_sact

    torch.manual_seed(0)
    spec = ModelSpec("cifar10", 14, "sact")
    if method == "sact":
        model = build_sact(spec, SACTConfig(tau=penalty[1]))
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():  # halting branches that halt somewhere (as test_sact does)
            for branches in model.halting:
                for branch in branches:
                    w = branch.local_conv.weight
                    w.copy_(torch.randn(w.shape, generator=gen) * 0.5)
                    branch.local_conv.bias.fill_(0.0)
    else:
        model = build_spatial_pact(spec, PACTConfig())
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    folder.mkdir(parents=True)
    evaluate_modes(
        model.eval(),
        [(images, torch.arange(4))],
        EvalConfig(modes=(mode,), execution="masked", repeats=1),
        torch.device("cpu"),
        per_image_path=folder / "per_image.npz",
    )
    name, value = penalty
    row = _act_row(value, 0, 0.5, 1e8) | {
        "trial_id": folder.name,
        **experiment(method, 14, **{name: value}),
        "method": method,
        "method_label": label,
        "time_penalty_name": name,
        "eval_mode": mode,
    }
    pd.DataFrame([row]).to_csv(folder / "results.csv", index=False)


def test_sact_and_spatial_pact_maps_show_one_quantity_on_one_scale(tmp_path):
    """Real SACT and spatial PACT runs in one report: both rows show units executed per
    position (their stored units_map) on the one units scale. SACT's stored ponder cost is
    N + R, so its ponder map exceeds its units map by the remainders, each in (0, 1] per
    block: the figure must not (and does not) draw that map."""
    import numpy as np

    from harness.report import load_per_image
    from harness.report.aggregate import UNITS_MAP_LABEL, ponder_figure

    _spatial_run(tmp_path / "study" / "sact", "sact", "SACT", ("tau", 0.01), "act")
    _spatial_run(
        tmp_path / "study" / "spatial",
        "spatial_pact",
        "spatial PACT",
        ("lambda", 0.01),
        "deterministic",
    )
    runs = load_per_image([tmp_path / "study"])
    by_method = {a["record"]["method"]: a for _, a in runs}
    sact = by_method["sact"]
    excess = sact["ponder_map"] - sact["units_map"]
    assert excess.min() > 0 and excess.max() <= 3 + 1e-6  # three blocks, R in (0, 1] each
    figure = ponder_figure(runs, per_run=4)
    assert [s.label for s in figure.scales] == [UNITS_MAP_LABEL] and figure.scales[0].discrete
    assert [r.scale for r in figure.rows] == [0, 0]
    for row in figure.rows:
        method = "sact" if row.label.startswith("SACT") else "spatial_pact"
        np.testing.assert_array_equal(np.stack(row.maps), by_method[method]["units_map"])
    stored = np.concatenate([a["units_map"].ravel() for a in by_method.values()])
    assert figure.scales[0].vmin == np.floor(np.percentile(stored, 0.1))
    assert figure.scales[0].vmax == np.ceil(np.percentile(stored, 99.9))
    written = {p.name for p in make_report([tmp_path / "study"], tmp_path / "report")}
    assert "ponder_maps.png" in written


def test_ponder_costs_of_older_runs_never_share_a_scale():
    """Runs stored before units maps were kept have only their ponder cost, which each method
    defines its own way: each such method gets its own scale, apart from the units' scale."""
    import numpy as np

    from harness.report.aggregate import UNITS_MAP_LABEL, ponder_figure

    rng = np.random.default_rng(0)
    new_sact = _run("sact", "SACT", ("tau", 0.01), 0)
    new_sact[1]["units_map"] = rng.integers(3, 7, (4, 8, 8))
    new_sact[1]["ponder_map"] = new_sact[1]["units_map"] + 0.5
    old_sact = _run("sact", "SACT", ("tau", 0.1), 0)
    old_sact[1]["ponder_map"] = rng.random((4, 8, 8)) + 6.0
    old_pact = _run("spatial_pact", "spatial PACT", ("lambda", 0.01), 0)
    old_pact[1]["ponder_map"] = rng.random((4, 8, 8)) + 3.0
    figure = ponder_figure([old_pact, old_sact, new_sact], per_run=4)
    labels = [s.label for s in figure.scales]
    assert labels[0] == UNITS_MAP_LABEL
    assert labels[1].startswith("ponder cost of SACT") and labels[2].startswith(
        "ponder cost of spatial PACT"
    )
    assert [r.scale for r in figure.rows] == [0, 1, 2]
    assert figure.rows[0].label.startswith("SACT d20 tau=0.01")
    np.testing.assert_array_equal(np.stack(figure.rows[0].maps), new_sact[1]["units_map"])
    assert figure.scales[1].vmin >= 6.0 and figure.scales[2].vmax <= 4.0  # own ranges


def test_percent_of_vanilla_is_against_the_models_own_full_network():
    """A plug-in with its own backbone runs 0.839 of *its* full network; a vanilla run of the
    same (dataset, variant, depth) has other FLOPs. The table shows 83.9, not the lookup."""
    base = {
        "dataset": "cifar10",
        "variant": "sact",
        "split": "test",
        "execution": "masked",
        "seed": 0,
        "threshold": None,
        "depth": 20,
        "num_images": 100,
    }
    frame = pd.DataFrame(
        [
            {
                **base,
                **experiment("act", 20, tau=0.01),
                "trial_id": "own",
                "method": "act",
                "method_label": "own backbone",
                "time_penalty_name": "tau",
                "time_penalty": 0.01,
                "eval_mode": "act",
                "accuracy": 0.5,
                "flops_per_image_mean": 7.0e7,
                "flops_fraction_of_vanilla": 0.839,
            },
            {
                **base,
                **experiment("resnet", 20),
                "trial_id": "vanilla",
                "method": "resnet",
                "method_label": "ResNet",
                "time_penalty_name": None,
                "time_penalty": 0.0,
                "eval_mode": "standard",
                "accuracy": 0.5,
                "flops_per_image_mean": 8.29e7,  # 7e7 / 8.29e7 = 84.4%: the wrong reference
                "flops_fraction_of_vanilla": 1.0,
            },
        ]
    )
    table = paper_table(aggregate(frame))
    shown = dict(zip(table["method"], table["% of vanilla"], strict=True))
    assert shown == {"own backbone": "83.9", "ResNet": "100.0"}


def test_three_reports_of_one_study_at_once_all_finish(study, tmp_path):
    """Concurrent reports into one folder: every figure and table is written to a temporary
    name of its own and renamed, so none trips over another's file (the fault audit saw 2 of 3
    die on a shared temporary name)."""
    import subprocess

    from conftest import console_script

    out = tmp_path / "shared_report"
    procs = [
        subprocess.Popen(
            [*console_script(), "report", str(study), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    assert all(not err.strip() for _, err in results)
    for name in ("paper_table.md", "accuracy_vs_flops.png", "memory.pdf", "report.md"):
        assert (out / name).stat().st_size > 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp left
