import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

from memorize.cli import main
from memorize.config import to_dict
from memorize.generate import read_samples


def test_train_then_sample_on_digits(tiny_cfg, tmp_path, capsys):
    config_file = tmp_path / "cell.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(tiny_cfg)))
    cell = tmp_path / "cell"
    assert main(["train", str(config_file), "--out", str(cell), "--quiet"]) == 0
    assert (cell / "checkpoints" / "step-0000030.pt").is_file() and (cell / "loss.csv").is_file()
    assert (cell / "subset.npz").is_file() and (cell / "config.yaml").is_file()

    assert main(["sample", str(cell), "--num", "16", "--batch-size", "4", "--name", "b4", "--quiet"]) == 0
    assert main(["sample", str(cell), "--num", "16", "--batch-size", "16", "--name", "b16", "--quiet"]) == 0
    a, b = read_samples(cell / "samples" / "b4.npz"), read_samples(cell / "samples" / "b16.npz")
    assert a["samples"].shape == (16, 1, 8, 8) and a["samples"].dtype == np.float32
    assert np.abs(a["samples"]).max() <= 1.0
    # the same samples whatever the batch size, up to float rounding (batched convolutions round differently at
    # some thread counts); different noise would differ by O(1)
    np.testing.assert_allclose(a["samples"], b["samples"], rtol=0, atol=1e-5)
    assert np.array_equal(a["seeds"], b["seeds"])
    assert a["settings"]["sampler"] == "heun" and a["settings"]["checkpoint_step"] == 30
    assert (cell / "samples" / "b4.png").is_file()

    # same settings again: kept as is; other settings under the same name: refused, file untouched
    before = (cell / "samples" / "b4.npz").stat().st_mtime_ns
    assert main(["sample", str(cell), "--num", "16", "--batch-size", "4", "--name", "b4", "--quiet"]) == 0
    assert main(["sample", str(cell), "--num", "8", "--name", "b4", "--quiet"]) == 2
    assert "other settings (num)" in capsys.readouterr().err
    assert (cell / "samples" / "b4.npz").stat().st_mtime_ns == before


def test_sample_draws_from_the_checkpoint_asked_for(tiny_cfg, tmp_path, capsys):
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, keep_all_checkpoints=True))
    config_file = tmp_path / "cell.yaml"
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    cell = tmp_path / "cell"
    assert main(["train", str(config_file), "--out", str(cell), "--quiet"]) == 0
    common = ["sample", str(cell), "--num", "8", "--quiet"]
    assert main(common) == 0
    assert main(common + ["--checkpoint", "30", "--name", "at30"]) == 0
    assert main(common + ["--checkpoint", "10", "--name", "at10"]) == 0
    latest, at30, at10 = (read_samples(cell / "samples" / f"{n}.npz") for n in ("trained", "at30", "at10"))
    assert [s["settings"]["checkpoint_step"] for s in (latest, at30, at10)] == [30, 30, 10]
    assert np.array_equal(latest["samples"], at30["samples"])  # the latest checkpoint is step 30
    assert np.abs(at10["samples"] - at30["samples"]).max() > 1e-3  # the same noise through other weights
    capsys.readouterr()
    assert main(common + ["--checkpoint", "15", "--name", "at15"]) == 2
    assert "has no checkpoint at step 15 (kept: 10, 20, 30)" in capsys.readouterr().err
    assert main(common + ["--checkpoint", "10", "--denoiser", "empirical"]) == 2
    assert "--checkpoint: only for the trained denoiser, not --denoiser empirical" in capsys.readouterr().err
    assert sorted(p.name for p in (cell / "samples").glob("*.npz")) == ["at10.npz", "at30.npz", "trained.npz"]


def test_training_without_held_out_images_says_so_instead_of_a_nan_loss(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "cell"), "--quiet", "--set", "train.steps=1",
                 "--set", "data.n_train=16", "--set", "data.n_heldout=0", "--set", "model.channels=8"]) == 0
    line = capsys.readouterr().out.strip()
    assert "(training images), none on held-out images (data.n_heldout: 0); checkpoint and loss.csv in" in line
    assert "nan" not in line


def test_empirical_denoiser_samples_reproduce_training_images(tmp_path):
    from memorize.cell import CellPaths, load_cell_data

    cell = tmp_path / "cell"
    assert main(["train", "--out", str(cell), "--quiet", "--set", "train.steps=1", "--set", "data.n_train=16"]) == 0
    assert main(["sample", str(cell), "--denoiser", "empirical", "--num", "8", "--quiet"]) == 0
    samples = read_samples(cell / "samples" / "empirical.npz")["samples"].reshape(8, -1)
    from memorize.cell import read_config

    train = load_cell_data(read_config(cell), CellPaths(cell)).train.reshape(16, -1).numpy()
    dist = np.linalg.norm(samples[:, None] - train[None], axis=-1)
    assert np.all(dist.min(1) < 1e-3)


