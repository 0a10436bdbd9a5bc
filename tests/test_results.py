"""The result-row schema (harness.results): every producer writes exactly its declared columns,
and the store refuses an undeclared or a missing required column before writing anything."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import results, store
from harness.config import EvalConfig, RunConfig, from_dict
from harness.costs.flops import FlopAccountant
from harness.costs.measure import add_cost_columns
from harness.errors import StorageError
from harness.evaluate import evaluate_modes
from harness.models import create_model
from harness.runs import resolve_method, trial_columns


def _loader(n: int = 12, batch: int = 6, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return [(images[i : i + batch], labels[i : i + batch]) for i in range(0, n, batch)]


def test_every_column_is_declared_once_with_unit_producer_and_description():
    names = [c.name for c in results.COLUMNS]
    assert len(names) == len(set(names))
    for column in results.COLUMNS:
        assert column.description and column.producer in results.PRODUCERS
    # Every producer owns at least one column; together they cover the schema exactly.
    owned = [n for p in results.PRODUCERS for n in results.columns_of(p)]
    assert sorted(owned) == sorted(names)
    # The seed statistics the report computes name distinct output columns.
    outputs = [
        name
        for c in results.COLUMNS
        if c.seeds is not None
        for name in (c.seeds.mean, c.seeds.std, c.seeds.count)
        if name
    ]
    assert len(outputs) == len(set(outputs))


def test_trial_producer_writes_exactly_its_columns():
    spec, _, cfg = resolve_method(from_dict(RunConfig, {"method": "act", "model": {"depth": 20}}))
    row = trial_columns(cfg, spec, "t0")
    assert list(row) == list(results.columns_of("trial"))
    assert (row["time_penalty_name"], row["time_penalty"]) == ("tau", 0.01)


@pytest.mark.parametrize("method", ["resnet", "act", "spatial_pact"])
def test_evaluate_and_costs_producers_write_exactly_their_columns(method: str):
    model = create_model(method, depth=20)
    model.eval()
    loader = _loader()
    cfg = EvalConfig(repeats=2, thresholds=(0.3, 0.5), batch_size=6)
    accountant = FlopAccountant(model, (32, 32))
    correct: dict = {}
    rows = evaluate_modes(model, loader, cfg, torch.device("cpu"), accountant, correct=correct)
    assert rows  # one row per mode (and threshold)
    for row in rows:
        assert list(row) == list(results.columns_of("evaluate"))
        assert row["flops_verified"] in ("flop-counter", "mask-perturbation")  # the first batch
        # its per-image correctness, stored under its key, averages to its accuracy
        assert correct[row["per_image_key"]].shape == (12,)
        assert correct[row["per_image_key"]].mean() == pytest.approx(row["accuracy"])
    assert len(correct) == len(rows)
    # Without an accountant and a correctness sink, their optional columns are left out.
    bare = evaluate_modes(model, loader, cfg, torch.device("cpu"), None)
    flop_columns = {"flops_per_image_mean", "flops_per_image_std", "flops_per_block"}
    flop_columns.update({"flops_fraction_of_vanilla", "per_image_key", "flops_verified"})
    for row in bare:
        assert set(results.columns_of("evaluate")) - set(row) == flop_columns
    before = [set(row) for row in rows]
    add_cost_columns(model, loader[0][0], rows, random_seed=5, warmup=0, repeats=1)
    for old, row in zip(before, rows, strict=True):
        assert set(row) - old == set(results.columns_of("costs"))
        assert row["cost_batch_size"] == 6 and row["peak_memory_bytes"] > 0


def test_a_finished_run_writes_every_declared_column_in_schema_order(finished_run: dict):
    frame = pd.read_csv(finished_run["dir"] / store.RESULTS_FILE)
    assert list(frame.columns) == [c.name for c in results.COLUMNS]


def test_fields_refuses_an_undeclared_column_or_another_producers(tmp_path: Path):
    with pytest.raises(StorageError, match="'top5_accuracy'.*not declared"):
        results.fields("evaluate", {"accuracy": 0.5, "top5_accuracy": 0.9})
    with pytest.raises(StorageError, match="'peak_memory_bytes' belongs to producer 'costs'"):
        results.fields("evaluate", {"peak_memory_bytes": 10})
    assert list(results.fields("train", {"num_val": 0, "epochs": 3})) == ["epochs", "num_val"]


def _full_row(**changes) -> dict:
    row = {name: 1 for name in results.REQUIRED}
    row.update(changes)
    return row


def test_write_results_csv_refuses_an_undeclared_column_and_keeps_the_old_file(tmp_path: Path):
    path = tmp_path / store.RESULTS_FILE
    store.write_results_csv(path, [_full_row(accuracy=0.25)])
    old = path.read_bytes()
    with pytest.raises(StorageError) as err:
        store.write_results_csv(path, [_full_row(), _full_row(my_metric=3.0)])
    message = str(err.value)
    assert "\n" not in message and "row 1" in message and "'my_metric'" in message
    assert path.read_bytes() == old  # nothing half-written, the old table kept
    assert [p.name for p in tmp_path.iterdir()] == [store.RESULTS_FILE]


def test_write_results_csv_refuses_a_missing_required_column(tmp_path: Path):
    row = _full_row()
    del row["split"]
    with pytest.raises(StorageError, match="lacks required column 'split'.*'evaluate'"):
        store.write_results_csv(tmp_path / store.RESULTS_FILE, [row])
    assert not (tmp_path / store.RESULTS_FILE).exists()
    # Optional columns (FLOPs, costs) may be absent; the written order is the schema's.
    shuffled = dict(reversed(list(_full_row(peak_memory_bytes=7).items())))
    store.write_results_csv(tmp_path / store.RESULTS_FILE, [shuffled])
    columns = list(pd.read_csv(tmp_path / store.RESULTS_FILE).columns)
    assert columns == [c.name for c in results.COLUMNS if c.name in shuffled]


def test_peak_memory_is_the_maximum_over_the_measured_batches():
    """A row measured over a batch of 4 and one of 12 images: its peak is the 12-image pass's
    (measured alone, independently), its median the mean of the two passes' peaks."""
    from harness.contract import EvalSpec
    from harness.costs.measure import peak_of_pass

    model = create_model("resnet", depth=8)
    model.eval()
    small, large = torch.randn(4, 3, 32, 32), torch.randn(12, 3, 32, 32)
    rows = [{"eval_mode": "standard", "execution": "masked", "threshold": None}]
    add_cost_columns(model, small, rows, random_seed=0, warmup=0, repeats=1, memory_batches=[large])
    spec = EvalSpec("standard", "masked")
    alone_small = peak_of_pass(model, small, spec, None).peak_bytes
    alone_large = peak_of_pass(model, large, spec, None).peak_bytes
    assert alone_large > alone_small
    row = rows[0]
    assert row["memory_batches"] == 2 and row["cost_batch_size"] == 4
    assert row["peak_memory_bytes"] == alone_large
    assert row["peak_memory_median_bytes"] == (alone_small + alone_large) / 2
