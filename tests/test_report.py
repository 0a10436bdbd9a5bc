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
                    }
                )
    pd.concat([frame, pd.DataFrame(pact)]).to_csv(tmp_path / "results.csv", index=False)
    table = aggregate(load_results([tmp_path / "results.csv"]))
    modes = modes_table(table)
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