def test_missing_dataset_file_names_the_expected_path(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "cell"), "--set", "data.name=cifar10",
                 "--set", f"data.root={tmp_path}/data"])
    assert code == 2
    assert f"expected file {tmp_path}/data/cifar-10-batches-py/data_batch_1" in capsys.readouterr().err
    assert not (tmp_path / "cell" / "config.yaml").exists()


def test_score_writes_table_figure_and_summary(tmp_path, capsys):
    import json

    import pandas as pd

    cell = tmp_path / "cell"
    assert main(["train", "--out", str(cell), "--quiet", "--set", "train.steps=1", "--set", "data.n_train=20"]) == 0
    assert main(["sample", str(cell), "--denoiser", "empirical", "--num", "12", "--quiet"]) == 0
    assert main(["score", str(cell), "--samples", "empirical", "--ratio", "1/3", "--threshold", "0.5", "--quiet"]) == 0
    assert "memorized 1.000" in capsys.readouterr().out
    table = pd.read_csv(cell / "scores" / "empirical.csv")
    assert len(table) == 12 and table["memorized_nn"].all() and table["memorized_cos"].all()
    assert table["memorized_ext"].all() and (table["ext_index"] == table["nn_index"]).all()  # copies score ~0
    assert (table["nn_index"] == table["cos_index"]).all() and (table["d1"] < 1e-3).all()
    subset = np.load(cell / "subset.npz")["train"]
    assert (table["nn_dataset_index"] == subset[table["nn_index"]]).all()
    summary = json.loads((cell / "scores" / "empirical.json").read_text())
    assert summary["nn"]["ratio"] == 1.0 and summary["nn"]["ratio_threshold"] == 1 / 3
    assert summary["cos"]["threshold"] == 0.5 and summary["cos"]["embedder"] == "pixel"
    assert summary["nn"]["lo"] == pytest.approx(0.7575, abs=1e-3)  # Wilson lower bound for 12/12
    assert plt.imread(cell / "scores" / "empirical_nn.png").shape[0] > 100  # sample rows over their neighbours
    assert main(["score", str(cell), "--samples", "nothing", "--quiet"]) == 2
    assert "run `memorize sample" in capsys.readouterr().err


def test_threads_last_for_the_command_only_and_absurd_counts_are_refused(tmp_path, capsys, monkeypatch):
    """``main`` runs in a caller's process too (notebooks, tests): ``--threads`` must not outlive the command,
    and a count torch would try to allocate a pool for (10**9 threads: hundreds of GB) is refused."""
    import torch

    import memorize.cli.commands as commands

    before, seen = torch.get_num_threads(), []
    monkeypatch.setattr(commands, "cmd_train", lambda args: seen.append(torch.get_num_threads()))
    assert main(["train", "--out", str(tmp_path / "c"), "--threads", "3"]) == 0
    assert seen == [3] and torch.get_num_threads() == before
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--out", str(tmp_path / "c"), "--threads", str(10**9)])
    assert exit_.value.code == 2 and "from 1 to 1024" in capsys.readouterr().err
    assert seen == [3] and torch.get_num_threads() == before


def test_python_dash_m_memorize_is_the_memorize_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "memorize", "sweep", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("usage: memorize sweep"), done.stderr


def test_version_names_the_code_a_sweeps_results_record(capsys):
    """`memorize --version`: its code hash is the one a sweep's results carry in their `code` column."""
    import re

    import torch

    from memorize.sweep.snapshot import package_dir, source_hash

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"memorize \S+.* at \S+: code [0-9a-f]{16}, .+; torch \S+, .+\n", out), out
    assert f"code {source_hash(package_dir())}," in out and f"torch {torch.__version__}," in out


def test_a_sampling_flag_the_chosen_sampler_does_not_read_is_named(tmp_path, capsys):
    """``memorize sample --eta 0.5`` with the cell's heun sampler drew heun's samples and filed them under a
    setting that changed nothing; one line, before anything is drawn, and the sampler that reads it still takes it."""
    from tests.conftest import trained_tiny_cell

    cell = trained_tiny_cell(tmp_path / "cell", steps=1)
    before = sorted((cell / "samples").iterdir()) if (cell / "samples").is_dir() else []
    for flags, said in ((["--eta", "0.5"], "--eta: read by the ddim sampler only, not heun"),
                        (["--sampler", "ddim", "--churn-sigma-max", "2"],
                         "--churn-sigma-max: read by the heun sampler only, not ddim")):
        assert main(["sample", str(cell), *flags, "--num", "2", "--name", "x", "--quiet"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"memorize sample: error: {said} (the cell's sampler, or --sampler)"]
    assert (sorted((cell / "samples").iterdir()) if (cell / "samples").is_dir() else []) == before
    assert main(["sample", str(cell), "--sampler", "ddim", "--eta", "0.5", "--num", "2", "--name", "x", "--quiet"]) == 0
