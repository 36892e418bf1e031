"""Image preparation before Tesseract: each step runs only when the page needs it.

A page is analysed on a small copy (about 600 px wide, a few milliseconds); the full
page is touched only by the steps that apply, and a clean scan is handed to Tesseract
as it is (the analysis is all it costs). The steps, in order:

0. **denoise**: a grainy or speckled page (``noise_level`` over ``NOISE_LEVEL``) gets
   a median filter, and after the other steps Otsu's threshold (``binarize``);
1. **perspective**: a photographed page (a darker surround on every side) is found as
   the largest four-cornered contour and warped flat;
2. **lighting**: uneven light (the page background varies by more than ``LIGHT_SPREAD``
   grey levels) is divided out by a blurred background estimate;
3. **inversion**: dark bars with light text (header rows printed white on black) are
   inverted where the local background is dark, so Tesseract's global threshold
   keeps their text;
4. **deskew**: the angle (up to ±3°) whose horizontal projection is sharpest is undone
   when it is over ``MIN_SKEW`` degrees;
5. **upscale**: a page under ``MIN_WIDTH`` pixels wide (a 150 dpi scan) is enlarged
   twice, since Tesseract reads text of about 20–30 px x-height best.

OpenCV (``opencv-python-headless``) does the pixel work; see docs/ocr.md for why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIGHT_SPREAD = 45
#: Mean difference (grey levels) between the paper and its 3×3 median above which a page
#: is noisy (grain, speckles): clean scans and 150 dpi pages stay under 3.1, noisy ones over 4.4.
NOISE_LEVEL = 3.8
#: Above this the noise is heavy enough for a 5×5 median.
HEAVY_NOISE = 7.0
MIN_SKEW = 0.3
MIN_WIDTH = 1800
ANALYSIS_WIDTH = 600


@dataclass
class Prepared:
    """The file Tesseract should read, and what each step cost (seconds) or found."""

    path: Path
    steps: dict[str, float] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    scale: float = 1.0  # word boxes on the prepared page ÷ this = boxes on the original
    image: Any = None  # the prepared page (grayscale array), kept for the second look


def _small(img: Any) -> tuple[Any, float]:
    import cv2

    factor = ANALYSIS_WIDTH / img.shape[1]
    if factor >= 1:
        return img, 1.0
    # Bilinear sampling: a tenth of the cost of area averaging, and enough to find a page, bars and skew.
    return cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR), factor


def noise_level(img: Any) -> float:
    """Grain and speckles on the paper: how far its pixels are from their 3×3 median,
    measured on the middle of the page where the median is light (no ink edges)."""
    import cv2

    h, w = img.shape
    middle = img[h // 4:3 * h // 4, w // 4:3 * w // 4]
    median = cv2.medianBlur(middle, 3)
    paper = median >= 190
    return float(cv2.absdiff(middle, median)[paper].mean()) if paper.any() else 0.0


def denoise(img: Any) -> Any | None:
    """A 3×3 (heavy noise: 5×5) median on a noisy page: Tesseract's own binarization
    turns grain into specks that break words apart."""
    import cv2

    level = noise_level(img)
    if level < NOISE_LEVEL:
        return None
    return cv2.medianBlur(img, 5 if level > HEAVY_NOISE else 3)


def binarize(img: Any) -> Any:
    """Otsu's threshold on a denoised page: the median leaves grey grain that Tesseract's
    own thresholding still turns into specks; a clean threshold after it reads better."""
    import cv2

    return cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]


def _page_quad(small: Any) -> Any | None:
    """The corners of a photographed page on a darker surround, or None for a scan."""
    import cv2
    import numpy as np

    h, w = small.shape
    border = np.concatenate([small[:h // 40].ravel(), small[-h // 40:].ravel(), small[:, :w // 40].ravel(),
                             small[:, -w // 40:].ravel()])
    inner = small[h // 4:3 * h // 4, w // 4:3 * w // 4]
    if np.median(border) > 0.7 * np.median(inner):
        return None
    _, mask = cv2.threshold(small, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((15, 15), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    page = max(contours, key=cv2.contourArea)
    if cv2.contourArea(page) < 0.3 * h * w:
        return None
    quad = cv2.approxPolyDP(page, 0.02 * cv2.arcLength(page, True), True)
    return quad.reshape(4, 2).astype("float32") if len(quad) == 4 else None


def flatten(img: Any, small: Any, factor: float) -> Any | None:
    import cv2
    import numpy as np

    quad = _page_quad(small)
    if quad is None:
        return None
    quad /= factor
    s, d = quad.sum(axis=1), np.diff(quad, axis=1).ravel()
    tl, br, tr, bl = quad[np.argmin(s)], quad[np.argmax(s)], quad[np.argmin(d)], quad[np.argmax(d)]
    width = int(max(np.linalg.norm(tr - tl), np.linalg.norm(br - bl)))
    height = int(max(np.linalg.norm(bl - tl), np.linalg.norm(br - tr)))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(np.array([tl, tr, br, bl], dtype=np.float32), target)
    return cv2.warpPerspective(img, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=255)


def _background(small: Any) -> Any:
    """The paper's brightness without the ink, at a quarter of the analysis size."""
    import cv2
    import numpy as np

    tiny = cv2.resize(small, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    k = max(3, tiny.shape[1] // 30) | 1
    closed = cv2.morphologyEx(tiny, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    return cv2.resize(cv2.medianBlur(closed, k), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_LINEAR)


def even_light(img: Any, small: Any) -> Any | None:
    import cv2
    import numpy as np

    bg = _background(small)
    light = bg[bg > 110]
    if light.size == 0 or np.percentile(light, 95) - np.percentile(light, 5) < LIGHT_SPREAD:
        return None
    full_bg = cv2.resize(bg, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out = img.astype(np.float32) / np.maximum(full_bg, 40) * 235
    return np.clip(out, 0, 255).astype(np.uint8)


def invert_bars(img: Any, small: Any) -> Any | None:
    """Light text on dark bars turned dark on light, where the local background is dark."""
    import cv2
    import numpy as np

    tiny = cv2.resize(small, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
    local = cv2.resize(cv2.medianBlur(tiny, 3), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST)
    dark = (local < 90).astype(np.uint8)
    if dark.sum() < 0.002 * dark.size or dark.mean() > 0.5:
        return None
    dark = cv2.dilate(dark, np.ones((3, 3), np.uint8))
    mask = cv2.resize(dark, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)
    out = img.copy()
    out[mask] = 255 - out[mask]
    return out


def skew_angle(small: Any) -> float:
    """The page's rotation in degrees, from the sharpest horizontal projection profile.

    For angles this small a rotation is a vertical shear: each ink pixel's row is moved
    by ``x × tan(angle)`` and the rows counted, with no image rotated at all.
    """
    import numpy as np

    ys, xs = np.nonzero(small < 128)
    if len(xs) < 100:
        return 0.0
    xs = xs - small.shape[1] / 2

    def sharpness(angle: float) -> float:
        rows = np.round(ys + xs * np.tan(np.radians(angle))).astype(np.int64)
        return float(np.var(np.bincount(rows - rows.min())))

    coarse = max(np.arange(-3.0, 3.01, 0.5), key=sharpness)
    return float(max(np.arange(coarse - 0.375, coarse + 0.38, 0.125), key=sharpness))


def deskew(img: Any, small: Any) -> Any | None:
    import cv2

    angle = skew_angle(small)
    if abs(angle) < MIN_SKEW:
        return None
    h, w = img.shape
    # skew_angle is the angle that levels the lines in image coordinates (y down); OpenCV turns
    # counter-clockwise for a positive angle, so the page is turned by its negative.
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), -angle, 1.0)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=255)


def upscale(img: Any) -> Any | None:
    import cv2

    if img.shape[1] >= MIN_WIDTH:
        return None
    return cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)


def prepare(path: Path, workdir: Path) -> Prepared:
    """Prepare one page file for Tesseract; the original is returned untouched when no step applies."""
    import cv2

    result = Prepared(path)
    started = time.monotonic()
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    result.steps["load"] = time.monotonic() - started
    if img is None:
        return result  # Tesseract reports what it cannot read
    steps: list[tuple[str, Callable[[Any, Any, float], Any | None]]] = [
        ("denoise", lambda i, s, f: denoise(i)), ("perspective", flatten), ("lighting", lambda i, s, f: even_light(i, s)),
        ("inversion", lambda i, s, f: invert_bars(i, s)), ("deskew", lambda i, s, f: deskew(i, s)),
        ("upscale", lambda i, s, f: upscale(i)),
        ("binarize", lambda i, s, f: binarize(i) if "denoise" in result.applied and "inversion" not in result.applied
         else None),
    ]
    small, factor = _small(img)
    for name, step in steps:
        t0 = time.monotonic()
        changed = step(img, small, factor)
        if changed is not None:
            img = changed
            small, factor = _small(img)
            result.applied.append(name)
            if name == "upscale":
                result.scale = 2.0
        result.steps[name] = time.monotonic() - t0
    result.image = img
    if result.applied:
        t0 = time.monotonic()
        # Uncompressed PGM: Tesseract reads it at once, and nothing is spent on compression.
        result.path = workdir / f"{path.stem}-prepared.pgm"
        cv2.imwrite(str(result.path), img)
        result.steps["write"] = time.monotonic() - t0
    return result


#: Height (pixels) a re-read row is scaled to: Tesseract reads digits best at 30–50 px.
CROP_HEIGHT = 48


def write_crops(img: Any, boxes: list[tuple[int, int, int, int]], path: Path) -> list[tuple[int, int, float]]:
    """Each box of the page, padded, scaled to ``CROP_HEIGHT`` and framed in white, as one
    page of a multi-page TIFF (one Tesseract run reads them all). Returns, per crop, the
    page offset of its top-left corner and its scale, to map word boxes back."""
    import cv2

    h, w = img.shape
    pages, where = [], []
    for left, top, right, bottom in boxes:
        pad_y = max(2, (bottom - top) // 3)
        pad_x = max(4, bottom - top)
        x0, y0 = max(0, left - pad_x), max(0, top - pad_y)
        x1, y1 = min(w, right + pad_x), min(h, bottom + pad_y)
        crop = img[y0:y1, x0:x1]
        scale = min(3.0, max(1.0, CROP_HEIGHT / max(1, bottom - top)))
        if scale > 1.0:
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        pages.append(cv2.copyMakeBorder(crop, 12, 12, 12, 12, cv2.BORDER_CONSTANT, value=255))
        where.append((x0 - round(12 / scale), y0 - round(12 / scale), scale))
    cv2.imwritemulti(str(path), pages)
    return where
