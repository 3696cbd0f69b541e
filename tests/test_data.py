import os
import pickle
import struct

import numpy as np
import pytest
import torch

from memorize.config import ConfigError, DataConfig, GMMConfig
from memorize.data import DatasetError, load_dataset, make_split, unique_indices
from memorize.data.subsets import round_robin_by_class


def test_digits_shape_range_and_labels():
    ds = load_dataset(DataConfig())
    assert ds.data.shape == (1797, 1, 8, 8) and ds.data.dtype == torch.float32
    assert ds.data.min() == -1.0 and ds.data.max() == 1.0
    assert ds.num_classes == 10 and set(ds.labels.tolist()) == set(range(10))


def test_subsets_nest_and_never_touch_heldout():
    ds = load_dataset(DataConfig())
    small, large = (make_split(ds, DataConfig(n_train=n, n_heldout=100)) for n in (16, 500))
    assert np.array_equal(large.train[:16], small.train)
    assert np.array_equal(small.heldout, large.heldout) and len(small.heldout) == 100
    assert not set(large.train) & set(large.heldout)
    other_seed = make_split(ds, DataConfig(n_train=16, n_heldout=100, split_seed=1))
    assert not np.array_equal(other_seed.train, small.train)


def test_n_train_too_large_is_a_config_error():
    ds = load_dataset(DataConfig())
    with pytest.raises(ConfigError, match=r"data\.n_train: 1700 is more than the 1597 distinct items"):
        make_split(ds, DataConfig(n_train=1700, n_heldout=200))


def _write_npz(path, images, labels=None):
    arrays = {"images": images}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(path, **arrays)


def test_exact_duplicates_are_removed_before_permuting(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 1, 4, 4), dtype=np.uint8)
    images[7] = images[3]
    images[15] = images[3]
    images[11] = images[2]
    _write_npz(tmp_path / "d.npz", images)
    cfg = DataConfig(name="npz", root=str(tmp_path / "d.npz"), n_train=17, n_heldout=0)
    ds = load_dataset(cfg)
    assert list(unique_indices(ds.data)) == [i for i in range(20) if i not in (7, 11, 15)]
    split = make_split(ds, cfg)
    assert split.n_duplicates == 3 and sorted(split.train) == [i for i in range(20) if i not in (7, 11, 15)]
    with pytest.raises(ConfigError, match="3 exact duplicates removed"):
        make_split(ds, DataConfig(name="npz", root=cfg.root, n_train=18, n_heldout=0))


def test_class_balanced_prefixes():
    order = np.arange(12)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    out = round_robin_by_class(order, labels)
    assert list(out) == [0, 6, 8, 1, 7, 9, 2, 10, 3, 11, 4, 5]
    ds = load_dataset(DataConfig())
    split = make_split(ds, DataConfig(n_train=50, class_balanced=True))
    assert np.bincount(ds.labels.numpy()[split.train], minlength=10).tolist() == [5] * 10


def test_label_modes():
    ds = load_dataset(DataConfig())
    true = make_split(ds, DataConfig(n_train=20, labels="true"))
    assert np.array_equal(true.train_labels, ds.labels.numpy()[true.train]) and true.num_classes == 10
    unique = make_split(ds, DataConfig(n_train=20, labels="unique"))
    assert list(unique.train_labels) == list(range(20)) and unique.num_classes == 20
    rand_small = make_split(ds, DataConfig(n_train=20, labels="random"))
    rand_large = make_split(ds, DataConfig(n_train=40, labels="random"))
    assert np.array_equal(rand_large.train_labels[:20], rand_small.train_labels)
    assert not np.array_equal(rand_small.train_labels, true.train_labels)
    assert make_split(ds, DataConfig(n_train=20)).train_labels is None


