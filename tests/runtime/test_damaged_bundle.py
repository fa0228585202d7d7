"""A bundle whose ONNX model, its external data or its weights are damaged or missing: every command names the file
and stops with exit 2 (once predict, evaluate, compare and stream dumped ONNX Runtime's traceback)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight.cli import main

DAMAGES = {
    "onnx_missing": ("model.onnx", "cannot load the ONNX model (NoSuchFile"),
    "onnx_truncated": ("model.onnx", "cannot load the ONNX model (InvalidProtobuf"),
    "onnx_data_missing": ("model.onnx", "cannot load the ONNX model (Fail"),
    "onnx_data_truncated": ("model.onnx", "cannot load the ONNX model (Fail"),
    "weights_garbage": ("model.pt", "cannot load weights"),
}


def _damage(bundle: Path, damage: str, into: Path) -> Path:
    broken = into / damage
    shutil.copytree(bundle, broken)
    if damage == "onnx_missing":
        (broken / "model.onnx").unlink()
    elif damage == "onnx_truncated":
        data = (broken / "model.onnx").read_bytes()
        (broken / "model.onnx").write_bytes(data[: len(data) // 3])
    elif damage == "onnx_data_missing":
        (broken / "model.onnx.data").unlink()
    elif damage == "onnx_data_truncated":
        data = (broken / "model.onnx.data").read_bytes()
        (broken / "model.onnx.data").write_bytes(data[: len(data) // 2])
    else:
        (broken / "model.pt").write_text("hello")
    return broken


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_predict_and_evaluate_name_the_damaged_file(
    damage: str, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    assert (tiny_bundle / "model.onnx.data").exists()  # the exporter writes its weights beside the graph
    broken = _damage(tiny_bundle, damage, tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(image)
    named, words = DAMAGES[damage]
    manifest = tiny_bundle.parent / "manifest.csv"
    for argv in (
        ["predict", str(broken), str(image), "--explain", "--out", str(tmp_path / "p")],
        ["evaluate", str(broken), str(manifest), "--split", "val", "--out", str(tmp_path / "e")],
    ):
        assert main(argv) == 2, argv[0]
        err = capsys.readouterr().err
        assert f"{broken / named}: {words}" in err, err
        assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


def test_a_bundle_json_that_is_not_utf8_text_is_named(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "utf16"
    shutil.copytree(tiny_bundle, broken)
    text = (broken / "bundle.json").read_text(encoding="utf-8")
    (broken / "bundle.json").write_bytes(text.encode("utf-16"))  # an editor's "Unicode" save
    assert main(["predict", str(broken), str(tiny_bundle.parent / "img" / "0.png"), "--out", str(tmp_path / "p")]) == 2
    assert f"{broken / 'bundle.json'}: bundle.json is not readable UTF-8 text" in capsys.readouterr().err
