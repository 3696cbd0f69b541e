"""Scoring samples made elsewhere (a folder of images, .npy, .pt) against a training set named by data.*."""

import json

import numpy as np
import pytest
import torch

from memorize.cli import main
from memorize.data.sample_files import read_samples_file, to_unit_range


def _npz_dataset(tmp_path, count: int = 150):
    images = np.random.default_rng(0).integers(0, 256, size=(count, 3, 8, 8), dtype=np.uint8)
    path = tmp_path / "train.npz"
    np.savez(path, images=images)
    return images, ["--set", "data.name=npz", "--set", f"data.root={path}", "--set", "data.n_train=40",
                    "--set", "data.n_heldout=100"]


def _png_folder(folder, images):
    from PIL import Image

    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{k:03d}.png")


def test_a_folder_of_pngs_is_scored_copies_found_and_novel_images_not(tmp_path, capsys):
    from memorize.cell import CellPaths, load_cell_data, read_config

    images, sets = _npz_dataset(tmp_path)
    # the training subset is a fixed permutation's first 40: read it from a first scoring directory
    np.save(tmp_path / "one.npy", images[:1].astype(np.float32) / 127.5 - 1)
    assert main(["score", str(tmp_path / "one.npy"), "--out", str(tmp_path / "probe"), "--features", "pixel",
                 "--threshold", "0.9", "--quiet"] + sets) == 0
    probe = tmp_path / "probe"
    train = load_cell_data(read_config(probe), CellPaths(probe)).train.numpy()
    copies = np.round((train[:5] + 1) * 127.5).astype(np.uint8)
    novel = np.random.default_rng(1).integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    _png_folder(tmp_path / "pngs", np.concatenate([copies, novel]))
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "pngs"), "--out", str(out), "--features", "pixel", "--threshold", "0.9",
                 "--quiet"] + sets) == 0
    assert "value range 0-255" in capsys.readouterr().out
    table = __import__("pandas").read_csv(out / "scores" / "trained.csv")
    assert table.memorized_nn.tolist() == [True] * 5 + [False] * 5
    assert table.nn_index[:5].tolist() == [0, 1, 2, 3, 4] and (table.d1[:5] < 1e-6).all()
    summary = json.loads((out / "scores" / "trained.json").read_text())
    assert summary["nn"]["ratio"] == 0.5 and summary["n_heldout"] == 100
    assert (out / "scores" / "trained_nn.png").is_file()


@pytest.mark.parametrize("layout", ["M,C,H,W", "M,H,W,C", "M,H,W", "torch", "torch bf16"])
def test_the_notebook_api_scores_an_array_in_each_documented_layout(tmp_path, layout):
    """mz.score_samples takes an array (M, C, H, W), (M, H, W, C) or (M, H, W), as a file is read, and a torch
    tensor as its numpy array (one that requires grad, or in bf16, where the digits' values k/8 - 1 are
    exact): copies of training digits are found as copies, the same whatever the layout."""
    import memorize.api as mz
    from memorize.cell import CellPaths, load_cell_data, read_config

    data = {"name": "digits", "n_train": 32, "n_heldout": 100}
    options = {"features": "pixel", "threshold": 0.9}
    mz.score_samples(np.zeros((1, 1, 8, 8), np.float32), tmp_path / "probe", data, **options)
    train = load_cell_data(read_config(tmp_path / "probe"), CellPaths(tmp_path / "probe")).train.numpy()
    novel = np.random.default_rng(1).uniform(-1, 1, size=(4, 1, 8, 8)).astype(np.float32)
    samples = np.concatenate([train[:4], novel])  # (M, 1, H, W) in [-1, 1]
    given = {"M,C,H,W": samples, "M,H,W,C": samples.transpose(0, 2, 3, 1), "M,H,W": samples[:, 0],
             "torch": torch.from_numpy(samples).requires_grad_(),
             "torch bf16": torch.from_numpy(samples).bfloat16()}[layout]
    summary = mz.score_samples(given, tmp_path / "scored", data, **options)
    table = __import__("pandas").read_csv(tmp_path / "scored" / "scores" / "samples.csv")
    assert table.memorized_nn.tolist() == [True] * 4 + [False] * 4 and table.nn_index[:4].tolist() == [0, 1, 2, 3]
    assert summary["nn"]["ratio"] == 0.5 and summary["n_samples"] == 8


