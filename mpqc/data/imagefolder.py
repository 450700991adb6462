"""Image folders: PATH (a folder or a .zip) with train/<class>/*.{jpg,jpeg,png} and
test/<class>/*, optionally wrapped in one top-level folder. Decoded once with PIL to uint8
arrays cached as .npy under cache_dir/imagefolder-<key>/; later loads read the cache."""
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from mpqc.data.arrays import CIFAR_MEAN, CIFAR_STD, ArrayDataset
from mpqc.data.splits import DatasetSplits, carve_val
from mpqc.errors import DataError

SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
ARRAYS = ("train_x", "train_y", "test_x", "test_y")
_CACHE_VERSION = 1  # bump when the cache layout or decoding changes
_LAYOUT = ("expected train/<class>/*.jpg|jpeg|png and test/<class>/*, "
           "optionally inside one top-level folder")


@dataclass(frozen=True)
class Entry:
    split: str   # "train" or "test"
    label: str   # class folder name
    name: str    # path relative to PATH (posix), also the zip member name


def _select_entries(names: list[str], where: Path) -> list[Entry]:
    """The images among `names` (posix paths relative to PATH), sorted so that the arrays
    do not depend on zip member or directory listing order."""
    roots = {n.split("/")[0] for n in names if "/" in n} - {"__MACOSX"}
    roots = {r for r in roots if not r.startswith(".")}
    prefix = f"{next(iter(roots))}/" if "train" not in roots and len(roots) == 1 else ""
    entries = []
    for name in names:
        parts = name[len(prefix):].split("/") if name.startswith(prefix) else []
        if (len(parts) == 3 and parts[0] in SPLITS and parts[1] and not parts[1].startswith(".")
                and not parts[2].startswith(".") and parts[2].lower().endswith(SUFFIXES)):
            entries.append(Entry(parts[0], parts[1], name))
    for split in SPLITS:
        if not any(e.split == split for e in entries):
            raise DataError(f"imagefolder:{where} has no images under {prefix}{split}/; "
                            f"{_LAYOUT}")
    return sorted(entries, key=lambda e: (e.split, e.label, e.name))


def _list_folder(root: Path) -> list[str]:
    # deep enough for wrapper/split/class/file; not further, in case PATH is a big tree
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) >= 3:
            dirnames.clear()
        names += [(rel / f).as_posix() for f in filenames]
    return names


def _folder_key(root: Path, entries: list[Entry]) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}\0{root}".encode())
    for e in entries:
        st = (root / e.name).stat()
        h.update(f"\0{e.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _file_key(path: Path) -> str:
    st = path.stat()
    text = f"v{_CACHE_VERSION}\0{path}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); fix its permissions or "
                        "remove it") from None


