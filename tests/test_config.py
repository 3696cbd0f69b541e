import re

import pytest
import yaml

from memorize.cli import main
from memorize.config import CellConfig, ConfigError, from_dict, load_config, parse_yaml, to_dict


def test_defaults_round_trip_through_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(CellConfig())))
    assert load_config(path) == CellConfig()


def test_misspelled_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown key \(did you mean 'steps'\?\)"):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    ("train:\n  steps: 10\ntrain:\n  lr: 0.01\n",  # PyYAML alone keeps the second section, dropping steps
     r"/c\.yaml: not valid YAML at line 3, column 1: key 'train' given twice \(first at line 1\)"),
    ("train: {steps: 10, lr: 0.01, steps: 20}\n",
     r"/c\.yaml: not valid YAML at line 1, column 30: key 'steps' given twice \(first at column 9\)"),
])
def test_a_key_given_twice_is_refused_with_both_places(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_merge_keys_may_still_be_overridden_and_equal_values_in_other_mappings_are_fine():
    text = "base: &b {steps: 10, lr: 0.01}\ntrain: {<<: *b, steps: 20}\nsample: {steps: 10}\n"
    assert parse_yaml(text, "x") == {"base": {"steps": 10, "lr": 0.01}, "train": {"steps": 20, "lr": 0.01},
                                     "sample": {"steps": 10}}


@pytest.mark.parametrize("item, message", [
    ("train.steps=[1,", r"^--set 'train\.steps=\[1,': not valid YAML at column 4: "),
    ("train={steps: 1, steps: 2}", r"^--set 'train=\{steps: 1, steps: 2\}': not valid YAML at column 12: "
                                   r"key 'steps' given twice \(first at column 2\)"),
])
def test_a_malformed_set_value_is_one_line_naming_the_item(tmp_path, capsys, item, message):
    assert main(["train", "--out", str(tmp_path / "cell"), "--set", item]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "cell").exists()
    assert re.search(message, err.removeprefix("memorize train: error: "))


@pytest.mark.parametrize("data, field", [
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"model": {"channel_mult": [1, 0]}}, "model.channel_mult"),
    ({"data": {"name": "imagenet"}}, "data.name"),
    ({"data": {"name": "cifar10"}}, "data.root"),
    ({"sample": {"sampler": "dpm"}}, "sample.sampler"),
    ({"data": {"gmm": {"rank": 99, "dim": 4}}}, "data.gmm.rank"),
    ({"seed": True}, "seed"),
    ({"seed": 10**20}, "seed: must be in [0, 2^63)"),  # torch's generators overflowed
    ({"data": {"split_seed": -5}}, "data.split_seed: must be >= 0"),  # numpy's words, without the field
    ({"data": {"gmm": {"seed": 10**20}}}, "data.gmm.seed: must be in [0, 2^63)"),  # torch's "Overflow" alone
    ({"data": {"gmm": {"seed": -1}}}, "data.gmm.seed: must be in [0, 2^63)"),  # torch's seed 2^64 - 1
    # the noise levels: the one given is named (--sigma-max 0 was named as sample.sigma_min)
    ({"sample": {"sigma_max": 0}}, "sample.sigma_max: must be above sample.sigma_min (0.002), got 0"),
    ({"sample": {"sigma_min": 0}}, "sample.sigma_min: must be > 0, got 0"),
    ({"sample": {"sigma_min": 100}}, "sample.sigma_max: must be above sample.sigma_min (100), got 80"),
])
def test_bad_values_name_their_field(data, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        from_dict(CellConfig, data)


def test_numeric_strings_become_floats_and_lists_tuples():
    cfg = from_dict(CellConfig, {"train": {"lr": "1e-3"}, "model": {"channel_mult": [1, 2, 2]}})
    assert cfg.train.lr == 1e-3 and cfg.model.channel_mult == (1, 2, 2)


def test_cli_reports_bad_key_and_exits_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  n_trian: 10\n")
    assert main(["train", str(path), "--out", str(tmp_path / "cell")]) == 2
    err = capsys.readouterr().err
    assert "data.n_trian: unknown key" in err and "n_train" in err
    assert not (tmp_path / "cell").exists()


def test_cli_set_overrides(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "cell"), "--set", "train.stesp=3"]) == 2
    assert "train.stesp" in capsys.readouterr().err