def test_missing_mnist_and_cifar_name_the_expected_file(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte")):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    with pytest.raises(DatasetError, match=str(tmp_path / "cifar-10-batches-py" / "data_batch_1")):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_cifar10_files_are_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        batches.append(data)
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": data, "labels": [i, i, i]}, fh)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert ds.data.shape == (15, 3, 32, 32)
    expected = batches[2][1].reshape(3, 32, 32).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(ds.data[7].numpy(), expected, atol=1e-6)
    assert ds.labels.tolist() == [i for i in range(1, 6) for _ in range(3)]


def test_mnist_idx_files_are_read(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 5, 28, 28) + images.tobytes())
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 5) + bytes([3, 1, 4, 1, 5]))
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path), resize=14))
    assert ds.data.shape == (5, 1, 14, 14) and ds.labels.tolist() == [3, 1, 4, 1, 5]
    full = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert full.data[0, 0, 0, 0].item() == pytest.approx(images[0, 0, 0] / 127.5 - 1, abs=1e-6)


def _mnist(root, labels: bytes, image_header: bytes | None = None):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((5, 28, 28), dtype=np.uint8).tobytes()
    (raw / "train-images-idx3-ubyte").write_bytes((image_header or struct.pack(">IIII", 2051, 5, 28, 28)) + images)
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels)) + labels)


@pytest.mark.parametrize("write, message", [
    (lambda r: _mnist(r, bytes(5), image_header=b"junk"),
     r"train-images-idx3-ubyte is not an MNIST idx file of images"),
    (lambda r: _mnist(r, bytes(5), image_header=struct.pack(">IIII", 2049, 5, 28, 28)),  # a labels file's magic
     r"train-images-idx3-ubyte is not an MNIST idx file of images"),
    (lambda r: _mnist(r, bytes(4)), r"train-images-idx3-ubyte holds 5 images but .*train-labels-idx1-ubyte 4 labels"),
])
def test_a_damaged_mnist_file_is_named(tmp_path, write, message):
    write(tmp_path)
    with pytest.raises(DatasetError, match=f"^mnist: .*{message}"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


@pytest.mark.parametrize("content, reason", [
    (b"not a pickle at all", r"UnpicklingError: "),
    (pickle.dumps([1, 2]), r"TypeError: it holds a list, not a dict"),
    (pickle.dumps({"labels": [1]}), r"KeyError: 'data'"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8)})[:40], r"(UnpicklingError|EOFError): "),
])
def test_a_damaged_cifar10_batch_is_named(tmp_path, content, reason):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(content)
    with pytest.raises(DatasetError, match=f"^cifar10: .*data_batch_1 is not a CIFAR-10 python batch \\({reason}"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    for cls, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / cls).mkdir()
        for j in range(2):
            Image.new("RGB", (6, 6), (value + j, 0, 0)).save(tmp_path / cls / f"{j}.png")
    ds = load_dataset(DataConfig(name="folder", root=str(tmp_path)))
    assert ds.data.shape == (4, 3, 6, 6) and ds.labels.tolist() == [0, 0, 1, 1] and ds.num_classes == 2
    assert ds.data[2, 0, 0, 0] == pytest.approx(200 / 127.5 - 1)


