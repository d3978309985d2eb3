"""The training input pipeline: batches, determinism, and each augmentation against its definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fadenet.config import load_config
from fadenet.data import load_split, loader, prepare
from fadenet.data.loader import (FACE_ZONES, Batches, augment_batch, color_jitter, mixup, random_affine,
                                 random_blur, safe_erase_boxes, safe_random_erase, zone_overlap)
from fadenet.model import denormalize, normalize, to_tensor


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    cfg = load_config("smoke", "data.subset=0", "data.synthetic_count=160", f"data.root={tmp}/no-data",
                      f"data.cache_dir={tmp}/cache")
    return prepare(cfg, progress=False), cfg


def batch(n=6, size=32, seed=0):
    return torch.rand((n, 3, size, size), generator=torch.Generator().manual_seed(seed))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- batches ----------------------------------------------------------------------------------------
def test_eval_batches_shapes_order_and_pixels(faces):
    fs, cfg = faces
    split = load_split(fs, cfg)
    rows = split.test
    batches = Batches(fs.images, fs.ages, rows, batch_size=7)
    assert len(batches) == math.ceil(len(rows) / 7)
    seen = []
    for x, ages, idx in batches:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 64, 64) and x.shape[0] <= 7
        assert ages.dtype == torch.float32 and idx.dtype == torch.int64
        assert torch.equal(ages, torch.from_numpy(fs.ages[idx.numpy()].astype(np.float32)))
        # unaugmented: undoing the normalisation gives back the cached pixels
        cached = torch.from_numpy(np.asarray(fs.images[idx.numpy()])).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(denormalize(x), cached, atol=1e-6)
        seen.extend(idx.tolist())
    assert seen == sorted(rows.tolist())  # every row once (split rows are in file order)


def test_eval_batches_are_deterministic_and_match_rows_even_unsorted(faces):
    fs, _ = faces
    rows = np.array([50, 3, 17, 99, 4, 120, 8])
    a = list(Batches(fs.images, fs.ages, rows, batch_size=3))
    b = list(Batches(fs.images, fs.ages, rows, batch_size=3, seed=5))
    assert sorted(torch.cat([r for _, _, r in a]).tolist()) == sorted(rows.tolist())
    for (xa, aa, ra), (xb, ab, rb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(aa, ab) and torch.equal(ra, rb)
        assert torch.allclose(denormalize(xa), to_tensor(fs.images[ra.numpy()]), atol=1e-6)


def test_augmented_batches_are_the_reference_pipeline_batch_for_batch(faces):
    # what the loader yields (gathered one batch ahead, made on the device) is, batch for batch,
    # the faces of its own rows augmented with the draws of one generator seeded by (seed, epoch)
    fs, _ = faces
    rows = np.arange(5, 140)
    batches = Batches(fs.images, fs.ages, rows, batch_size=16, train=True, seed=3, erase_p=0.5,
                      device=torch.device("cpu"))
    batches.set_epoch(2)
    gen = torch.Generator().manual_seed(3 * 100_003 + 2)
    torch.randperm(len(rows), generator=gen)  # the epoch's order is drawn first
    for x, ages, idx in batches:
        expected = normalize(augment_batch(to_tensor(fs.images[idx.numpy()]), gen, erase_p=0.5))
        assert torch.equal(x, expected)
        assert torch.equal(ages, torch.from_numpy(fs.ages[idx.numpy()].astype(np.float32)))


def test_full_strength_is_the_paper_pipeline_draw_for_draw():
    x = batch(8, 32)
    g = gen(5)
    expected = safe_random_erase(random_blur(color_jitter(random_affine(x, g), g), g), g, 0.3)
    assert torch.equal(augment_batch(x, gen(5), erase_p=0.3, strength=1.0), expected)


def test_zero_strength_leaves_only_flips():
    x = batch(8, 32)
    y = augment_batch(x, gen(6), erase_p=0.0, strength=0.0)
    for a, b in zip(y, x):  # each face is itself or its mirror, nothing else
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, b.flip(-1), atol=1e-5)
    assert not torch.allclose(y, x, atol=1e-3)  # some were flipped


def test_an_epoch_at_a_smaller_size_yields_the_resized_faces(faces):
    fs, _ = faces
    rows = np.arange(0, 40)
    batches = Batches(fs.images, fs.ages, rows, batch_size=16, train=True, seed=1, augment=False)
    batches.set_epoch(0, size=32)
    for x, _, idx in batches:
        expected = torch.nn.functional.interpolate(to_tensor(fs.images[idx.numpy()]), size=(32, 32),
                                                   mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(x, normalize(expected.clamp(0, 1)), atol=1e-6)
    batches.set_epoch(1)  # no size given: the cache's own
    assert next(iter(batches))[0].shape[-1] == fs.images.shape[1]


def test_train_epoch_is_a_permutation_that_changes_by_epoch_and_repeats(faces):
    fs, _ = faces
    rows = np.arange(10, 150)
    def epoch_rows(seed, epoch, augment=False):
        b = Batches(fs.images, fs.ages, rows, batch_size=16, train=True, seed=seed, augment=augment)
        b.set_epoch(epoch)
        return [r.tolist() for _, _, r in b]

    e0 = epoch_rows(1, 0)
    assert len(e0) == len(rows) // 16  # the incomplete last batch is dropped in training
    flat = sum(e0, [])
    assert len(flat) == len(set(flat)) == 16 * (len(rows) // 16) and set(flat) <= set(rows.tolist())
    assert e0 == epoch_rows(1, 0)            # same (seed, epoch): same batches (resume)
    assert e0 != epoch_rows(1, 1)            # the next epoch shuffles anew
    assert e0 != epoch_rows(2, 0)            # another seed, another order
    assert sum(epoch_rows(1, 3), []) != flat


def test_train_augmentation_repeats_for_the_same_epoch(faces):
    fs, _ = faces
    rows = np.arange(64)

    def run(epoch):
        b = Batches(fs.images, fs.ages, rows, batch_size=32, train=True, seed=3, erase_p=0.5)
        b.set_epoch(epoch)
        return list(b)

    a, again, other = run(2), run(2), run(3)
    for (xa, _, ra), (xb, _, rb) in zip(a, again):
        assert torch.equal(ra, rb) and torch.equal(xa, xb)
    x, _, r = a[0]
    plain = normalize(to_tensor(fs.images[r.numpy()]))
    assert x.shape == plain.shape and not torch.allclose(x, plain, atol=0.05)  # augmented
    assert not torch.equal(a[0][0], other[0][0])


def test_train_without_augment_gives_cached_pixels(faces):
    fs, _ = faces
    b = Batches(fs.images, fs.ages, np.arange(40), batch_size=8, train=True, augment=False)
    for x, _, r in b:
        assert torch.allclose(denormalize(x), to_tensor(fs.images[r.numpy()]), atol=1e-6)


def test_normalize_round_trip():
    x = batch()
    y = normalize(x)
    assert torch.allclose(denormalize(y), x, atol=1e-6)
    assert torch.allclose(y[:, 0], (x[:, 0] - 0.485) / 0.229)
    u8 = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    t = to_tensor(u8)
    assert t.shape == (2, 3, 5, 5) and torch.allclose(t * 255, torch.from_numpy(u8).permute(0, 3, 1, 2).float())


# ---- augmentations -------------------------------------------------------------------------------
def test_augment_batch_keeps_shape_and_range_and_changes_pixels():
    x = batch(8, 48)
    y = augment_batch(x, gen(1), erase_p=0.5)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().mean() > 0.02
    assert torch.equal(y, augment_batch(x, gen(1), erase_p=0.5))
    assert not torch.equal(y, augment_batch(x, gen(2), erase_p=0.5))


def test_random_affine_zero_ranges_is_identity():
    x = batch(5, 40)
    y = random_affine(x, gen(), degrees=0, shear=0, translate=0, scale=(1, 1), flip_p=0)
    assert torch.allclose(y, x, atol=1e-5)


def test_random_affine_flip_only_is_a_horizontal_flip():
    x = batch(5, 40)
    y = random_affine(x, gen(), degrees=0, shear=0, translate=0, scale=(1, 1), flip_p=1)
    assert torch.allclose(y, torch.flip(x, dims=[3]), atol=1e-5)
    assert not torch.allclose(y, torch.flip(x, dims=[2]), atol=1e-2)


def test_random_affine_default_moves_pixels_in_range():
    x = batch(5, 40)
    y = random_affine(x, gen(4))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (y - x).abs().mean() > 0.05


def test_color_jitter_zero_strength_is_identity():
    x = batch()
    assert torch.allclose(color_jitter(x, gen(), strength=0.0), x, atol=1e-6)


def reference_jitter(x, bright, contrast, sat):
    """Step by step: brightness, contrast about the mean grey, saturation about each pixel's grey."""
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    out = []
    for i in range(x.shape[0]):
        img = x[i:i + 1] * bright[i]
        mean_grey = (img * luma).sum(1, keepdim=True).mean()
        img = contrast[i] * img + (1 - contrast[i]) * mean_grey
        grey = (img * luma).sum(1, keepdim=True)
        img = sat[i] * img + (1 - sat[i]) * grey
        out.append(img.clamp(0, 1))
    return torch.cat(out)


