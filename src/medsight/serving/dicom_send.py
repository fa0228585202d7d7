"""Send result objects to a PACS by C-STORE (pynetdicom), and C-ECHO a destination.

Why this shape: the caller is a job queue that retries with back-off, so a destination that cannot be reached
(connection refused, association rejected, timeout, aborted mid-way) raises DestinationUnavailable with the reason,
while an instance the destination refuses (a DIMSE failure status) is reported per file and not raised: retrying
it unchanged would fail the same way and block the queue.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from medsight.errors import DestinationUnavailable, MedsightError
from medsight.serving.listener import check_ae_title

LOG = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts one association may propose (odd IDs 1..255)
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class RemoteNode:
    """A DICOM peer (PACS, viewer, router) we send to."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "destination AE title"))
        if not self.host.strip():
            raise MedsightError(f"destination {self.ae_title!r} has no host")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise MedsightError(f"destination {self.ae_title!r}: port {self.port!r} is not in 1..65535")

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass
class SendReport:
    """What happened to each file: stored (`sent`, with `warnings` for success-with-warning) or `failed`."""

    node: RemoteNode
    sent: list[str] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every file was stored by the destination (warnings allowed)."""
        return not self.failed


@dataclass
class _Instance:
    path: Path
    sop_class: str
    transfer_syntax: str


def _make_ae(calling_ae: str, timeout_s: float) -> AE:
    ae = AE(ae_title=check_ae_title(calling_ae, "calling AE title"))
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def _why_no_association(assoc: Association, node: RemoteNode, timeout_s: float) -> str:
    """A clear reason for the job queue's log: rejection details, or what a plain TCP connect says."""
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        if rsp is not None:
            return (
                f"association rejected by {node} ({rsp.result_str}, source {rsp.source_str}: "
                f"{rsp.reason_str}); check the AE titles and the peer's allow-list"
            )
        return f"association rejected by {node}"
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return f"connection refused by {node.host}:{node.port} (is the destination running?)"
    except TimeoutError:
        return f"no answer from {node.host}:{node.port} within {timeout_s:g} s"
    except OSError as exc:
        return f"cannot connect to {node.host}:{node.port}: {exc.strerror or exc}"
    return f"{node} accepted the connection but no association was established within {timeout_s:g} s"


def echo(node: RemoteNode, calling_ae: str = "MEDSIGHT", timeout_s: float = 10) -> bool:
    """True when the destination answers a C-ECHO with success (for health checks; never raises on the network)."""
    ae = _make_ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        LOG.info("C-ECHO to %s: %s", node, _why_no_association(assoc, node, timeout_s))
        return False
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    return bool(status) and int(status.get("Status", -1)) == 0x0000


def _plan(paths: Sequence[Path], report: SendReport) -> list[_Instance]:
    """SOP class and transfer syntax of each readable file (header only); unreadable ones go to report.failed."""
    planned = []
    for path in paths:
        try:
            header = dcmread(path, stop_before_pixels=True)
            sop_class = str(header.SOPClassUID)
            syntax = str(header.file_meta.TransferSyntaxUID)
            str(header.SOPInstanceUID)
        except Exception as exc:  # pydicom raises many kinds for a bad file; the caller gets it per file
            report.failed.append((path.name, f"cannot read as DICOM ({type(exc).__name__})"))
            continue
        planned.append(_Instance(path, sop_class, syntax))
    return planned


def _contexts(instances: Sequence[_Instance]) -> list[list[PresentationContext]]:
    """One context per (SOP class, transfer syntax): the file's own syntax first, then explicit/implicit LE.

    Split into groups of at most 128 contexts, one association each (a single group in practice).
    """
    keys = sorted({(i.sop_class, i.transfer_syntax) for i in instances})
    contexts = []
    for sop_class, syntax in keys:
        context = PresentationContext()
        context.abstract_syntax = UID(sop_class)
        context.transfer_syntax = list(dict.fromkeys([UID(syntax), *_UNCOMPRESSED]))
        contexts.append(context)
    return [contexts[i : i + MAX_CONTEXTS] for i in range(0, len(contexts), MAX_CONTEXTS)]


def _accepted_syntaxes(assoc: Association, sop_class: str) -> set[str]:
    return {
        str(cx.transfer_syntax[0])
        for cx in assoc.accepted_contexts
        if str(cx.abstract_syntax) == sop_class and cx.transfer_syntax
    }


