"""Routing rules on real series headers (CR, CT, MR, enhanced MR, ultrasound cine, SR, SEG, Secondary Capture):
which bundles run on which series, per instance or per series, and explanations free of patient identifiers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom
import pytest

from medsight.serving.config import SiteConfig, load_config
from medsight.serving.routing import (
    MEDSIGHT_MANUFACTURER,
    RouteMatch,
    SeriesInfo,
    explain_routing,
    plan_jobs,
    series_from_datasets,
    storage_sop_classes,
)
from serving.test_service_config import make_bundle

SITE = """
[dicom]
allow_any = true
[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242

[[routes]]
name = "cxr"
bundle = "b2d"
send_to = ["pacs"]
[routes.match]
modality = ["cr", "DX"]

[[routes]]
name = "any-2d"
bundle = "b2d"

[[routes]]
name = "ct-3d"
bundle = "b3d"
outputs = ["seg"]
send_to = ["pacs"]
[routes.match]
modality = "CT"

[[routes]]
name = "brain-t1"
bundle = "b3d"
[routes.match]
modality = ["MR"]
body_part = ["brain"]
series_description = "^t1"
calling_ae = ["modality1"]

[[routes]]
name = "mr-slices"
bundle = "b2d"
apply_per = "instance"
[routes.match]
modality = ["MR"]

[[routes]]
name = "secondary-capture"
bundle = "b2d"
[routes.match]
sop_class = ["SecondaryCaptureImageStorage"]
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    site = tmp_path_factory.mktemp("site")
    make_bundle(site / "b2d", "classification", 2)
    make_bundle(site / "b3d", "segmentation", 3)
    (site / "site.toml").write_text(SITE)
    return load_config(site / "site.toml")


def headers(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.fixture(scope="module")
def study(shared_data: Path) -> dict[str, SeriesInfo]:
    """Real series headers, named by what they are (each as the listener would record it)."""
    samples = shared_data / "dicom_samples"
    mr_study = shared_data / "udacity_brain_mr_dicom" / "Study3"

    def one(path: Path, ae: str = "MODALITY1") -> SeriesInfo:
        (info,) = series_from_datasets(headers([path]), calling_ae=ae)
        return info

    series = {
        "cr": one(samples / "pydicom_data" / "RG3_J2KR.dcm"),
        "ct_slice": one(samples / "pydicom_test_files" / "CT_small.dcm"),
        "ct_pair": one(samples / "pydicom_data" / "693_UNCR.dcm"),  # two files of one series, below
        "enhanced_mr": one(samples / "pydicom_data" / "emri_small.dcm"),
        "us_cine": one(samples / "pydicom_test_files" / "examples_ybr_color.dcm"),
        "sr": one(samples / "pydicom_test_files" / "reportsi.dcm"),
        "seg": one(samples / "pydicom_test_files" / "liver_1frame.dcm"),
        "sc": one(samples / "pydicom_test_files" / "JPGExtended.dcm"),
    }
    (series["ct_pair"],) = series_from_datasets(
        headers([samples / "pydicom_data" / "693_UNCR.dcm", samples / "pydicom_data" / "693_J2KR.dcm"]), "MODALITY1"
    )
    for folder in sorted(mr_study.iterdir()):
        (info,) = series_from_datasets(headers(sorted(folder.glob("*.dcm"))), calling_ae="MODALITY1")
        series["mr_" + info.series_description.lower()] = info
    return series


def test_series_info_from_real_headers(study: dict[str, SeriesInfo]) -> None:
    assert (study["cr"].modality, study["cr"].n_instances, study["cr"].body_part) == ("CR", 1, "EXTREMITY")
    assert study["cr"].sop_class_uids == ("1.2.840.10008.5.1.4.1.1.1",)
    assert study["ct_pair"].n_instances == 2 and study["ct_pair"].modality == "CT"
    assert study["enhanced_mr"].max_frames == 10 and study["us_cine"].max_frames == 30
    assert {k for k in study if k.startswith("mr_")} == {"mr_t1post", "mr_t1pre_reg", "mr_flair_reg", "mr_t2_reg"}
    assert all(study[k].n_instances == 22 and study[k].body_part == "BRAIN" for k in study if k.startswith("mr_"))


def routed(config: SiteConfig, series: list[SeriesInfo]) -> dict[str, tuple[str, set[str]]]:
    return {j.route: (j.per, set(j.series_uids)) for j in plan_jobs(config, series)}


def test_a_chest_radiograph_goes_to_the_2d_models_per_instance(
    config: SiteConfig, study: dict[str, SeriesInfo]
) -> None:
    cr = study["cr"]
    jobs = plan_jobs(config, [cr])
    assert jobs == [
        RouteMatch("cxr", config.route("cxr").bundle, "classification", "instance", (cr.series_uid,), ("sr", "sc"),
                   ("pacs",)),
        RouteMatch("any-2d", config.route("any-2d").bundle, "classification", "instance", (cr.series_uid,),
                   ("sr", "sc"), ()),
    ]  # fmt: skip


def test_a_ct_volume_goes_to_the_3d_model_once_and_never_slice_by_slice(
    config: SiteConfig, study: dict[str, SeriesInfo]
) -> None:
    pair = study["ct_pair"]
    volume = dataclasses.replace(pair, n_instances=120)
    assert routed(config, [volume]) == {"ct-3d": ("series", {pair.series_uid})}
    assert routed(config, [pair]) == {"ct-3d": ("series", {pair.series_uid})}
    why = {d.route: str(d) for d in explain_routing(config, [volume])}
    assert why["cxr"] == "route cxr, series #1 (CT, 120 instances): skipped: modality CT is not CR or DX"
    assert why["any-2d"] == (
        "route any-2d, series #1 (CT, 120 instances): skipped: a 2D model does not run slice by slice on a CT "
        'volume of 120 images (set apply_per = "instance" on the route to run it on every slice)'
    )
    assert why["ct-3d"] == (
        "route ct-3d, series #1 (CT, 120 instances): runs per series: a 3D segmentation model, run once on the CT "
        "volume"
    )
    # one CT slice is a single image: a 2D model may read it, a 3D model may not
    ct = study["ct_slice"]
    assert routed(config, [ct]) == {"any-2d": ("instance", {ct.series_uid})}
    assert str(explain_routing(config, [ct])[2]) == (
        "route ct-3d, series #1 (CT, 1 instance): skipped: a 3D model needs a volume; this CT series is not one "
        "(1 image(s))"
    )


def test_an_mr_study_routes_each_series_by_its_own_headers(config: SiteConfig, study: dict[str, SeriesInfo]) -> None:
    mr = [study[k] for k in ("mr_t1post", "mr_t1pre_reg", "mr_flair_reg", "mr_t2_reg")]
    jobs = routed(config, mr)
    assert jobs == {
        "brain-t1": ("series", {study["mr_t1post"].series_uid, study["mr_t1pre_reg"].series_uid}),
        "mr-slices": ("instance", {s.series_uid for s in mr}),
    }
    flair = [d for d in explain_routing(config, mr) if d.route == "brain-t1" and not d.matched]
    assert [d.reason for d in flair] == ["series description does not match /^t1/"] * 2
    # calling AE is part of the match (case-insensitive); STOW-RS has none
    other = [dataclasses.replace(s, calling_ae="elsewhere") for s in mr]
    assert "brain-t1" not in routed(config, other)
    assert next(d.reason for d in explain_routing(config, other) if d.route == "brain-t1") == (
        "calling AE elsewhere is not MODALITY1"
    )
    stow = dataclasses.replace(study["mr_t1post"], calling_ae="")
    assert [d.reason for d in explain_routing(config, [stow]) if d.route == "brain-t1"] == [
        "no calling AE (STOW-RS) is not MODALITY1"
    ]
    lower = dataclasses.replace(study["mr_t1post"], body_part="brain", calling_ae="modality1")
    assert "brain-t1" in routed(config, [lower])
    unknown_part = dataclasses.replace(study["mr_t1post"], body_part="")
    assert [d.reason for d in explain_routing(config, [unknown_part]) if d.route == "brain-t1"] == [
        "body part (none) is not BRAIN"
    ]
    # a multi-frame enhanced MR is one volume for a 3D model and no input for a 2D one
    emr = dataclasses.replace(study["enhanced_mr"], body_part="BRAIN", series_description="T1 3D")
    assert routed(config, [emr]) == {"brain-t1": ("series", {emr.series_uid})}
    assert [d.reason for d in explain_routing(config, [emr]) if d.route == "mr-slices"] == [
        "a 2D model takes single images; this MR series holds multi-frame instances"
    ]


def test_objects_without_images_and_medsight_results_are_never_routed(
    config: SiteConfig, study: dict[str, SeriesInfo]
) -> None:
    sr, seg, sc, cine = study["sr"], study["seg"], study["sc"], study["us_cine"]
    assert routed(config, [sr, seg, cine]) == {}
    reasons = {(d.route, d.series): d.reason for d in explain_routing(config, [sr, seg, cine])}
    assert reasons[("any-2d", "series #1 (SR, 1 instance)")] == "no images (Basic Text SR Storage)"
    assert reasons[("any-2d", "series #2 (SEG, 1 instance)")] == "no images (Segmentation Storage)"
    assert reasons[("any-2d", "series #3 (US, 1 instance, up to 30 frames each)")] == (
        "a 2D model takes single images; this US series holds multi-frame instances"
    )
    # Secondary Capture only where a route names it (a stored heatmap is not fed back to every model)
    assert routed(config, [sc]) == {"secondary-capture": ("instance", {sc.series_uid})}
    assert [d.reason for d in explain_routing(config, [sc]) if d.route == "any-2d"] == [
        "Secondary Capture images are routed only when the route names their SOP class"
    ]
    # what medsight itself sends back is skipped whatever its SOP class
    from medsight.serving.dicom_objects import MANUFACTURER

    assert MEDSIGHT_MANUFACTURER == MANUFACTURER
    ours = dataclasses.replace(study["cr"], manufacturer="medsight")
    assert routed(config, [ours]) == {}
    assert {d.reason for d in explain_routing(config, [ours])} == {"a result medsight made"}


def test_a_mixed_study_plans_several_models_and_explains_every_pair(
    config: SiteConfig, study: dict[str, SeriesInfo], shared_data: Path
) -> None:
    series = [study["cr"], dataclasses.replace(study["ct_pair"], n_instances=80), study["mr_t1post"], study["sr"]]
    jobs = plan_jobs(config, series)
    assert [(j.route, j.per, len(j.series_uids)) for j in jobs] == [
        ("cxr", "instance", 1), ("any-2d", "instance", 1), ("ct-3d", "series", 1), ("brain-t1", "series", 1),
        ("mr-slices", "instance", 1),
    ]  # fmt: skip
    assert next(j for j in jobs if j.route == "ct-3d").outputs == ("seg",)
    decisions = explain_routing(config, series)
    assert len(decisions) == len(config.routes) * len(series)
    text = "\n".join(str(d) for d in decisions)
    # no patient identifier, UID or free-text description in what is logged
    mr_file = next((shared_data / "udacity_brain_mr_dicom" / "Study3" / "11-T1post-18670").glob("*.dcm"))
    mr_header = pydicom.dcmread(mr_file, stop_before_pixels=True)
    for s in series:
        assert s.series_uid not in text
    for secret in (str(mr_header.PatientName), mr_header.PatientID, mr_header.StudyInstanceUID, "T1post", "IHE Year"):
        assert secret.lower() not in text.lower(), secret


def test_listener_sop_classes_follow_the_routes(config: SiteConfig, tmp_path: Path) -> None:
    assert storage_sop_classes(config) is None  # some routes take any SOP class
    make_bundle(tmp_path / "b", "classification", 2)
    (tmp_path / "site.toml").write_text(
        '[dicom]\nallow_any = true\n[[routes]]\nname = "r"\nbundle = "b"\n'
        '[routes.match]\nsop_class = ["ComputedRadiographyImageStorage", "1.2.840.10008.5.1.4.1.1.1.1"]\n'
    )
    classes = storage_sop_classes(load_config(tmp_path / "site.toml"))
    assert classes is not None
    assert {"1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"} <= classes  # CR, DX for presentation
    assert {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.11"} <= classes
    assert "1.2.840.10008.5.1.4.1.1.2" not in classes  # CT is not asked for
