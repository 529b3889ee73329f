"""Task sources that read a folder (metabench.problems.data_folders), on miniature folders built in tmp_path.

Each layout (omniglot, image_folders, mini_imagenet_csv, cifar_fs) is built by a module-level helper from 16x16
generated images, 6 per class. Image i of the class with global number g has its left half (columns 0-7) at gray
level v = 10 + 24 g + 3 i and its right half white (grayscale, Omniglot: dark ink on white) or blue (RGB, the left
half is (v, 255 - v, 0)), so the class and the image can be read back from any episode after the resize to 8x8 (the
two outer columns of each side are untouched by the bilinear filter): that checks an image landed under its label.
"""

from __future__ import annotations

import csv
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from metabench.problems.data_folders import (
    CifarFSSource,
    DataFolderError,
    ImageFoldersSource,
    MiniImageNetCSVSource,
    OmniglotFolderSource,
)
from metabench.problems.task_sources import SPLITS, make_task_source, task_source_names

SIDE, SIZE, PER_CLASS = 16, 8, 6  # stored images SIDE x SIDE, read at SIZE x SIZE; images a class
WAYS, SHOTS, QUERY, TASKS = 2, 2, 3, 4
RGB_CLASSES = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
SOURCES = {
    "omniglot": OmniglotFolderSource,
    "image_folders": ImageFoldersSource,
    "mini_imagenet_csv": MiniImageNetCSVSource,
    "cifar_fs": CifarFSSource,
}
DEFAULT_SIZE = {"omniglot": 28, "image_folders": 84, "mini_imagenet_csv": 84, "cifar_fs": 32}


# ---------------------------------------------------------------------- miniature layouts
@dataclass
class Layout:
    name: str
    root: Path  # the data_root to give
    splits: dict[str, list[str]]  # class names per split, in the order the source must index them
    images: dict[str, list[Path]]  # the image files of each class

    @property
    def gray(self) -> bool:
        return self.name == "omniglot"

    def number(self, class_name: str) -> int:
        """The global number g of a class (its pixel level), in train, val, test order."""
        return [c for split in SPLITS for c in self.splits[split]].index(class_name)

    def numbers(self, split: str) -> set[int]:
        return {self.number(c) for c in self.splits[split]}

    def source(self, **params):
        return SOURCES[self.name](self.root, image_size=params.pop("image_size", SIZE), **params)


def level(g: int, i: int) -> int:
    return 10 + 24 * g + 3 * i  # g < 10, i < 6: at most 241