def _prepare(instance: _Instance, accepted: set[str]) -> Dataset | str:
    """The data set to send in a syntax the peer accepted, or why it cannot be sent."""
    if not accepted:
        return f"destination did not accept {UID(instance.sop_class).name}"
    dataset = dcmread(instance.path)
    syntax = UID(instance.transfer_syntax)
    if str(syntax) in accepted or (not syntax.is_compressed and accepted & {str(s) for s in _UNCOMPRESSED}):
        return dataset
    if syntax.is_compressed and accepted & {str(s) for s in _UNCOMPRESSED}:
        try:
            # the peer takes only uncompressed: decode, keeping the instance's identity (the same SOP Instance UID)
            dataset.decompress(generate_instance_uid=False)
        except Exception as exc:
            return f"destination accepts only uncompressed and {syntax.name} cannot be decoded ({type(exc).__name__})"
        return dataset
    return f"destination did not accept {UID(instance.sop_class).name} in {syntax.name}"


def _scrubbed(text: str, sent: Dataset) -> str:
    from medsight.serving.dicom_objects import scrub_source_values  # highdicom: not at the CLI's start-up

    return scrub_source_values(text, [sent])


def _describe(status: Dataset, sent: Dataset) -> str:
    """The peer's status for the reason a job records: its code, category and ErrorComment. The comment is the
    peer's free text, and some PACS name the patient in it: the sent instance's patient values are cut out
    (:func:`medsight.serving.dicom_objects.scrub_source_values`)."""
    code = int(status.Status)
    comment = _scrubbed(str(status.get("ErrorComment", "") or "").strip(), sent)
    text = f"0x{code:04X} {code_to_category(code)}"
    return f"{text}: {comment}" if comment else text


def _send_group(
    ae: AE,
    node: RemoteNode,
    contexts: list[PresentationContext],
    instances: list[_Instance],
    report: SendReport,
    timeout_s: float,
) -> None:
    ae.requested_contexts = contexts
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    if not assoc.is_established:
        raise DestinationUnavailable(_why_no_association(assoc, node, timeout_s))
    done = 0
    try:
        for number, instance in enumerate(instances, start=1):
            prepared = _prepare(instance, _accepted_syntaxes(assoc, instance.sop_class))
            if isinstance(prepared, str):
                report.failed.append((instance.path.name, prepared))
                continue
            try:
                status = assoc.send_c_store(prepared, msg_id=number % 65536 or 1)
            except (ValueError, AttributeError) as exc:  # no usable context, or the data set cannot be encoded
                report.failed.append((instance.path.name, _scrubbed(f"cannot send: {exc}", prepared)[:300]))
                continue
            if not status or "Status" not in status:
                raise DestinationUnavailable(
                    f"{node} did not answer within {timeout_s:g} s or broke off the association after {done} of "
                    f"{len(instances)} instances"
                )
            done += 1
            category = code_to_category(int(status.Status))
            if category == "Success":
                report.sent.append(instance.path.name)
            elif category == "Warning":
                report.sent.append(instance.path.name)
                report.warnings.append((instance.path.name, _describe(status, prepared)))
            else:
                report.failed.append((instance.path.name, _describe(status, prepared)))
    finally:
        if assoc.is_established:
            assoc.release()
        elif not assoc.is_aborted:
            assoc.abort()


def send_instances(
    node: RemoteNode, paths: Sequence[Path], *, calling_ae: str = "MEDSIGHT", timeout_s: float = 30
) -> SendReport:
    """C-STORE the files to `node` over one association; per-file outcomes in the report.

    Raises DestinationUnavailable (connection refused, association rejected, timeout, association broken off).
    """
    if timeout_s <= 0:
        raise MedsightError(f"send timeout must be positive (got {timeout_s!r})")
    report = SendReport(node)
    instances = _plan([Path(p) for p in paths], report)
    if not instances:
        return report
    ae = _make_ae(calling_ae, timeout_s)
    for group in _contexts(instances):
        keys = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in group}
        members = [i for i in instances if (i.sop_class, i.transfer_syntax) in keys]
        _send_group(ae, node, group, members, report, timeout_s)
    LOG.info(
        "sent to %s: %d stored (%d with warnings), %d failed",
        node,
        len(report.sent),
        len(report.warnings),
        len(report.failed),
    )
    return report


__all__ = ["DestinationUnavailable", "RemoteNode", "SendReport", "echo", "send_instances"]