@pytest.mark.parametrize("samples, error, message", [
    (np.zeros((0, 1, 8, 8), np.float32), "DatasetError", r"^the samples array: holds no samples$"),
    (np.zeros((4, 1, 8, 8), complex), "DatasetError",
     r"^the samples array: samples of dtype complex128; expected real numbers"),
    (np.zeros((4, 1, 8, 8), bool), "DatasetError", r"^the samples array: samples of dtype bool; expected real numbers"),
    ([[0.5, 0.5]], "TypeError",
     r"^samples: expected an array \(numpy or torch\), an image folder or a file, got list$"),
])
def test_the_notebook_api_refuses_what_is_not_samples_and_writes_nothing(tmp_path, samples, error, message):
    import memorize.api as mz

    with pytest.raises(Exception, match=message) as caught:
        mz.score_samples(samples, tmp_path / "scored", {"name": "digits", "n_train": 32, "n_heldout": 100})
    assert type(caught.value).__name__ == error and not (tmp_path / "scored").exists()


def test_the_notebook_api_names_a_mistyped_option_before_it_writes(tmp_path):
    """An option score_cell does not take (``thresold=0.9``) was its TypeError after the samples were imported;
    now score_samples names it with the options there are, and nothing is written."""
    import memorize.api as mz

    with pytest.raises(TypeError, match=r"^score_samples: unknown option 'thresold'; the options are device, "
                                        r"embedder, features, features_cache, progress, ratio, target_fpr, threshold$"):
        mz.score_samples(np.zeros((4, 1, 8, 8), np.float32), tmp_path / "scored", {"name": "digits", "n_train": 32},
                         thresold=0.9)
    assert not (tmp_path / "scored").exists()


def test_the_notebook_api_refuses_an_empty_path_and_writes_nothing(tmp_path, monkeypatch):
    """``out=""`` wrote a cell's files into the working directory, and ``samples=""`` read its images (Path("") is
    ".")."""
    import memorize.api as mz

    monkeypatch.chdir(tmp_path)
    data = {"name": "digits", "n_train": 16}
    for samples, out, field in ((np.zeros((4, 8, 8), np.float32), "", "out"), ("", "scored", "samples")):
        with pytest.raises(ValueError, match=rf"^score_samples: {field} is an empty string; expected a file or "
                                             rf"directory$"):
            mz.score_samples(samples, out, data, threshold=0.9)
    assert list(tmp_path.iterdir()) == []


def test_value_ranges_map_onto_minus_one_to_one():
    p = __import__("pathlib").Path("x")
    u8 = np.array([[[[0, 255]]]], dtype=np.uint8)
    assert to_unit_range(u8, "auto", p)[0].tolist() == [[[[-1.0, 1.0]]]]
    unit = np.array([[[[0.0, 0.5, 1.0]]]], dtype=np.float32)
    got, used = to_unit_range(unit, "auto", p)
    assert used == "0-1" and got.tolist() == [[[[-1.0, 0.0, 1.0]]]]
    assert to_unit_range(unit * 2 - 1, "auto", p)[1] == "-1-1"
    assert to_unit_range(unit * 255, "0-255", p)[0].tolist() == [[[[-1.0, 0.0, 1.0]]]]
    with pytest.raises(FileNotFoundError, match=r"fit no usual range; say which with --range"):
        to_unit_range(unit * 7, "auto", p)
    with pytest.raises(FileNotFoundError, match="outside the stated range 0-1"):
        to_unit_range(unit * 2 - 1, "0-1", p)