def save_image(path: Path, g: int, i: int, gray: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    v = level(g, i)
    if gray:
        image = Image.new("L", (SIDE, SIDE), 255)
        image.paste(v, (0, 0, SIDE // 2, SIDE))
    else:
        image = Image.new("RGB", (SIDE, SIDE), (0, 0, 255))
        image.paste((v, 255 - v, 0), (0, 0, SIDE // 2, SIDE))
    if path.suffix == ".jpg":
        image.save(path, quality=100, subsampling=0)  # 8x8 flat blocks: exact up to +-1
    else:
        image.save(path)
    return path


def make_omniglot(base: Path) -> Layout:
    """torchvision's omniglot-py folders: 2 background alphabets x 2 characters, 2 evaluation alphabets x 3."""
    parts = {
        "images_background": {"Beta": ["character01", "character02"], "Alpha": ["character01", "character02"]},
        "images_evaluation": {
            "Gamma": ["character01", "character02", "character03"],
            "Delta": ["character03", "character01", "character02"],
        },
    }  # made out of order: the source sorts by (alphabet, character)
    background = [f"images_background/{a}/{c}" for a in ("Alpha", "Beta") for c in ("character01", "character02")]
    evaluation = [f"images_evaluation/{a}/character0{k}" for a in ("Delta", "Gamma") for k in (1, 2, 3)]
    splits = {"train": background, "val": evaluation[:2], "test": evaluation[2:]}
    layout = Layout("omniglot", base / "omni", splits, {})
    for part, alphabets in parts.items():
        for alphabet, characters in alphabets.items():
            for character in characters:
                name = f"{part}/{alphabet}/{character}"
                g = layout.number(name)
                folder = layout.root / "omniglot-py" / name
                layout.images[name] = [save_image(folder / f"{g:04d}_{i + 1:02d}.png", g, i, True) for i in range(6)]
    return layout


def make_image_folders(base: Path) -> Layout:
    layout = Layout("image_folders", base / "folders", RGB_CLASSES, {})
    for split, classes in RGB_CLASSES.items():
        for name in classes:
            g = layout.number(name)
            folder = layout.root / split / name
            layout.images[name] = [save_image(folder / f"{name}_{i}.png", g, i, False) for i in range(PER_CLASS)]
    return layout


def make_mini_imagenet_csv(base: Path) -> Layout:
    layout = Layout("mini_imagenet_csv", base / "mini", RGB_CLASSES, {})
    for split, classes in RGB_CLASSES.items():
        rows = []
        for name in classes:
            g = layout.number(name)
            files = [save_image(layout.root / "images" / f"{name}{i:08d}.jpg", g, i, False) for i in range(PER_CLASS)]
            layout.images[name] = files
            rows += [(f.name, name) for f in files]
        with open(layout.root / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("filename", "label"), *reversed(rows)])  # file order must not matter
    return layout


def make_cifar_fs(base: Path) -> Layout:
    layout = Layout("cifar_fs", base / "cifar", RGB_CLASSES, {})
    lists = layout.root / "splits" / "bertinetto"
    lists.mkdir(parents=True)
    for split, classes in RGB_CLASSES.items():
        for name in classes:
            g = layout.number(name)
            folder = layout.root / "data" / name
            layout.images[name] = [save_image(folder / f"{name}_s_{i:06d}.png", g, i, False) for i in range(PER_CLASS)]
        (lists / f"{split}.txt").write_text("\n".join(reversed(classes)) + "\n\n")
    save_image(layout.root / "data" / "unlisted" / "0.png", 9, 0, False)  # in no split file: ignored
    return layout


BUILDERS = {
    "omniglot": make_omniglot,
    "image_folders": make_image_folders,
    "mini_imagenet_csv": make_mini_imagenet_csv,
    "cifar_fs": make_cifar_fs,
}


def build(name: str, tmp_path: Path) -> Layout:
    return BUILDERS[name](tmp_path)


def identify(x: torch.Tensor, gray: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Class number g and image number i of each image of x (..., C, SIZE, SIZE), from channel 0's left columns."""
    left = x[..., 0, :, :2].double().mean(dim=(-1, -2))
    v = (255 * (1 - left) if gray else 255 * left).round().long()
    g = torch.div(v - 9, 24, rounding_mode="floor")
    return g, torch.div(v - 9 - 24 * g, 3, rounding_mode="floor")


def check_episodes(batch, layout: Layout, split: str, ways=WAYS, shots=SHOTS, query=QUERY):
    """Every label of every task holds shots + query distinct images of one class of ``split``; the ways differ."""
    g_s, i_s = identify(batch.X_support, layout.gray)
    g_q, i_q = identify(batch.X_query, layout.gray)
    for t in range(batch.X_support.shape[0]):
        drawn = []
        for j in range(ways):
            s, q = slice(j * shots, (j + 1) * shots), slice(j * query, (j + 1) * query)
            classes = set(g_s[t, s].tolist()) | set(g_q[t, q].tolist())
            assert len(classes) == 1, f"task {t} label {j} mixes classes {classes}"
            assert classes <= layout.numbers(split)
            images = i_s[t, s].tolist() + i_q[t, q].tolist()
            assert sorted(set(images)) == sorted(images) and set(images) <= set(range(PER_CLASS))
            drawn += classes
        assert len(set(drawn)) == ways
    return {int(g) for g in g_s.unique()}


# ---------------------------------------------------------------------- episodes
@pytest.mark.parametrize("name", list(BUILDERS))
def test_episodes_have_the_taskbatch_shapes_class_major_labels_and_images_of_their_label(name, tmp_path):
    layout = build(name, tmp_path)
    source = layout.source()
    channels = 1 if layout.gray else 3
    assert source.channels == channels and source.image_size == SIZE
    batch = source.tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=3)
    assert batch.X_support.shape == (TASKS, WAYS * SHOTS, channels, SIZE, SIZE)
    assert batch.X_query.shape == (TASKS, WAYS * QUERY, channels, SIZE, SIZE)
    assert batch.X_support.dtype == batch.X_query.dtype == torch.float32
    assert batch.y_support.dtype == batch.y_query.dtype == torch.int64
    assert batch.y_support.tolist() == [[0, 0, 1, 1]] * TASKS
    assert batch.y_query.tolist() == [[0, 0, 0, 1, 1, 1]] * TASKS
    for x in batch.X_support, batch.X_query:
        assert 0 <= float(x.min()) and float(x.max()) <= 1
        # right half: white ink-free ground read as 0 (Omniglot inverted), or blue (0, 0, 1)
        torch.testing.assert_close(x[..., 0, :, -2:], torch.zeros_like(x[..., 0, :, -2:]), atol=1.5 / 255, rtol=0)
        if not layout.gray:
            torch.testing.assert_close(x[..., 2, :, -2:], torch.ones_like(x[..., 2, :, -2:]), atol=1.5 / 255, rtol=0)
            torch.testing.assert_close(x[..., 1, :, :2], 1 - x[..., 0, :, :2], atol=2.5 / 255, rtol=0)
    assert check_episodes(batch, layout, "train") <= layout.numbers("train")


def test_omniglot_is_inverted_so_strokes_are_bright_on_a_dark_ground(tmp_path):
    layout = make_omniglot(tmp_path)
    batch = layout.source(image_size=SIDE).tasks("test", WAYS, 1, 1, 1, seed=0)  # no resize: exact pixels
    g, i = identify(batch.X_support, gray=True)
    expected = torch.zeros(SIDE, SIDE)
    expected[:, : SIDE // 2] = 1 - level(int(g[0, 0]), int(i[0, 0])) / 255  # dark ink on white, inverted
    torch.testing.assert_close(batch.X_support[0, 0, 0], expected, atol=1e-7, rtol=0)
    assert float(batch.X_support[0, 0, 0, 0, 0]) > 0.05 and float(batch.X_support[0, 0, 0, 0, -1]) == 0


@pytest.mark.parametrize("name", list(BUILDERS))
def test_images_are_resized_to_image_size_and_the_defaults_are_the_usual_sizes(name, tmp_path):
    layout = build(name, tmp_path)
    for image_size in (5, 20):
        batch = layout.source(image_size=image_size).tasks("val", WAYS, 1, 1, 1)
        assert batch.X_support.shape[-2:] == batch.X_query.shape[-2:] == (image_size, image_size)
    source = SOURCES[name](layout.root)
    assert source.image_size == DEFAULT_SIZE[name]
    batch = source.tasks("test", WAYS, 1, 1, 1)
    assert batch.X_query.shape == (1, WAYS, source.channels, DEFAULT_SIZE[name], DEFAULT_SIZE[name])


def test_upscaled_images_keep_their_left_and_right_halves(tmp_path):
    layout = make_image_folders(tmp_path)
    x = layout.source(image_size=32).tasks("train", WAYS, 1, 1, 1).X_support[0, 0]
    assert float(x[2, :, :12].max()) < 0.01 and float(x[2, :, 20:].min()) > 0.99  # blue only on the right
    assert float(x[0, :, :12].min()) > 0.03 and float(x[0, :, 20:].max()) < 0.01  # red level only on the left


@pytest.mark.parametrize("name", list(BUILDERS))
def test_episodes_are_deterministic_in_the_seed_and_the_cache_changes_nothing(name, tmp_path):
    layout = build(name, tmp_path)
    source = layout.source()
    first = source.tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=5)
    again = source.tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=5)  # from the cache
    fresh = layout.source().tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=5)  # decoded anew
    for a, b, c in zip(first, again, fresh):
        assert torch.equal(a, b) and torch.equal(a, c)
    other = source.tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=6)
    assert not torch.equal(first.X_support, other.X_support)


def test_decoded_classes_are_cached_so_repeated_episodes_read_no_file(tmp_path):
    layout = make_cifar_fs(tmp_path)
    source = layout.source()
    first = source.tasks("val", WAYS, SHOTS, QUERY, TASKS, seed=1)  # val has 2 classes: both decoded
    shutil.rmtree(layout.root)
    again = source.tasks("val", WAYS, SHOTS, QUERY, TASKS, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(DataFolderError, match="cannot decode image"):
        source.tasks("train", WAYS, SHOTS, QUERY, TASKS)  # train was never decoded: its files are gone


def test_dtype_is_applied_at_the_end(tmp_path):
    source = make_image_folders(tmp_path).source()
    f32 = source.tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=2)
    f64 = source.tasks("train", WAYS, SHOTS, QUERY, TASKS, seed=2, dtype=torch.float64)
    assert f64.X_support.dtype == f64.X_query.dtype == torch.float64
    assert torch.equal(f64.X_support.float(), f32.X_support) and torch.equal(f64.y_query, f32.y_query)
    assert torch.equal((f64.X_support * 255).round() / 255, f64.X_support)  # exactly v / 255
    with pytest.raises(TypeError, match="floating-point"):
        source.tasks("train", WAYS, SHOTS, QUERY, TASKS, dtype=torch.int64)


# ---------------------------------------------------------------------- splits
@pytest.mark.parametrize("name", list(BUILDERS))
def test_splits_are_the_layouts_classes_and_never_share_one(name, tmp_path):
    layout = build(name, tmp_path)
    source = layout.source()
    for split in SPLITS:
        assert source.class_names(split) == layout.splits[split]
        assert source.n_classes(split) == len(layout.splits[split])
        seen = check_episodes(source.tasks(split, WAYS, SHOTS, QUERY, 12, seed=0), layout, split)
        assert seen == layout.numbers(split)  # 12 tasks draw every class of these tiny splits
    names = [set(source.class_names(split)) for split in SPLITS]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_omniglot_val_is_the_first_third_of_the_sorted_evaluation_characters(tmp_path):
    layout = make_omniglot(tmp_path)
    source = layout.source()
    assert source.class_names("val") == ["images_evaluation/Delta/character01", "images_evaluation/Delta/character02"]
    assert source.class_names("test")[0] == "images_evaluation/Delta/character03"
    assert [source.n_classes(s) for s in SPLITS] == [4, 2, 4]
    assert "first n // 3" in source.describe()["splits"]


def test_omniglot_accepts_the_omniglot_py_folder_itself(tmp_path):
    layout = make_omniglot(tmp_path)
    inner = OmniglotFolderSource(layout.root / "omniglot-py", image_size=SIZE)
    outer = layout.source()
    assert inner.data_root == outer.data_root == (layout.root / "omniglot-py").resolve()
    for a, b in zip(
        inner.tasks("val", WAYS, SHOTS, QUERY, 2, seed=4), outer.tasks("val", WAYS, SHOTS, QUERY, 2, seed=4)
    ):
        assert torch.equal(a, b)


def test_image_folders_accept_png_jpg_and_jpeg_in_any_case_and_skip_other_and_hidden_files(tmp_path):
    layout = make_image_folders(tmp_path)
    folder = layout.root / "train" / "n01"
    for path in folder.iterdir():
        path.unlink()
    for i, ext in enumerate((".PNG", ".jpg", ".JPEG", ".Jpg", ".png")):
        save_image(folder / f"img{i}{ext}", 0, i, False)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._img0.png").write_bytes(b"macOS resource fork")  # hidden: skipped
    (layout.root / "train" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    source = layout.source()
    assert source.class_names("train") == RGB_CLASSES["train"]
    assert source.tasks("train", 3, 2, 3, 4).X_query.shape == (4, 9, 3, SIZE, SIZE)  # all 5 images of n01 found


# ---------------------------------------------------------------------- registry and describe
@pytest.mark.parametrize("name", list(BUILDERS))
def test_make_task_source_builds_the_folder_sources_from_data_root(name, tmp_path):
    layout = build(name, tmp_path)
    assert name in task_source_names()
    source = make_task_source(name, data_root=str(layout.root), image_size=SIZE)
    assert type(source) is SOURCES[name] and source.needs_data_root and source.image_size == SIZE
    check_episodes(source.tasks("test", WAYS, SHOTS, QUERY, 2), layout, "test")
    info = source.describe()
    resolved = layout.root.resolve() / ("omniglot-py" if name == "omniglot" else "")
    assert info["task_source"] == name and info["data_root"] == str(resolved)
    assert [info[f"{s}_classes"] for s in SPLITS] == [len(layout.splits[s]) for s in SPLITS]
    assert info["layout"] == SOURCES[name].layout and info["splits"]
    with pytest.raises(ValueError, match="reads a folder"):
        make_task_source(name)


# ---------------------------------------------------------------------- malformed folders
def _missing_root(layout):
    return layout.root.parent / "nowhere", "does not exist"


def _root_is_a_file(layout):
    path = layout.root.parent / "a_file"
    path.write_text("")
    return path, "is not a folder"


def _path_error(layout, path: Path, text: str):
    """``text`` with ``{}`` standing for ``path`` (resolved), as a regex."""
    return layout.root, re.escape(text.format(path.resolve()))


def _rm(path: Path):
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def omniglot_no_omniglot_py(layout):
    (layout.root / "omniglot-py").rename(layout.root / "other")
    return _path_error(layout, layout.root, "no omniglot-py folder in {}")


def omniglot_no_evaluation(layout):
    _rm(layout.root / "omniglot-py" / "images_evaluation")
    return _path_error(layout, layout.root / "omniglot-py" / "images_evaluation", "missing folder {}")


def omniglot_empty_character(layout):
    folder = layout.root / "omniglot-py" / "images_background" / "Beta" / "character02"
    for path in layout.images["images_background/Beta/character02"]:
        path.unlink()
    return _path_error(layout, folder, "class folder {} holds no *.png images")


def omniglot_too_few_characters_for_val(layout):
    for name in ("Gamma", "Delta/character03"):
        _rm(layout.root / "omniglot-py" / "images_evaluation" / name)
    return _path_error(layout, layout.root / "omniglot-py" / "images_evaluation", "the val split has no classes")


def folders_no_val(layout):
    _rm(layout.root / "val")
    return _path_error(layout, layout.root / "val", "missing split folder {}")


def folders_empty_test(layout):
    for name in RGB_CLASSES["test"]:
        _rm(layout.root / "test" / name)
    return _path_error(layout, layout.root / "test", "the test split has no classes (no class folders in {})")


def folders_class_in_two_splits(layout):
    shutil.copytree(layout.root / "train" / "n01", layout.root / "val" / "n01")
    return layout.root, "class 'n01' is in both the train and the val split"


def csv_no_test(layout):
    _rm(layout.root / "test.csv")
    return _path_error(layout, layout.root / "test.csv", "missing split file {}")


def csv_no_images_folder(layout):
    _rm(layout.root / "images")
    return _path_error(layout, layout.root / "images", "missing image folder {}")


def csv_bad_header(layout):
    path = layout.root / "val.csv"
    path.write_text("file,class\n" + "".join(path.read_text().splitlines(keepends=True)[1:]))
    return _path_error(layout, path, "{} must start with the header line 'filename,label'")


def csv_bad_row(layout):
    path = layout.root / "train.csv"
    path.write_text(path.read_text() + "a.jpg,n01,extra\n")
    return _path_error(layout, path, "{} line 20: expected 'filename,label'")


def csv_class_without_images(layout):
    for path in layout.images["n05"]:
        path.unlink()
    return layout.root, re.escape(
        f"{(layout.root / 'val.csv').resolve()}: 6 of the 6 images of class 'n05' are not in "
    )


def cifar_no_val_list(layout):
    path = layout.root / "splits" / "bertinetto" / "val.txt"
    _rm(path)
    return _path_error(layout, path, "missing split file {}")


def cifar_listed_class_without_folder(layout):
    path = layout.root / "splits" / "bertinetto" / "test.txt"
    path.write_text(path.read_text() + "zebra\n")
    return layout.root, re.escape(f"class 'zebra' listed in {path.resolve()} has no folder {layout.root.resolve()}")


def cifar_listed_class_without_images(layout):
    for path in layout.images["n02"]:
        path.unlink()
    return _path_error(layout, layout.root / "data" / "n02", "class folder {} (listed in ")


def cifar_empty_split_file(layout):
    path = layout.root / "splits" / "bertinetto" / "test.txt"
    path.write_text("\n")
    return _path_error(layout, path, "the test split has no classes ({} lists no class)")


MALFORMED = [
    *((name, _missing_root) for name in BUILDERS),
    *((name, _root_is_a_file) for name in BUILDERS),
    ("omniglot", omniglot_no_omniglot_py),
    ("omniglot", omniglot_no_evaluation),
    ("omniglot", omniglot_empty_character),
    ("omniglot", omniglot_too_few_characters_for_val),
    ("image_folders", folders_no_val),
    ("image_folders", folders_empty_test),
    ("image_folders", folders_class_in_two_splits),
    ("mini_imagenet_csv", csv_no_test),
    ("mini_imagenet_csv", csv_no_images_folder),
    ("mini_imagenet_csv", csv_bad_header),
    ("mini_imagenet_csv", csv_bad_row),
    ("mini_imagenet_csv", csv_class_without_images),
    ("cifar_fs", cifar_no_val_list),
    ("cifar_fs", cifar_listed_class_without_folder),
    ("cifar_fs", cifar_listed_class_without_images),
    ("cifar_fs", cifar_empty_split_file),
]


@pytest.mark.parametrize(("name", "breakage"), MALFORMED, ids=[f"{n}-{b.__name__.lstrip('_')}" for n, b in MALFORMED])
def test_a_malformed_folder_is_a_value_error_naming_the_path_and_the_layout(name, breakage, tmp_path):
    layout = build(name, tmp_path)
    data_root, match = breakage(layout)
    if breakage in (_missing_root, _root_is_a_file):
        match = re.escape(f"data_root {data_root.resolve()} ") + match
    with pytest.raises(ValueError, match=match) as info:
        SOURCES[name](data_root, image_size=SIZE)
    assert isinstance(info.value, DataFolderError)
    assert "Expected layout: " + SOURCES[name].layout in str(info.value)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_class_with_fewer_than_shots_plus_query_images_is_named_with_the_counts(name, tmp_path):
    layout = build(name, tmp_path)
    class_name = layout.splits["train"][1]
    for path in layout.images[class_name][3:]:
        path.unlink()
    if name == "mini_imagenet_csv":  # the csv lists what is left
        gone = {path.name for path in layout.images[class_name][3:]}
        lines = (layout.root / "train.csv").read_text().splitlines(keepends=True)
        (layout.root / "train.csv").write_text("".join(line for line in lines if line.split(",")[0] not in gone))
        where = f"'{class_name}' of {(layout.root / 'train.csv').resolve()}"
    else:
        where = str(layout.images[class_name][0].parent.resolve())
    source = layout.source()
    source.tasks("train", WAYS, 1, 2, 2)  # 3 images are enough for 1 + 2
    with pytest.raises(
        ValueError, match=re.escape(f"train class {where} has 3 images, fewer than shots + query = 2 + 3 = 5")
    ):
        source.tasks("train", WAYS, SHOTS, QUERY, 2)


@pytest.mark.parametrize("content", [b"not a png at all", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_an_undecodable_image_is_named_when_its_class_is_first_drawn(content, tmp_path):
    layout = make_image_folders(tmp_path)
    bad = layout.images["n04"][2]
    bad.write_bytes(content)
    source = layout.source()  # indexing reads no image
    source.tasks("train", WAYS, SHOTS, QUERY, TASKS)
    with pytest.raises(ValueError, match="cannot decode image " + re.escape(str(bad.resolve()))):
        source.tasks("val", WAYS, SHOTS, QUERY, TASKS)


def test_more_ways_than_a_split_has_classes_and_bad_arguments_are_refused(tmp_path):
    source = make_cifar_fs(tmp_path).source()
    with pytest.raises(ValueError, match=re.escape("ways (3) must be <= the 2 classes of cifar_fs's val split")):
        source.tasks("val", 3, SHOTS, QUERY, TASKS)
    with pytest.raises(ValueError, match="split must be one of"):
        source.tasks("validation", WAYS, SHOTS, QUERY, TASKS)
    with pytest.raises(ValueError, match="image_size"):
        CifarFSSource(source.data_root, image_size=0)