def test_an_image_folder_is_decoded_once_per_process_while_its_files_stay_as_they_are(tmp_path, monkeypatch):
    """Every stage of a cell (training, sampling, scoring, comparing, drawing) loads its data: a folder was
    decoded again by each, about 6 times per cell. Decoded once, and a file changed (or added) since is read
    again."""
    import gc

    from PIL import Image

    for j in range(3):
        Image.new("RGB", (6, 6), (10 * j, 0, 0)).save(tmp_path / f"{j}.png")
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open",
                        lambda path, *a, **k: opened.append(os.path.basename(path)) or real_open(path, *a, **k))
    cfg = DataConfig(name="folder", root=str(tmp_path))
    load_dataset(cfg)
    gc.collect()
    assert load_dataset(cfg).data[1, 0, 0, 0] == pytest.approx(10 / 127.5 - 1)
    assert opened == ["0.png", "1.png", "2.png"]
    stat = (tmp_path / "1.png").stat()
    Image.new("RGB", (6, 6), (77, 0, 0)).save(tmp_path / "1.png")  # the same size in bytes, maybe the same second
    os.utime(tmp_path / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert load_dataset(cfg).data[1, 0, 0, 0] == pytest.approx(77 / 127.5 - 1) and len(opened) == 6
    Image.new("RGB", (6, 6), (99, 0, 0)).save(tmp_path / "3.png")
    assert load_dataset(cfg).data.shape[0] == 4 and len(opened) == 10
    assert load_dataset(DataConfig(name="folder", root=str(tmp_path), resize=3)).data.shape == (4, 3, 3, 3)


@pytest.mark.parametrize("name", ["digits", "npz", "folder"])
def test_a_dataset_held_anywhere_is_loaded_once_and_released_with_its_last_holder(tmp_path, name):
    """The cells of a pack load their dataset at once, and each held a copy of its own (a pack of 4 CIFAR-10
    cells took 1.6 GB more than one cell). A dataset still held is the one loaded again, as long as its files
    are as they were; none is kept alive by this."""
    import gc
    import weakref

    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    root = None
    if name == "npz":
        _write_npz(tmp_path / "d.npz", images)
        root = str(tmp_path / "d.npz")
    elif name == "folder":
        for j, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / f"{j}.png")
        root = str(tmp_path)
    cfg = DataConfig(name=name, root=root)
    first = load_dataset(cfg)
    assert load_dataset(cfg) is first and load_dataset(DataConfig(name=name, root=root, resize=3)) is not first
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # released with its last holder
    if name != "digits":  # files changed while a load is held: read again
        held = load_dataset(cfg)
        if name == "npz":
            _write_npz(tmp_path / "d.npz", images[::-1])
        else:
            Image.fromarray(images[0]).save(tmp_path / "9.png")
        again = load_dataset(cfg)
        assert again is not held and len(held.data) == 5
        if name == "npz":
            assert torch.equal(again.data, held.data.flip(0))
        else:
            assert len(again.data) == 6


def test_images_at_the_top_level_beside_class_subfolders_are_named(tmp_path, capsys):
    """They are labelled as the first subfolder's class (unchanged, so that cells made from such a folder keep
    their data): said once per process, naming one of them and the class they get, where nothing was said."""
    from PIL import Image

    for path, value in (("cats/0.png", 10), ("dogs/0.png", 200), ("stray.png", 90), ("zz.png", 91)):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        Image.new("RGB", (6, 6), (value, 0, 0)).save(tmp_path / path)
    ds = load_dataset(DataConfig(name="folder", root=str(tmp_path)))
    assert ds.labels.tolist() == [0, 1, 0, 0] and ds.num_classes == 2  # sorted: cats/0, dogs/0, stray, zz
    err = capsys.readouterr().err
    assert err == (f"memorize: folder {tmp_path}: 2 image(s) at its top level (stray.png) beside class subfolders "
                   f"(cats, dogs) are labelled as the first class, 'cats'; move them into the subfolder of their "
                   f"class (or every image to the top level, for no labels)\n")
    load_dataset(DataConfig(name="folder", root=str(tmp_path)))
    assert capsys.readouterr().err == ""  # once per process
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (6, 6)).save(flat / "a.png")
    assert load_dataset(DataConfig(name="folder", root=str(flat))).labels is None and capsys.readouterr().err == ""


def test_npz_checks(tmp_path):
    _write_npz(tmp_path / "hwc.npz", np.zeros((3, 5, 5, 3), dtype=np.uint8))
    assert load_dataset(DataConfig(name="npz", root=str(tmp_path / "hwc.npz"))).data.shape == (3, 3, 5, 5)
    _write_npz(tmp_path / "bad.npz", np.full((3, 4), 2.0, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"must lie in \[-1, 1\]"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "bad.npz")))
    np.savez(tmp_path / "nokey.npz", x=np.zeros(3))
    with pytest.raises(DatasetError, match="no array 'images'"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "nokey.npz")))


def _good_npz_bytes(tmp_path) -> bytes:
    _write_npz(tmp_path / "good.npz", np.zeros((4, 1, 4, 4), dtype=np.uint8))
    return (tmp_path / "good.npz").read_bytes()


