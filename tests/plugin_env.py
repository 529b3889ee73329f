"""The example plugin (``examples/plugin``) made visible to this process as if pip had installed it, and undone.

``installed(tmp_path, extra=...)`` puts the plugin's sources on ``sys.path`` and a distribution's metadata
(``*.dist-info`` with ``entry_points.txt``, what ``pip install`` writes) in a folder on ``sys.path``, so
``importlib.metadata.entry_points`` finds the plugin's entry points; ``extra`` adds more entry-point lines (e.g. a
plugin whose import raises). Every metabench registry forgets what it had read of entry points on entry and is
restored on exit, so no name leaks into other tests.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "examples" / "plugin" / "src"
PLUGIN_SWEEP = ROOT / "examples" / "plugin" / "sweep.toml"

ENTRY_POINTS = {
    "metabench.problems": {"logistic_hyperparameters": "metabench_example_plugin.problem:LogisticHyperparameters"},
    "metabench.models": {"resblocks": "metabench_example_plugin.model:resblocks"},
    "metabench.datasets": {"gaussian_blobs": "metabench_example_plugin.tasks:GaussianBlobs"},
}


def registries():
    from metabench.algorithms.registry import ALGORITHMS
    from metabench.problems.registry import DATASETS, MODELS, PROBLEMS

    return (ALGORITHMS, PROBLEMS, MODELS, DATASETS)


def write_distribution(folder: Path, name: str, groups: dict[str, dict[str, str]]) -> None:
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, points in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in points.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))


@contextlib.contextmanager
def installed(tmp_path: Path, extra: dict[str, dict[str, str]] | None = None):
    """The example plugin (and ``extra`` entry points) installed for the block (module docstring)."""
    site = tmp_path / "site"
    groups = copy.deepcopy(ENTRY_POINTS)
    for group, points in (extra or {}).items():
        groups.setdefault(group, {}).update(points)
    write_distribution(site, "metabench_example_plugin_test", groups)
    saved = [(r, dict(r._objects), dict(r._origins), dict(r._broken), r._pending) for r in registries()]
    sys.path[:0] = [str(site), str(PLUGIN_SRC)]
    importlib.invalidate_caches()
    try:
        for registry in registries():
            registry._pending = None  # read the entry points again
        yield site
    finally:
        for entry in (str(site), str(PLUGIN_SRC)):
            while entry in sys.path:
                sys.path.remove(entry)
        for registry, objects, origins, broken, pending in saved:
            registry._objects, registry._origins, registry._broken, registry._pending = (
                objects,
                origins,
                broken,
                pending,
            )
        importlib.invalidate_caches()
