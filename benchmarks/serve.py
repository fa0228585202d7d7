"""The service against a real PACS: receive rate beside Orthanc's, CR study → SR-in-Orthanc latency, sustained load.

Everything runs in a loopback-only network namespace (Orthanc cannot bind to one address): Orthanc with its
DICOMweb plugin as the destination PACS, ``medsight serve`` (the demo-style route: CR/DX → a classification
bundle → SR sent to Orthanc by C-STORE), and dcmtk ``storescu`` as the modality.

1. Receive rate: N copies of the shared CT slice ``693_UNCR.dcm`` (512 x 512, 16 bit, 526 kB; fresh UIDs each
   repeat) sent with one ``storescu`` association to medsight, to Orthanc and to dcmtk's reference receiver ``storescp``
   (files only, no index, no fsync); instances/s for each and the ratio (goal >= 150/s and >= 0.7x Orthanc). The
   page cache is flushed (``sync``, untimed) before each send: on ext4 an fsync commits the journal, which first
   writes out every file written before it, so medsight, which fsyncs each instance, would otherwise pay for writing
   the 263 MB of input files the benchmark has just made and the previous receiver's files, and Orthanc, which does
   not fsync, would not. dcmtk programs (storescu, storescp and Orthanc, which uses dcmtk's network layer) run with
   ``TCP_NODELAY=1`` in their environment: with this Debian build's default (Nagle's algorithm on), each
   acknowledgement from storescp or Orthanc waits for the peer's delayed ACK (about 40 ms), which capped both at
   about 20 instances/s in earlier runs; that comparison measured the stall, not the receivers. The same run also
   sends to medsight and to a second storescp with dcmtk's default (``dcmtk_default_nagle``). Then the cost of one
   acknowledgement's parts on this disk (``store_cost_ms``).
2. Latency: a CR study (the shared JPEG 2000 CR ``RG3_J2KR.dcm``, fresh UIDs) sent; the clock starts when
   ``storescu`` has its last acknowledgement and the study is completed by the API (so the quiet period is
   excluded) and stops when Orthanc holds the SR (polled every 20 ms). p50/p95 (goal p95 <= 3 s on CPU).
3. Sustained: 50 CR studies sent at once and completed together; time until Orthanc holds all 50 SRs.

Run: ``MEDSIGHT_DATA=../shared/data .venv/bin/python benchmarks/serve.py --bundle demo_out/pneumonia_bundle``
(root is needed for ``ip netns``). Writes ``benchmarks/results/serve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "serving"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx2 as httpx  # noqa: E402
import orthanc_peer  # noqa: E402
from support.provenance import provenance  # noqa: E402

from medsight import config as ms_config  # noqa: E402
from medsight.io.atomic import write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serve.json"
MEDSIGHT = str(ROOT / ".venv" / "bin" / "medsight")


def make_ct(data: Path, out: Path, n: int) -> Path:
    """``n`` CT-sized instances of one new study/series in ``out`` (cleared first)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        f.unlink()
    template = pydicom.dcmread(data / "dicom_samples" / "pydicom_data" / "693_UNCR.dcm")  # a real 512x512 CT slice
    study, series = generate_uid(), generate_uid()
    for k in range(n):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, -2.5 * k]
        ds.save_as(out / f"ct_{k:04d}.dcm", enforce_file_format=True)
    return out


def make_cr(data: Path, out: Path, n: int) -> list[tuple[str, Path]]:
    """``n`` single-image CR studies (fresh UIDs) in ``out``: (study UID, file)."""
    out.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(data / "dicom_samples" / "pydicom_data" / "RG3_J2KR.dcm")
    made = []
    for i in range(n):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"cr_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append((str(ds.StudyInstanceUID), path))
    return made


