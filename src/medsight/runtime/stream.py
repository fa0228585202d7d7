"""Segmenting a cine loop frame by frame (``medsight stream``): ultrasound is read live, so the model must keep up.

Sources: a DICOM multi-frame object (e.g. Ultrasound Multi-frame Image Storage), a video file (PyAV: MP4, AVI, MOV,
...), or a folder of frames (any 2D image Pillow reads, in name order with numbers as numbers: ``frame_2`` before
``frame_10``). The overlaid video plays at the source's own rate (the DICOM object's frame time or cine rate, the
video's rate; 30 frames/s for a folder unless told), so a loop keeps its real speed. Each frame is segmented on
arrival by the bundle's warm model (ONNX Runtime by default), and the run writes the overlaid video, one row per frame
(``frames.csv``: time, lesion area per label) and a summary with the measured frames/s (``stream.json``); the
progress bar shows frames/s live. Frames are never all held in memory: they are read, segmented, drawn and written
one at a time.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from medsight.errors import MedsightError
from medsight.io.atomic import atomic_dir

log = logging.getLogger("medsight")

#: Suffixes read as video files (PyAV); anything else that is a file must be DICOM.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
#: RT Dose: pixel data that are a dose grid, not a picture of the patient (as the segmentations io.dicom lists).
RT_DOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
#: The overlay video's rate when the source gives none (a folder of frames).
DEFAULT_FPS = 30.0
#: Colours of labels 1, 2, ... in the overlay (RGB).
PALETTE = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (220, 120, 255))


@dataclass
class Frame:
    index: int
    pixels: np.ndarray  # (H, W) grey or (H, W, 3) RGB, as read
    time_s: float | None = None  # the frame's time in the loop, when the source says


@dataclass
class StreamReport:
    source: str
    frames: int = 0
    seconds: float = 0.0
    frames_per_second: float = 0.0
    segment_ms: dict[str, float] = field(default_factory=dict)  # p50 / p95 of the model's time per frame
    engine: str = ""
    size: tuple[int, int] = (0, 0)
    video_fps: float | None = None  # the overlay video's rate: the source's own, or what the caller asked
    outputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames_per_second, 2),
            "segment_ms": {k: round(v, 2) for k, v in self.segment_ms.items()},
            "engine": self.engine,
            "frame_size": list(self.size),
            "video_frames_per_second": None if self.video_fps is None else round(self.video_fps, 3),
            "outputs": self.outputs,
        }


def frames(source: Path) -> Iterator[Frame]:
    """The source's frames in order, one at a time; an unreadable or empty source is an error naming it."""
    if source.is_dir():
        yield from _folder_frames(source)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        yield from _video_frames(source)
    elif source.is_file():
        yield from _dicom_frames(source)
    else:
        raise MedsightError("no such file or folder", source)


def _folder_frames(folder: Path) -> Iterator[Frame]:
    from PIL import Image, UnidentifiedImageError

    from medsight.io.images import RASTER_SUFFIXES

    visible = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=frame_order)
    files = [p for p in visible if p.suffix.lower() in RASTER_SUFFIXES]
    if not files:
        raise MedsightError("the folder holds no frames", folder)
    others = [p.name for p in visible if p.suffix.lower() not in RASTER_SUFFIXES]
    if others:  # an exported cine folder often carries a README or a sidecar beside its frames
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        log.warning("%s: %d files that are not image frames skipped (%s)", folder, len(others), shown)
    for k, path in enumerate(files):
        try:
            with Image.open(path) as img:
                # grey (8/16/32-bit and float) as it is, colour as RGB: converting a float frame to RGB clips it
                pixels = np.asarray(img.convert("RGB") if img.mode not in ("L", "I;16", "I", "F") else img)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise MedsightError(f"not an image frame ({type(exc).__name__})", path) from None
        yield Frame(k, pixels)


