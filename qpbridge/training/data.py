"""The tiles as torch sees them: a Dataset of (image, label) tensors, the seeded batches of an epoch, and the
checks that several tile datasets can train one model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Compose

from qpbridge.classes import ClassInfo
from qpbridge.errors import InputError
from qpbridge.tiles import TileDataset, TileRecord, read_tile

__all__ = ["CACHE_BYTES", "MPP_TOLERANCE", "TileTorchDataset", "collate", "combine_datasets", "epoch_batches"]

#: Decoded tiles kept in memory (single-process loading) up to this many bytes.
CACHE_BYTES = 1 << 30
#: Relative difference of um/px between datasets (or dataset and model) that is still "the same".
MPP_TOLERANCE = 0.05


def combine_datasets(datasets: Sequence[TileDataset], role: str) -> tuple[tuple[ClassInfo, ...], float, int]:
    """Check that the datasets agree (role, classes, um/px, tile size); return those."""
    if not datasets:
        raise InputError("no tile datasets given: pass one or more folders written by qpbridge masks")
    first = datasets[0]
    for ds in datasets:
        if ds.role != role:
            raise InputError(
                f"tile dataset {ds.path} is a {ds.role} dataset but --role is {role}: "
                f"give {role} tiles (qpbridge masks --role {role}) or --role {ds.role}"
            )
        if [(c.label, c.name) for c in ds.classes] != [(c.label, c.name) for c in first.classes]:
            raise InputError(
                f"tile datasets disagree on classes: {first.path} has "
                f"{[(c.label, c.name) for c in first.classes]}, {ds.path} has "
                f"{[(c.label, c.name) for c in ds.classes]}"
            )
        if abs(ds.mpp - first.mpp) > MPP_TOLERANCE * first.mpp:
            raise InputError(
                f"tile datasets disagree on um/px: {first.path} is at {first.mpp}, {ds.path} at "
                f"{ds.mpp}: export all tiles at one --mpp"
            )
        if ds.tile_px != first.tile_px:
            raise InputError(
                f"tile datasets disagree on tile size: {first.path} has {first.tile_px} px tiles, "
                f"{ds.path} has {ds.tile_px} px: export all tiles with one --tile-px"
            )
    if not any(ds.tiles for ds in datasets):
        raise InputError("the tile datasets hold no usable tiles (all are missing or entirely ignored)")
    return first.classes, first.mpp, first.tile_px


class TileTorchDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Tiles as ``(image 3HW float32 in [0, 1], label HW int64)``, keyed by ``(index, augmentation seed)``.

    ``augmentation`` (a MONAI dictionary transform over ``image`` and ``label``) is seeded with the key's seed
    before each tile, so a tile's augmentation depends on the key alone; ``cache`` keeps decoded tiles;
    ``instances``: the masks are 16-bit instance images (nuclei tiles).
    """

    def __init__(
        self,
        tiles: Sequence[TileRecord],
        tile_px: int,
        *,
        augmentation: Compose | None = None,
        cache: bool = False,
        instances: bool = False,
    ) -> None:
        self.tiles = list(tiles)
        self.tile_px = tile_px
        self.instances = instances
        self.augment = augmentation
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.tiles)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile's uint8 RGB (HW3) and label (HW) arrays."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pair = read_tile(self.tiles[index], self.tile_px, instances=self.instances)
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = (key, 0) if isinstance(key, int) else key
        image_np, mask_np = self.load(int(index))
        image = torch.from_numpy(image_np.copy()).permute(2, 0, 1).to(torch.float32) / 255.0
        label = torch.from_numpy(mask_np.astype(np.int64))[None]
        if self.augment is not None:
            from monai.utils import convert_to_tensor

            self.augment.set_random_state(seed=int(seed))
            out = self.augment({"image": image, "label": label})
            image = convert_to_tensor(out["image"], track_meta=False, dtype=torch.float32)
            label = convert_to_tensor(out["label"], track_meta=False, dtype=torch.int64)
        return image.contiguous(), label[0].contiguous()


def epoch_batches(n_train: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """Epoch ``epoch``'s batches of (position in the training list, augmentation seed), from the seed alone."""
    rng = np.random.default_rng([seed, 1000 + epoch])
    order = rng.permutation(n_train)
    seeds = rng.integers(0, 2**31 - 1, size=n_train)
    keys = [(int(order[i]), int(seeds[i])) for i in range(n_train)]
    return [keys[i : i + batch_size] for i in range(0, n_train, batch_size)]


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a batch's images and labels."""
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
