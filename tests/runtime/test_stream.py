"""``medsight stream``: a cine loop segmented frame by frame from a DICOM multi-frame ultrasound object (the shared
sample), a video file and a folder of frames, with the overlaid video, one row per frame and the measured frames/s;
bad sources give one clear error and leave an earlier result intact. The model is a tiny 2D segmentation bundle
trained for seconds on real BUSI image/mask pairs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from medsight.errors import MedsightError
from medsight.runtime.stream import as_channels, frames, overlay, stream
from medsight.tasks import segmentation
from medsight.tasks.segmentation import SegmentationOptions

US_CINE = ("dicom_samples", "pydicom_test_files", "examples_ybr_color.dcm")  # 30 frames, YBR JPEG, US Multi-frame
TINY_2D = {
    "patch_size": [64, 64],
    "batch_size": 2,
    "iterations_per_epoch": 2,
    "optimizer": {"warmup_iterations": 1},
    "validate_every": 0,
    "test_time_flips": False,
    "network": {"filters": [8, 16, 32, 64, 64]},
}


def _busi_pairs(busi: Path, out: Path, n: int) -> Path:
    """``n`` BUSI benign images with their (first) lesion masks as an images/ + labels/ pairs folder."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for k in range(1, n + 1):
        shutil.copy(busi / "benign" / f"benign ({k}).png", out / "images" / f"{k}_image.png")
        shutil.copy(busi / "benign" / f"benign ({k})_mask.png", out / "labels" / f"{k}_mask.png")
    return out


