"""A real Orthanc PACS (with its DICOMweb plugin) for tests, inside a loopback-only network namespace.

Orthanc cannot be told to listen on one address, so it runs in a namespace of its own (``ip netns``) whose only
interface is ``lo``: nothing outside this machine, nor anything else on it, can reach it. Test code that talks to
it runs in the namespace too: :func:`in_namespace` moves the *current thread* into the namespace with
``setns(CLONE_NEWNET)`` (threads and subprocesses started inside inherit it) and moves it back on exit;
:func:`run` is ``ip netns exec``. :func:`orthanc` starts Orthanc and always stops it and deletes the namespace,
also when the test fails. A missing tool (Orthanc, the plugin, ``ip``) fails the test under CI (tests/needs.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from needs import tool

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
CLONE_NEWNET = 0x40000000
ORTHANC_AET = "ORTHANC"
#: The AE title our senders use; Orthanc knows it as a modality.
SENDER_AET = "MEDSIGHT"


def require(name: str) -> str:
    """The tool's path (Orthanc, its plugin, ``ip``, dcmtk): ``make tools`` installs them."""
    return tool(name, "dcmtk orthanc orthanc-dicomweb iproute2")


@contextmanager
def in_namespace(ns: str) -> Iterator[None]:
    """Run the enclosed code of this thread in network namespace ``ns``; restore the original one after."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)  # this thread's namespace, to come back to
    target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(original, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {ns}: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(original)


def run(ns: str, cmd: Sequence[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``ip netns exec ns cmd``, text output captured."""
    return subprocess.run(
        [require("ip"), "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def free_port(ns: str) -> int:
    """A TCP port free on the namespace's loopback."""
    with in_namespace(ns), socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its namespace, ports and REST helpers (each call enters the namespace)."""

    ns: str
    http_port: int
    dicom_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str) -> httpx.Response:
        with in_namespace(self.ns), httpx.Client(timeout=30) as client:
            return client.get(self.url + path)

    def post(self, path: str, body: Any) -> httpx.Response:
        with in_namespace(self.ns), httpx.Client(timeout=30) as client:
            return client.post(self.url + path, json=body)

    def instance_id(self, sop_instance_uid: str) -> str:
        """Orthanc's id of the instance with this SOP Instance UID (fails when it is not stored)."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}})
        found.raise_for_status()
        ids = found.json()
        assert len(ids) == 1, f"Orthanc holds {len(ids)} instances with SOP Instance UID {sop_instance_uid}"
        return str(ids[0])

    def file(self, sop_instance_uid: str) -> bytes:
        """The stored DICOM file, read back through the REST API (/instances/{id}/file)."""
        response = self.get(f"/instances/{self.instance_id(sop_instance_uid)}/file")
        response.raise_for_status()
        return response.content


@contextmanager
def orthanc(workdir: Path, timeout_s: float = 90.0) -> Iterator[Orthanc]:
    """Start Orthanc (DICOMweb on) in a new loopback-only namespace; stop it and delete the namespace after."""
    require("ip")
    binary, plugin = require(ORTHANC), require(DICOMWEB_PLUGIN)
    ns = f"medsight-{secrets.token_hex(4)}"
    created = run_root(["ip", "netns", "add", ns])
    if created.returncode != 0:
        pytest.fail(f"cannot create network namespace {ns}: {created.stderr.strip()}")
    process: subprocess.Popen[bytes] | None = None
    try:
        up = run(ns, ["ip", "link", "set", "lo", "up"])
        assert up.returncode == 0, up.stderr
        http_port, dicom_port, sender_port = free_port(ns), free_port(ns), free_port(ns)
        (workdir / "storage").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medsight-test-pacs",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "DicomAet": ORTHANC_AET,
            "DicomPort": dicom_port,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {"medsight": [SENDER_AET, "127.0.0.1", sender_port]},
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=1))
        log = workdir / "orthanc.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [require("ip"), "netns", "exec", ns, binary, str(config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        peer = Orthanc(ns=ns, http_port=http_port, dicom_port=dicom_port, log=log)
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited with {process.returncode}: {log.read_text()[-2000:]}")
            try:
                if peer.get("/system").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer /system within {timeout_s:.0f} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        plugins = peer.get("/plugins").json()
        assert "dicom-web" in plugins, f"Orthanc loaded {plugins}, not the DICOMweb plugin"
        yield peer
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        run_root(["ip", "netns", "delete", ns])


def run_root(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require(cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=60)
