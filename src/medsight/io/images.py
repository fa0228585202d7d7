"""Read one image of any supported format into a channels-first float32 array.

Every 2D raster format Pillow reads (PNG, JPEG, TIFF, BMP, GIF, PPM/PGM/PBM, WebP, TGA, ...), NIfTI (nibabel),
npy/npz (numpy) and DICOM files or series folders (``medsight.io.dicom``). Anything else is rejected with a clear
error naming the file.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medsight.errors import MedsightError

log = logging.getLogger("medsight")

if TYPE_CHECKING:
    from medsight.io.dicom import Volume

#: Pillow plugins that only identify a file (HDF5, GRIB, BUFR, WMF/EMF stubs), need an outside program (EPS/PS via
#: Ghostscript) or hold video: listing them would promise images Pillow cannot decode here.
_NOT_RASTER = {".h5", ".hdf", ".grib", ".bufr", ".wmf", ".emf", ".eps", ".ps", ".mpg", ".mpeg"}


def _pillow_suffixes() -> frozenset[str]:
    """The file suffixes Pillow opens, asked of Pillow itself so that a format it reads is never refused here."""
    from PIL import Image

    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif"} | (readable - _NOT_RASTER))


RASTER_SUFFIXES = _pillow_suffixes()
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_dicom_file(path: Path) -> bool:
    """:func:`medsight.io.dicom.is_dicom_file`, the one test every command uses (the DICM preamble or a bare dataset
    start, whatever the file's name); imported when asked, so that reading a PNG does not load pydicom."""
    from medsight.io import dicom

    return dicom.is_dicom_file(path)


def read_image(path: str | Path) -> np.ndarray:
    """Return ``(C, *spatial)`` float32 in the file's own intensity units (HU for CT, etc.)."""
    image = _read_any(Path(path))
    check_pixels(image, path)
    return image


def check_pixels(image: np.ndarray, path: str | Path) -> None:
    """Refuse an image without pixels, or with NaN or infinite values, naming the file: NaN passes through every
    transform into the model and the scores (p = nan, invalid JSON; an all-background mask, exit 0)."""
    if image.size == 0 or 0 in image.shape:  # a failed export: no transform can do anything with it
        raise MedsightError(f"an empty image (shape {tuple(image.shape[1:])}: no pixels)", path)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise MedsightError(
            f"{bad} of {image.size} pixel values are NaN or infinite (a float NIfTI or npy with NaN background?); "
            "replace them (e.g. with the background value) before use",
            path,
        )


def _read_any(path: Path) -> np.ndarray:
    if not path.exists():
        raise MedsightError("file not found", path)
    name = path.name.lower()
    try:
        if path.is_dir():
            return _read_dicom_series(path)
        if path.suffix.lower() in RASTER_SUFFIXES:
            return _read_raster(path)
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(path)
        if path.suffix.lower() in (".npy", ".npz"):
            return _read_numpy(path)
        if is_dicom_file(path) or path.suffix.lower() == ".dcm":  # a .dcm that is not DICOM says so by name
            return _read_dicom_file(path)
    except MedsightError:
        raise
    except Exception as exc:  # a library's own error for a damaged file
        raise MedsightError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
    raise MedsightError(
        "not an image medsight can read (expected a 2D image Pillow reads, e.g. PNG/JPEG/TIFF/BMP/GIF/PPM/PGM/WebP, "
        "or DICOM, NIfTI, npy or npz)",
        path,
    )


def image_size_2d(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a 2D image without decoding its pixels when Pillow can read its header (annotations are
    scaled onto the file read), else from :func:`read_image`; the same formats and errors as :func:`read_image`."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in RASTER_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                return int(img.size[0]), int(img.size[1])
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise MedsightError(f"not a readable image ({exc})", path) from exc
    arr = read_image(path)
    if arr.ndim != 3:
        raise MedsightError(f"expected a 2D image; this one has shape {arr.shape[1:]}", path)
    return int(arr.shape[2]), int(arr.shape[1])


def _read_raster(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if _is_16bit_colour_tiff(img):
                return _read_16bit_colour_tiff(path)
            pages = int(getattr(img, "n_frames", 1) or 1)
            if pages > 1:  # a multi-page TIFF (a stack, or a thumbnail page) or an animated GIF: one image is read
                log.warning("%s: holds %d pages or frames; only the first is read (save each as its own file)",
                            path, pages)  # fmt: skip
            img.load()
            if img.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(img, dtype=np.float32)[None]
            elif img.mode in ("L", "1", "P") and (img.mode != "P" or _palette_is_grey(img)):
                arr = np.asarray(img.convert("L"), dtype=np.float32)[None]
            else:
                arr = np.moveaxis(np.asarray(img.convert("RGB"), dtype=np.float32), -1, 0)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MedsightError(f"not a readable image ({exc})", path) from exc
    return np.ascontiguousarray(arr)


def _is_16bit_colour_tiff(img: object) -> bool:
    """A TIFF of 16-bit colour samples, which Pillow opens as 8-bit RGB by keeping the high byte of each sample (an
    image of values under 256 then reads as black)."""
    from PIL import TiffImagePlugin

    if not isinstance(img, TiffImagePlugin.TiffImageFile):
        return False
    bits = img.tag_v2.get(258)  # BitsPerSample
    return isinstance(bits, tuple) and len(bits) >= 3 and max(bits) > 8


def _read_16bit_colour_tiff(path: Path) -> np.ndarray:
    """Every bit of a 16-bit colour TIFF, read with tifffile (scikit-image's and MONAI's TIFF reader)."""
    try:
        import tifffile
    except ImportError as exc:
        raise MedsightError(
            "a TIFF of 16-bit colour samples, which Pillow reads as 8-bit: install tifffile to read it whole", path
        ) from exc
    arr = np.asarray(tifffile.imread(path), dtype=np.float32)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise MedsightError(f"a 16-bit colour TIFF of shape {arr.shape}: expected rows, columns, RGB(A)", path)
    return np.ascontiguousarray(np.moveaxis(arr[..., :3], -1, 0))


def _palette_is_grey(img: object) -> bool:
    from PIL import Image

    assert isinstance(img, Image.Image)
    rgb = np.asarray(img.convert("RGB"))
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)  # type: ignore[attr-defined]
    except Exception as exc:
        raise MedsightError(f"not a readable NIfTI file ({exc})", path) from exc
    data = np.squeeze(data)
    if data.ndim == 4:  # x, y, z, channel
        return np.ascontiguousarray(np.moveaxis(data, -1, 0))
    if data.ndim in (2, 3):
        return np.ascontiguousarray(data[None])
    raise MedsightError(f"NIfTI of shape {data.shape}: expected a 2D or 3D image", path)


def _read_numpy(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                keys = [k for k in ("image", "images", "arr_0") if k in npz.files] or list(npz.files)
                if not keys:
                    raise MedsightError("empty .npz file", path)
                data = npz[keys[0]]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise MedsightError(f"not a readable numpy file (truncated or corrupt: {exc})", path) from exc
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool) or np.iscomplexobj(data):
        raise MedsightError(f"an array of {data.dtype} values, not image intensities", path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3 and data.shape[-1] == 1 and data.shape[0] > 4:  # rows, columns, one channel (Keras layout)
        return np.ascontiguousarray(data[..., 0][None])
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4:
        return np.ascontiguousarray(np.moveaxis(data[..., :3], -1, 0))
    if data.ndim in (3, 4):
        return data if data.ndim == 4 else data[None]
    raise MedsightError(f"array of shape {data.shape}: expected a 2D or 3D image", path)


def _read_dicom_file(path: Path) -> np.ndarray:
    """One image; a multi-frame object (enhanced CT/MR, a cine loop) is a volume of its frames, read as a series."""
    from medsight.io.dicom import NOT_VOLUME_SOP_CLASSES, read_dicom_image, read_header

    header = read_header(path)
    kind = NOT_VOLUME_SOP_CLASSES.get(header[0].sop_class_uid) if header is not None else None
    if kind:
        raise MedsightError(f"a DICOM {kind} object, not an image: give the images it was made from", path)
    if header is not None and len(header[0].frames) > 1:
        return _read_dicom_series(path)
    arr = np.asarray(read_dicom_image(path), dtype=np.float32)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return np.ascontiguousarray(np.moveaxis(arr, -1, 0))
    return arr[None]


def _read_dicom_series(path: Path) -> np.ndarray:
    from medsight.io.dicom import read_series

    try:
        return volume_image(read_series(path))
    except MedsightError as exc:  # a folder of PNGs is no series: say what it holds instead
        files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else []
        rasters = [p for p in files if p.suffix.lower() in RASTER_SUFFIXES]
        if not rasters or any(is_dicom_file(p) for p in files if p not in rasters):
            raise
        kinds = ", ".join(sorted({p.suffix.lower() for p in rasters}))
        raise MedsightError(
            f"{exc.problem}; a folder is read as one DICOM series, and this one holds {len(rasters)} {kinds} "
            "file(s): name the image files themselves",
            path,
        ) from exc


def volume_image(volume: Volume) -> np.ndarray:
    """A DICOM series read (``medsight.io.dicom.Volume``) as channels first: ``(C, slices, rows, columns)``, and
    ``(C, rows, columns)`` for a series of one image (a radiograph or an ultrasound image in its own folder)."""
    arr = np.asarray(volume.array, dtype=np.float32)
    out = np.ascontiguousarray(np.moveaxis(arr, -1, 0)) if arr.ndim == 4 else arr[None]
    return np.ascontiguousarray(out[:, 0]) if out.shape[1] == 1 else out


def dicom_image_file(source: Path | None) -> Path | None:
    """The DICOM file a 2D prediction's DICOM results reference: the input itself, or the one image of a series folder
    (a 2D model was given that folder, so it held one image); None for other inputs."""
    if source is None:
        return None
    if source.is_file():
        return source if is_dicom_file(source) else None
    if source.is_dir():
        from medsight.io.dicom import image_series

        try:  # the series the prediction read (a DICOMDIR or a report beside its image is not referenced)
            files = list(dict.fromkeys(i.path for i in image_series(source).instances))
        except MedsightError:
            return None
        return files[0] if len(files) == 1 else None
    return None