def test_a_pt_tensor_in_channels_last_is_read(tmp_path):
    torch.save(torch.rand(4, 8, 8, 3), tmp_path / "s.pt")
    samples, used = read_samples_file(tmp_path / "s.pt")
    assert samples.shape == (4, 3, 8, 8) and used == "0-1" and samples.dtype == np.float32


def _bad_folder(t):
    (t / "pngs").mkdir()
    (t / "pngs" / "a.png").write_bytes(b"not a png at all")
    return t / "pngs"


def _mixed_sizes(t):
    from PIL import Image

    (t / "pngs").mkdir()
    Image.new("RGB", (8, 8)).save(t / "pngs" / "a.png")
    Image.new("RGB", (9, 8)).save(t / "pngs" / "b.png")
    return t / "pngs"


def _png16_folder(t):
    from PIL import Image

    (t / "pngs").mkdir()
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(t / "pngs" / "a.png")
    return t / "pngs"


def _cut(t, name, save):
    save(t / "whole")
    whole = next(t.glob("whole*"))
    (t / name).write_bytes(whole.read_bytes()[:150])
    return t / name


@pytest.mark.parametrize("name, make, expected", [
    ("empty folder", lambda t: (t / "empty").mkdir() or t / "empty", r"empty: no images"),
    ("corrupt image", _bad_folder, r"a\.png is not a readable image \(UnidentifiedImageError: .*\); remove it or "
     r"replace it$"),
    ("shapes differ", _mixed_sizes, r"b\.png: shape \(3, 8, 9\), but a\.png has \(3, 8, 8\)"),
    ("wrong shape", lambda t: np.save(t / "s.npy", np.zeros((3, 1, 8, 8), np.float32)) or t / "s.npy",
     r"s\.npy: samples of shape \(1, 8, 8\), but the training images of npz are \(3, 8, 8\)"),
    ("npy cut short", lambda t: _cut(t, "s.npy", lambda p: np.save(p, np.zeros((3, 3, 8, 8), np.float32))),
     r"s\.npy: not a readable \.npy file of samples \(ValueError: "),
    ("npz cut short", lambda t: _cut(t, "s.npz", lambda p: np.savez(p, samples=np.zeros((3, 3, 8, 8)))),
     r"s\.npz: not a readable \.npz file of samples \(BadZipFile: "),
    ("pt of junk", lambda t: (t / "s.pt").write_bytes(b"junk" * 10) and t / "s.pt",
     r"s\.pt: not a readable \.pt file of samples \("),
    ("npz named npy", lambda t: np.savez(t / "s.npz", samples=np.zeros((3, 3, 8, 8))) or
     (t / "s.npz").rename(t / "s.npy") or t / "s.npy", r"s\.npy: holds a NpzFile, not the one array a \.npy file"),
    ("npz of nothing", lambda t: np.savez(t / "s.npz") or t / "s.npz", r"s\.npz: holds no arrays; expected an array"),
    ("16-bit pngs", _png16_folder, r"a\.png: image mode I;16, more than 8 bits per channel"),
    ("no training set section", None, r"--set train\.steps: samples made elsewhere take data\.\* fields only"),
])
def test_bad_samples_are_one_line_errors_and_nothing_is_written(tmp_path, capsys, name, make, expected):
    import re

    _, sets = _npz_dataset(tmp_path)
    path = make(tmp_path) if make else tmp_path / "train.npz"
    extra = ["--set", "train.steps=3"] if make is None else []
    assert main(["score", str(path), "--out", str(tmp_path / "scored"), "--quiet"] + sets + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(expected, err), err
    assert not (tmp_path / "scored").exists()


def test_an_index_file_names_the_training_set_and_held_out_images_come_from_the_rest(tmp_path, capsys):
    from memorize.cell import CellPaths, load_cell_data, read_config

    images, _ = _npz_dataset(tmp_path)
    images[7] = images[3]  # an exact copy of a training image elsewhere in the dataset: never held out
    np.savez(tmp_path / "train.npz", images=images)
    chosen = np.array([3, 11, 40, 2, 149, 60])
    (tmp_path / "idx.txt").write_text("\n".join(map(str, chosen)) + "\n")
    sets = ["--set", "data.name=npz", "--set", f"data.root={tmp_path / 'train.npz'}", "--set", "data.n_train=6",
            "--set", "data.n_heldout=100", "--set", f"data.train_indices={tmp_path / 'idx.txt'}"]
    np.save(tmp_path / "one.npy", images[:1].astype(np.float32) / 127.5 - 1)
    assert main(["score", str(tmp_path / "one.npy"), "--out", str(tmp_path / "cell"), "--features", "pixel",
                 "--threshold", "0.9", "--quiet"] + sets) == 0
    data = load_cell_data(read_config(tmp_path / "cell"), CellPaths(tmp_path / "cell"))
    assert data.split.train.tolist() == chosen.tolist()
    np.testing.assert_array_equal(data.train.numpy(), images[chosen].astype(np.float32) / 127.5 - 1)
    assert len(data.heldout) == 100 and not set(data.split.heldout) & {*chosen.tolist(), 7}
    # a count that does not match, a repeated index, one out of range, a file of words: one line each
    for content, n, message in (("1\n2\n", 6, "data.n_train=2"), ("1\n1\n", 2, "appears 2 times"),
                                ("1\n150\n", 2, "must lie in [0, 150)"), ("a b\n", 2, "not a list of indices")):
        (tmp_path / "bad.txt").write_text(content)
        bad = [s.replace(str(tmp_path / "idx.txt"), str(tmp_path / "bad.txt")).replace("data.n_train=6",
                                                                                      f"data.n_train={n}") for s in sets]
        assert main(["score", str(tmp_path / "one.npy"), "--out", str(tmp_path / "badcell"), "--quiet"] + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "data." in err[0], err
        assert not (tmp_path / "badcell").exists()


def test_held_out_images_of_ones_own_calibrate_and_measure_the_false_positives(tmp_path, capsys):
    from memorize.cell import CellPaths, load_cell_data, read_config

    images, sets = _npz_dataset(tmp_path)
    sets = [s.replace("data.n_heldout=100", "data.n_heldout=0") for s in sets]
    np.save(tmp_path / "one.npy", images[:1].astype(np.float32) / 127.5 - 1)
    assert main(["score", str(tmp_path / "one.npy"), "--out", str(tmp_path / "probe"), "--quiet", "--features",
                 "pixel", "--threshold", "0.9"] + sets) == 0
    train = load_cell_data(read_config(tmp_path / "probe"), CellPaths(tmp_path / "probe")).train.numpy()
    # held-out "real" images that are copies of training images: every one is a false positive
    _png_folder(tmp_path / "copies", np.round((train[:12] + 1) * 127.5).astype(np.uint8))
    novel = np.random.default_rng(5).integers(0, 256, size=(12, 3, 8, 8), dtype=np.uint8)
    _png_folder(tmp_path / "novel", novel)
    fpr = {}
    for name in ("copies", "novel"):
        out = tmp_path / f"with-{name}"
        assert main(["score", str(tmp_path / "one.npy"), "--out", str(out), "--heldout", str(tmp_path / name),
                     "--features", "pixel", "--threshold", "0.9", "--quiet"] + sets) == 0
        summary = json.loads((out / "scores" / "trained.json").read_text())
        assert summary["n_heldout"] == 12
        fpr[name] = summary["nn"]["fpr"]["ratio"]
        data = load_cell_data(read_config(out), CellPaths(out))
        assert data.heldout.shape == (12, 3, 8, 8)
    assert fpr == {"copies": 1.0, "novel": 0.0}
    _png_folder(tmp_path / "small", np.zeros((3, 3, 4, 4), dtype=np.uint8))
    assert main(["score", str(tmp_path / "one.npy"), "--out", str(tmp_path / "bad"), "--heldout",
                 str(tmp_path / "small"), "--quiet"] + sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.heldout_path" in err[0] and "(3, 4, 4)" in err[0], err
    assert not (tmp_path / "bad").exists()


def test_held_out_images_are_resized_by_data_resize_as_the_training_images_are(tmp_path, capsys):
    """data.resize shrank the training images only, and held-out images of the source's size were refused as of
    another shape. Copies of training images, held out, must come out as those training images do, bit for bit:
    a folder's with PIL's bicubic filter, an .npz's with the datasets' antialiased bilinear."""
    from memorize.cell import CellPaths, load_cell_data, read_config
    from memorize.config import DataConfig
    from memorize.data import load_dataset

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(40, 3, 16, 16), dtype=np.uint8)
    _png_folder(tmp_path / "train", pixels)
    _png_folder(tmp_path / "held", pixels[:6])
    np.savez(tmp_path / "train.npz", images=pixels.astype(np.float32) / 127.5 - 1)
    np.save(tmp_path / "held.npy", pixels[:6].astype(np.float32) / 127.5 - 1)
    for name, root, held in (("folder", "train", "held"), ("npz", "train.npz", "held.npy")):
        cell = tmp_path / f"cell-{name}"
        assert main(["train", "--out", str(cell), "--quiet", "--set", f"data.name={name}", "--set",
                     f"data.root={tmp_path / root}", "--set", "data.resize=8", "--set",
                     f"data.heldout_path={tmp_path / held}", "--set", "data.n_train=8", "--set", "train.steps=1",
                     "--set", "model.channels=8", "--set", "train.eval_every=1", "--set", "train.checkpoint_every=1"]
                    ) == 0, capsys.readouterr().err
        data = load_cell_data(read_config(cell), CellPaths(cell))
        resized = load_dataset(DataConfig(name=name, root=str(tmp_path / root), resize=8)).data
        assert data.heldout.shape == (6, 3, 8, 8) and torch.equal(data.heldout, resized[:6]), name
    # without data.resize, held-out images of another size are refused as before
    capsys.readouterr()
    _png_folder(tmp_path / "small", pixels[:6, :, :8, :8])
    assert main(["train", "--out", str(tmp_path / "bad"), "--quiet", "--set", "data.name=npz", "--set",
                 f"data.root={tmp_path / 'train.npz'}", "--set", f"data.heldout_path={tmp_path / 'small'}",
                 "--set", "data.n_train=8", "--set", "train.steps=1"]) == 2
    assert "holds images of shape (3, 8, 8), but the training images are (3, 16, 16)" in capsys.readouterr().err


def test_held_out_images_from_a_file_mean_the_dataset_keeps_none_back(tmp_path, capsys):
    """An index file naming every image of the .npz, held-out images from a folder and data.n_heldout left at
    its default (256): the dataset holds nothing back, so nothing is refused; the same without --heldout is."""
    from memorize.cell import CellPaths, load_cell_data, read_config

    images, _ = _npz_dataset(tmp_path, count=30)
    np.save(tmp_path / "all.npy", np.arange(30))
    sets = ["--set", "data.name=npz", "--set", f"data.root={tmp_path / 'train.npz'}", "--set", "data.n_train=30",
            "--set", f"data.train_indices={tmp_path / 'all.npy'}"]
    _png_folder(tmp_path / "samples", images[:4])
    _png_folder(tmp_path / "mine", np.random.default_rng(2).integers(0, 256, size=(12, 3, 8, 8), dtype=np.uint8))
    assert main(["score", str(tmp_path / "samples"), "--out", str(tmp_path / "refused"), "--features", "pixel",
                 "--threshold", "0.9", "--quiet"] + sets) == 2
    assert "data.n_heldout: 256, but only 0 distinct images" in capsys.readouterr().err
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "samples"), "--out", str(out), "--heldout", str(tmp_path / "mine"),
                 "--features", "pixel", "--threshold", "0.9", "--quiet"] + sets) == 0
    summary = json.loads((out / "scores" / "trained.json").read_text())
    assert summary["n_heldout"] == 12 and summary["nn"]["ratio"] == 1.0  # four copies of training images
    data = load_cell_data(read_config(out), CellPaths(out))
    assert len(data.split.heldout) == 0 and sorted(data.split.train.tolist()) == list(range(30))
    # a permutation split likewise trains on every distinct image where the held-out images are files
    out = tmp_path / "permuted"
    assert main(["score", str(tmp_path / "samples"), "--out", str(out), "--heldout", str(tmp_path / "mine"),
                 "--features", "pixel", "--threshold", "0.9", "--quiet"] + sets[:6]) == 0
    assert sorted(load_cell_data(read_config(out), CellPaths(out)).split.train.tolist()) == list(range(30))


