"""Images as uint8 tensors, decoded once and kept in memory when the set is small enough.

A synthetic world (thousands of 64 px scenes) is read once and augmented as tensors:
decoding a PNG and augmenting a PIL image each time cost about 1 ms a sample, more than
half of a CPU training step of the embedded default. A set too large to hold (ImageNet)
is decoded per access, as a normal image folder is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.functional import pil_to_tensor

from common.errors import PelaBenchError

# Decoded bytes up to which a set is held in memory (3 bytes a pixel): 64 px scenes take 12 KiB each.
MEMORY_LIMIT_BYTES = 1 << 30


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB; an unreadable file is an error that names it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise PelaBenchError(f"cannot read image {path}: {exc}") from None


def load_rgb_tensor(path: str | Path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 tensor."""
    return pil_to_tensor(load_rgb(path))


def _decoded_bytes(paths: Sequence[str | Path]) -> int:
    total = 0
    for path in paths:
        try:
            with Image.open(path) as img:  # reads the header only
                w, h = img.size
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise PelaBenchError(f"cannot read image {path}: {exc}") from None
        total += 3 * w * h
        if total > MEMORY_LIMIT_BYTES:
            break
    return total


class ImageFiles:
    """Image `i` of `paths` as a uint8 tensor; all of them decoded up front if they fit in memory."""

    def __init__(self, paths: Sequence[str | Path], *, in_memory: bool | None = None) -> None:
        self.paths = [str(p) for p in paths]
        if in_memory is None:
            in_memory = _decoded_bytes(self.paths) <= MEMORY_LIMIT_BYTES
        self._decoded = [load_rgb_tensor(p) for p in self.paths] if in_memory else None

    @property
    def in_memory(self) -> bool:
        return self._decoded is not None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._decoded is not None:
            return self._decoded[index]
        return load_rgb_tensor(self.paths[index])


class LabelledImages(Dataset):
    """``(transform(image), label)`` pairs; `samples` lists ``(path, label)`` as torchvision's ImageFolder does."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[torch.Tensor], torch.Tensor], *,
                 classes: Sequence[str] = (), in_memory: bool | None = None) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.images = ImageFiles([p for p, _ in self.samples], in_memory=in_memory)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.samples[index][1]


def to_normalized(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    """uint8 -> float in [0, 1] -> normalised, the last steps of every tensor pipeline."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
