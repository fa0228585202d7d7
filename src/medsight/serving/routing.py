"""Routing: which configured bundles run on which series of a complete study, and why.

A route runs when its ``match`` accepts a series (ANDed across keys, ORed within a list, case-insensitive, an empty
list accepts anything) *and* its model can take that series: a 2D model (a chest radiograph classifier) runs on each
2D image of a projection series (CR, DX, MG, ...) or of a single-image series, never slice by slice on a CT or MR
volume unless the route says ``apply_per = "instance"``; a 3D model runs once per volumetric series (several slices
or one multi-frame instance of a cross-sectional modality). Series without images (SR, SEG, presentation states,
RT objects) and the service's own results are never routed; Secondary Capture images only when a route names their
SOP class, so a heatmap the service stored is not fed back to a model.

The input is :class:`SeriesInfo`, a plain record of what the store knows about a series, so routing depends on
neither the store's tables nor pydicom datasets (:func:`series_from_datasets` builds it from headers). The
explanations name series by their position and modality, never by a patient identifier or free-text description.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medsight.serving.config import Route, SiteConfig

#: The Manufacturer medsight writes into its SR, SEG and Secondary Capture objects (serving/dicom_objects.py).
MEDSIGHT_MANUFACTURER = "medsight"

#: Cross-sectional modalities: several slices (or a multi-frame instance) of these form a volume.
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "ST", "OCT"})

Unit = Literal["instance", "series"]


@dataclass(frozen=True)
class SeriesInfo:
    """What the store records about one received series (no patient identifiers needed).

    ``sop_class_uids`` are the distinct SOP Class UIDs of its instances; ``max_frames`` the largest
    NumberOfFrames among them (1 for single-frame images); ``calling_ae`` the AE title that sent it ("" for
    STOW-RS); ``manufacturer`` lets routing skip the service's own results.
    """

    series_uid: str
    modality: str
    sop_class_uids: tuple[str, ...]
    n_instances: int
    body_part: str = ""
    series_description: str = ""
    calling_ae: str = ""
    max_frames: int = 1
    manufacturer: str = ""

    def label(self, index: int) -> str:
        """How logs name the series: its position and modality, no identifier."""
        count = f"{self.n_instances} instance{'s' if self.n_instances != 1 else ''}"
        frames = f", up to {self.max_frames} frames each" if self.max_frames > 1 else ""
        return f"series #{index + 1} ({self.modality or 'no modality'}, {count}{frames})"


@dataclass(frozen=True)
class RouteMatch:
    """One job to plan: a route's bundle applied to these series, once per instance or once per series."""

    route: str
    bundle: Path
    task: str
    per: Unit
    series_uids: tuple[str, ...]
    outputs: tuple[str, ...]
    destinations: tuple[str, ...]


@dataclass(frozen=True)
class RouteDecision:
    """Whether one route takes one series and why, for logs and the API (no patient identifiers)."""

    route: str
    series_uid: str
    series: str  # the series' label, e.g. "series #2 (CT, 120 instances)"
    matched: bool
    reason: str
    per: Unit | None = None

    def __str__(self) -> str:
        verdict = f"runs per {self.per}" if self.matched else "skipped"
        return f"route {self.route}, {self.series}: {verdict}: {self.reason}"


def plan_jobs(config: SiteConfig, study_series: Sequence[SeriesInfo]) -> list[RouteMatch]:
    """The jobs a complete study gives: one per route that takes at least one of its series, in config order."""
    decisions = explain_routing(config, study_series)
    jobs = []
    for route in config.routes:
        taken = [d for d in decisions if d.route == route.name and d.matched]
        if taken:
            per = taken[0].per
            assert per is not None
            jobs.append(
                RouteMatch(
                    route=route.name,
                    bundle=route.bundle,
                    task=route.task,
                    per=per,
                    series_uids=tuple(d.series_uid for d in taken),
                    outputs=route.outputs,
                    destinations=route.send_to,
                )
            )
    return jobs


def explain_routing(config: SiteConfig, study_series: Sequence[SeriesInfo]) -> list[RouteDecision]:
    """One decision for every (route, series) pair, in config order then series order."""
    out = []
    for route in config.routes:
        for i, series in enumerate(study_series):
            out.append(decide(route, series, i))
    return out


