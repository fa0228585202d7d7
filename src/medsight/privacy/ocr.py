"""Text burned into pixels: find it with Tesseract OCR (an option), blank it, and measure how much is found.

Tesseract is a Debian package (``tesseract-ocr``, installed by ``make tools``); it is run as a program on
PNG frames. Each frame is read twice: the whole image windowed to 8 bits (inverted, so text is dark), and
its brightest layer (burned-in annotations are drawn at or near the top of the range) as black on white.
A word counts when Tesseract is at least ``MIN_CONFIDENCE`` sure of it and it holds two letters or digits.
Recall is below 100% (docs/privacy.md gives the measured figure), so finding nothing never clears a file.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from medsight.errors import MedsightError

TESSERACT = "tesseract"
MIN_CONFIDENCE = 40.0
BRIGHT_LEVEL = 200  # of 255: the layer where burned-in text lives
MIN_SIDE = 400  # smaller frames are enlarged before OCR (Tesseract wants text 10+ pixels high)
PAD = 3  # pixels added around each word when blanking

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), in frame pixels


@dataclass(frozen=True)
class TextFound:
    """What OCR found in one file: word boxes (union over the frames read) and how many words."""

    boxes: tuple[Box, ...]
    frames_read: int

    @property
    def words(self) -> int:
        """Number of word boxes."""
        return len(self.boxes)


def available() -> bool:
    """True when the tesseract program is on the PATH."""
    return shutil.which(TESSERACT) is not None


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """One frame as 8-bit grey: colour averaged, values stretched between the 0.5 and 99.5 percentiles."""
    a = frame.astype(np.float32)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1
    return np.asarray(np.clip((a - lo) / (hi - lo) * 255.0, 0, 255), dtype=np.uint8)


def _tesseract_words(image: np.ndarray) -> list[tuple[Box, float, str]]:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    try:
        done = subprocess.run(
            [TESSERACT, "stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"],
            input=buf.getvalue(),
            capture_output=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise MedsightError(f"tesseract OCR failed ({type(exc).__name__})") from exc
    words = []
    for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        f = line.split("\t")
        if len(f) < 12 or f[0] != "5":
            continue
        text = f[11].strip()
        x, y, w, h = (int(v) for v in f[6:10])
        words.append(((x, y, x + w, y + h), float(f[10]), text))
    return words


def find_text(frame: np.ndarray) -> list[Box]:
    """Boxes of the words OCR reads in one frame (2-D grey or colour array)."""
    grey = to_uint8(frame)
    h, w = grey.shape
    scale = max(1, int(np.ceil(MIN_SIDE / max(1, min(h, w)))))
    bright = np.where(grey >= BRIGHT_LEVEL, 0, 255).astype(np.uint8)
    boxes: list[Box] = []
    for image in (255 - grey, bright):
        if scale > 1:
            image = np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.Resampling.LANCZOS))
        for (x0, y0, x1, y1), conf, text in _tesseract_words(image):
            if conf >= MIN_CONFIDENCE and sum(c.isalnum() for c in text) >= 2:
                boxes.append((x0 // scale, y0 // scale, -(-x1 // scale), -(-y1 // scale)))
    return boxes


def frames_to_read(n_frames: int) -> list[int]:
    """First, middle and last frame (text overlays of a cine loop sit in the same place in every frame)."""
    return sorted({0, n_frames // 2, n_frames - 1})


def _frames(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames == 1:
        arr = arr[None, ...]
    if samples == 1 and arr.ndim == 4:
        arr = arr[..., 0]
    return np.asarray(arr)


def detect(ds: Dataset) -> TextFound:
    """Read the frames of ``ds`` that :func:`frames_to_read` picks and return every word box found."""
    if "PixelData" not in ds:
        return TextFound((), 0)
    frames = _frames(ds)
    picked = frames_to_read(len(frames))
    boxes: list[Box] = []
    for i in picked:
        boxes.extend(find_text(frames[i]))
    return TextFound(tuple(sorted(set(boxes))), len(picked))


def mask(ds: Dataset, boxes: tuple[Box, ...] | list[Box]) -> int:
    """Blank ``boxes`` (padded) in every frame with the frame's lowest value; returns pixels blanked per frame."""
    if not boxes or "PixelData" not in ds:
        return 0
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    arr = ds.pixel_array.copy()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = arr if frames > 1 else arr[None, ...]
    rows, cols = view.shape[1], view.shape[2]
    covered = np.zeros((rows, cols), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        covered[max(0, y0 - PAD) : min(rows, y1 + PAD), max(0, x0 - PAD) : min(cols, x1 + PAD)] = True
    for f in range(view.shape[0]):
        view[f][covered] = view[f].min()
    ds.PixelData = arr.tobytes()
    return int(covered.sum())


# --- measuring recall ------------------------------------------------------------------------------


def burn_text(frame: np.ndarray, texts: list[tuple[str, int, int, int]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw ``(text, x, y, size)`` into a frame at its highest value, as scanners do; returns the new
    frame and each text's ink mask (for measuring what a detector finds)."""
    out = frame.copy()
    top = out.max()
    masks = []
    for text, x, y, size in texts:
        canvas = Image.new("L", (frame.shape[1], frame.shape[0]), 0)
        ImageDraw.Draw(canvas).text((x, y), text, fill=255, font=ImageFont.load_default(size=size))
        ink = np.asarray(canvas) >= 128
        out[ink] = top
        masks.append(ink)
    return out, masks


def covered_by(boxes: list[Box] | tuple[Box, ...], shape: tuple[int, int]) -> np.ndarray:
    """The pixels a mask with these boxes (padded as :func:`mask` pads them) blanks."""
    covered = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        covered[max(0, y0 - PAD) : y1 + PAD, max(0, x0 - PAD) : x1 + PAD] = True
    return covered


#: What is burned into each sample when recall is measured: a name, a date, an ID and a place, one per
#: corner, at a size proportional to the image (as scanners scale their annotation fonts).
MEASURE_TEXTS = ("DOE^JOHN", "1971-02-03", "MRN 4471902", "ST MARY HOSPITAL")


def measure(frames: list[np.ndarray]) -> dict[str, float | int]:
    """Burn :data:`MEASURE_TEXTS` into each frame, run :func:`find_text`, and count what was found.

    A text is found when the detected boxes cover at least half of its ink; ``ink_covered`` is the share
    of all burned ink pixels that :func:`mask` would blank.
    """
    burned = found = 0
    ink_total = ink_hit = 0
    for frame in frames:
        rows, cols = frame.shape[:2]
        size = max(12, rows // 28)
        spots = [(4, 4), (cols // 2, 4), (4, rows - size - 8), (cols // 2, rows - size - 8)]
        texts = [(t, x, y, size) for t, (x, y) in zip(MEASURE_TEXTS, spots, strict=True)]
        grey = frame if frame.ndim == 2 else frame.mean(axis=-1).astype(frame.dtype)
        image, inks = burn_text(grey, texts)
        covered = covered_by(find_text(image), (rows, cols))
        for ink in inks:
            burned += 1
            hit = int((ink & covered).sum())
            found += int(hit >= 0.5 * int(ink.sum()))
            ink_total += int(ink.sum())
            ink_hit += hit
    return {
        "texts_burned": burned,
        "texts_found": found,
        "recall": round(found / burned, 3) if burned else 0.0,
        "ink_covered": round(ink_hit / ink_total, 3) if ink_total else 0.0,
    }