def test_imported_samples_are_mapped_from_disk_and_a_damaged_copy_is_named(tmp_path, capsys):
    from memorize.generate import read_samples

    images, sets = _npz_dataset(tmp_path)
    np.save(tmp_path / "mine.npy", images[:30])  # uint8, (M, C, H, W)
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "mine.npy"), "--out", str(out), "--features", "pixel", "--quiet"] + sets) == 0
    drawn = read_samples(out / "samples" / "trained.npz")
    assert isinstance(drawn["samples"], np.memmap) and drawn["samples"].shape == (30, 3, 8, 8)
    expected = np.array(drawn["samples"])
    np.testing.assert_array_equal(expected, images[:30].astype(np.float32) / 127.5 - 1)
    del drawn  # a mapping of a file truncated in place would fault on its next read
    copy = out / "samples" / "trained.samples.npy"
    copy.write_bytes(copy.read_bytes()[:200])
    capsys.readouterr()
    assert main(["score", str(out), "--features", "pixel", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained.samples.npy" in err[0] and "import them again" in err[0], err
    # importing them again repairs the copy and scores the same
    assert main(["score", str(tmp_path / "mine.npy"), "--out", str(out), "--features", "pixel", "--quiet"] + sets) == 0
    np.testing.assert_array_equal(read_samples(out / "samples" / "trained.npz")["samples"], expected)


def test_other_samples_are_refused_in_a_directory_that_holds_samples_and_nothing_there_changes(tmp_path, capsys):
    images, sets = _npz_dataset(tmp_path)
    np.save(tmp_path / "a.npy", images[:20])
    np.save(tmp_path / "b.npy", images[20:40])
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "a.npy"), "--out", str(out), "--features", "pixel", "--quiet"] + sets) == 0
    kept = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["score", str(tmp_path / "b.npy"), "--out", str(out), "--features", "pixel", "--quiet"] + sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds another cell or other samples" in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == kept


