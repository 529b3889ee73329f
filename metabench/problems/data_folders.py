"""Task sources that read few-shot images from a folder the user points at (``--data-root``); nothing downloads.

Each source is registered with :func:`metabench.problems.task_sources.register_task_source` when this module is
imported (:func:`~metabench.problems.task_sources.make_task_source` imports it) and is built as
``make_task_source(name, data_root=..., image_size=...)``. The layouts (``<data_root>`` the folder given):

- ``"omniglot"``: torchvision's Omniglot folders, ``<data_root>/omniglot-py/images_background/<alphabet>/<character>/
  *.png`` and ``<data_root>/omniglot-py/images_evaluation/<alphabet>/<character>/*.png`` (``data_root`` may also be
  the ``omniglot-py`` folder itself). A class is one (alphabet, character) folder. Splits: train = every
  images_background character (964 in Omniglot); val = the first ``n // 3`` of the ``n`` images_evaluation
  characters in sorted (alphabet, character) order (219 of 659), test = the rest (440). Images are grayscale and
  inverted, pixel = 1 - v/255, so strokes are bright on a dark ground like the generated ``omniglot_like``
  characters; 1 channel, ``image_size`` 28 by default.
- ``"image_folders"``: the pickle-free split folders of mini-ImageNet, CIFAR-FS or tiered-ImageNet,
  ``<data_root>/{train,val,test}/<class>/*.{png,jpg,jpeg}`` (extensions in any case). The split folders are the
  splits; a class folder name may appear in one split only. RGB, 3 channels, ``image_size`` 84 by default.
- ``"mini_imagenet_csv"``: Ravi & Larochelle's mini-ImageNet, ``<data_root>/images/<file>.jpg`` and
  ``<data_root>/{train,val,test}.csv``, each a header line ``filename,label`` then one image a line (files are
  looked up by name in ``images``). The csv files are the splits; a label may appear in one csv only. RGB,
  ``image_size`` 84 by default.
- ``"cifar_fs"``: Bertinetto et al.'s CIFAR-FS, ``<data_root>/data/<class>/*.png`` and
  ``<data_root>/splits/bertinetto/{train,val,test}.txt``, one class name a line (blank lines skipped); class folders
  no split file names are ignored. RGB, ``image_size`` 32 by default.

Files are indexed when the source is built: class folders and images sorted by name (names starting with ``.``,
such as macOS ``._*`` files, and files of other extensions are skipped), so the class and image order, hence every
episode, is fixed by the files alone. Images are decoded with Pillow only when a class is first drawn: converted to
grayscale (``"L"``) or ``"RGB"``, resized (not cropped) to ``image_size`` x ``image_size`` with bilinear filtering,
and the class is kept as one uint8 tensor (n, C, S, S), so repeated episodes read no file (memory: a decoded
mini-ImageNet class, 600 images of 3x84x84, is 12.7 MB). Episodes are drawn like
:func:`~metabench.problems.datasets.digits_tasks`: per task, ``ways`` distinct classes of the split in a random
order (label j is the j-th drawn) and per class ``shots + query`` distinct images, the first ``shots`` support;
the uint8 pixels v become ``v / 255`` in ``dtype`` at the end. The splits never share a class.

A missing or malformed folder raises :class:`DataFolderError` (a ``ValueError``) naming the path and the expected
layout: a missing ``data_root``, split folder, csv or split file; a split with no classes; a csv or split file
naming a class with no images; a split whose smallest class has fewer than ``shots + query`` images (when
:meth:`~metabench.problems.task_sources.TaskSource.tasks` asks for them); an image that cannot be decoded.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from metabench._checks import check_int
from metabench.problems import datasets
from metabench.problems.datasets import TaskBatch
from metabench.problems.task_sources import SPLITS, TaskSource, check_split, register_task_source

__all__ = [
    "CifarFSSource",
    "DataFolderError",
    "ImageFoldersSource",
    "MiniImageNetCSVSource",
    "OmniglotFolderSource",
]

_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Image.Resampling is Pillow >= 9.1
_PNG = (".png",)
_PNG_JPG = (".png", ".jpg", ".jpeg")


class DataFolderError(ValueError):
    """A data folder that is missing or does not have the layout its task source reads."""


@dataclass(frozen=True)
class _Class:
    name: str  # unique within the source (e.g. "images_background/Latin/character01", or the class folder's name)
    where: str  # for messages: the class folder, or the label and the csv file naming it
    files: tuple[Path, ...]  # sorted


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _image_files(folder: Path, extensions: tuple[str, ...]) -> tuple[Path, ...]:
    files = (p for p in folder.iterdir() if p.suffix.lower() in extensions and not p.name.startswith("."))
    return tuple(sorted((p for p in files if p.is_file()), key=lambda p: p.name))


def _pattern(extensions: tuple[str, ...]) -> str:
    return "*" + extensions[0] if len(extensions) == 1 else "*.{" + ",".join(e[1:] for e in extensions) + "}"


class _FolderSource(TaskSource):
    """A split layout on disk (module docstring); subclasses set ``layout``, ``split_rule``, ``_mode`` and
    ``_index``."""

    needs_data_root: ClassVar[bool] = True
    #: the layout read, for ``describe()`` and error messages
    layout: ClassVar[str]
    #: how the splits are made, for ``describe()``
    split_rule: ClassVar[str]
    _mode: ClassVar[str] = "RGB"  # Pillow mode the images are converted to: "L" (1 channel) or "RGB" (3)
    _invert: ClassVar[bool] = False  # pixel v -> 255 - v (dark strokes on white become bright on dark)

    def __init__(self, data_root, image_size: int):
        self.image_size = check_int("image_size", image_size, low=1)
        self.channels = 1 if self._mode == "L" else 3
        if data_root is None:
            raise TypeError(f"task source {self.name!r} reads a folder: data_root must be a path, got None")
        root = Path(os.fspath(data_root)).expanduser().resolve()
        self._root_given = root
        if not root.exists():
            self._fail(f"data_root {root} does not exist")
        if not root.is_dir():
            self._fail(f"data_root {root} is not a folder")
        self.data_root = self._resolve_root(root)
        self._splits: dict[str, list[_Class]] = self._index(self.data_root)
        seen: dict[str, str] = {}
        for split in SPLITS:
            if not self._splits[split]:
                self._fail(f"the {split} split has no classes ({self._split_origin(split)})")
            for cls in self._splits[split]:
                if cls.name in seen:
                    self._fail(f"class {cls.name!r} is in both the {seen[cls.name]} and the {split} split")
                seen[cls.name] = split
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    # ------------------------------------------------------------------ subclass hooks
    def _resolve_root(self, root: Path) -> Path:
        return root

    def _index(self, root: Path) -> dict[str, list[_Class]]:
        raise NotImplementedError

    def _split_origin(self, split: str) -> str:
        """Where ``split``'s classes come from, for the 'no classes' message."""
        return str(self.data_root)

    # ------------------------------------------------------------------ helpers
    def _fail(self, problem: str):
        root = getattr(self, "_root_given", None)
        raise DataFolderError(f"{self.name}: {problem}. Expected layout: {self.layout} (data_root={root})")

    def _folder_class(self, name: str, folder: Path, extensions: tuple[str, ...], named_in: str = "") -> _Class:
        files = _image_files(folder, extensions)
        if not files:
            self._fail(f"class folder {folder}{named_in} holds no {_pattern(extensions)} images")
        return _Class(name, str(folder), files)

    def _class_images(self, split: str, index: int) -> torch.Tensor:
        """The decoded images (n, C, S, S) uint8 of class ``index`` of ``split``, decoded on first use."""
        key = (split, index)
        images = self._cache.get(key)
        if images is None:
            images = torch.stack([self._decode(path) for path in self._splits[split][index].files])
            self._cache[key] = images
        return images

    def _decode(self, path: Path) -> torch.Tensor:
        size = self.image_size
        try:
            with Image.open(path) as image:
                image = image.convert(self._mode)
                if image.size != (size, size):
                    image = image.resize((size, size), _BILINEAR)
                pixels = bytearray(image.tobytes())
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise DataFolderError(f"{self.name}: cannot decode image {path}: {err}") from err
        x = torch.frombuffer(pixels, dtype=torch.uint8).reshape(size, size, self.channels).permute(2, 0, 1)
        return (255 - x if self._invert else x).contiguous()

    # ------------------------------------------------------------------ TaskSource
    def n_classes(self, split: str) -> int:
        return len(self._splits[check_split(split)])

    def class_names(self, split: str) -> list[str]:
        """The classes of ``split`` in index order (the order episodes draw from)."""
        return [cls.name for cls in self._splits[check_split(split)]]

    def tasks(self, split, ways, shots, query, n_tasks, seed=0, dtype=torch.float32) -> TaskBatch:
        self._check(split, ways, shots, query, n_tasks, seed)
        dtype = datasets._check_dtype(dtype)
        classes = self._splits[split]
        per_class = shots + query
        smallest = min(classes, key=lambda cls: len(cls.files))  # the first of the fewest, in index order
        if len(smallest.files) < per_class:
            raise DataFolderError(
                f"{self.name}: {split} class {smallest.where} has {len(smallest.files)} images, fewer than "
                f"shots + query = {shots} + {query} = {per_class} (every class of a split must have as many)"
            )
        size, channels = self.image_size, self.channels
        support = torch.empty((n_tasks, ways * shots, channels, size, size), dtype=torch.uint8)
        queries = torch.empty((n_tasks, ways * query, channels, size, size), dtype=torch.uint8)
        gen = torch.Generator().manual_seed(seed)
        for t in range(n_tasks):
            chosen = torch.randperm(len(classes), generator=gen)[:ways].tolist()
            for j, index in enumerate(chosen):
                images = self._class_images(split, index)
                pick = torch.randperm(len(images), generator=gen)[:per_class]
                support[t, j * shots : (j + 1) * shots] = images[pick[:shots]]
                queries[t, j * query : (j + 1) * query] = images[pick[shots:]]
        return TaskBatch(
            support.to(dtype).div_(255),
            datasets._labels(n_tasks, ways, shots),
            queries.to(dtype).div_(255),
            datasets._labels(n_tasks, ways, query),
        )

    def describe(self) -> dict:
        return super().describe() | {"data_root": str(self.data_root), "layout": self.layout, "splits": self.split_rule}


