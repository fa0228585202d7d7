"""Downloads with checksum verification; a clear error when offline or when the bytes are wrong."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from medsight.data.checksums import md5sum
from medsight.errors import MedsightError
from medsight.io.atomic import atomic_path


def download(url: str, target: Path, md5: str, timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``target`` (atomically), then check its MD5; nothing is left behind on failure."""
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
            got = md5sum(tmp)
            if got != md5:
                raise MedsightError(f"checksum mismatch after download (md5 {got}, expected {md5})", target)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise MedsightError(
            f"cannot download {url} ({exc}); this machine seems offline. Copy the file there by hand "
            "or set MEDSIGHT_DATA to a folder that holds it",
            target,
        ) from exc
    return target