def _decode_image(data: bytes, where: str) -> np.ndarray:
    """One image file's bytes -> uint8 (H, W, 3); greyscale/palette/alpha become RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot decode image ({e}); remove or replace it") from None


def _decode_all(entries: list[Entry], read: Callable[[str], bytes], where: Callable[[str], str],
                desc: str) -> tuple[dict[str, np.ndarray], list[str]]:
    classes = sorted({e.label for e in entries if e.split == "train"})
    test_classes = sorted({e.label for e in entries if e.split == "test"})
    if test_classes != classes:
        raise DataError(f"{desc}: test classes {test_classes} differ from train classes "
                        f"{classes}; give test/ the same class folders as train/")
    index = {c: i for i, c in enumerate(classes)}
    arrays: dict[str, np.ndarray] = {}
    first: tuple[tuple[int, ...], str] | None = None
    with tqdm(total=len(entries), desc=f"decoding {desc}", unit="img", disable=None) as bar:
        for split in SPLITS:
            items = [e for e in entries if e.split == split]
            x = y = None
            for i, e in enumerate(items):
                image = _decode_image(read(e.name), where(e.name))
                if first is None:
                    first = (image.shape, where(e.name))
                if image.shape != first[0]:
                    h, w = image.shape[:2]
                    raise DataError(f"{where(e.name)}: image is {w}x{h} but {first[1]} is "
                                    f"{first[0][1]}x{first[0][0]}; all images must have "
                                    f"one size (resize them first)")
                if x is None:
                    x = np.empty((len(items), *image.shape), np.uint8)
                    y = np.array([index[e.label] for e in items], np.int64)
                x[i] = image
                bar.update()
            arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    return arrays, classes


def _write_cache(final: Path, arrays: dict[str, np.ndarray], classes: list[str]) -> None:
    """Write into a temporary sibling folder and rename it: readers see a complete cache or
    none. A concurrent writer that renamed first wins; its copy is identical."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:
        raise DataError(f"cannot create cache folder in {final.parent} ({e}); pass another "
                        "cache_dir or set MPQC_CACHE") from None
    try:
        for key in ARRAYS:
            np.save(tmp / f"{key}.npy", arrays[key], allow_pickle=False)
        (tmp / "classes.json").write_text(json.dumps(classes))
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    except OSError as e:
        raise DataError(f"cannot write cache {final} ({e}); pass another cache_dir or "
                        "set MPQC_CACHE") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    try:
        classes = json.loads((folder / "classes.json").read_text())
        arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in ARRAYS}
    except (OSError, ValueError) as e:
        raise DataError(f"cache {folder} is unreadable ({e}); delete that folder to "
                        "decode again") from None
    ok = isinstance(classes, list) and all(
        arrays[f"{s}_x"].dtype == np.uint8 and arrays[f"{s}_x"].ndim == 4
        and arrays[f"{s}_y"].shape == (len(arrays[f"{s}_x"]),) for s in SPLITS)
    if not ok:
        raise DataError(f"cache {folder} is inconsistent; delete that folder to decode again")
    return arrays, classes


def _load_arrays(path: Path, cache_dir: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    if path.is_dir():
        names = _list_folder(path)
        entries = _select_entries(names, path)
        cache = cache_dir / f"imagefolder-{_folder_key(path, entries)}"
        if cache.is_dir():
            return _read_cache(cache)
        arrays, classes = _decode_all(entries, lambda n: _read_file(path / n),
                                      lambda n: str(path / n), path.name)
    else:
        cache = cache_dir / f"imagefolder-{_file_key(path)}"
        if cache.is_dir():  # keyed on the zip's path, size and mtime: no need to open it
            return _read_cache(cache)
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                entries = _select_entries(names, path)
                arrays, classes = _decode_all(entries, archive.read,
                                              lambda n: f"{path}:{n}", path.name)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt zip ({e}); download it again") from None
    _write_cache(cache, arrays, classes)
    return arrays, classes


def load_imagefolder(path: Path, cache_dir: Path, val_fraction: float, seed: int,
                     augment: bool) -> DatasetSplits:
    if not path.exists():
        raise DataError(f"imagefolder:{path} does not exist; give a folder or .zip "
                        f"({_LAYOUT})")
    if not path.is_dir() and not zipfile.is_zipfile(path):
        raise DataError(f"imagefolder:{path} is neither a folder nor a .zip; {_LAYOUT}")
    arrays, classes = _load_arrays(path.resolve(), Path(cache_dir))
    shape = arrays["train_x"].shape[1:]
    if arrays["test_x"].shape[1:] != shape:
        raise DataError(f"imagefolder:{path}: train images {shape} but test images "
                        f"{arrays['test_x'].shape[1:]}; all images must have one size")
    train = ArrayDataset(arrays["train_x"], arrays["train_y"], CIFAR_MEAN, CIFAR_STD)
    test = ArrayDataset(arrays["test_x"], arrays["test_y"], CIFAR_MEAN, CIFAR_STD)
    # the crop/flip recipe is CIFAR's; it is meant for 32x32 colour images only
    train, val = carve_val(train, val_fraction, seed, augment and shape == (32, 32, 3))
    return DatasetSplits("imagefolder", train, val, test, num_classes=len(classes),
                         input_shape=(shape[2], shape[0], shape[1]), mean=CIFAR_MEAN,
                         std=CIFAR_STD, class_names=tuple(classes))
