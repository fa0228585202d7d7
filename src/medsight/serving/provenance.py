"""Which algorithm made a result: name, version and a checksum of the exact bundle (IHE AI Results provenance).

IHE AIR asks every AI result to identify its algorithm so a reader can tell two versions of "the pneumonia model"
apart; the checksum pins the weights and settings themselves, not just a version string someone may forget to
bump. The SR carries it as TID 4019 Algorithm Identification (name, version, parameters), the SEG as its Segmentation
Algorithm Identification, FHIR as the Device and HL7 as the OBX responsible observer.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import highdicom as hd
from pydicom.sr.codedict import codes

from medsight.errors import MedsightError
from medsight.training.bundle import BUNDLE_JSON, load_bundle

if TYPE_CHECKING:
    from medsight.training.bundle import Bundle

#: Files whose bytes define a bundle's behaviour, in checksum order (model.onnx.data only when present).
CHECKSUM_FILES = (BUNDLE_JSON, "model.onnx", "model.onnx.data")
#: Prefix of the Algorithm Parameters entry that carries the checksum.
CHECKSUM_PARAMETER = "bundle-sha256="


@dataclass(frozen=True)
class AlgorithmIdentity:
    """An algorithm as the results name it: ``checksum`` is the hex sha256 over the bundle's defining files."""

    name: str
    version: str
    checksum: str = ""

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> AlgorithmIdentity:
        """Name ("medsight <data source> <task>"), the medsight version that trained it and its checksum."""
        loaded = load_bundle(Path(bundle))
        meta = loaded.meta
        source = str(meta.get("data", {}).get("source", "model"))
        return cls(
            name=f"medsight {source} {meta.get('task', '')}".strip()[:64],
            version=str(meta.get("versions", {}).get("medsight", ""))[:64],
            checksum=bundle_checksum(loaded.path),
        )

    @classmethod
    def of(cls, bundle: Bundle, name: str | None = None) -> AlgorithmIdentity:
        """The identity of an already loaded bundle (checksum cached while its files are unchanged)."""
        meta = bundle.meta
        default = f"medsight {meta.get('data', {}).get('source', 'model')} {meta.get('task', '')}".strip()
        return cls(
            name=(name or default)[:64],
            version=str(meta.get("versions", {}).get("medsight", ""))[:64],
            checksum=bundle_checksum(bundle.path),
        )

    def parameters(self) -> list[str]:
        """TID 4019 Algorithm Parameters: the bundle checksum (when known)."""
        return [f"{CHECKSUM_PARAMETER}{self.checksum}"] if self.checksum else []

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """TID 4019 content items for an SR measurement."""
        return hd.sr.AlgorithmIdentification(
            name=self.name[:64], version=self.version[:64], parameters=self.parameters() or None
        )

    def seg_identification(self) -> hd.AlgorithmIdentificationSequence:
        """Segmentation Algorithm Identification Sequence (AI family) for a SEG segment."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name[:64],
            family=codes.DCM.ArtificialIntelligence,
            version=self.version[:64],
            parameters={"bundle-sha256": self.checksum} if self.checksum else None,
        )


def bundle_checksum(folder: str | Path) -> str:
    """Hex sha256 over bundle.json, model.onnx and model.onnx.data (when present), each as name + bytes."""
    folder = Path(folder).resolve()
    stamp = tuple(
        (p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None for p in (folder / n for n in CHECKSUM_FILES)
    )
    return _checksum(folder, stamp)


@functools.lru_cache(maxsize=64)
def _checksum(folder: Path, stamp: tuple[tuple[int, int] | None, ...]) -> str:
    """The hash itself, cached per folder and file stamps (a warm service hashes each bundle once)."""
    digest = hashlib.sha256()
    for name in CHECKSUM_FILES:
        path = folder / name
        if not path.is_file():
            if name == "model.onnx.data":
                continue
            raise MedsightError(f"bundle has no {name}; cannot identify the algorithm", folder)
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def identity_from_sr_parameters(parameters: list[str]) -> str:
    """The checksum from Algorithm Parameters values, "" when absent (used when reading an SR back)."""
    for value in parameters:
        if value.startswith(CHECKSUM_PARAMETER):
            return value[len(CHECKSUM_PARAMETER) :]
    return ""
