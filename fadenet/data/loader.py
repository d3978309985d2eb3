"""The training input pipeline: batches straight from the uint8 cache, augmented as whole
tensors (one affine warp, one blur convolution, vectorised colour jitter and erasing for the
batch) rather than image by image, so that two CPU cores keep up with the model.

Randomness comes from generators seeded by (seed, epoch), so epoch e draws the same batches
and augmentations whether or not the run was interrupted before it.

On a GPU the CPU only gathers the uint8 faces of the next batch from the memory-mapped cache
(in a background thread, while the current batch trains) and copies them to the device through
pinned memory; conversion to float and every augmentation then run on the device. The random
draws stay on the CPU generator, so a batch is the same on any device.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from .tensors import normalize

# Where eyes, nose and mouth sit in a face crop (x0, y0, x1, y1 as fractions of the side).
FACE_ZONES = torch.tensor([
    [0.15, 0.25, 0.47, 0.47],  # left eye
    [0.53, 0.25, 0.85, 0.47],  # right eye
    [0.37, 0.42, 0.63, 0.66],  # nose
    [0.28, 0.65, 0.72, 0.86],  # mouth
])


class Batches:
    """Iterate ``(images, ages, rows)`` over ``rows`` of a uint8 image array.

    ``images`` are normalised float tensors (B, 3, S, S); ``ages`` float; ``rows`` the indices
    into the array. With ``train=True`` the order is shuffled and the batch augmented.

    ``shard=(rank, world)`` yields process ``rank``'s share of each batch for data-parallel
    training: every process draws the same shuffled order, and takes every world-th face of each
    ``batch_size`` batch; it augments its share with draws of its own (rank 0 with the draws a
    single process makes). Images are made and augmented on ``device``; ages and rows stay on
    the CPU. ``strength`` scales the augmentations' ranges (see :func:`augment_batch`);
    :meth:`set_epoch` can set a smaller ``size`` for the epoch (progressive resizing): the faces are
    then resized (antialiased) before they are augmented.
    """

    def __init__(self, images: np.ndarray, ages: np.ndarray, rows: np.ndarray, batch_size: int,
                 train: bool = False, seed: int = 0, erase_p: float = 0.1, augment: bool = True,
                 shard: tuple[int, int] = (0, 1), device: str | torch.device = "cpu", strength: float = 1.0):
        self.images, self.ages = images, np.asarray(ages, dtype=np.float32)
        self.rows = np.asarray(rows)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.erase_p, self.augment, self.strength = erase_p, augment and train, strength
        self.rank, self.world = shard
        self.device = torch.device(device)
        self.epoch, self.size = 0, images.shape[1]

    def set_epoch(self, epoch: int, size: int | None = None) -> None:
        self.epoch, self.size = epoch, size or self.images.shape[1]

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.train and n >= self.batch_size else math.ceil(n / self.batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        rows = self.rows[torch.randperm(len(self.rows), generator=gen).numpy()] if self.train else self.rows
        if self.rank:
            gen = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_009 + self.rank)
        chunks = [self._chunk(rows, b) for b in range(len(self))]
        with ThreadPoolExecutor(1) as reader:  # gathers batch b + 1 while batch b trains
            pending = reader.submit(self._gather, chunks[0]) if chunks else None
            for b, chunk in enumerate(chunks):
                faces = pending.result()
                if b + 1 < len(chunks):
                    pending = reader.submit(self._gather, chunks[b + 1])
                x = self._on_device(faces)
                if self.size != x.shape[-1]:
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                      align_corners=False).clamp_(0, 1)
                if self.augment:
                    x = augment_batch(x, gen, self.erase_p, self.strength)
                yield normalize(x), torch.from_numpy(self.ages[chunk]), torch.from_numpy(chunk)

    def _chunk(self, rows: np.ndarray, b: int) -> np.ndarray:
        chunk = rows[b * self.batch_size:(b + 1) * self.batch_size]
        if self.train:  # order within a shuffled batch is free, and file order reads faster
            chunk = np.sort(chunk)
        return chunk[self.rank::self.world]

    def _gather(self, chunk: np.ndarray) -> torch.Tensor:
        faces = torch.from_numpy(self.images[chunk])  # fancy indexing copies out of the cache
        return faces.pin_memory() if self.device.type == "cuda" else faces

    def _on_device(self, faces: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] on the device."""
        faces = faces.to(self.device, non_blocking=True)
        return faces.permute(0, 3, 1, 2).float().div_(255)