@pytest.mark.parametrize("name, write, message", [
    ("one.npy", lambda p, t: np.save(p, np.zeros((4, 1, 4, 4), dtype=np.float32)),
     r"one\.npy holds one array \(a \.npy file\); expected an \.npz archive with an array 'images'"),
    ("cut.npz", lambda p, t: p.write_bytes(_good_npz_bytes(t)[:200]),
     r"cut\.npz is not a readable \.npz archive \(BadZipFile: "),
    ("junk.npz", lambda p, t: p.write_bytes(b"not numpy at all"), r"junk\.npz is not a readable \.npz archive"),
    ("objects.npz", lambda p, t: np.savez(p, images=np.array([None] * 4, dtype=object)),
     r"objects\.npz: its arrays cannot be read \(ValueError: Object arrays cannot be loaded"),
])
def test_an_npz_that_numpy_cannot_read_as_one_is_named(tmp_path, name, write, message):
    write(tmp_path / name, tmp_path)
    with pytest.raises(DatasetError, match=f"^npz: .*{message}"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / name)))


@pytest.mark.parametrize("labels, found", [
    (np.array([-1] * 3 + [1] * 3), "-1 to 1"),  # -1 was read as classifier-free guidance's null label
    (np.array([0] * 3 + [10**9] * 3), "0 to 1000000000"),  # sized a label table of 10^9 rows (128 GB)
])
def test_npz_labels_must_be_class_indices(tmp_path, labels, found):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 1, 4, 4), dtype=np.uint8)
    _write_npz(tmp_path / "l.npz", images, labels)
    with pytest.raises(DatasetError, match=f"l\\.npz: 'labels' must be class indices in \\[0, 1,048,576\\); found "
                                           f"{found}: number the classes"):
        load_dataset(DataConfig(name="npz", root=str(tmp_path / "l.npz")))
    _write_npz(tmp_path / "ok.npz", images, np.array([0, 4, 4, 0, 2, 2]))  # classes need not all occur
    assert load_dataset(DataConfig(name="npz", root=str(tmp_path / "ok.npz"))).num_classes == 5


def test_a_held_out_set_that_takes_every_distinct_item_is_named_as_such(tmp_path):
    _write_npz(tmp_path / "same.npz", np.zeros((20, 1, 4, 4), dtype=np.uint8))  # one distinct image, 19 copies
    cfg = DataConfig(name="npz", root=str(tmp_path / "same.npz"), n_train=8, n_heldout=4)
    with pytest.raises(ConfigError, match=r"^data\.n_heldout: 4 held-out items leave none of the 1 distinct items "
                                          r"of 'npz' to train on \(19 exact duplicates removed\)$"):
        make_split(load_dataset(cfg), cfg)


def _png(path, size=(6, 6)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (9, 9, 9)).save(path)


def _png16(path):
    from PIL import Image

    Image.fromarray(np.arange(36, dtype=np.uint16).reshape(6, 6) * 1000).save(path)


@pytest.mark.parametrize("make, message", [
    (lambda r: _png(r / "a.png") or (r / "b.png").write_bytes(b"not a png"),
     r"b\.png is not a readable image \(UnidentifiedImageError: .*\); remove it or replace it$"),
    (lambda r: _png(r / "a.png") or (r / "b.png").write_bytes((r / "a.png").read_bytes()[:-30]),  # cut short
     r"b\.png is not a readable image \(OSError: image file is truncated\)"),
    (lambda r: _png(r / "cats" / "a.png") or _png(r / "dogs" / "b.png", (7, 6)),
     r"differ in size \(.*cats/a\.png is 6x6, .*dogs/b\.png 7x6\); set data\.resize"),
    (lambda r: _png(r / "a.png") or _png16(r / "b.png"),  # PIL's 8-bit reading turned values over 255 white
     r"b\.png: image mode I;16, more than 8 bits per channel, which reading as 8-bit would clip to 0-255"),
])
def test_an_image_folder_names_the_image_it_cannot_use(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DatasetError, match=f"^folder: .*{message}"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path)))