def test_color_jitter_matches_step_by_step_with_fixed_factors(monkeypatch):
    x = 0.3 + 0.4 * batch(3, 16)  # mid-range: no clipping inside the steps
    factors = [torch.tensor([1.2, 0.8, 1.0]), torch.tensor([0.9, 1.25, 1.1]), torch.tensor([0.75, 1.2, 0.0])]
    calls = iter(factors)
    monkeypatch.setattr(loader, "_uniform", lambda gen, n, low, high: next(calls))
    got = color_jitter(x, gen())
    assert torch.allclose(got, reference_jitter(x, *factors), atol=1e-5)
    assert torch.allclose(got[2, 0], got[2, 1], atol=1e-5)  # saturation 0: grey


def test_color_jitter_matches_step_by_step_with_drawn_factors():
    x = 0.3 + 0.4 * batch(6, 16)
    g = gen(11)
    state = g.get_state()
    got = color_jitter(x, g, strength=0.25)
    replay = torch.Generator()
    replay.set_state(state)
    bright, contrast, sat = (torch.rand(6, generator=replay) * 0.5 + 0.75 for _ in range(3))
    assert torch.allclose(got, reference_jitter(x, bright, contrast, sat), atol=1e-5)
    assert not torch.allclose(got, x, atol=1e-3)