@pytest.mark.parametrize("grid, message", [
    ({"data.n_train": 8}, r"grid\.data\.n_train: expected a list, got 8$"),  # the axis given one value
    ([{"data.n_train": 8}], r"grid\[0\]\.data\.n_train: expected a list, got 8$"),
    (5, r"grid: expected a mapping or a list, got 5$"),
])
def test_a_union_field_names_the_value_that_fits_none_of_its_types(tmp_path, grid, message):
    """A field of several types (the grid: a mapping of axes or a list of them; sigma_data: a number or
    'auto') reports the error of the type the value was meant as, at the field below it that is wrong."""
    from memorize.sweep import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "grid": grid}))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)
    with pytest.raises(ConfigError, match=r"^diffusion\.sigma_data: expected a number or 'auto', got 'autoo'$"):
        from_dict(CellConfig, {"diffusion": {"sigma_data": "autoo"}})


@pytest.mark.parametrize("field", ["root", "train_indices", "heldout_path"])
def test_an_empty_data_path_is_refused_not_read_as_the_current_directory(tmp_path, monkeypatch, field):
    """``heldout_path: ''`` read the working directory's images as the held-out set (and ``train_indices: ''``
    failed on '.' as an index file): an empty path is named, as a YAML field and from the command line."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^data\.{field}: an empty path: give a file or directory, or null$"):
        from_dict(CellConfig, {"data": {"name": "npz", "root": "x.npz", field: ""}})
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  {field}: ''\n")
    assert main(["train", str(config), "--out", str(tmp_path / "cell")]) == 2
    assert not (tmp_path / "cell").exists()


@pytest.mark.parametrize("name", ["digits", "gmm"])
def test_a_root_beside_a_dataset_that_reads_no_files_is_refused_where_given(tmp_path, capsys, name):
    """``name: digits, root: my.npz`` meant the npz file: the training command, a sweep's grid point and a
    notebook's ``data`` mapping each refuse it before anything is written, while a grid over ``data.name`` may
    share one root among the datasets that read it, and a cell recorded with such a root is still read."""
    import numpy as np

    from memorize.api import score_samples
    from memorize.sweep import expand, load_spec
    from memorize.sweep.spec import check_data

    message = f"data.root: dataset '{name}' reads no files"
    assert main(["train", "--out", str(tmp_path / "cell"), "--set", f"data.name={name}",
                 "--set", "data.root=my.npz"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "cell").exists()
    with pytest.raises(ConfigError, match=message):
        score_samples(np.zeros((4, 8, 8)), tmp_path / "notebook", data={"name": name, "root": "my.npz"})
    assert not (tmp_path / "notebook").exists()
    path = tmp_path / "s.yaml"
    arch = "mlp" if name == "gmm" else "unet"  # a U-Net takes images, not the mixture's vectors
    path.write_text(yaml.safe_dump({"name": "s", "base": {"data": {"name": name, "root": "my.npz"},
                                                          "model": {"arch": arch}},
                                    "grid": {"data.n_train": [8]}}))
    with pytest.raises(ConfigError, match=r"^grid point \(data\.n_train=8\): " + message):
        check_data(expand(load_spec(path)))
    assert [p.config.data.name for p in expand(load_spec(path))] == [name]  # a spec read back from a sweep
    grid = expand(load_spec(path, overrides={"grid.data.name": [name, "npz"]}))
    check_data(grid[:1])
    assert from_dict(CellConfig, {"data": {"name": name, "root": "my.npz"}}).data.root == "my.npz"


def test_a_sweep_spec_given_as_a_cells_config_and_the_reverse_say_which_command_reads_them(tmp_path, capsys):
    """``memorize train sweeps/digits.yaml`` was "name: unknown key (did you mean 'sample'?)", and a cell's
    config.yaml given to ``memorize sweep run`` was "data: unknown key": each says what the file is and which
    command takes it, before anything is written."""
    from pathlib import Path

    from memorize.config import save_config

    spec = Path(__file__).resolve().parents[1] / "sweeps" / "digits.yaml"
    assert main(["train", str(spec), "--out", str(tmp_path / "cell")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"memorize train: error: {spec}: a sweep spec (base, grid), not a cell's config: run it with `memorize sweep "
        f"run {spec} --out DIR`, or give its base: section as a file of its own"]
    config = tmp_path / "config.yaml"
    save_config(CellConfig(), config)
    assert main(["sweep", "run", str(config), "--out", str(tmp_path / "sweep"), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"memorize sweep run: error: {config}: a cell's config (data, model, diffusion, train, sample), not a sweep "
        f"spec: train it with `memorize train {config} --out DIR`, or put it under base: in a spec with a grid: (see "
        f"sweeps/digits.yaml)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    # a file with both kinds of keys is a misspelled one of them: the unknown keys are named as before
    config.write_text("base: {}\ndata: {n_train: 8}\n")
    with pytest.raises(ConfigError, match="base: unknown key"):
        load_config(config)