def store_cost(data: Path, folder: Path, n: int = 200) -> dict[str, Any]:
    """Milliseconds per instance for the parts of an acknowledgement, on this disk: StudyStore.store with the
    stream as received (what the listener does), the same re-encoding each instance with pydicom, and a bare
    write + fsync + rename of the same number of bytes (the floor)."""
    import io

    from pydicom.filebase import DicomFileLike
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    from medsight.serving.database import open_database
    from medsight.serving.store import StudyStore

    template = pydicom.dcmread(data / "dicom_samples" / "pydicom_data" / "693_UNCR.dcm")
    out: dict[str, Any] = {"n": n}
    for mode in ("as_received", "re_encoded"):
        store = StudyStore(open_database(None, folder / mode), folder / mode / "instances")
        study, series = generate_uid(), generate_uid()
        items = []
        for _ in range(n):
            ds = template.copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            fp = DicomFileLike(buffer)
            fp.is_little_endian, fp.is_implicit_VR = True, False
            write_dataset(fp, ds)
            received = read_dataset(io.BytesIO(buffer.getvalue()), False, True)
            received.file_meta = ds.file_meta
            items.append((received, buffer.getvalue()))
        started = time.perf_counter()
        for ds, raw in items:
            store.store(ds, calling_ae="BENCH", peer="local", encoded=raw if mode == "as_received" else None)
        out[f"study_store_{mode}"] = 1000 * (time.perf_counter() - started) / n
        size = len(items[0][1])
    payload = os.urandom(size)
    started = time.perf_counter()
    for i in range(n):
        tmp = folder / f"raw_{i}.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"raw_{i}.dcm")
    out["bare_write_fsync_rename"] = 1000 * (time.perf_counter() - started) / n
    out["bytes"] = size
    shutil.rmtree(folder, ignore_errors=True)
    return out


def storescu(
    ns: str, port: int, called: str, files: list[Path] | Path, j2k: bool = False, env: dict[str, str] | None = None
) -> float:
    """Send with one association; seconds from start to the last acknowledgement (the process's end). ``j2k``
    lets storescu propose JPEG 2000 (the CR sample's own transfer syntax) as well as the uncompressed ones."""
    args = ["storescu", *(["-xv"] if j2k else []), "-aet", "MEDSIGHT", "-aec", called, "127.0.0.1", str(port)]
    args += ["+sd", str(files)] if isinstance(files, Path) else [str(f) for f in files]
    started = time.perf_counter()
    done = orthanc_peer.run(ns, args, timeout=600, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr[-1500:]}")
    return wall


