"""The synthetic study generator, the bench's scaling measurement and the grid's trials.csv
bookkeeping (issue 24, item 3): small studies, analytic expectations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness import store
from harness.bench.scaling import ScalingResult, growth, parse_sizes, scaling_lines
from harness.bench.synthetic import (
    IMAGES,
    synthetic_preset,
    write_synthetic_data,
    write_synthetic_study,
)
from harness.errors import ConfigError
from harness.presets import expand, parse_preset
from harness.report import aggregate, load_per_image, load_results
from harness.study import (
    TRIALS_EVENTS,
    TRIALS_TABLE,
    GridOptions,
    Study,
    TrialsTable,
    check_study_folder,
    conclude_study,
    gather_results,
    plan_study,
    study_record,
    write_trials_table,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_data(tmp_path_factory.mktemp("synthetic_data"))


def _plan(tmp_path: Path, data_root: Path, trials: int, name: str = "study") -> Study:
    preset = tmp_path / f"synthetic-{trials}.yaml"
    preset.write_text(yaml.safe_dump(synthetic_preset(trials)))
    options = GridOptions(preset=str(preset), out=str(tmp_path / name), data_root=str(data_root))
    return plan_study(options)


@pytest.mark.parametrize(
    ("trials", "seeds"), [(1, 1), (4, 1), (7, 1), (10, 1), (49, 1), (50, 5), (100, 5), (5000, 5)]
)
def test_a_synthetic_preset_expands_to_exactly_its_trials(trials: int, seeds: int):
    tree = synthetic_preset(trials)
    found = expand(parse_preset(tree))
    assert len(found) == trials
    assert len({t.name for t in found}) == trials
    assert sorted({t.config["seed"] for t in found}) == list(range(seeds))


def test_a_synthetic_preset_needs_a_trial():
    with pytest.raises(ConfigError, match="at least one trial"):
        synthetic_preset(0)


def test_a_synthetic_study_is_a_finished_grid_the_report_reads(tmp_path: Path, data_root: Path):
    study = _plan(tmp_path, data_root, 50)  # 10 experiments x 5 seeds
    written = write_synthetic_study(study.folder, study_record(study))
    assert (written.trials, written.experiments, written.seeds) == (50, 10, 5)
    # every trial is finished as a grid leaves it; the grid's tables follow
    assert study.finished() == [t.name for t in study.trials]
    assert gather_results(study) == study.folder / store.RESULTS_FILE
    write_trials_table(study, {})
    trials = pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False)
    assert (trials["status"] == "finished").all() and len(trials) == 50
    frame = load_results([study.folder])
    assert len(frame) == written.rows
    assert frame["experiment_id"].nunique() == 10
    assert frame.groupby("experiment_id")["seed"].nunique().eq(5).all()
    assert frame["code_version"].nunique() == 1 and (frame["num_images"] == IMAGES).all()
    # each row's per-image correctness is in its run's per_image_correct.npz, same images
    run = study.run_dir(study.trials[0])
    rows = pd.read_csv(run / store.RESULTS_FILE)
    with open(run / store.CORRECT_FILE, "rb") as handle:
        import numpy as np

        with np.load(handle) as stored:
            assert set(stored.files) == set(rows["per_image_key"])
            assert all(stored[k].shape == (IMAGES,) for k in stored.files)
    table = aggregate(frame)
    assert table["experiment_id"].nunique() == 10
    assert len(load_per_image([study.folder])) == 50
    # the stored study is the planned one: --resume finds it the same, with nothing to run
    assert check_study_folder(study, resume=True) == "same"


def test_growth_is_the_log_log_slope():
    sizes = [10, 100, 1000]
    square = growth(sizes, [n * n * 1e-6 for n in sizes])
    assert square["10-100"] == pytest.approx(2.0) and square["fit"] == pytest.approx(2.0)
    linear = growth(sizes, [3e-3 * n for n in sizes])
    assert linear["100-1000"] == pytest.approx(1.0) and linear["fit"] == pytest.approx(1.0)
    assert growth([10, 100], [0.0, 1.0]) == {"10-100": None, "fit": None}


def test_parse_sizes():
    assert parse_sizes("100,10, 1000") == [10, 100, 1000]
    assert parse_sizes(None) == [10, 100, 1000, 5000]
    for bad in ("ten", "0,10", ""):
        with pytest.raises(ConfigError, match="--sizes"):
            parse_sizes(bad)


def test_the_scaling_table_names_each_operation():
    seconds = {op: [0.1, 1.0] for op in ("plan", "trials_rewrite", "gather")}
    result = ScalingResult([10, 100], [100, 1000], [2, 20], seconds)
    result.exponents = {op: growth([10, 100], t) for op, t in seconds.items()}
    lines = scaling_lines(result)
    assert any(line.startswith("gather") and line.rstrip().endswith("1.00") for line in lines)
    assert "10: 2.000 s, 100: 200.0 s" in lines[-1]  # 2n rewrites


# ------------------------------------------------------------------------ trials.csv bookkeeping


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _table(study: Study) -> pd.DataFrame:
    return pd.read_csv(study.folder / TRIALS_TABLE, keep_default_na=False, dtype=str)


def test_the_live_table_logs_each_change_and_rewrites_at_most_every_k_seconds(
    tmp_path: Path, data_root: Path
):
    study = _plan(tmp_path, data_root, 4)
    names = [t.name for t in study.trials]
    study.folder.mkdir(parents=True)
    clock = Clock()
    table = TrialsTable(study, every_s=10.0, clock=clock)
    table.write()
    records: dict[str, dict] = {}
    for i, name in enumerate(names[:3]):  # three trials start at t = 0, 1, 2 s
        clock.now = float(i)
        records[name] = {"status": "running", "node_id": f"node-{i}"}
        table.changed(name, records[name])
    # no rewrite within 10 s: the table is the one written at the start, the log holds 3 lines
    assert list(_table(study)["status"]) == ["pending"] * 4
    assert len(store.read_jsonl(study.folder / TRIALS_EVENTS)) == 3
    clock.now = 10.0  # the fourth change comes 10 s after the last write: it rewrites
    records[names[0]]["status"] = "failed"
    records[names[0]]["error"] = "boom"
    table.changed(names[0], records[names[0]])
    assert list(_table(study)["status"]) == ["failed", "running", "running", "pending"]
    assert list(_table(study)["node_id"]) == ["node-0", "node-1", "node-2", ""]
    assert not (study.folder / TRIALS_EVENTS).exists()
    # a change for a trial the study does not hold is ignored
    table.changed("not_a_trial", {"status": "running"})
    assert not (study.folder / TRIALS_EVENTS).exists()


def test_an_interrupted_launch_leaves_a_correct_table_and_resumes(tmp_path: Path, data_root: Path):
    study = _plan(tmp_path, data_root, 4)
    names = [t.name for t in study.trials]
    study.folder.mkdir(parents=True)
    store.atomic_write_text(study.folder / store.STUDY_FILE, yaml.safe_dump(study_record(study)))
    table = TrialsTable(study, every_s=math.inf)
    table.write()
    records: dict[str, dict] = {}
    for name in names[:2]:
        records[name] = {"status": "running", "node_id": "node-a"}
        table.changed(name, records[name])
    # the first trial finishes: its run directory is written, then the grid hears of it
    record = {"trials": [{"name": names[0], "config": study.trials[0].config, "init_from": None}]}
    write_synthetic_study(tmp_path / "one", record)
    study.run_dir(names[0]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "one" / store.TRIALS_DIR / names[0]).rename(study.run_dir(names[0]))
    records[names[0]].update(status="finished", failures=0)
    table.changed(names[0], records[names[0]])
    # Ctrl+C: the driver concludes; the running trial is interrupted, the table is whole
    outcome = conclude_study(study, records, 1.0, stopped="SIGINT")
    assert outcome.interrupted == [names[1]]
    assert not (study.folder / TRIALS_EVENTS).exists()
    rows = _table(study).set_index("trial_id")
    assert list(rows["status"]) == ["finished", "interrupted", "pending", "pending"]
    assert rows.loc[names[0], "node_id"] == "node-a" and rows.loc[names[0], "failures"] == "0"
    assert json.loads(rows.loc[names[0], "test_accuracy"]) > 0
    # --resume: the same study, the finished trial kept, the three others to run
    assert check_study_folder(study, resume=True) == "same"
    assert study.finished() == [names[0]]
    # the next launch's table starts from the stored one
    again = TrialsTable(study)
    assert again.rows[names[1]]["status"] == "interrupted"
    assert again.rows[names[0]]["status"] == "finished"


def test_a_killed_driver_loses_no_logged_change(tmp_path: Path, data_root: Path):
    study = _plan(tmp_path, data_root, 3)
    names = [t.name for t in study.trials]
    study.folder.mkdir(parents=True)
    table = TrialsTable(study, every_s=math.inf)
    table.write()
    table.changed(names[2], {"status": "failed", "error": "bad input", "failures": 2})
    # killed here (no write); a torn last line of the log is dropped, the rest read back
    with open(study.folder / TRIALS_EVENTS, "a") as handle:
        handle.write('{"trial": "' + names[1])
    write_trials_table(study, {})
    rows = _table(study)
    assert list(rows["status"]) == ["pending", "pending", "failed"]
    assert rows.loc[2, "error"] == "bad input" and rows.loc[2, "failures"] == "2"