# ---------------------------------------------------------------------- Omniglot (torchvision's folders)
class OmniglotFolderSource(_FolderSource):
    """Omniglot as torchvision unpacks it (module docstring): background characters train, the first third of the
    evaluation characters (sorted by alphabet, then character) val, the rest test; inverted grayscale."""

    name = "omniglot"
    layout = (
        "<data_root>/omniglot-py/images_background/<alphabet>/<character>/*.png and "
        "<data_root>/omniglot-py/images_evaluation/<alphabet>/<character>/*.png (torchvision's Omniglot folders; "
        "data_root may also be the omniglot-py folder itself)"
    )
    split_rule = (
        "train: every images_background character; val: the first n // 3 of the n images_evaluation characters "
        "in sorted (alphabet, character) order; test: the other images_evaluation characters"
    )
    _mode = "L"
    _invert = True
    _PARTS = ("images_background", "images_evaluation")

    def __init__(self, data_root, image_size: int = 28):
        super().__init__(data_root, image_size)

    def _resolve_root(self, root: Path) -> Path:
        if (root / "omniglot-py").is_dir():
            return root / "omniglot-py"
        if any((root / part).is_dir() for part in self._PARTS):
            return root  # data_root is the omniglot-py folder itself
        self._fail(f"no omniglot-py folder in {root} (and {root} holds no images_background or images_evaluation)")

    def _index(self, root: Path) -> dict[str, list[_Class]]:
        parts = {}
        for part in self._PARTS:
            folder = root / part
            if not folder.is_dir():
                self._fail(f"missing folder {folder}")
            parts[part] = [
                self._folder_class(f"{part}/{alphabet.name}/{character.name}", character, _PNG)
                for alphabet in _subdirs(folder)
                for character in _subdirs(alphabet)
            ]
            if not parts[part]:
                self._fail(f"{folder} holds no <alphabet>/<character> folders")
        evaluation = parts["images_evaluation"]
        n_val = len(evaluation) // 3
        return {"train": parts["images_background"], "val": evaluation[:n_val], "test": evaluation[n_val:]}

    def _split_origin(self, split: str) -> str:
        if split == "train":
            return f"no character folders in {self.data_root / 'images_background'}"
        n = len(self._splits["val"]) + len(self._splits["test"])
        which = "the first third" if split == "val" else "the rest"
        return f"{which} of the {n} characters in {self.data_root / 'images_evaluation'}"