def test_gmm_matches_its_mixture():
    cfg = GMMConfig(components=2, dim=3, rank=2, size=20000, scale=0.3, shift=1.0)
    ds = load_dataset(DataConfig(name="gmm", gmm=cfg))
    assert ds.data.shape == (20000, 3) and ds.mixture.covs.shape == (2, 3, 3)
    assert torch.linalg.matrix_rank(ds.mixture.covs[0]).item() == 2
    for k in range(2):
        pts = ds.data[ds.labels == k].double()
        assert torch.allclose(pts.mean(0), ds.mixture.means[k], atol=0.02)
        assert torch.allclose(torch.cov(pts.T), ds.mixture.covs[k], atol=0.01)
    # the same seed gives the same data
    assert torch.equal(load_dataset(DataConfig(name="gmm", gmm=cfg)).data, ds.data)


@pytest.mark.parametrize("cfg, digest", [
    (GMMConfig(), "c7401b265cb0b1af"),
    (GMMConfig(components=2, dim=16, rank=4, scale=0.3, shift=0.5, size=8192, seed=0), "77331d3ef6861293"),
    (GMMConfig(components=3, dim=256, size=4096, seed=7), "2e329660935dd03f"),
])
def test_gmm_points_are_drawn_in_chunks_as_they_were_drawn_whole(cfg, digest, monkeypatch):
    """The digests are of the points drawn whole (before the chunks): every gmm cell keeps its data, whatever
    the chunk size (one row per chunk here)."""
    import hashlib

    import memorize.data.datasets

    ds = load_dataset(DataConfig(name="gmm", gmm=cfg))
    assert hashlib.sha256(ds.data.numpy().tobytes()).hexdigest()[:16] == digest
    monkeypatch.setattr(memorize.data.datasets, "GMM_CHUNK_BYTES", 1)
    assert torch.equal(load_dataset(DataConfig(name="gmm", gmm=cfg)).data, ds.data)


def test_gmm_points_of_many_dimensions_take_memory_of_their_own_size():
    """Each point's factor was gathered at once, (size, dim, rank) floats: 2.1 GB for 4,096 points of 256
    dimensions, where the points themselves take 8 MB."""
    import subprocess
    import sys

    code = ("import resource; from memorize.config import DataConfig, GMMConfig; from memorize.data import "
            "load_dataset; before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "load_dataset(DataConfig(name='gmm', gmm=GMMConfig(dim=256, size=4096))); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    grown_kib = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout)
    assert grown_kib < 300 * 1024, grown_kib


def test_a_gmm_beyond_memory_is_named_as_the_field():
    with pytest.raises(DatasetError, match=r"^data.gmm: 4,096 points from 2 components of rank 10000000 in 10000000 "
                                           r"dimensions take 2.98e\+06 GiB, more memory than there is"):
        load_dataset(DataConfig(name="gmm", gmm=GMMConfig(dim=10**7)))


def test_resizing_vectors_is_refused_for_every_dataset_of_vectors(tmp_path):
    """``data.resize`` on the gmm mixture was dropped without a word (the cell trained on the vectors, its
    config saying resize: 4); as for an npz file of vectors, one line naming the field."""
    np.savez(tmp_path / "vectors.npz", images=np.zeros((10, 16), np.float32))
    for cfg in (DataConfig(name="gmm", resize=4), DataConfig(name="npz", root=str(tmp_path / "vectors.npz"), resize=4)):
        with pytest.raises(DatasetError, match=f"^data.resize: dataset '{cfg.name}' holds vectors, not images$"):
            load_dataset(cfg)


def test_digits_parsed_once_still_give_each_caller_its_own_tensors():
    from memorize.data.datasets import load_digits

    first = load_digits()
    first.data.add_(5.0)
    first.labels.add_(1)
    again = load_digits()
    assert again.data.min() == -1.0 and again.data.max() == 1.0  # values 0..16 scaled to [-1, 1]
    assert again.labels[:5].tolist() == [0, 1, 2, 3, 4]
