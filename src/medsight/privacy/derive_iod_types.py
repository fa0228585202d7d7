"""Derive ``iod_types.json``: the type (1, 1C, 2, 2C, 3) of each compound-coded attribute in each IOD.

PS3.15 resolves X/Z, X/D, Z/D, X/Z/D and X/Z/U* by the attribute's type in the object's IOD. pydicom has
no IOD tables, but highdicom ships the module tables parsed from the standard (innolitics/dicom-standard).
We derive a small, reviewable table once and ship it, so the engine needs no highdicom at run time.

Run ``python -m medsight.privacy.derive_iod_types`` to regenerate it after updating highdicom.
"""

from __future__ import annotations

import json
import pkgutil
from pathlib import Path
from typing import Any

from medsight.io.atomic import write_json
from medsight.privacy.profile import COMPOUND_CODES, TYPE_RANK, load_rows


def _load(name: str) -> Any:
    data = pkgutil.get_data("highdicom", f"_standard/{name}")
    if data is None:  # pragma: no cover
        raise FileNotFoundError(name)
    return json.loads(data)


def derive() -> dict[str, Any]:
    """Build the table from highdicom's copy of the standard's module tables."""
    from pydicom.datadict import keyword_for_tag

    compound = {keyword_for_tag(int(r["id"], 16)) for r in load_rows() if r["basicProfile"] in COMPOUND_CODES}
    modules = _load("module_attribute_map.json")
    iod_modules = _load("iod_module_map.json")
    iods: dict[str, dict[str, str]] = {}
    for iod, entries in sorted(iod_modules.items()):
        table: dict[str, str] = {}
        for entry in entries:
            for attr in modules.get(entry["key"], []):
                if attr["keyword"] not in compound:
                    continue
                kind = attr["type"] if attr["type"] in TYPE_RANK else "3"
                path = ">".join([*attr["path"], attr["keyword"]])
                if path not in table or TYPE_RANK[kind] > TYPE_RANK[table[path]]:
                    table[path] = kind
        iods[iod] = dict(sorted(table.items()))
    pixel_iods = sorted(
        iod
        for iod, entries in iod_modules.items()
        if any(e["key"] == "image-pixel" and e["usage"] == "M" for e in entries)
    )
    import highdicom

    return {
        "source": (
            "Derived from the module tables shipped with highdicom "
            f"{highdicom.__version__} (parsed from the DICOM standard by innolitics/dicom-standard). "
            "Paths are keywords joined by '>'; types 1, 1C, 2, 2C, 3; the strictest wins."
        ),
        "sop_class_iod": _load("sop_class_iod_map.json"),
        "pixel_iods": pixel_iods,
        "iods": iods,
    }


def main() -> None:
    """Write the derived table beside this module."""
    write_json(Path(__file__).with_name("iod_types.json"), derive())


if __name__ == "__main__":
    main()