# ---------------------------------------------------------------------- <root>/<split>/<class>/ folders
class ImageFoldersSource(_FolderSource):
    """Split folders of class folders (mini-ImageNet, CIFAR-FS, tiered-ImageNet without pickles; module
    docstring), RGB."""

    name = "image_folders"
    layout = "<data_root>/{train,val,test}/<class>/*.{png,jpg,jpeg} (extensions in any case)"
    split_rule = "the train, val and test folders; a class folder name may appear in one split only"

    def __init__(self, data_root, image_size: int = 84):
        super().__init__(data_root, image_size)

    def _index(self, root: Path) -> dict[str, list[_Class]]:
        splits = {}
        for split in SPLITS:
            folder = root / split
            if not folder.is_dir():
                self._fail(f"missing split folder {folder}")
            splits[split] = [self._folder_class(c.name, c, _PNG_JPG) for c in _subdirs(folder)]
        return splits

    def _split_origin(self, split: str) -> str:
        return f"no class folders in {self.data_root / split}"


# ---------------------------------------------------------------------- Ravi & Larochelle's csv files
class MiniImageNetCSVSource(_FolderSource):
    """mini-ImageNet as Ravi & Larochelle ship it: one image folder and a ``filename,label`` csv a split (module
    docstring), RGB."""

    name = "mini_imagenet_csv"
    layout = "<data_root>/images/<file>.jpg and <data_root>/{train,val,test}.csv, each with the header filename,label"
    split_rule = "the train.csv, val.csv and test.csv files; a label may appear in one csv only"

    def __init__(self, data_root, image_size: int = 84):
        super().__init__(data_root, image_size)

    def _index(self, root: Path) -> dict[str, list[_Class]]:
        images = root / "images"
        if not images.is_dir():
            self._fail(f"missing image folder {images}")
        with os.scandir(images) as entries:
            present = {entry.name for entry in entries if entry.is_file()}
        return {split: self._read_csv(root / f"{split}.csv", images, present) for split in SPLITS}

    def _read_csv(self, path: Path, images: Path, present: set[str]) -> list[_Class]:
        if not path.is_file():
            self._fail(f"missing split file {path}")
        by_label: dict[str, list[str]] = {}
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["filename", "label"]:
                self._fail(f"{path} must start with the header line 'filename,label', got {header!r}")
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    self._fail(f"{path} line {reader.line_num}: expected 'filename,label', got {row!r}")
                by_label.setdefault(row[1].strip(), []).append(row[0].strip())
        classes = []
        for label in sorted(by_label):
            names = sorted(by_label[label])
            missing = [n for n in names if n not in present]
            if missing:
                self._fail(
                    f"{path}: {len(missing)} of the {len(names)} images of class {label!r} are not in {images} "
                    f"(first: {images / missing[0]})"
                )
            twice = next((a for a, b in zip(names, names[1:]) if a == b), None)
            if twice is not None:
                self._fail(f"{path}: class {label!r} lists the image {twice} more than once")
            classes.append(_Class(label, f"{label!r} of {path}", tuple(images / n for n in names)))
        return classes

    def _split_origin(self, split: str) -> str:
        return f"{self.data_root / (split + '.csv')} lists no image"


