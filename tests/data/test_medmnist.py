"""MedMNIST adapter on the real official files, plus download and damaged-file behaviour."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from medsight.data import medmnist
from medsight.data.checksums import md5sum
from medsight.data.download import download
from medsight.errors import MedsightError


@pytest.mark.parametrize("flag", ["pneumoniamnist", "breastmnist"])
def test_official_files_load_with_official_splits(shared_data: Path, flag: str) -> None:
    data = medmnist.load(f"medmnist:{flag}")
    info = medmnist.catalog()[flag]
    assert {k: len(v) for k, v in data.splits.items()} == info["n_samples"]
    assert data.task_type == "binary"
    assert data.label_names == [info["labels"]["0"], info["labels"]["1"]]
    train = data.split("train")
    assert train.images.shape[1:] == (1, 28, 28)
    assert train.images.dtype == np.float32 and train.images.min() >= 0.0 and train.images.max() <= 1.0
    assert data.fingerprint["files"][f"{flag}.npz"] == info["sizes"]["28"]["md5"]


def test_every_member_and_size_is_named() -> None:
    cat = medmnist.catalog()
    assert len(cat) == 18
    assert sum(1 for v in cat.values() if v["dims"] == 3) == 6
    for flag, info in cat.items():
        for size in info["sizes"]:
            name = medmnist.parse_name(f"medmnist:{flag}" + ("" if size == "28" else f"_{size}"))
            assert name.md5 == info["sizes"][size]["md5"] and len(name.md5) == 32
            assert name.url.startswith("https://zenodo.org/")
    assert medmnist.parse_name("medmnist:organmnist3d_64").filename == "organmnist3d_64.npz"


@pytest.mark.parametrize("spec", ["medmnist:nosuchmnist", "medmnist:organmnist3d_224"])
def test_unknown_names_are_clear_errors(spec: str) -> None:
    with pytest.raises(MedsightError) as err:
        medmnist.parse_name(spec)
    assert spec in str(err.value)


def test_truncated_npz_is_a_clear_error(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "medmnist" / "breastmnist.npz").read_bytes()
    broken = tmp_path / "breastmnist.npz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(MedsightError) as err:
        medmnist.load_npz(broken)
    assert str(broken) in str(err.value) and "truncated" in str(err.value)


def test_wrong_bytes_under_an_official_name_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "medmnist").mkdir()
    np.savez(tmp_path / "medmnist" / "breastmnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    monkeypatch.setenv("MEDSIGHT_DATA", str(tmp_path))
    with pytest.raises(MedsightError, match="does not match the official"):
        medmnist.load("medmnist:breastmnist")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_download_verifies_checksum_over_loopback(shared_data: Path, tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(shared_data / "medmnist" / "breastmnist.npz", served / "breastmnist.npz")
    handler = lambda *a, **k: _Quiet(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/breastmnist.npz"
        target = tmp_path / "got" / "breastmnist.npz"
        good = md5sum(served / "breastmnist.npz")
        assert download(url, target, good) == target and md5sum(target) == good
        bad_target = tmp_path / "bad" / "breastmnist.npz"
        with pytest.raises(MedsightError, match="checksum mismatch"):
            download(url, bad_target, "0" * 32)
        assert not bad_target.exists() and not list(bad_target.parent.glob("*"))
    finally:
        server.shutdown()


def test_offline_download_fails_with_a_clear_message(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/pneumoniamnist.npz"  # nothing listens there
    with pytest.raises(MedsightError, match="offline"):
        download(url, tmp_path / "x.npz", "0" * 32, timeout=5)
    assert not (tmp_path / "x.npz").exists()
