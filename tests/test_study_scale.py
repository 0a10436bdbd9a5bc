"""The shortcuts that keep the harness's own cost flat as a study grows (issue 24, item 3) give
the answers of the slow paths they replaced: one-row CSV reading, matching by distinct value,
libyaml, meta-device plan checks, and figures that draw a bounded sample of a large study."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_report import _act_row

from harness.config import SAFE_LOADER, load_yaml
from harness.errors import ConfigError
from harness.presets import PRESET_DIR
from harness.report import aggregate, load_per_image, load_results
from harness.report.aggregate import MAX_MEMORY_BARS, memory_figure
from harness.report.compare import _equal, _matching
from harness.report.load import _first_row
from harness.study import _model_to_check

ROOT = Path(__file__).resolve().parents[1]


def test_first_row_types_cells_as_pandas_reads_one_row(tmp_path: Path):
    """Every kind of cell a results table holds: ints, floats (incl. exponents, nan text),
    booleans, empty cells (kept as ""), strings that look almost numeric, JSON."""
    table = pd.DataFrame(
        {
            "depth": [20],
            "tau": [0.01],
            "flops": [4.1e7],
            "verified": [True],
            "gathered": [False],
            "empty": [""],
            "label": ["ACT"],
            "version": ["2353ad4"],
            "mixed": ["1e"],
            "config": ['{"a": 1, "b": [1, 2]}'],
            "neg": [-3],
        }
    )
    path = tmp_path / "results.csv"
    table.to_csv(path, index=False)
    expected = pd.read_csv(path, nrows=1, keep_default_na=False).iloc[0].to_dict()
    got = _first_row(path)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert type(got[key]) is type(value.item() if hasattr(value, "item") else value), key
        assert got[key] == value, key


def test_first_row_of_committed_results_equals_pandas():
    """On real tables of the committed studies (every column a run writes)."""
    paths = sorted((ROOT / "results").glob("*/trials/*/results.csv"))[:20]
    assert paths, "the committed studies hold per-trial results tables"
    for path in paths:
        expected = pd.read_csv(path, nrows=1, keep_default_na=False).iloc[0].to_dict()
        got = _first_row(path)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            plain = value.item() if hasattr(value, "item") else value
            if isinstance(plain, float) and math.isnan(plain):
                assert math.isnan(got[key]), (path, key)
            else:
                assert got[key] == plain and type(got[key]) is type(plain), (path, key)


@pytest.mark.parametrize("wanted", ["0.01", "act", "ACT", "none", "", "20", "1e-2", "true"])
def test_matching_by_distinct_value_equals_matching_every_row(wanted: str):
    """_matching decides once per distinct value; it must select exactly the rows the
    element-wise comparison selects, missing values (None, NaN) included."""
    columns = [
        pd.Series([0.01, 0.03, np.nan, 0.01, 0.1] * 3),
        pd.Series(["act", "ACT", None, "pact", "act"] * 3),
        pd.Series(["act", "ACT", None, "pact", "act"] * 3, dtype=object),
        pd.Series([20, 20, 56, 110, 20] * 3),
        pd.Series([True, False, True, True, False] * 3),
    ]
    for column in columns:
        slow = column.map(lambda v, w=wanted: _equal(v, w)).astype(bool)
        assert _matching(column, wanted).tolist() == slow.tolist(), (column.dtype, wanted)


def test_libyaml_reads_every_shipped_preset_as_pure_python_yaml_does(tmp_path: Path):
    files = sorted(PRESET_DIR.glob("*.yaml")) + sorted((ROOT / "results").glob("*/study.yaml"))
    assert len(files) > 5
    for path in files:
        assert load_yaml(path) == yaml.load(path.read_text(), Loader=yaml.SafeLoader), path
    # YAML 1.1 as before: "010" is octal 8, "yes" a boolean, "1e3" and "1.0e3" strings (a
    # 1.1 float needs the exponent's sign), "1.0e+3" a float
    text = tmp_path / "x.yaml"
    text.write_text("a: 010\nb: yes\nc: 1e3\nd: 1.0e3\ne: 1.0e+3\n")
    assert load_yaml(text) == {"a": 8, "b": True, "c": "1e3", "d": "1.0e3", "e": 1000.0}
    assert load_yaml(text) == yaml.load(text.read_text(), Loader=yaml.SafeLoader)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml(bad)
    assert SAFE_LOADER in (yaml.SafeLoader, getattr(yaml, "CSafeLoader", None))


def _config(method: str, depth: int, **method_config):
    from harness.config import RunConfig, from_dict

    tree = {"method": method, "method_config": method_config, "model": {"depth": depth}}
    return from_dict(RunConfig, tree)


@pytest.mark.parametrize("method", ["resnet", "act", "pact", "sact", "spatial_pact"])
def test_plan_check_builds_on_meta_the_architecture_of_the_real_build(method: str):
    """The plan's check builds structure only (no storage, no initialisation), the same
    parameters and buffers as the trial's real build, at a depth where units per block
    matter (110: 18 per block)."""
    from harness.models import build_model

    cfg = _config(method, 110)
    checked = _model_to_check(cfg, None, None)
    real = build_model(cfg)
    assert all(p.is_meta for p in checked.parameters())
    shapes = {k: tuple(v.shape) for k, v in checked.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in real.state_dict().items()}


def test_plan_check_builds_for_real_what_meta_cannot_build_and_still_refuses_bad_configs(
    monkeypatch: pytest.MonkeyPatch,
):
    """A constructor that reads a tensor's value (``.item()``) cannot run on meta: the check
    then builds it for real (and passes); a config the method refuses is refused either way."""
    import harness.study as study

    calls = []
    real_build = study.build_model

    def reads_a_value(cfg, num_classes=None):
        model = real_build(cfg, num_classes=num_classes)
        calls.append(next(model.parameters()).device.type)
        float(next(model.parameters()).flatten()[0].item())  # fails on meta
        return model

    monkeypatch.setattr(study, "build_model", reads_a_value)
    model = _model_to_check(_config("act", 20), None, None)
    assert calls == ["meta", "cpu"] and not next(model.parameters()).is_meta
    with pytest.raises(ConfigError, match="tau"):
        _model_to_check(_config("act", 20, tau=-1.0), None, None)
    assert torch.empty(1).device.type == "cpu"  # the meta context did not leak


def test_memory_figure_draws_a_bounded_even_sample_and_says_so(tmp_path: Path):
    """A study of 150 ACT configurations: MAX_MEMORY_BARS bars evenly spaced over the drawing
    order (first and last kept), a note saying how many, the table keeping all."""
    rows = [
        _act_row(round(0.001 * (i + 1), 6), 0, 0.8, 1e8, peak_memory_bytes=(i + 1) * 2**20)
        for i in range(150)
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    frame = load_results([tmp_path / "results.csv"])
    table = aggregate(frame)
    figure = memory_figure(table, frame)
    assert len(figure.bars) == MAX_MEMORY_BARS < 150
    means = figure.bars["mean MiB"].tolist()
    assert means[0] == 1.0 and means[-1] == 150.0 and means == sorted(means)
    steps = np.diff(means)
    assert steps.min() >= 2 and steps.max() <= 3  # even: 149 / 59 apart
    assert figure.notes[-1].startswith(f"{MAX_MEMORY_BARS} of 150 configurations shown")
    assert table["peak_memory_bytes"].notna().sum() == 150


def test_a_study_records_head_is_read_without_its_trials(tmp_path: Path):
    """The report reads a study.yaml's declared margin and comparisons only: the keys before
    ``trials``, exactly as a whole read gives them; a file that puts ``trials`` first (hand
    written) or whose head is no mapping is read whole."""
    committed = sorted((ROOT / "results").glob("*/study.yaml"))
    assert committed
    for path in committed:
        whole = load_yaml(path)
        head = load_yaml(path, before_key="trials")
        assert "trials" in whole and "trials" not in head
        assert head == {k: v for k, v in whole.items() if k != "trials"}
        assert head.get("comparisons") == whole.get("comparisons")
    first = tmp_path / "first.yaml"
    first.write_text("trials:\n- {name: a}\nequivalence_margin: 2.0\n")
    assert load_yaml(first, before_key="trials") == {
        "trials": [{"name": "a"}],
        "equivalence_margin": 2.0,
    }
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\ntrials:\n")
    with pytest.raises(ConfigError, match="is not valid YAML|must hold a mapping"):
        load_yaml(scalar, before_key="trials")


def _spatial_run(tmp_path: Path) -> Path:
    """A committed spatial run (SACT on CIFAR-10, maps and thumbnails stored)."""
    import shutil

    source = ROOT / "results" / "pact_curve" / "trials" / "sact_d20_tau0.01_s0"
    run = tmp_path / "run"
    shutil.copytree(source, run)
    return run


def test_maps_are_read_only_when_drawn_and_equal_the_archive(tmp_path: Path):
    from harness.report.load import _LAZY, LAZY_MEMBERS

    run = _spatial_run(tmp_path)
    ((label, arrays),) = load_per_image([run])
    lazy = [name for name in LAZY_MEMBERS if name in arrays]
    assert lazy and all(dict.__getitem__(arrays, name) is _LAZY for name in lazy)
    assert arrays["units"].shape[0] > 0  # read at load
    with np.load(run / "per_image.npz") as stored:
        for name in lazy:
            assert np.array_equal(arrays[name], stored[name]), name
            assert np.array_equal(arrays.get(name), stored[name]), name


def test_a_map_member_corrupt_inside_a_valid_archive_drops_that_run_with_a_warning(
    tmp_path: Path,
):
    """The archive's directory reads (so loading succeeds) but the units_map bytes are
    damaged: the report warns, draws no maps of that run and still writes report.md."""
    import zipfile

    from harness.report import make_report

    run = _spatial_run(tmp_path)
    path = run / "per_image.npz"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("units_map.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 200, start + 260):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    warnings: list[str] = []
    written = make_report([run], tmp_path / "report", warn=warnings.append)
    assert any(w.startswith(f"report: skipping {path}: ") for w in warnings), warnings
    assert (tmp_path / "report" / "report.md") in written
    assert not any("ponder_maps" in p.name for p in written)  # its only spatial run dropped