@pytest.fixture(scope="module")
def bundle(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("stream")
    data = _busi_pairs(shared_data / "busi", tmp / "busi_pairs", 6)
    plan = tmp / "plan.json"
    plan.write_text(json.dumps(TINY_2D))
    segmentation.TASK.train(str(data), tmp / "bundle", SegmentationOptions(epochs=1, plan=plan))
    return tmp / "bundle"


def _decoded_frames(video: Path) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_dicom_ultrasound_cine_loop_streams_end_to_end(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = stream(bundle, shared_data.joinpath(*US_CINE), out, progress=False, max_frames=6)
    assert report.frames == 6 and report.frames_per_second > 0 and report.size == (320, 240)
    rows = (out / "frames.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["frame", "time_s", "segment_ms"] and len(rows) == 7
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3", "4", "5"]
    summary = json.loads((out / "stream.json").read_text())
    assert summary["frames"] == 6 and summary["segment_ms"]["p50"] > 0
    assert _decoded_frames(out / "overlay.mp4") == 6


def test_a_video_file_and_a_folder_of_frames_stream_alike(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, 6):
        with Image.open(shared_data / "busi" / "benign" / f"benign ({k}).png") as img:
            img.convert("L").resize((128, 96)).save(folder / f"frame_{k:03d}.png")
    video = tmp_path / "loop.mp4"
    with av.open(str(video), mode="w") as container:
        s = container.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for f in sorted(folder.iterdir()):
            rgb = np.repeat(np.asarray(Image.open(f))[..., None], 3, axis=-1)
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in s.encode():
            container.mux(packet)
    from_folder = stream(bundle, folder, tmp_path / "a", progress=False, video=False)
    from_video = stream(bundle, video, tmp_path / "b", progress=False)
    assert from_folder.frames == from_video.frames == 5
    assert not (tmp_path / "a" / "overlay.mp4").exists() and _decoded_frames(tmp_path / "b" / "overlay.mp4") == 5


def test_the_command_prints_frames_per_second(bundle: Path, shared_data: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsight",
            "stream",
            str(bundle),
            str(shared_data.joinpath(*US_CINE)),
            "--out",
            str(tmp_path / "out"),
            "--max-frames",
            "3",
            "--no-video",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "3 frames in" in done.stdout and "frames/s" in done.stdout


def test_bad_sources_are_one_clear_error_and_keep_the_earlier_result(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stream.json").write_text("{}")
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not an image")
    with pytest.raises(MedsightError, match="not a DICOM file or video") as info:
        stream(bundle, not_dicom, out, progress=False)
    assert str(not_dicom) in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedsightError, match="holds no frames"):
        list(frames(empty))
    assert (out / "stream.json").read_text() == "{}"  # the failed runs replaced nothing


def test_frames_become_the_models_channels_and_masks_are_drawn() -> None:
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 200
    assert as_channels(rgb, 1).shape == (1, 4, 5) and np.allclose(as_channels(rgb, 1), 200 * 0.299, atol=1e-3)
    assert as_channels(rgb[..., 0], 3).shape == (3, 4, 5)
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:3] = 1
    drawn = overlay(rgb[..., 0], mask)
    assert drawn.shape == (4, 5, 3) and (drawn[0, 0] == [200, 200, 200]).all() and not (drawn[1, 1] == 200).all()


def test_a_dicom_source_of_another_modality_is_refused_unless_asked(
    bundle: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As ``medsight predict`` does (medsight.io.modality): an ultrasound model given an MR cine says so and writes
    nothing; ``--any-modality`` streams it anyway, and an ultrasound cine passes."""
    from medsight.cli import main
    from medsight.training.bundle import load_bundle, write_bundle_json

    us_bundle = tmp_path / "us_bundle"
    shutil.copytree(bundle, us_bundle)
    meta = load_bundle(us_bundle).meta
    meta["data"]["modality"] = "US"  # as a BUSI bundle records it
    write_bundle_json(us_bundle, meta)
    mr_cine = shared_data / "dicom_samples" / "pydicom_data" / "emri_small.dcm"
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["stream", str(us_bundle), str(mr_cine), "--no-video", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "emri_small.dcm: a DICOM MR image, but this model was trained on US (US)" in err and not out.exists()
    argv = ["-q", "stream", str(us_bundle), str(mr_cine), "--no-video", "--max-frames", "2", "--any-modality"]
    assert main([*argv, "--out", str(out)]) == 0 and (out / "stream.json").is_file()
    us_cine = shared_data.joinpath(*US_CINE)
    argv = ["-q", "stream", str(us_bundle), str(us_cine), "--no-video", "--max-frames", "2"]
    assert main([*argv, "--out", str(tmp_path / "us")]) == 0


def test_a_folder_of_frames_skips_files_that_are_not_images_but_not_a_broken_frame(
    bundle: Path, shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Exported cine folders carry a README, a JSON sidecar or .DS_Store beside the frames: those are skipped and
    said once, before any frame runs; a frame file that cannot be read is still an error naming it."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(1, 4):
        with Image.open(shared_data / "busi" / "benign" / f"benign ({k}).png") as img:
            img.convert("L").resize((128, 96)).save(folder / f"frame_{k:03d}.png")
    (folder / "notes.txt").write_text("exported by the scanner")
    (folder / "series.json").write_text("{}")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    with caplog.at_level("WARNING", logger="medsight"):
        result = stream(bundle, folder, tmp_path / "out", progress=False, video=False)
    assert result.frames == 3
    assert any("2 files that are not image frames skipped" in r.getMessage() for r in caplog.records)
    (folder / "frame_004.png").write_bytes(b"not a png")
    with pytest.raises(MedsightError, match="not an image frame") as info:
        stream(bundle, folder, tmp_path / "out2", progress=False, video=False)
    assert "frame_004.png" in str(info.value)


def test_a_cine_cut_short_is_refused_not_streamed_up_to_the_cut(shared_data: Path, tmp_path: Path) -> None:
    """Half of the 30-frame cine once streamed 13 frames with exit 0 and no word, while predict refused the file."""
    data = shared_data.joinpath(*US_CINE).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsightError, match="truncated") as info:
        list(frames(cut))
    assert str(cut) in str(info.value)
    assert len(list(frames(shared_data.joinpath(*US_CINE)))) == 30  # the whole file still streams every frame


def test_frames_of_odd_or_mixed_sizes_make_a_whole_video(bundle: Path, tmp_path: Path) -> None:
    """One-pixel-high frames once ended in libx264's avcodec_open2 error, and a later frame larger than the first
    was cropped to the first frame's corner; now the first is padded to even sizes and later ones fitted whole."""
    for name, sizes in {"thin": [(1, 200), (1, 200)], "mixed": [(96, 128), (96, 256)]}.items():
        folder = tmp_path / name
        folder.mkdir()
        for k, (h, w) in enumerate(sizes):
            frame = np.zeros((h, w), np.uint8)
            frame[:, w // 2 :] = 255  # the right half white: a crop to the first frame's width would lose it
            Image.fromarray(frame).save(folder / f"{k}.png")
        report = stream(bundle, folder, tmp_path / f"out_{name}", progress=False)
        assert report.frames == 2
        with av.open(str(tmp_path / f"out_{name}" / "overlay.mp4")) as video:
            decoded = [f.to_ndarray(format="rgb24") for f in video.decode(video.streams.video[0])]
        assert len(decoded) == 2
        h, w = sizes[0]
        assert decoded[0].shape[:2] == (max(2, h + h % 2), max(2, w + w % 2))
        if name == "mixed":  # the wider frame, fitted: its white half is the right half of the video frame
            right, left = decoded[1][:, 70:].mean(), decoded[1][:, :58].mean()
            assert right > 150 and left < 100


def test_damaged_videos_and_non_image_objects_are_refused_by_name(
    bundle: Path, shared_data: Path, tmp_path: Path
) -> None:
    video = tmp_path / "cine.mp4"
    with av.open(str(video), mode="w") as container:
        s = container.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(10):
            frame = np.repeat(rng.integers(0, 255, (64, 64, 1), dtype=np.uint8), 3, axis=-1)  # texture: a big mdat
            for packet in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in s.encode():
            container.mux(packet)
    data = bytearray(video.read_bytes())
    start = len(data) // 3
    data[start : start + 2000] = np.random.default_rng(1).integers(0, 255, 2000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with pytest.raises(MedsightError, match="the video is damaged after") as caught:
        list(frames(damaged))
    assert str(damaged) in str(caught.value)
    samples = shared_data / "dicom_samples" / "pydicom_test_files"
    for name, kind in (("liver_1frame.dcm", "Segmentation"), ("rtdose.dcm", "RT Dose")):
        with pytest.raises(MedsightError, match=f"a DICOM {kind} object, not images to stream"):
            list(frames(samples / name))


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_sigterm_leaves_no_half_written_output(stop: str, bundle: Path, tmp_path: Path) -> None:
    """``kill``/``timeout``/a scheduler once left a hidden ``.out.XXXX.tmp`` with a partial video behind; SIGTERM now
    unwinds like Ctrl-C (exit 143) and an earlier result stays as it was."""
    import signal
    import threading
    import time

    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(600):
        Image.fromarray(np.full((128, 128), k % 255, np.uint8)).save(folder / f"{k:04d}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stream.json").write_text("{}")  # an earlier result
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsight", "stream", str(bundle), str(folder), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    chunks: list[bytes] = []  # drained as it comes: a full pipe would stall the run in its progress bar
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read(4096), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.*.tmp/overlay.mp4")):  # the run is inside its frame loop
        assert proc.poll() is None and time.monotonic() < deadline, "the stream ended before it wrote a frame"
        time.sleep(0.02)
    proc.send_signal(getattr(signal, stop))  # SIGHUP: a closed terminal or a dropped ssh session
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = b"".join(chunks)
    assert proc.returncode == 143, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out"]  # no .out.XXXX.tmp left
    assert (out / "stream.json").read_text() == "{}"


def test_int8_finds_training_data_that_moved_through_data(
    bundle: Path, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error once said "give the data folder" while stream had no way to give it."""
    from medsight.training.bundle import load_bundle, write_bundle_json

    monkeypatch.setenv("MEDSIGHT_CACHE", str(tmp_path / "cache"))
    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    meta = load_bundle(moved).meta
    root = meta["data"]["root"]
    meta["data"]["root"] = str(tmp_path / "gone")
    write_bundle_json(moved, meta)
    source = shared_data.joinpath(*US_CINE)
    with pytest.raises(MedsightError, match=r"give the folder where the data are now .*--data") as caught:
        stream(moved, source, tmp_path / "a", progress=False, max_frames=2, int8=True)
    assert str(moved) in str(caught.value)
    report = stream(moved, source, tmp_path / "b", progress=False, max_frames=2, int8=True, data=Path(root))
    assert report.frames == 2 and report.engine.endswith("int8")


def test_float_frames_are_read_as_they_are_and_huge_ones_are_named(tmp_path: Path) -> None:
    """A float TIFF frame (values 0..1) was once converted to 8-bit RGB, which clipped it; a frame beyond Pillow's
    decompression-bomb limit ended in a traceback."""
    folder = tmp_path / "float"
    folder.mkdir()
    values = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    Image.fromarray(values, mode="F").save(folder / "0.tif")
    (frame,) = list(frames(folder))
    assert frame.pixels.dtype == np.float32 and np.allclose(frame.pixels, values)
    huge = tmp_path / "huge"
    huge.mkdir()
    Image.new("L", (300, 300)).save(huge / "0.png")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 300 * 300 // 4  # past twice the limit Pillow refuses to open the file
        with pytest.raises(MedsightError, match="not an image frame") as caught:
            list(frames(huge))
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert str(huge / "0.png") in str(caught.value)


def _video_rate(video: Path) -> float:
    with av.open(str(video)) as container:
        return float(container.streams.video[0].average_rate)


def _grey_cine(path: Path, photometric: str = "MONOCHROME2", **timing: object) -> Path:
    """A 4-frame 8x8 grey ultrasound cine whose frame k is a ramp plus 10*k, with the timing attributes given."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "US"
    ds.Rows = ds.Columns = 8
    ds.NumberOfFrames, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for keyword, value in timing.items():
        setattr(ds, keyword, value)
    cine = np.stack([np.arange(64, dtype=np.uint8).reshape(8, 8) + 10 * k for k in range(4)])
    ds.PixelData = cine.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_folder_of_frames_plays_in_number_order_not_letter_order(tmp_path: Path) -> None:
    """Exporters often number frames unpadded: ``frame_10`` once played before ``frame_2``, scrambling the loop."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(12):
        Image.fromarray(np.full((8, 8), 10 * k, np.uint8)).save(folder / f"frame_{k}.png")
    assert [int(f.pixels[0, 0]) // 10 for f in frames(folder)] == list(range(12))


def test_a_palette_colour_cine_is_streamed_in_its_colours_not_as_indices(shared_data: Path) -> None:
    """Palette colour is common in ultrasound; its frames were once given to the model as palette indices."""
    from medsight.io.dicom import read_dicom_image

    path = shared_data / "dicom_samples" / "pydicom_test_files" / "examples_palette.dcm"
    frame = next(frames(path))
    assert frame.pixels.shape == (350, 800, 3) and frame.pixels.dtype == np.uint8
    np.testing.assert_allclose(frame.pixels, read_dicom_image(path), atol=0.51)  # as predict reads the image


def test_a_monochrome1_cine_is_streamed_high_is_bright(tmp_path: Path) -> None:
    cine = _grey_cine(tmp_path / "m1.dcm", "MONOCHROME1", FrameTime=50)
    read = [f.pixels for f in frames(cine)]
    assert len(read) == 4 and int(read[0][0, 0]) > int(read[0][7, 7])  # the ramp's first pixel is now the brightest
    assert [f.time_s for f in frames(cine)] == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_the_overlay_video_keeps_the_sources_frame_rate(bundle: Path, tmp_path: Path) -> None:
    """A 10 frames/s cine was written as a 30 frames/s video, playing the loop three times too fast."""
    from medsight.cli import main

    slow = _grey_cine(tmp_path / "slow.dcm", FrameTime=100)  # 100 ms per frame
    report = stream(bundle, slow, tmp_path / "a", progress=False)
    assert report.video_fps == pytest.approx(10.0) and _video_rate(tmp_path / "a" / "overlay.mp4") == pytest.approx(10)
    assert json.loads((tmp_path / "a" / "stream.json").read_text())["video_frames_per_second"] == pytest.approx(10.0)
    vector = _grey_cine(tmp_path / "vector.dcm", FrameTimeVector=[0, 40, 40, 40])  # 25 frames/s
    assert stream(bundle, vector, tmp_path / "b", progress=False).video_fps == pytest.approx(25.0)
    nonsense = _grey_cine(tmp_path / "typo.dcm", FrameTime=0.001)  # not a rate a video can play: the default
    assert stream(bundle, nonsense, tmp_path / "c", progress=False).video_fps == pytest.approx(30.0)
    argv = ["-q", "stream", str(bundle), str(slow), "--fps", "5", "--out", str(tmp_path / "d")]
    assert main(argv) == 0 and _video_rate(tmp_path / "d" / "overlay.mp4") == pytest.approx(5)
    with pytest.raises(SystemExit):
        main(["-q", "stream", str(bundle), str(slow), "--fps", "0", "--out", str(tmp_path / "e")])


def test_a_video_source_keeps_its_rate(bundle: Path, tmp_path: Path) -> None:
    video = tmp_path / "loop.mp4"
    with av.open(str(video), mode="w") as container:
        s = container.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for k in range(4):
            rgb = np.full((48, 64, 3), 40 * k, np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in s.encode():
            container.mux(packet)
    report = stream(bundle, video, tmp_path / "out", progress=False)
    assert report.frames == 4 and _video_rate(tmp_path / "out" / "overlay.mp4") == pytest.approx(12)