def test_a_cells_score_refuses_the_flags_for_samples_made_elsewhere(tmp_path, capsys):
    """``memorize score CELL --set data.n_train=5`` (or --out, --range, --heldout) scored the cell as it is and
    ignored the flag without a word; each is named, before anything is read or written."""
    from memorize.config import CellConfig, save_config

    cell = tmp_path / "cell"
    cell.mkdir()
    save_config(CellConfig(), cell / "config.yaml")
    for flags, named in ((["--set", "data.n_train=5"], "--set"), (["--out", str(tmp_path / "out")], "--out"),
                         (["--range", "0-255"], "--range"), (["--heldout", str(tmp_path / "mine")], "--heldout"),
                         (["--range", "0-1", "--out", str(tmp_path / "out")], "--out")):
        assert main(["score", str(cell), *flags, "--quiet"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"memorize score: error: {named}: only for samples made elsewhere; the cell {cell} has its training set, "
            f"held-out images and samples (its scores go to {cell / 'scores'})"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cell", "config.yaml"]


def _gray_folder(folder, images):
    from PIL import Image

    folder.mkdir()
    for k, image in enumerate(images):
        Image.fromarray(image, mode="L").save(folder / f"{k:03d}.png")


def test_grayscale_samples_and_held_out_images_are_read_as_a_folder_datasets_own_images(tmp_path, capsys):
    """The folder dataset reads every image as RGB, a grayscale one with its value in R, G and B: grayscale
    PNG samples and held-out images of a grayscale folder are read the same way (they were refused as of
    another shape), so that copies of training images are found at distance 0; mixed modes in one folder
    of samples too. A dataset of one channel still refuses RGB samples."""
    from memorize.cell import CellPaths, load_cell_data, read_config

    gray = np.random.default_rng(0).integers(0, 256, size=(150, 8, 8), dtype=np.uint8)
    _gray_folder(tmp_path / "train", gray)
    sets = ["--set", "data.name=folder", "--set", f"data.root={tmp_path / 'train'}", "--set", "data.n_train=40",
            "--set", "data.n_heldout=100"]
    _gray_folder(tmp_path / "one", gray[:1])
    assert main(["score", str(tmp_path / "one"), "--out", str(tmp_path / "probe"), "--features", "pixel",
                 "--threshold", "0.9", "--quiet"] + sets) == 0
    train = load_cell_data(read_config(tmp_path / "probe"), CellPaths(tmp_path / "probe")).train.numpy()
    assert train.shape[1:] == (3, 8, 8) and (train[:, 0] == train[:, 2]).all()
    copies = np.round((train[:4, 0] + 1) * 127.5).astype(np.uint8)
    novel = np.random.default_rng(1).integers(0, 256, size=(4, 8, 8), dtype=np.uint8)
    _gray_folder(tmp_path / "samples", np.concatenate([copies, novel]))
    rgb = np.random.default_rng(2).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    __import__("PIL.Image").Image.fromarray(rgb).save(tmp_path / "samples" / "rgb.png")  # last, a colour one
    _gray_folder(tmp_path / "mine", np.random.default_rng(3).integers(0, 256, size=(12, 8, 8), dtype=np.uint8))
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "samples"), "--out", str(out), "--heldout", str(tmp_path / "mine"),
                 "--features", "pixel", "--threshold", "0.9", "--quiet"] + sets) == 0
    table = __import__("pandas").read_csv(out / "scores" / "trained.csv")
    assert table.memorized_nn.tolist() == [True] * 4 + [False] * 5 and (table.d1[:4] < 1e-6).all()
    assert table.nn_index[:4].tolist() == [0, 1, 2, 3]
    heldout = load_cell_data(read_config(out), CellPaths(out)).heldout.numpy()
    assert heldout.shape == (12, 3, 8, 8) and (heldout[:, 0] == heldout[:, 1]).all()
    # a dataset of one channel (an .npz of (M, H, W)) refuses a colour image, naming it, and writes nothing
    np.savez(tmp_path / "gray.npz", images=gray)
    one = [s.replace(f"data.root={tmp_path / 'train'}", f"data.root={tmp_path / 'gray.npz'}") for s in sets]
    one = [s.replace("data.name=folder", "data.name=npz") for s in one]
    capsys.readouterr()
    assert main(["score", str(tmp_path / "samples"), "--out", str(tmp_path / "npz"), "--features", "pixel",
                 "--threshold", "0.9", "--quiet"] + one) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("rgb.png: a colour image (its red, green and blue differ), but the "
                                             "training images have one channel"), err
    assert not (tmp_path / "npz").exists()