def test_color_jitter_clips_to_range():
    x = torch.ones(2, 3, 8, 8) * 0.95
    y = color_jitter(x, gen(), strength=0.9)
    assert y.min() >= 0 and y.max() <= 1


def test_random_blur_smooths_only_chosen_samples():
    x = batch(20, 24)
    y = random_blur(x, gen(2), p=0.5)
    changed = [(y[i] - x[i]).abs().max() > 1e-6 for i in range(20)]
    assert 3 <= sum(changed) <= 17
    for i in range(20):
        if changed[i]:
            assert y[i].std() < x[i].std()       # blurred noise has less variance
            assert y[i].mean() == pytest.approx(x[i].mean().item(), abs=0.02)
    assert torch.equal(random_blur(x, gen(2), p=0.0), x)


def test_safe_erase_boxes_never_hide_more_than_two_zones():
    boxes = safe_erase_boxes(4000, gen(7), p=1.0)
    assert boxes.shape == (4000, 4)
    used = boxes.any(1)
    assert used.float().mean() > 0.9
    b = boxes[used]
    assert ((zone_overlap(b) >= 0.5).sum(1) <= 2).all()
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 1).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= 1).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert area.min() >= 0.02 - 1e-6 and area.max() <= 0.15 + 1e-6
    # unconstrained candidates do cover 3+ zones sometimes, so the rule is doing something
    many = safe_erase_boxes(4000, gen(7), p=1.0, max_zones=4)
    assert ((zone_overlap(many) >= 0.5).sum(1) > 2).any()


