"""``medsight serve [--config site.toml]``: the clinical service a PACS talks to (see docs/service.md).

With no configuration it serves the demo bundle that ``make demo`` writes, keeps its data under
``medsight_service/`` and listens on 127.0.0.1 only, so a new user can send a study with ``storescu`` at once.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from medsight.commands._arguments import seconds_or_more


class _JsonFormatter(logging.Formatter):
    """One JSON object per log line (``log_format = "json"``), for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the service: DICOM listener, DICOMweb API, job queue and workers",
        description=(
            "Receive studies by DICOM C-STORE or DICOMweb STOW-RS, run the models the routes name once a study is "
            "complete, and send DICOM SR/SEG/SC, FHIR and HL7 results to the configured destinations. Without "
            "--config: the demo bundle (demo_out/pneumonia_bundle, from 'make demo') on CR/DX studies, data under "
            "medsight_service/, DICOM AE MEDSIGHT on 127.0.0.1:11112, HTTP on 127.0.0.1:8080."
        ),
    )
    parser.add_argument("--config", type=Path, default=None, help="the site configuration (TOML; docs/service.md)")
    parser.add_argument("--bundle", type=Path, default=None, help="without --config: serve this bundle instead")
    parser.add_argument("--check", action="store_true", help="check the configuration, print it and exit")
    parser.add_argument(
        "--grace", type=seconds_or_more, default=30.0, help="seconds running jobs get to finish at shutdown"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the configuration (every mistake at once), then serve until SIGTERM/SIGINT."""
    from medsight.serving.config import load_config

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per PDU is noise; ours say what matters
    config = load_config(args.config, bundle=args.bundle)
    print(config.describe(), flush=True)
    if args.check:
        return 0
    if config.service.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JsonFormatter())
    from medsight.serving.service import Service

    Service(config, grace_s=args.grace).serve_forever()
    return 0
