"""Reading images robustly, and the square face crops of box framing (``data.crop=face``).

The box crop is a square FACE_MARGIN times the side of OpenCV's frontal-face (Haar) box, on the
same centre. All-Age-Faces is eye-aligned by its authors, so its box is fixed: over every 40th
AAF image (334 images, 327 detected) the median Haar box was centred at (0.50, 0.58) of the
image's width and height with a side of 0.70 of its width. The default framing of AAF and of a
user's photos is landmark alignment instead (:mod:`fadenet.data.detect`), onto where the eyes,
nose and mouth sit in these box crops.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

FACE_MARGIN = 1.1
AAF_BOX = (0.50, 0.58, 0.70)  # centre x, centre y (fractions of width, height), side (of width)
MAX_PIXELS = 64_000_000       # larger images are refused rather than decoded

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must raise, not decode half grey
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageReadError(ValueError):
    """An image file that cannot be decoded; the message says why."""


def read_rgb(path: str | Path, min_side: int = 0) -> np.ndarray:
    """Decode any PIL-readable image to RGB uint8 (H, W, 3).

    Grayscale, palette, CMYK and 16-bit images are converted; transparency is composited on
    white; an EXIF orientation (phone photos) is applied; of an animated image, the first
    frame is read. ``min_side`` lets JPEG decoding downscale in the DCT for speed, never below it.
    """
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:  # PIL itself only warns below twice its limit
                raise Image.DecompressionBombError
            if min_side and im.format == "JPEG":
                im.draft("RGB", (min_side, min_side))
            im.load()
            return np.asarray(_to_rgb(ImageOps.exif_transpose(im)))
    except Image.DecompressionBombError:
        raise ImageReadError(f"image larger than {MAX_PIXELS:,} pixels") from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's ways of saying "not a valid image"
        reason = str(e).split("\n")[0] or type(e).__name__
        raise ImageReadError(reason) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = (arr / max(arr.max(), 1.0) * 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    return im.convert("RGB")


def aligned_face_box(width: int, height: int) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the face crop of an eye-aligned AAF image."""
    cx, cy, side = AAF_BOX
    return cx * width, cy * height, side * width * FACE_MARGIN


def crop_square(rgb: np.ndarray, box: tuple[float, float, float] | None, size: int) -> np.ndarray:
    """Cut the square ``box`` (centre x, centre y, side) out of the image, padding with edge pixels
    where it leaves the image, and resize it to ``size``. ``box=None`` takes the centred square."""
    h, w = rgb.shape[:2]
    if box is None:
        box = (w / 2, h / 2, min(w, h))
    cx, cy, side = box
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = x0 + int(round(side)), y0 + int(round(side))
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    face = rgb[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if face.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(face, (size, size), interpolation=interp)