# ---------------------------------------------------------------------- CIFAR-FS (Bertinetto et al.)
class CifarFSSource(_FolderSource):
    """CIFAR-FS as Bertinetto et al. ship it: class folders and a class list a split (module docstring), RGB."""

    name = "cifar_fs"
    layout = "<data_root>/data/<class>/*.png and <data_root>/splits/bertinetto/{train,val,test}.txt, one class a line"
    split_rule = "the classes listed in splits/bertinetto/{train,val,test}.txt; a class may appear in one file only"

    def __init__(self, data_root, image_size: int = 32):
        super().__init__(data_root, image_size)

    def _index(self, root: Path) -> dict[str, list[_Class]]:
        data, lists = root / "data", root / "splits" / "bertinetto"
        for folder in (data, lists):
            if not folder.is_dir():
                self._fail(f"missing folder {folder}")
        splits = {}
        for split in SPLITS:
            path = lists / f"{split}.txt"
            if not path.is_file():
                self._fail(f"missing split file {path}")
            names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            classes = []
            for name in sorted(set(names)):
                if names.count(name) > 1:
                    self._fail(f"{path} lists the class {name!r} more than once")
                folder = data / name
                if not folder.is_dir():
                    self._fail(f"class {name!r} listed in {path} has no folder {folder}")
                classes.append(self._folder_class(name, folder, _PNG, named_in=f" (listed in {path})"))
            splits[split] = classes
        return splits

    def _split_origin(self, split: str) -> str:
        return f"{self.data_root / 'splits' / 'bertinetto' / (split + '.txt')} lists no class"


for _source in (OmniglotFolderSource, ImageFoldersSource, MiniImageNetCSVSource, CifarFSSource):
    register_task_source(_source.name, _source)
del _source
