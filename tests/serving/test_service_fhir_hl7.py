"""FHIR R4 DiagnosticReport and HL7 v2 ORU^R01 out (issue 11 §1 results out).

The report validates with fhir.resources and is POSTed to a real HTTP server started here (a stdlib
ThreadingHTTPServer on 127.0.0.1 that parses the body back with fhir.resources); 5xx and a closed port are
retryable, 4xx is not. The ORU^R01 goes over MLLP to a real socket server thread that parses it with ``hl7`` and
answers AA, AE or AR; the sender maps each answer to success, retry or rejection."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hl7
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from medsight.errors import DestinationRejected, DestinationUnavailable
from medsight.serving.codes import bundle_codes
from medsight.serving.dicom_objects import Finding
from medsight.serving.fhir_out import StudyInfo, diagnostic_report, post_report
from medsight.serving.hl7_out import END, START, Patient, oru_r01, send_mllp
from medsight.serving.provenance import AlgorithmIdentity

IDENTITY = AlgorithmIdentity("medsight pneumoniamnist classification", "0.9.0", "cd" * 32)
FINDINGS = [Finding("pneumonia", 0.83), Finding("normal", 0.17)]
STUDY = StudyInfo(study_instance_uid="1.2.826.0.1.3680043.8.498.1")


def test_diagnostic_report_is_valid_coded_and_names_algorithm_and_study() -> None:
    report = diagnostic_report(FINDINGS, STUDY, IDENTITY)
    again = DiagnosticReport.model_validate_json(report.model_dump_json(exclude_none=True))  # round trip
    data = json.loads(again.model_dump_json(exclude_none=True))
    contained = {r["id"]: r for r in data["contained"]}
    device = contained["algorithm"]
    assert device["deviceName"][0]["name"] == IDENTITY.name and device["version"][0]["value"] == "0.9.0"
    assert device["identifier"][0]["value"] == IDENTITY.checksum
    obs = [contained[ref["reference"][1:]] for ref in data["result"]]
    assert [(o["code"]["coding"][0]["system"], o["code"]["coding"][0]["code"]) for o in obs] == [
        ("http://snomed.info/sct", "233604007"),
        ("http://snomed.info/sct", "17621005"),
    ]
    assert [o["valueQuantity"]["value"] for o in obs] == [0.83, 0.17]
    assert all(o["device"]["reference"] == "#algorithm" for o in obs)
    study = data["imagingStudy"][0]["identifier"]
    assert study == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY.study_instance_uid}"}
    assert "subject" not in data  # de-identified by default: no patient identifier leaves


def test_bundle_map_and_identified_output() -> None:
    codes = bundle_codes({"codes": {"pneumonia": {"scheme": "RADLEX", "value": "RID5350", "meaning": "pneumonia"}}})
    study = StudyInfo(study_instance_uid="1.2.3", patient_id="P123", accession_number="A9")
    data = json.loads(diagnostic_report(FINDINGS[:1], study, IDENTITY, codes=codes).model_dump_json(exclude_none=True))
    coding = data["contained"][1]["code"]["coding"][0]
    assert (coding["system"], coding["code"]) == ("http://radlex.org", "RID5350")
    assert data["subject"]["identifier"]["value"] == "P123" and data["identifier"][0]["value"] == "A9"


class _FhirServer:
    """A real HTTP server: answers POST /fhir/DiagnosticReport with the configured status."""

    def __init__(self) -> None:
        self.status = 201
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                DiagnosticReport.model_validate_json(body)  # what arrived is a valid report
                self.send_response(owner.status)
                if owner.status == 201:
                    self.send_header("Location", "http://127.0.0.1/fhir/DiagnosticReport/42/_history/1")
                payload = b""
                if owner.status >= 400:
                    payload = json.dumps(
                        {"resourceType": "OperationOutcome", "issue": [{"code": "invalid", "diagnostics": "bad code"}]}
                    ).encode()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def fhir_server() -> Iterator[_FhirServer]:
    server = _FhirServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


def test_post_report_to_a_real_http_server(fhir_server: _FhirServer) -> None:
    report = diagnostic_report(FINDINGS, STUDY, IDENTITY)
    location = post_report(fhir_server.url, report, token="t0ken", timeout_s=10)
    assert location.endswith("/DiagnosticReport/42/_history/1")
    sent = fhir_server.received[0]
    assert sent["path"] == "/fhir/DiagnosticReport" and sent["auth"] == "Bearer t0ken"
    fhir_server.status = 503
    with pytest.raises(DestinationUnavailable, match="HTTP 503"):
        post_report(fhir_server.url, report, timeout_s=10)
    fhir_server.status = 422
    with pytest.raises(DestinationRejected, match="HTTP 422 bad code"):
        post_report(fhir_server.url, report, timeout_s=10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(DestinationUnavailable, match="unreachable"):
        post_report(f"http://127.0.0.1:{closed}/fhir", report, timeout_s=5)


def test_oru_r01_parses_and_carries_findings_without_patient_by_default() -> None:
    message = oru_r01(FINDINGS, STUDY.study_instance_uid, IDENTITY, control_id="MSG1")
    parsed = hl7.parse(message)
    assert str(parsed.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(parsed.segment("MSH")[10]) == "MSG1"
    assert str(parsed.segment("PID")[3]) == "" and str(parsed.segment("PID")[5]) == ""
    obx = parsed.segments("OBX")
    assert [str(o[3]) for o in obx] == ["233604007^Pneumonia^SCT", "17621005^Normal^SCT"]
    assert [float(str(o[5])) for o in obx] == [0.83, 0.17]
    assert IDENTITY.checksum in str(obx[0][16])
    identified = hl7.parse(oru_r01(FINDINGS, "1.2.3", IDENTITY, patient=Patient(id="P|1", name="Doe^Jane")))
    assert str(identified.segment("PID")[3]) == "P\\F\\1"  # a delimiter in a value is escaped, not structure


class _MllpHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buffer = b""
        while END not in buffer:
            chunk = self.request.recv(65536)
            if not chunk:
                return
            buffer += chunk
        message = hl7.parse(buffer[buffer.find(START) + 1 : buffer.find(END)].decode())
        server: Any = self.server
        server.received.append(message)
        code = server.answer
        ack = (
            f"MSH|^~\\&|PEER||MEDSIGHT||20260101000000||ACK^R01|A{len(server.received)}|P|2.5\r"
            f"MSA|{code}|{message.segment('MSH')[10]}|{'ok' if code == 'AA' else 'no'}"
        )
        self.request.sendall(START + ack.encode() + END)


@pytest.fixture
def mllp_peer() -> Iterator[Any]:
    server: Any = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MllpHandler)
    server.daemon_threads = True
    server.received, server.answer = [], "AA"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_send_mllp_to_a_real_peer_handles_aa_ae_ar(mllp_peer: Any) -> None:
    host, port = mllp_peer.server_address
    message = oru_r01(FINDINGS, STUDY.study_instance_uid, IDENTITY)
    ack = send_mllp(host, port, message, timeout_s=10)
    assert ack.code == "AA" and ack.control_id == str(hl7.parse(message).segment("MSH")[10])
    assert len(mllp_peer.received[0].segments("OBX")) == 2
    mllp_peer.answer = "AE"
    with pytest.raises(DestinationUnavailable, match="application error AE"):
        send_mllp(host, port, message, timeout_s=10)
    mllp_peer.answer = "AR"
    with pytest.raises(DestinationRejected, match="rejected AR"):
        send_mllp(host, port, message, timeout_s=10)
    mllp_peer.server_close()
    with pytest.raises(DestinationUnavailable, match="unreachable"):
        send_mllp(host, port, message, timeout_s=5)