def test_samples_saved_by_torchvision_as_rgb_are_read_as_one_channel_against_grayscale_training_images(
        tmp_path, capsys):
    """torchvision.utils.save_image writes a one-channel image as RGB with three equal channels, the usual
    way a grayscale model's samples reach disk: against a one-channel training set they are read as that
    channel (they were refused as of another shape), mixed in one folder with grayscale PNGs, and so are
    held-out images saved that way."""
    import torchvision

    from memorize.cell import CellPaths, load_cell_data, read_config

    gray = np.random.default_rng(0).integers(0, 256, size=(150, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray)
    sets = ["--set", "data.name=npz", "--set", f"data.root={tmp_path / 'gray.npz'}", "--set", "data.n_train=40",
            "--set", "data.n_heldout=100", "--features", "pixel", "--threshold", "0.9", "--quiet"]
    np.save(tmp_path / "one.npy", gray[:1])
    assert main(["score", str(tmp_path / "one.npy"), "--out", str(tmp_path / "probe")] + sets) == 0
    train = load_cell_data(read_config(tmp_path / "probe"), CellPaths(tmp_path / "probe")).train
    assert train.shape[1:] == (1, 8, 8)
    (tmp_path / "samples").mkdir()
    for k in range(3):  # copies of training images, saved as torchvision saves them ((x + 1) / 2 in [0, 1])
        torchvision.utils.save_image((train[k] + 1) / 2, tmp_path / "samples" / f"{k}.png")
    novel = np.random.default_rng(1).integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    _gray_folder(tmp_path / "novel", novel)
    for path in (tmp_path / "novel").iterdir():
        path.rename(tmp_path / "samples" / f"x{path.name}")
    from PIL import Image

    assert Image.open(tmp_path / "samples" / "0.png").mode == "RGB"
    (tmp_path / "mine").mkdir()
    for k, image in enumerate(np.random.default_rng(2).integers(0, 256, size=(12, 8, 8), dtype=np.uint8)):
        torchvision.utils.save_image(torch.from_numpy(image / 255.0)[None], tmp_path / "mine" / f"{k}.png")
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "samples"), "--out", str(out), "--heldout", str(tmp_path / "mine")]
                + sets) == 0
    table = __import__("pandas").read_csv(out / "scores" / "trained.csv")
    assert table.memorized_nn.tolist() == [True] * 3 + [False] * 3 and (table.d1[:3] < 1e-6).all()
    heldout = load_cell_data(read_config(out), CellPaths(out)).heldout.numpy()
    assert heldout.shape == (12, 1, 8, 8)