def decide(route: Route, series: SeriesInfo, index: int = 0) -> RouteDecision:
    """Whether ``route`` takes ``series``: the match keys first, then whether its model can take the input."""
    label = series.label(index)

    def skip(reason: str) -> RouteDecision:
        return RouteDecision(route.name, series.series_uid, label, False, reason)

    if series.manufacturer.strip().lower() == MEDSIGHT_MANUFACTURER:
        return skip("a result medsight made")
    images = [u for u in series.sop_class_uids if is_image_storage(u)]
    if not images:
        kinds = ", ".join(sop_class_name(u) for u in series.sop_class_uids) or "no instances"
        return skip(f"no images ({kinds})")
    m = route.match
    if m.modality and series.modality.upper() not in m.modality:
        return skip(f"modality {series.modality or '(none)'} is not {' or '.join(m.modality)}")
    if m.sop_class and not set(series.sop_class_uids) & set(m.sop_class):
        return skip(f"SOP class {', '.join(sop_class_name(u) for u in images)} is not one the route names")
    if not m.sop_class and all(is_secondary_capture(u) for u in images):
        return skip("Secondary Capture images are routed only when the route names their SOP class")
    if m.body_part and series.body_part.strip().upper() not in m.body_part:
        shown = series.body_part.strip() or "(none)"
        return skip(f"body part {shown} is not {' or '.join(m.body_part)}")
    if m.series_description is not None and not m.series_description.search(series.series_description):
        return skip(f"series description does not match /{m.series_description.pattern}/")
    if m.calling_ae and series.calling_ae.strip().upper() not in m.calling_ae:
        sender = f"calling AE {series.calling_ae.strip()}" if series.calling_ae.strip() else "no calling AE (STOW-RS)"
        return skip(f"{sender} is not {' or '.join(m.calling_ae)}")
    per, reason = model_takes(route, series)
    if per is None:
        return skip(reason)
    return RouteDecision(route.name, series.series_uid, label, True, reason, per)


def model_takes(route: Route, series: SeriesInfo) -> tuple[Unit | None, str]:
    """(unit, why): how the route's model takes the series, or (None, why not)."""
    modality = series.modality.upper() or "(no modality)"
    multiframe = series.max_frames > 1
    volume = modality in VOLUME_MODALITIES and (series.n_instances >= 2 or multiframe)
    if route.spatial_dims == 2:
        if multiframe:
            return None, f"a 2D model takes single images; this {modality} series holds multi-frame instances"
        if volume and route.apply_per != "instance":
            return None, (
                f"a 2D model does not run slice by slice on a {modality} volume of {series.n_instances} images "
                '(set apply_per = "instance" on the route to run it on every slice)'
            )
        return "instance", f"a 2D {route.task} model, run on each of {series.n_instances} image(s)"
    if not volume:
        return None, f"a 3D model needs a volume; this {modality} series is not one ({series.n_instances} image(s))"
    return "series", f"a 3D {route.task} model, run once on the {modality} volume"


def is_image_storage(uid: str) -> bool:
    """Whether instances of this SOP class carry pixel data a model can read (the "... Image Storage" classes)."""
    from pydicom.uid import UID

    return "Image Storage" in UID(uid).name


def is_secondary_capture(uid: str) -> bool:
    from pydicom.uid import UID

    return "Secondary Capture" in UID(uid).name


def sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def storage_sop_classes(config: SiteConfig) -> frozenset[str] | None:
    """The storage SOP classes the listener must accept for these routes, plus SR and SEG (results a PACS or a
    reader may send back); None when some route takes any SOP class."""
    from pydicom._uid_dict import UID_dictionary

    if any(not r.match.sop_class for r in config.routes):
        return None
    wanted = {u for r in config.routes for u in r.match.sop_class}
    for uid, entry in UID_dictionary.items():
        if entry[1] == "SOP Class" and (entry[0].endswith("SR Storage") or entry[0] == "Segmentation Storage"):
            wanted.add(uid)
    return frozenset(wanted)


def series_from_datasets(datasets: Iterable[Any], calling_ae: str = "") -> list[SeriesInfo]:
    """Group DICOM headers (pydicom datasets) into :class:`SeriesInfo`, series in first-seen order."""
    groups: dict[str, list[Any]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    out = []
    for uid, members in groups.items():
        first = members[0]
        sop = tuple(dict.fromkeys(str(ds.get("SOPClassUID", "")) for ds in members if ds.get("SOPClassUID")))
        frames = max(int(ds.get("NumberOfFrames") or 1) for ds in members)
        out.append(
            SeriesInfo(
                series_uid=uid,
                modality=str(first.get("Modality", "") or ""),
                sop_class_uids=sop,
                n_instances=len(members),
                body_part=str(first.get("BodyPartExamined", "") or ""),
                series_description=str(first.get("SeriesDescription", "") or ""),
                calling_ae=calling_ae,
                max_frames=frames,
                manufacturer=str(first.get("Manufacturer", "") or ""),
            )
        )
    return out