def test_safe_erase_boxes_with_p0_are_none():
    assert not safe_erase_boxes(500, gen(), p=0.0).any()


def test_zone_overlap_values():
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert torch.allclose(zone_overlap(whole), torch.ones(1, len(FACE_ZONES)))
    left_eye = FACE_ZONES[0:1]
    half = left_eye.clone()
    half[0, 2] = (left_eye[0, 0] + left_eye[0, 2]) / 2
    ov = zone_overlap(torch.cat([left_eye, half]))
    assert ov[0, 0] == pytest.approx(1.0) and ov[1, 0] == pytest.approx(0.5, abs=1e-5)
    assert ov[0, 1] == 0  # the eyes do not overlap


def test_safe_random_erase_fills_exactly_the_boxes():
    x = batch(16, 32)
    g = gen(5)
    state = g.get_state()
    y = safe_random_erase(x, g, p=1.0)
    replay = torch.Generator()
    replay.set_state(state)
    boxes = safe_erase_boxes(16, replay, p=1.0)
    centres = (torch.arange(32) + 0.5) / 32
    for i in range(16):
        x0, y0, x1, y1 = boxes[i].tolist()
        inside = ((centres.view(1, 32) >= x0) & (centres.view(1, 32) < x1)
                  & (centres.view(32, 1) >= y0) & (centres.view(32, 1) < y1))
        assert torch.equal(y[i][:, ~inside], x[i][:, ~inside])
        if inside.any():
            assert (y[i][:, inside] != x[i][:, inside]).float().mean() > 0.99
    assert torch.equal(safe_random_erase(x, gen(5), p=0.0), x)


# ---- mixup ----------------------------------------------------------------------------------------
def test_mixup_mixes_everything_with_one_lambda_and_partner():
    n, k = 8, 81
    values = torch.arange(n, dtype=torch.float32) * 10  # sample i: image, age and weight all = 10 i
    x = values.view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    ages = values.clone()
    weights = values.clone() + 1
    target = torch.zeros(n, k)
    target[torch.arange(n), values.long()] = 1
    mx, mt, ma, mw, lam = mixup(x, target, ages, weights, alpha=0.5, rng=np.random.default_rng(3))
    assert 0 < lam < 1
    assert mx.shape == x.shape and mt.shape == target.shape
    assert torch.allclose(mx, ma.view(n, 1, 1, 1).expand_as(mx))    # images mixed like ages
    assert torch.allclose(mw, ma + 1)                               # weights mixed like ages
    assert torch.allclose(mt.sum(1), torch.ones(n))                 # still distributions
    assert torch.allclose((mt * torch.arange(k)).sum(1), ma, atol=1e-4)  # like the ages, too
    partner = ((ma - lam * ages) / (1 - lam) / 10).round().long()  # whom each sample was mixed with
    assert sorted(partner.tolist()) == list(range(n))               # a permutation of the batch
    assert (partner != torch.arange(n)).any()                       # that really mixes
    expected = lam * target + (1 - lam) * target[partner]
    assert torch.allclose(mt, expected, atol=1e-6)
    assert torch.allclose(mx, lam * x + (1 - lam) * x[partner], atol=1e-5)
    assert torch.allclose(mw, lam * weights + (1 - lam) * weights[partner], atol=1e-5)
    mx2, *_, lam2 = mixup(x, target, ages, weights, alpha=0.5, rng=np.random.default_rng(3))
    assert lam2 == lam and torch.equal(mx2, mx)


def test_mixup_keeps_distributions_for_soft_targets():
    rng = np.random.default_rng(0)
    target = torch.softmax(torch.randn(16, 81, generator=gen()), 1)
    x = batch(16, 8)
    _, mt, _, _, lam = mixup(x, target, torch.rand(16), torch.rand(16), alpha=0.2, rng=rng)
    assert torch.allclose(mt.sum(1), torch.ones(16), atol=1e-5) and (mt >= 0).all()