def test_too_few_held_out_images_for_a_calibrated_threshold_are_refused_before_anything_is_written(tmp_path,
                                                                                                   capsys):
    """Raising data.n_heldout afterwards changes the cell's data, which its directory refuses: the count is
    checked before the samples are imported, by the command and by the notebook API."""
    import memorize.api as mz

    images, sets = _npz_dataset(tmp_path)
    sets = [s.replace("data.n_heldout=100", "data.n_heldout=50") for s in sets]
    np.save(tmp_path / "some.npy", images[:3])
    out = tmp_path / "scored"
    assert main(["score", str(tmp_path / "some.npy"), "--out", str(out), "--features", "pixel", "--quiet"] + sets) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs at least 100 held-out images; this cell has 50" in err[0], err
    assert not out.exists()
    data = {"name": "npz", "root": str(tmp_path / "train.npz"), "n_train": 40, "n_heldout": 50}
    with pytest.raises(ValueError, match="needs at least 100 held-out images; this cell has 50"):
        mz.score_samples(images[:3], out, data)
    assert not out.exists()
    # a threshold given, or a rate the 50 resolve, needs no more
    assert mz.score_samples(images[:3], out, data, threshold=0.9, features="pixel")["n_heldout"] == 50
    assert main(["score", str(tmp_path / "some.npy"), "--out", str(tmp_path / "rate"), "--features", "pixel",
                 "--target-fpr", "0.02", "--quiet"] + sets) == 0