def frame_order(path: Path) -> tuple[tuple[int, int | str], ...]:
    """A sort key that reads the numbers in a frame's name as numbers: exporters often write ``frame_2`` and
    ``frame_10`` unpadded, and plain name order would play frame 10 before frame 2."""
    parts = re.split(r"(\d+)", path.name.casefold())
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts if part)


def source_fps(source: Path) -> float | None:
    """The rate the source's frames were acquired at, in frames/s, when it says: a DICOM cine's Frame Time (or
    Frame Time Vector, Cine Rate, Recommended Display Frame Rate), a video's average rate; None for a folder."""
    if source.is_dir():
        return None
    if source.suffix.lower() in VIDEO_SUFFIXES:
        try:
            import av

            with av.open(str(source)) as container:
                rate = container.streams.video[0].average_rate if container.streams.video else None
        except (ImportError, OSError, av.error.FFmpegError):
            return None  # frames() names the problem when it reads the file
        return float(rate) if rate else None
    from medsight.io.dicom import read_header

    found = read_header(source) if source.is_file() else None
    if found is None:
        return None
    header = found[1]
    interval = _positive(header.get("FrameTime"))
    vector = header.get("FrameTimeVector")
    if interval is None and vector is not None:  # ms since the previous frame; the first entry is 0
        steps = [v for v in (_positive(x) for x in list(vector)[1:]) if v is not None]
        interval = float(np.mean(steps)) if steps else None
    if interval is not None:
        return 1000.0 / interval
    return _positive(header.get("CineRate")) or _positive(header.get("RecommendedDisplayFrameRate"))


def _positive(value: Any) -> float | None:
    """A DICOM number as a positive float, or None when absent, empty, malformed or not positive."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _video_frames(path: Path) -> Iterator[Frame]:
    try:
        import av
    except ImportError:  # pragma: no cover - av is pinned in requirements.txt
        raise MedsightError("reading video needs PyAV (pip install av)", path) from None
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MedsightError(f"cannot open the video ({type(exc).__name__})", path) from None
    with container:
        if not container.streams.video:
            raise MedsightError("the file has no video stream", path)
        stream = container.streams.video[0]
        decoded = 0
        try:
            for frame in container.decode(stream):
                time_s = float(frame.time) if frame.time is not None else None
                yield Frame(decoded, frame.to_ndarray(format="rgb24"), time_s)
                decoded += 1
        except av.error.FFmpegError as exc:  # bytes damaged part-way: the frames before them were streamed
            raise MedsightError(
                f"the video is damaged after {decoded} frame(s): cannot decode more ({type(exc).__name__})", path
            ) from None


def _dicom_frames(path: Path) -> Iterator[Frame]:
    from pydicom.pixels import iter_pixels

    from medsight.io.dicom import NOT_VOLUME_SOP_CLASSES, read_header  # pydicom: not at the CLI's start-up

    found = read_header(path)  # the reader's checks: a cine cut short is refused, not streamed up to the cut
    if found is None:
        raise MedsightError("not a DICOM file or video", path)
    instance, header = found
    not_frames = {**NOT_VOLUME_SOP_CLASSES, RT_DOSE_SOP_CLASS: "RT Dose"}
    if instance.sop_class_uid in not_frames:  # pixels, but of masks or doses: no picture of the patient to segment
        raise MedsightError(f"a DICOM {not_frames[instance.sop_class_uid]} object, not images to stream", path)
    if "Rows" not in header:
        raise MedsightError("the DICOM object holds no image", path)
    times = _frame_times(header)
    try:
        for k, pixels in enumerate(iter_pixels(path)):  # one frame decoded at a time, YBR converted to RGB
            yield Frame(k, _as_shown(np.asarray(pixels), header), times(k))
    except (ValueError, RuntimeError, NotImplementedError, KeyError, IndexError) as exc:
        raise MedsightError(f"cannot decode the frames ({type(exc).__name__}: {exc})", path) from None


def _frame_times(header: Any) -> Any:
    """Frame k's time in the loop in seconds (a callable), from Frame Time or the Frame Time Vector, or None."""
    interval = _positive(header.get("FrameTime"))  # ms between frames (cine), when given
    if interval is not None:
        return lambda k: k * interval / 1000.0
    vector = header.get("FrameTimeVector")
    if vector is not None:  # ms since the previous frame, per frame
        try:
            elapsed = np.cumsum([float(v) for v in list(vector)]) / 1000.0
        except (TypeError, ValueError):
            return lambda k: None
        return lambda k: float(elapsed[k]) if k < len(elapsed) else None
    return lambda k: None


