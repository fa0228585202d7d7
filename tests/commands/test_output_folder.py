"""An output folder is replaced whole, so the commands refuse one that is not an earlier output of the same kind, or
that holds their own inputs: ``medsight predict B scans/x.png --out scans`` once deleted the scans, and ``--out B``
the bundle it had just read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.io.atomic import atomic_dir, check_replaceable_folder


def _image(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24), 90, np.uint8)).save(path)
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_predict_refuses_the_folder_that_holds_its_input(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = tmp_path / "scans"
    image = _image(scans / "chest.png")
    _image(scans / "other.png")
    before = _listing(scans)
    with pytest.raises(SystemExit) as exited:  # not an earlier output: refused by the argument check, by name
        main(["predict", str(tiny_bundle), str(image), "--out", str(scans)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert str(scans) in err and "predictions.json" in err and "not empty" in err
    assert _listing(scans) == before


def test_predict_refuses_its_bundle_and_an_earlier_output_that_now_holds_the_input(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _image(tmp_path / "in" / "x.png")
    bundle_files = _listing(tiny_bundle)
    with pytest.raises(SystemExit):
        main(["predict", str(tiny_bundle), str(image), "--out", str(tiny_bundle)])
    assert _listing(tiny_bundle) == bundle_files
    # an earlier prediction folder is replaced, except when the input now lies in it
    out = tmp_path / "pred"
    assert main(["predict", str(tiny_bundle), str(image), "--out", str(out)]) == 0
    inside = _image(out / "new_scan.png")
    capsys.readouterr()
    assert main(["predict", str(tiny_bundle), str(inside), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds an input" in err and str(out) in err and "new_scan" not in err  # the input path is not named
    assert inside.exists() and (out / "predictions.json").exists()
    # and a second run into its own earlier output replaces it as before
    assert main(["predict", str(tiny_bundle), str(image), "--out", str(out)]) == 0
    assert not inside.exists() and (out / "predictions.json").exists()


def test_train_and_evaluate_refuse_a_foreign_folder_and_keep_its_files(tiny_bundle: Path, tmp_path: Path) -> None:
    mine = tmp_path / "documents"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "report.txt").write_text("mine")
    manifest = tiny_bundle.parent / "manifest.csv"
    for argv in (
        ["train", "--task", "classification", str(manifest), "--out", str(mine), "--epochs", "1"],
        ["evaluate", str(tiny_bundle), str(manifest), "--split", "val", "--out", str(mine)],
        ["stream", str(tiny_bundle), str(manifest), "--out", str(mine)],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert (mine / "notes" / "report.txt").read_text() == "mine"
    # an evaluation folder is not a bundle folder: train will not replace one
    evaluation = tmp_path / "evaluation"
    assert main(["evaluate", str(tiny_bundle), str(manifest), "--split", "val", "--out", str(evaluation)]) == 0
    with pytest.raises(SystemExit):
        main(["train", "--task", "classification", str(manifest), "--out", str(evaluation), "--epochs", "1"])
    assert (evaluation / "metrics.json").exists()


def test_atomic_dir_checks_what_the_folder_holds_before_the_work(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable_folder(empty, ("predictions.json",))  # an empty folder is fine
    check_replaceable_folder(tmp_path / "absent", ("predictions.json",))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a.dcm").write_bytes(b"x")
    check_replaceable_folder(foreign)  # without a kind, only a file in the way is refused (as before)
    ran = []
    with (
        pytest.raises(MedsightError, match=r"holds no predictions\.json"),
        atomic_dir(foreign, written=("predictions.json",)),
    ):
        ran.append(True)
    assert not ran and (foreign / "a.dcm").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_current_folder_as_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out .`` once ended a finished run with "PosixPath('.') has an empty name"."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    with atomic_dir(".", written=("predictions.json",)) as tmp:
        (tmp / "predictions.json").write_text("{}")
    assert (here / "predictions.json").read_text() == "{}"