def augment_batch(x: torch.Tensor, gen: torch.Generator, erase_p: float = 0.1, strength: float = 1.0) -> torch.Tensor:
    """Flip + affine (one warp), colour jitter, Gaussian blur and safe random erasing, per sample.

    ``strength`` multiplies the affine ranges (rotation, shear, shift, zoom), the jitter and the
    share of blurred faces (1: the paper's recipe, draw for draw; 0: flips and erasing only).
    """
    s = strength
    x = random_affine(x, gen, degrees=10.0 * s, shear=5.0 * s, translate=0.06 * s, scale=(1 - 0.1 * s, 1 + 0.1 * s))
    x = color_jitter(x, gen, strength=0.25 * s)
    x = random_blur(x, gen, p=min(1.0, 0.2 * s))
    return safe_random_erase(x, gen, erase_p)


def _uniform(gen, n, low, high):
    return torch.rand(n, generator=gen) * (high - low) + low


# Every augmentation draws its random numbers from the CPU generator and then moves them to the
# batch's device: the same draws, whatever the device.


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0, shear: float = 5.0,
                  translate: float = 0.06, scale: tuple[float, float] = (0.9, 1.1),
                  flip_p: float = 0.5) -> torch.Tensor:
    """Horizontal flip, rotation, shear, translation and scale as one resampling of the batch."""
    b = x.shape[0]
    angle = torch.deg2rad(_uniform(gen, b, -degrees, degrees))
    sh = torch.tan(torch.deg2rad(_uniform(gen, b, -shear, shear)))
    s = _uniform(gen, b, *scale)
    flip = torch.where(torch.rand(b, generator=gen) < flip_p, -1.0, 1.0)
    t = _uniform(gen, 2 * b, -translate, translate).view(b, 2) * 2  # grid units span [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    # output -> input sampling matrix: rotation @ shear @ flip, divided by the zoom
    a = torch.stack([torch.stack([cos * flip, (cos * sh - sin)], 1),
                     torch.stack([sin * flip, (sin * sh + cos)], 1)], 1) / s.view(b, 1, 1)
    theta = torch.cat([a, t.unsqueeze(2)], 2).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


LUMA = torch.tensor([0.299, 0.587, 0.114])


def color_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 0.25) -> torch.Tensor:
    """Brightness, contrast and saturation, each a factor in [1-s, 1+s] per sample.

    All three are linear in the pixel values, so they compose into one 3x3 colour matrix and
    one offset per sample, applied in a single pass over the batch.
    """
    b = x.shape[0]
    bright, contrast, sat = (_uniform(gen, b, 1 - strength, 1 + strength).to(x) for _ in range(3))
    luma = LUMA.to(x)
    # contrast blends with the image's mean grey; saturation blends each pixel with its grey
    mean_gray = torch.einsum("bchw,c->b", x, luma) / (x.shape[2] * x.shape[3]) * bright
    sat_matrix = sat.view(b, 1, 1) * torch.eye(3).to(x) + (1 - sat).view(b, 1, 1) * luma.view(1, 1, 3)
    matrix = sat_matrix * (bright * contrast).view(b, 1, 1)
    offset = (sat_matrix.sum(2) * ((1 - contrast) * mean_gray).view(b, 1)).view(b, 3, 1, 1)
    return (torch.einsum("bij,bjhw->bihw", matrix, x) + offset).clamp_(0, 1)


