"""``gaussian_blobs``: a generated task source of smooth random class prototypes plus noise (no files, no download).

Class c is a fixed 1 x S x S prototype (a sum of 3 Gaussian bumps at places drawn from c); an image of the class is
the prototype under a small random shift plus N(0, 0.3^2) pixel noise. Classes 0-39 train, 40-49 val, 50-59 test.
"""

from __future__ import annotations

import torch

from metabench.problems.datasets import TaskBatch, _labels
from metabench.problems.task_sources import SPLITS, TaskSource

__all__ = ["GaussianBlobs"]


class GaussianBlobs(TaskSource):
    name = "gaussian_blobs"
    channels = 1
    BOUNDS = (0, 40, 50, 60)

    def __init__(self, image_size: int = 12):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
            raise ValueError(f"image_size must be an integer >= 4, got {image_size!r}")
        self.image_size = image_size

    def _classes(self, split: str) -> range:
        i = SPLITS.index(split)
        return range(self.BOUNDS[i], self.BOUNDS[i + 1])

    def n_classes(self, split: str) -> int:
        return len(self._classes(split))

    def _prototype(self, c: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(10_007 * c + 1)
        axis = torch.linspace(-1, 1, self.image_size, dtype=torch.float64)
        centres = torch.rand(3, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.7
        image = torch.zeros(self.image_size, self.image_size, dtype=torch.float64)
        for cx, cy in centres:
            image += torch.exp(-((axis[None, :] - cx) ** 2 + (axis[:, None] - cy) ** 2) / 0.08)
        return image

    def tasks(self, split, ways, shots, query, n_tasks, seed=0, dtype=torch.float32) -> TaskBatch:
        self._check(split, ways, shots, query, n_tasks, seed)
        gen = torch.Generator().manual_seed(seed)
        pool = torch.tensor(list(self._classes(split)))
        per_class = shots + query
        images = []
        for _ in range(n_tasks):
            chosen = pool[torch.randperm(len(pool), generator=gen)[:ways]]
            for c in chosen.tolist():
                base = self._prototype(c)
                for _ in range(per_class):
                    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
                    noisy = torch.roll(base, (dy, dx), (0, 1))
                    images.append(noisy + 0.3 * torch.randn(noisy.shape, generator=gen, dtype=torch.float64))
        size = self.image_size
        batch = torch.stack(images).reshape(n_tasks, ways, per_class, 1, size, size)
        support = batch[:, :, :shots].reshape(n_tasks, ways * shots, 1, size, size)
        queries = batch[:, :, shots:].reshape(n_tasks, ways * query, 1, size, size)
        return TaskBatch(
            support.to(dtype), _labels(n_tasks, ways, shots), queries.to(dtype), _labels(n_tasks, ways, query)
        )

    def describe(self) -> dict:
        return super().describe() | {"splits": "classes 0-39 train, 40-49 val, 50-59 test"}