def _as_shown(pixels: np.ndarray, header: Any) -> np.ndarray:
    """A decoded frame as it is displayed (:func:`medsight.io.dicom.displayed_values`: a palette through its colour
    table, MONOCHROME1 inverted, the Modality LUT), so the model never sees palette indices; 8-bit frames whose shown
    values still fit 8 bits stay ``uint8``, as the overlay draws them unchanged."""
    from medsight.io.dicom import displayed_values

    shown = displayed_values(pixels, header)
    if pixels.dtype == np.uint8 and shown.size and shown.min() >= 0 and shown.max() <= 255:
        return np.rint(shown).astype(np.uint8)
    return shown


def as_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """A frame as the model's input ``(C, H, W)`` float32: colour to luminance for a one-channel model, grey
    repeated for a three-channel one."""
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if channels == 1:
            return (arr @ np.array([0.299, 0.587, 0.114], np.float32))[None]
        return np.moveaxis(arr, -1, 0)
    if arr.ndim == 2:
        return np.repeat(arr[None], channels, axis=0) if channels != 1 else arr[None]
    raise MedsightError(f"a frame of shape {arr.shape}: expected grey (H, W) or colour (H, W, 3)")


def overlay(pixels: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The frame in RGB with each label's pixels tinted in its colour."""
    rgb = np.asarray(pixels)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if rgb.dtype != np.uint8:
        lo, hi = float(rgb.min()), float(rgb.max())
        rgb = ((rgb - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    out = rgb.astype(np.float32)
    for label in range(1, int(mask.max()) + 1):
        where = mask == label
        if where.any():
            colour = np.array(PALETTE[(label - 1) % len(PALETTE)], np.float32)
            out[where] = (1 - alpha) * out[where] + alpha * colour
    return out.astype(np.uint8)


def _fit(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` resized to ``size`` (rows, columns)."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _video_rate(source: Path, asked: float | None) -> float:
    """The overlay video's rate: what the caller asked, else the source's own when it is a rate a video can play
    (1-240 frames/s; a header saying 0.001 ms per frame is a typo, not a rate), else ``DEFAULT_FPS``."""
    if asked is not None:
        return asked
    own = source_fps(source)
    if own is None:
        return DEFAULT_FPS
    if not 1.0 <= own <= 240.0:
        log.warning("%s: the source's frame rate (%.3g frames/s) is not one a video can play; the overlay video "
                    "uses %g frames/s", source.name, own, DEFAULT_FPS)  # fmt: skip
        return DEFAULT_FPS
    return own


class _VideoWriter:
    """The overlaid frames as an H.264 MP4 (PyAV), written as they come."""

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.path, self.fps = path, Fraction(fps).limit_denominator(1001)
        self.container: Any = av.open(str(path), mode="w")
        self.stream: Any = None
        self.first: tuple[int, int] | None = None
        self.resized = 0  # frames fitted to the video's size

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            # yuv420p needs even sizes of 2 or more: the first frame is padded (never cropped) up to them
            self.stream.width, self.stream.height = max(2, w + w % 2), max(2, h + h % 2)
            self.stream.pix_fmt = "yuv420p"
            self.first = (h, w)
        size = (int(self.stream.height), int(self.stream.width))
        if (h, w) != self.first:
            # a frame of another size than the first (a folder of mixed frames) is fitted whole into the video's
            # size, not cropped to the first frame's corner; the per-frame results keep each frame's own size
            if not self.resized:
                log.warning("%s: frames of different sizes; the overlay video shows each fitted to %dx%d",
                            self.path.name, size[1], size[0])  # fmt: skip
            self.resized += 1
            rgb, (h, w) = _fit(rgb, size), size
        padded = np.pad(rgb, ((0, size[0] - h), (0, size[1] - w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def stream(
    bundle: Path,
    source: Path,
    out: Path,
    *,
    video: bool = True,
    progress: bool = True,
    max_frames: int | None = None,
    tta: bool = False,
    int8: bool = False,
    data: Path | None = None,
    fps: float | None = None,
) -> StreamReport:
    """Segment every frame of ``source`` with ``bundle``; write the overlaid video, ``frames.csv`` and
    ``stream.json`` into ``out`` (replaced atomically, so a failed run leaves an older result intact).

    ``tta``: average the plan's mirrored test-time passes as ``predict`` does (off by default: it multiplies the
    time per frame by the number of passes, and a live loop needs the frame rate).
    ``int8``: run the bundle's int8 variant (``runtime/quantize.py``; made once from the bundle's training images and
    cached, or the bundle itself when it is one); ``data``: where its training data are now, if they moved.
    ``fps``: the overlay video's rate; by default the source's own (``source_fps``), 30 for a folder of frames.
    """
    import dataclasses

    from tqdm import tqdm

    from medsight import runtime

    if int8:
        from medsight.runtime.quantize import int8_bundle

        bundle = int8_bundle(bundle, data=data)
    model = runtime.load(bundle)
    segment = getattr(model, "segment", None)
    plan = getattr(model, "plan", None)
    if segment is None or plan is None or plan.spatial_dims != 2:
        raise MedsightError("streaming needs a 2D segmentation bundle", bundle)
    if not tta:
        model.plan = dataclasses.replace(plan, test_time_flips=False)  # type: ignore[attr-defined]
        model.uncertainty = False  # type: ignore[attr-defined]
    labels: list[str] = list(model.labels)  # type: ignore[attr-defined]
    channels = int(plan.network.in_channels)
    engine = str(getattr(model, "engine", ""))
    if engine.startswith("ONNX") and "quantization" in (model.bundle.meta.get("onnx") or {}):
        engine += " int8"
    report = StreamReport(source=source.name, engine=engine, video_fps=_video_rate(source, fps) if video else None)
    timings: list[float] = []
    with atomic_dir(out, written=("stream.json",)) as tmp:
        writer: _VideoWriter | None = None
        rows = []
        bar = tqdm(desc="stream", unit="frame", disable=not progress)
        started = time.perf_counter()
        try:
            for frame in frames(source):
                if max_frames is not None and frame.index >= max_frames:
                    break
                t0 = time.perf_counter()
                mask, _ = segment(as_channels(frame.pixels, channels), (1.0, 1.0))
                timings.append(time.perf_counter() - t0)
                areas = {labels[c]: int((mask == c).sum()) for c in range(1, len(labels))}
                rows.append({"frame": frame.index, "time_s": frame.time_s, "segment_ms": 1000 * timings[-1], **areas})
                if video:
                    if writer is None:
                        writer = _VideoWriter(tmp / "overlay.mp4", fps=report.video_fps or DEFAULT_FPS)
                    writer.write(overlay(frame.pixels, mask))
                report.size = (int(mask.shape[1]), int(mask.shape[0]))
                bar.update(1)
                elapsed = time.perf_counter() - started
                bar.set_postfix(fps=f"{len(timings) / elapsed:.1f}")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if not timings:
            raise MedsightError("the source holds no frames", source)
        report.seconds = time.perf_counter() - started
        report.frames = len(timings)
        report.frames_per_second = report.frames / report.seconds
        ms = np.array(timings) * 1000
        report.segment_ms = {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}
        with (tmp / "frames.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        report.outputs = {"frames": "frames.csv", "summary": "stream.json"}
        if video:
            report.outputs["video"] = "overlay.mp4"
        (tmp / "stream.json").write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    return report