def sr_in_orthanc(pacs: orthanc_peer.Orthanc, client: httpx.Client, study_uid: str) -> bool:
    found = client.post(
        pacs.url + "/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
    )
    return found.status_code == 200 and len(found.json()) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "demo_out" / "pneumonia_bundle")
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-studies", type=int, default=20)
    parser.add_argument("--sustained-studies", type=int, default=50)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the results (JSON)")
    args = parser.parse_args()
    os.environ["TCP_NODELAY"] = "1"  # every dcmtk program started from here (see the module docstring)
    nagle_env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    data = ms_config.data_root()
    bundle = args.bundle.resolve()
    if not (bundle / "bundle.json").is_file():
        raise SystemExit(f"{bundle}: no bundle (run `make demo` or pass --bundle)")
    with tempfile.TemporaryDirectory(prefix="medsight_serve_bench_") as tmp_name:
        tmp = Path(tmp_name)
        with orthanc_peer.orthanc(tmp / "orthanc") as pacs:
            ns = pacs.ns
            http_port, dicom_port = orthanc_peer.free_port(ns), orthanc_peer.free_port(ns)
            service_dir = tmp / "service"
            cfg = tmp / "site.toml"
            cfg.write_text(
                f"""[service]
data_dir = "{service_dir}"
http_port = {http_port}
workers = {args.workers}
quiet_period_s = 3600

[dicom]
port = {dicom_port}
allow_any = true

[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "{orthanc_peer.ORTHANC_AET}"
host = "127.0.0.1"
port = {pacs.dicom_port}
calling_ae = "{orthanc_peer.SENDER_AET}"

[[routes]]
name = "cr"
bundle = "{bundle}"
match.modality = ["CR", "DX"]
send_to = ["pacs"]
outputs = ["sr"]
"""
            )
            env = {**os.environ, "MEDSIGHT_THREADS": os.environ.get("MEDSIGHT_THREADS", "2")}
            subprocess.run([MEDSIGHT, "users", "add", "bench", "--role", "admin", "--config", str(cfg)], check=True,
                           env=env, capture_output=True)
            token = subprocess.run([MEDSIGHT, "users", "token", "bench", "--config", str(cfg)], check=True, env=env,
                                   capture_output=True, text=True).stdout.strip().split()[-1]
            log = (tmp / "serve.log").open("wb")
            serve = subprocess.Popen(
                ["ip", "netns", "exec", ns, MEDSIGHT, "serve", "--config", str(cfg)], stdout=log,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
            try:
                base = f"http://127.0.0.1:{http_port}"
                with orthanc_peer.in_namespace(ns), httpx.Client(timeout=30) as client:
                    deadline = time.monotonic() + 120
                    while True:
                        try:
                            if client.get(base + "/healthz").status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        if serve.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit(f"medsight serve did not start: {(tmp / 'serve.log').read_text()[-3000:]}")
                        time.sleep(0.2)
                # 1. receive rate
                rates: dict[str, list[float]] = {"medsight": [], "orthanc": [], "storescp": []}
                scp_port = orthanc_peer.free_port(ns)
                scp_dir = tmp / "storescp"
                scp_dir.mkdir()
                storescp = subprocess.Popen(  # dcmtk's own receiver: files only, no index, no fsync
                    ["ip", "netns", "exec", ns, "storescp", "-aet", "STORESCP", "-od", str(scp_dir), str(scp_port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                )
                time.sleep(1)
                for r in range(args.repeats):
                    for name, port, called in (("medsight", dicom_port, "MEDSIGHT"),
                                               ("orthanc", pacs.dicom_port, orthanc_peer.ORTHANC_AET),
                                               ("storescp", scp_port, "STORESCP")):
                        folder = make_ct(data, tmp / f"ct_{name}", args.instances)
                        # untimed: flush what the benchmark itself just wrote (the 263 MB of input files, the
                        # previous receiver's files) so that no receiver's fsyncs pay for another's writes
                        os.sync()
                        wall = storescu(ns, port, called, folder)
                        rates[name].append(args.instances / wall)
                        print(f"repeat {r}: {name} {args.instances / wall:.1f} instances/s ({wall:.2f} s)", flush=True)
                storescp.terminate()
                storescp.wait(30)
                # 1b. the same with dcmtk's default (Nagle on) in storescu and in a storescp started without it
                nagle_port = orthanc_peer.free_port(ns)
                nagle_dir = tmp / "storescp_nagle"
                nagle_dir.mkdir()
                storescp_nagle = subprocess.Popen(
                    ["ip", "netns", "exec", ns, "storescp", "-aet", "STORESCP", "-od", str(nagle_dir), str(nagle_port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True, env=nagle_env,
                )
                time.sleep(1)
                nagle_rates: dict[str, float] = {}
                for name, port, called in (("medsight", dicom_port, "MEDSIGHT"), ("storescp", nagle_port, "STORESCP")):
                    folder = make_ct(data, tmp / f"ct_{name}", args.instances)
                    wall = storescu(ns, port, called, folder, env=nagle_env)
                    nagle_rates[name] = args.instances / wall
                    print(f"dcmtk default (Nagle on): {name} {nagle_rates[name]:.1f} instances/s", flush=True)
                storescp_nagle.terminate()
                storescp_nagle.wait(30)
                # 2. latency
                headers = {"Authorization": f"Bearer {token}"}
                latencies = []
                studies = make_cr(data, tmp / "cr_latency", args.latency_studies)
                with orthanc_peer.in_namespace(ns), httpx.Client(timeout=30) as client:
                    for study_uid, path in studies:
                        storescu(ns, dicom_port, "MEDSIGHT", [path], j2k=True)
                        t0 = time.perf_counter()
                        done = client.post(f"{base}/api/studies/{study_uid}/complete", headers=headers)
                        done.raise_for_status()
                        while not sr_in_orthanc(pacs, client, study_uid):
                            if time.perf_counter() - t0 > 300:
                                raise SystemExit("no SR in Orthanc after 300 s")
                            time.sleep(0.02)
                        latencies.append(time.perf_counter() - t0)
                        print(f"CR study -> SR in Orthanc: {latencies[-1]:.3f} s", flush=True)
                # 3. sustained
                burst = make_cr(data, tmp / "cr_burst", args.sustained_studies)
                storescu(ns, dicom_port, "MEDSIGHT", [p for _, p in burst], j2k=True)
                with orthanc_peer.in_namespace(ns), httpx.Client(timeout=30) as client:
                    t0 = time.perf_counter()
                    for study_uid, _ in burst:
                        client.post(f"{base}/api/studies/{study_uid}/complete", headers=headers).raise_for_status()
                    pending = {uid for uid, _ in burst}
                    while pending:
                        pending = {uid for uid in pending if not sr_in_orthanc(pacs, client, uid)}
                        if time.perf_counter() - t0 > 900:
                            raise SystemExit(f"{len(pending)} SRs missing after 900 s")
                        time.sleep(0.1)
                    burst_s = time.perf_counter() - t0
                    metrics = client.get(base + "/metrics").text
                print(f"{args.sustained_studies} studies at once: all SRs in Orthanc after {burst_s:.1f} s", flush=True)
            finally:
                serve.terminate()
                try:
                    serve.wait(60)
                except subprocess.TimeoutExpired:
                    serve.kill()
                log.close()
    lat = sorted(latencies)
    med = {k: statistics.median(v) for k, v in rates.items()}
    doc: dict[str, Any] = {
        **provenance("serve.py"),
        "seeds": [],
        "settings": {"instances": args.instances, "repeats": args.repeats, "workers": args.workers,
                     "bundle": str(bundle), "instance": "693_UNCR.dcm: CT 512x512 16-bit, uncompressed, 526 kB"},
        "receive": {
            "medsight_instances_per_s": {"value": med["medsight"], "runs": rates["medsight"]},
            "orthanc_instances_per_s": {"value": med["orthanc"], "runs": rates["orthanc"]},
            "ratio_medsight_to_orthanc": med["medsight"] / med["orthanc"],
            # each repeat sends to both receivers back to back, so its own ratio is robust to the shared machine's
            # speed drifting between repeats (dcmtk's storescp, the machine's yardstick, moved 5x in one run)
            "ratio_per_repeat": [m / o for m, o in zip(rates["medsight"], rates["orthanc"], strict=True)],
            "ratio_per_repeat_median": statistics.median(
                m / o for m, o in zip(rates["medsight"], rates["orthanc"], strict=True)
            ),
            "dcmtk_storescp_instances_per_s": {"value": med["storescp"], "runs": rates["storescp"]},
            "goal": ">= 150 instances/s and >= 0.7x Orthanc",
            "dcmtk_environment": "TCP_NODELAY=1 (storescu, storescp, Orthanc)",
            "dcmtk_default_nagle": {f"{k}_instances_per_s": v for k, v in nagle_rates.items()},
        },
        "store_cost_ms": store_cost(data, Path(tempfile.mkdtemp(prefix="medsight_store_cost_"))),
        "latency_cr_to_sr_in_orthanc_s": {
            "n": len(lat),
            "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)),
            "max": lat[-1],
            "runs": latencies,
            "goal": "p95 <= 3 s (quiet period excluded: the study is completed by the API)",
        },
        "sustained": {
            "studies": args.sustained_studies,
            "seconds_until_all_srs_in_orthanc": burst_s,
            "studies_per_minute": 60 * args.sustained_studies / burst_s,
        },
        "metrics_excerpt": [ln for ln in metrics.splitlines() if ln.startswith("medsight_jobs{")],
    }
    write_json(args.results, doc)
    print(json.dumps({k: doc[k] for k in ("receive", "latency_cr_to_sr_in_orthanc_s", "sustained")}, indent=1))


if __name__ == "__main__":
    main()