def random_blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.2,
                sigma: tuple[float, float] = (0.3, 1.5), radius: int = 3) -> torch.Tensor:
    """Gaussian blur of a random ``p`` share of the batch, each with its own sigma (separable)."""
    chosen = torch.nonzero(torch.rand(x.shape[0], generator=gen) < p).flatten()
    sigmas = _uniform(gen, len(chosen), *sigma).to(x)
    if len(chosen) == 0:
        return x
    chosen = chosen.to(x.device)
    sub = x[chosen]
    b, c, h, w = sub.shape
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigmas.view(-1, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, 2r+1)
    y = sub.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    x = x.clone()
    x[chosen] = y.view(b, c, h, w)
    return x


def safe_erase_boxes(b: int, gen: torch.Generator, p: float, tries: int = 10,
                     area: tuple[float, float] = (0.02, 0.15), max_zones: int = 2) -> torch.Tensor:
    """Boxes (x0, y0, x1, y1 in [0, 1]) to erase, one per sample; an all-zero box means none.

    A candidate is rejected when it covers (half or more of) more than ``max_zones`` of the
    eye, nose and mouth zones, so that an erased face still shows most of what reveals age.
    """
    n = b * tries
    a = _uniform(gen, n, *area)
    ratio = torch.exp(_uniform(gen, n, math.log(0.3), math.log(3.3)))
    w, h = (a * ratio).sqrt().clamp(max=1), (a / ratio).sqrt().clamp(max=1)
    x0, y0 = torch.rand(n, generator=gen) * (1 - w), torch.rand(n, generator=gen) * (1 - h)
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], 1)
    covered = (zone_overlap(boxes) >= 0.5).sum(1)
    ok = (covered <= max_zones).view(b, tries)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((b,), -1))
    chosen = boxes.view(b, tries, 4)[torch.arange(b), first.clamp(min=0)]
    keep = (torch.rand(b, generator=gen) < p) & (first >= 0)
    return chosen * keep.view(b, 1)


def zone_overlap(boxes: torch.Tensor) -> torch.Tensor:
    """Share of each face zone's area that each box covers, (N, zones)."""
    z = FACE_ZONES
    ix = (torch.minimum(boxes[:, None, 2], z[None, :, 2]) - torch.maximum(boxes[:, None, 0], z[None, :, 0])).clamp(min=0)
    iy = (torch.minimum(boxes[:, None, 3], z[None, :, 3]) - torch.maximum(boxes[:, None, 1], z[None, :, 1])).clamp(min=0)
    return ix * iy / ((z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1]))


def safe_random_erase(x: torch.Tensor, gen: torch.Generator, p: float = 0.1) -> torch.Tensor:
    """Fill each sample's safe box (see :func:`safe_erase_boxes`) with uniform noise."""
    b, _, h, w = x.shape
    boxes = safe_erase_boxes(b, gen, p)
    chosen = torch.nonzero(boxes.any(1)).flatten()
    if len(chosen) == 0:
        return x
    boxes = boxes[chosen].to(x)
    xs = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w
    ys = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h
    inside = ((xs.view(1, 1, w) >= boxes[:, 0, None, None]) & (xs.view(1, 1, w) < boxes[:, 2, None, None])
              & (ys.view(1, h, 1) >= boxes[:, 1, None, None]) & (ys.view(1, h, 1) < boxes[:, 3, None, None]))
    noise = torch.rand((len(chosen),) + x.shape[1:], generator=gen, dtype=x.dtype).to(x.device)
    chosen = chosen.to(x.device)
    x = x.clone()
    x[chosen] = torch.where(inside.unsqueeze(1), noise, x[chosen])
    return x


def mixup(x: torch.Tensor, target: torch.Tensor, ages: torch.Tensor, weights: torch.Tensor,
          alpha: float, rng: np.random.Generator):
    """Mix each sample with a random partner: images, target distributions, ages and loss weights
    all by the same factor lambda ~ Beta(alpha, alpha), one lambda per batch."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)

    def mix(t):
        return lam * t + (1 - lam) * t[perm]

    return mix(x), mix(target), mix(ages), mix(weights), lam
