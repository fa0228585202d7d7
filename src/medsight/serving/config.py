"""The site configuration of ``medsight serve``: one TOML file, checked whole at start.

Why a checker of its own rather than a schema library: a hospital's integration engineer edits this file by
hand, and a service that stops at the first mistake (or starts and fails at the first study) costs a round trip
per typo. :func:`load_config` reads every section, collects *every* mistake with its key path (``routes[1].bundle:
...``), suggests the nearest key for a typo, and raises one :class:`ConfigError` listing them all; nothing is
created or written while checking. Relative paths are resolved against the config file's folder, so a site folder
can be moved as a whole. Secrets never live in the file: tokens and the database password are read from the
environment variables the file names (``token_env``, ``password_env``).

``load_config(None)`` is the working default a new user gets from ``medsight serve`` with no arguments: the demo
bundle that ``make demo`` writes, SQLite under ``medsight_service/``, everything on 127.0.0.1.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import tomllib

from medsight.errors import MedsightError

#: Workers are threads (docs/service.md says why); the key exists so a site file can state it.
WorkerMode = Literal["thread", "process"]
LogFormat = Literal["text", "json"]
DestinationKind = Literal["dicom", "dicomweb", "fhir", "hl7"]
ApplyPer = Literal["auto", "instance", "series"]

#: Where ``make demo`` writes the demo bundle; the default configuration routes chest radiographs to it.
DEMO_BUNDLE = Path("demo_out") / "pneumonia_bundle"
DEFAULT_DATA_DIR = Path("medsight_service")
DEFAULT_AE_TITLE = "MEDSIGHT"
#: Not Orthanc's defaults (DICOM 4242, HTTP 8042), so both run side by side on one machine.
DEFAULT_DICOM_PORT = 11112
DEFAULT_HTTP_PORT = 8080

OUTPUTS = ("sr", "seg", "sc", "fhir", "hl7")
#: What each task can produce (SEG needs masks, SC needs a heatmap) and what it produces by default.
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "classification": ("sr", "sc", "fhir", "hl7"),
    "detection": ("sr", "fhir", "hl7"),
    "segmentation": ("seg", "sr", "fhir", "hl7"),
    "outcome": ("sr", "sc", "fhir", "hl7"),
}
TASK_DEFAULT_OUTPUTS: dict[str, tuple[str, ...]] = {
    "classification": ("sr", "sc"),
    "detection": ("sr",),
    "segmentation": ("seg", "sr"),
    "outcome": ("sr", "sc"),
}
#: Which outputs each kind of destination takes.
DESTINATION_TAKES: dict[str, frozenset[str]] = {
    "dicom": frozenset({"sr", "seg", "sc"}),
    "dicomweb": frozenset({"sr", "seg", "sc"}),
    "fhir": frozenset({"fhir"}),
    "hl7": frozenset({"hl7"}),
}

_AE_FORBIDDEN = re.compile(r"[\\\x00-\x1f\x7f]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class ConfigError(MedsightError):
    """Every mistake in a site configuration, one per line; ``problems`` holds them as a list."""

    def __init__(self, problems: Sequence[str], path: str | Path | None) -> None:
        self.problems = list(problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        where = "" if path is not None else "the default configuration: "
        body = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{where}{len(self.problems)} {noun} in the site configuration:\n{body}", path)


# ------------------------------------------------------------------------------------------------ the typed config


@dataclass(frozen=True)
class ServiceConfig:
    """[service]: where data lives, the HTTP listener, workers, completeness and retry policy."""

    data_dir: Path
    host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    workers: int = 1
    worker_mode: WorkerMode = "thread"
    quiet_period_s: float = 10.0
    rerun_on_late: bool = False
    job_timeout_s: float = 300.0
    max_attempts: int = 5
    backoff_s: float = 5.0
    backoff_max_s: float = 300.0
    min_free_mb: int = 500
    max_stow_mb: int = 2048
    log_format: LogFormat = "text"


@dataclass(frozen=True)
class DatabaseConfig:
    """[database]: the job queue and study store. SQLite under ``data_dir`` unless a PostgreSQL URL is given."""

    url: str
    kind: Literal["sqlite", "postgresql"]
    password_env: str | None = None

    def sqlalchemy_url(self) -> str:
        """The URL to connect with, the password filled in from ``password_env`` when one is named."""
        from sqlalchemy.engine import make_url

        if self.password_env is None:
            return self.url
        return make_url(self.url).set(password=os.environ.get(self.password_env, "")).render_as_string(False)

    def display_url(self) -> str:
        """The URL with any password masked, for logs and the start-up summary."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class AllowedPeer:
    """One [[dicom.allowed]] entry: a calling AE title, optionally pinned to a host (its addresses resolved)."""

    ae_title: str
    host: str | None = None
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class DicomConfig:
    """[dicom]: the C-STORE/C-ECHO listener and who may send to it."""

    ae_title: str = DEFAULT_AE_TITLE
    host: str = "127.0.0.1"
    port: int = DEFAULT_DICOM_PORT
    allow_any: bool = False
    allowed: tuple[AllowedPeer, ...] = ()

    def allows(self, calling_ae: str, address: str) -> bool:
        """Whether a peer calling as ``calling_ae`` from ``address`` may associate (AE titles compared stripped)."""
        if self.allow_any:
            return True
        ae = calling_ae.strip()
        return any(p.ae_title == ae and (p.host is None or address in p.addresses) for p in self.allowed)


@dataclass(frozen=True)
class TlsConfig:
    """[tls]: the HTTP listener serves HTTPS with this certificate and key."""

    certificate: Path
    key: Path


@dataclass(frozen=True)
class Destination:
    """One [[destinations]] entry: where results are sent. Only the keys of its ``kind`` are set."""

    name: str
    kind: DestinationKind
    ae_title: str | None = None
    host: str | None = None
    port: int | None = None
    calling_ae: str | None = None
    url: str | None = None
    token_env: str | None = None
    application: str | None = None
    facility: str | None = None

    @property
    def takes(self) -> frozenset[str]:
        """The outputs this destination accepts (e.g. a FHIR server takes ``fhir`` only)."""
        return DESTINATION_TAKES[self.kind]

    def token(self) -> str | None:
        """The bearer token, read from the environment now (never stored in the config object)."""
        return None if self.token_env is None else os.environ.get(self.token_env)

    def describe(self) -> str:
        if self.kind == "dicom":
            where = f"DICOM {self.ae_title}@{self.host}:{self.port} (calling as {self.calling_ae})"
        elif self.kind == "hl7":
            where = f"HL7 v2 MLLP {self.host}:{self.port}"
        else:
            where = f"{'DICOMweb' if self.kind == 'dicomweb' else 'FHIR'} {self.url}"
        token = f", token from ${self.token_env}" if self.token_env else ""
        return f"{self.name}: {where}{token}"


@dataclass(frozen=True)
class Match:
    """A route's [routes.match]: ANDed across keys, ORed within a list, case-insensitive; empty = any."""

    modality: tuple[str, ...] = ()
    sop_class: tuple[str, ...] = ()  # SOP Class UIDs (keywords are resolved at load)
    body_part: tuple[str, ...] = ()
    series_description: re.Pattern[str] | None = None
    calling_ae: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        for key in ("modality", "body_part", "calling_ae"):
            values = getattr(self, key)
            if values:
                parts.append(f"{key} {'|'.join(values)}")
        if self.sop_class:
            parts.append(f"sop_class {'|'.join(_sop_keyword(u) for u in self.sop_class)}")
        if self.series_description is not None:
            parts.append(f"series_description /{self.series_description.pattern}/")
        return ", ".join(parts) or "any series"


@dataclass(frozen=True)
class Route:
    """One [[routes]] entry: which series go to which bundle, what it produces and where that goes."""

    name: str
    bundle: Path
    task: str
    task_type: str
    spatial_dims: int
    n_channels: int
    label_names: tuple[str, ...]
    match: Match
    send_to: tuple[str, ...]
    outputs: tuple[str, ...]
    apply_per: ApplyPer = "auto"


@dataclass(frozen=True)
class ReviewConfig:
    """[review]: where the reader's objects (the verdict SR, an edited mask's SEG) are sent."""

    send_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class SiteConfig:
    """The whole checked configuration. ``source`` is the file it came from (None for the default)."""

    source: Path | None
    service: ServiceConfig
    database: DatabaseConfig
    dicom: DicomConfig
    tls: TlsConfig | None
    destinations: tuple[Destination, ...]
    routes: tuple[Route, ...]
    warnings: tuple[str, ...] = field(default=())
    review: ReviewConfig = field(default_factory=ReviewConfig)

    def destination(self, name: str) -> Destination:
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(name)

    def describe(self) -> str:
        """What listens where and which routes send which studies to which bundles and destinations; no secrets."""
        s, d = self.service, self.dicom
        scheme = "https" if self.tls else "http"
        if d.allow_any:
            peers = "any calling AE (loopback only)"
        else:
            peers = ", ".join(p.ae_title + (f"@{p.host}" if p.host else "") for p in d.allowed)
        rerun = "re-run" if s.rerun_on_late else "kept, no re-run"
        lines = [
            f"medsight service ({self.source if self.source else 'default configuration'})",
            f"  DICOM   AE {d.ae_title} on {d.host}:{d.port}; accepts {peers}",
            f"  HTTP    {scheme}://{s.host}:{s.http_port} (DICOMweb, API, /healthz, /metrics)",
            f"  data    {s.data_dir}; database {self.database.display_url()}",
            f"  studies complete after {s.quiet_period_s:g} s without new instances; late instances: {rerun}",
            f"  jobs    {s.workers} {s.worker_mode} worker(s), timeout {s.job_timeout_s:g} s, "
            f"{s.max_attempts} attempts, back-off {s.backoff_s:g}-{s.backoff_max_s:g} s",
        ]
        for r in self.routes:
            dest = ", ".join(r.send_to) or "kept in the service only"
            lines.append(
                f"  route {r.name}: {r.match.describe()} -> {r.bundle} ({r.task} {r.spatial_dims}D, "
                f"labels {' | '.join(r.label_names)}) -> {', '.join(r.outputs)} -> {dest}"
            )
        for dst in self.destinations:
            lines.append(f"  destination {dst.describe()}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ loading


def load_config(path: Path | None, bundle: Path | None = None) -> SiteConfig:
    """Read and check a site configuration; ``None`` gives the working default.

    ``bundle`` replaces the default route's bundle (the ``--bundle`` option) when no file is given. Raises
    :class:`ConfigError` (a :class:`MedsightError`) listing every mistake, or a :class:`MedsightError` for a
    missing file or a TOML syntax error (with its line and column).
    """
    if path is None:
        raw = default_raw(bundle)
        return _Checker(raw, base=Path.cwd(), source=None).run()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise MedsightError("no such configuration file", path) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MedsightError(f"cannot read the configuration ({exc})", path) from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MedsightError(_toml_problem(exc), path) from exc
    return _Checker(raw, base=path.resolve().parent, source=path.resolve()).run()


def default_raw(bundle: Path | None = None) -> dict[str, Any]:
    """The default configuration as the TOML would hold it (paths relative to the working directory)."""
    return {
        "service": {"data_dir": str(DEFAULT_DATA_DIR)},
        "dicom": {"allow_any": True},
        "routes": [
            {
                "name": "demo",
                "bundle": str(bundle if bundle is not None else DEMO_BUNDLE),
                "match": {"modality": ["CR", "DX"]},
            }
        ],
    }


def _toml_problem(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib (Python 3.11) puts the position in the message: move it to the front as 'line L, column C'."""
    message = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if found:
        return f"TOML syntax error at line {found.group(1)}, column {found.group(2)}: {message[: found.start()]}"
    found = re.search(r"\s*\(at end of document\)$", message)
    if found:
        return f"TOML syntax error at the end of the file: {message[: found.start()]}"
    return f"TOML syntax error: {message}"


T = TypeVar("T")
_MISSING: Any = object()


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    return names.get(type(value), "a table" if isinstance(value, dict) else type(value).__name__)


class _Table:
    """One TOML table being read: typed getters that record a problem and return a fallback instead of raising."""

    def __init__(self, raw: Mapping[str, Any], where: str, problems: list[str], keys: Sequence[str]) -> None:
        self.raw, self.where, self.problems = raw, where, problems
        for key in raw:
            if key not in keys:
                self.problems.append(f"{self.at(key)}: unknown key{_suggest(key, keys)}")

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def add(self, key: str, problem: str) -> None:
        self.problems.append(f"{self.at(key)}: {problem}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def _typed(self, key: str, default: Any, check: Callable[[Any], bool], wanted: str) -> Any:
        if key not in self.raw:
            if default is _MISSING:
                self.add(key, "missing (required)")
            return default if default is not _MISSING else None
        value = self.raw[key]
        if not check(value):
            self.add(key, f"must be {wanted}, not {_type_name(value)} ({value!r})")
            return default if default is not _MISSING else None
        return value

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self._typed(key, default, lambda v: isinstance(v, str), "a string")
        if isinstance(value, str) and key in self.raw and not value.strip():
            self.add(key, "must not be empty")
            return default if default is not _MISSING else None
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._typed(key, default, lambda v: isinstance(v, bool), "true or false"))

    def integer(self, key: str, default: Any, lo: int | None = None, hi: int | None = None, what: str = "") -> Any:
        value = self._typed(key, default, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer")
        if (
            isinstance(value, int)
            and key in self.raw
            and ((lo is not None and value < lo) or (hi is not None and value > hi))
        ):
            rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
            self.add(key, f"{value} is not {what or 'allowed'} ({rng})")
            return default if default is not _MISSING else None
        return value

    def number(self, key: str, default: float, positive: bool = False) -> float:
        value = self._typed(key, default, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
        if key in self.raw and isinstance(value, (int, float)):
            if value != value or value in (float("inf"), float("-inf")):
                self.add(key, f"{value} is not a finite number")
                return default
            if value < 0 or (positive and value == 0):
                self.add(key, f"{value:g} must be {'greater than 0' if positive else '0 or more'}")
                return default
        return float(value)

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.string(key, default)
        if isinstance(value, str) and value not in choices:
            options = " or ".join(f'"{c}"' for c in choices)
            self.add(key, f'"{value}" is not one of {options}{_suggest(value, choices, quoted=True)}')
            return default
        return str(value)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of strings; a single string is taken as a list of one."""
        if key not in self.raw:
            return ()
        value = self.raw[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.add(key, f"must be a string or an array of strings, not {_type_name(value)} ({value!r})")
            return ()
        empty = [v for v in value if not v.strip()]
        if empty:
            self.add(key, "holds an empty string")
        return tuple(v.strip() for v in value if v.strip())

    def table(self, key: str) -> Mapping[str, Any] | None:
        if key not in self.raw:
            return {}
        value = self.raw[key]
        if not isinstance(value, dict):
            self.add(key, f"must be a table ([{self.at(key)}] or {{ ... }}), not {_type_name(value)}")
            return None
        return cast(Mapping[str, Any], value)

    def tables(self, key: str) -> list[Mapping[str, Any]]:
        if key not in self.raw:
            return []
        value = self.raw[key]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.add(key, f"must be an array of tables ([[{self.at(key)}]]), not {_type_name(value)}")
            return []
        return cast(list[Mapping[str, Any]], value)


def _suggest(word: str, valid: Sequence[str], quoted: bool = False) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    if close:
        return f' (did you mean "{close[0]}"?)' if quoted else f" (did you mean '{close[0]}'?)"
    if quoted:
        return ""
    return f" (valid keys: {', '.join(valid)})"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ae_title_problem(value: str) -> str | None:
    """Why ``value`` is not a DICOM AE title (PS3.5: at most 16 characters, no backslash or control codes)."""
    if not value.strip():
        return "an AE title must not be empty or blank"
    if len(value) > 16:
        return f'"{value}" is longer than 16 characters ({len(value)})'
    if _AE_FORBIDDEN.search(value) or not value.isascii():
        return f'"{value}" holds a character an AE title may not (backslash, control codes or non-ASCII)'
    return None


def _host_problem(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(value):
        return None
    return f'"{value}" is not an IP address or host name'


def _url_problem(value: str) -> str | None:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f'"{value}" is not an http:// or https:// URL'
    if not parts.hostname:
        return f'"{value}" names no host'
    if _host_problem(parts.hostname):
        return f'"{value}": "{parts.hostname}" is not an IP address or host name'
    try:
        port = parts.port
    except ValueError:
        return f'"{value}" has a port that is not 1-65535'
    if port == 0:
        return f'"{value}" has a port that is not 1-65535'
    return None


def _url_host(value: str) -> str:
    """The host of a URL that passed :func:`_url_problem` (brackets of an IPv6 address removed)."""
    from urllib.parse import urlsplit

    return urlsplit(value).hostname or ""


_SOP_KEYWORDS: dict[str, str] | None = None


def _sop_classes() -> dict[str, str]:
    """Storage SOP classes by keyword (e.g. ``CTImageStorage``): pydicom's UID dictionary, kept to the classes
    pynetdicom (the listener) serves with its Storage service class."""
    global _SOP_KEYWORDS
    if _SOP_KEYWORDS is None:
        from pydicom._uid_dict import UID_dictionary
        from pynetdicom.service_class import StorageServiceClass
        from pynetdicom.sop_class import uid_to_service_class

        _SOP_KEYWORDS = {
            entry[4]: uid
            for uid, entry in UID_dictionary.items()
            if entry[1] == "SOP Class" and entry[4] and uid_to_service_class(uid) is StorageServiceClass
        }
    return _SOP_KEYWORDS


def _sop_keyword(uid: str) -> str:
    from pydicom.uid import UID

    keyword = UID(uid).keyword
    return keyword or uid


def resolve_sop_class(value: str) -> tuple[str | None, str | None]:
    """(UID, problem) for a storage SOP class given as a UID or a keyword; problem is None when valid."""
    keywords = _sop_classes()
    if value in keywords:
        return keywords[value], None
    if re.fullmatch(r"[0-9.]+", value):
        if value in keywords.values():
            return value, None
        from pydicom._uid_dict import UID_dictionary

        if value in UID_dictionary:
            return None, f"{value} ({UID_dictionary[value][0]}) is not a storage SOP class"
        return None, f"{value} is not a storage SOP class UID pydicom knows"
    return None, f'"{value}" is not a storage SOP class keyword or UID{_suggest(value, list(keywords), quoted=True)}'


class _Checker:
    """Turns the parsed TOML into a :class:`SiteConfig`, collecting every problem before raising."""

    def __init__(self, raw: Mapping[str, Any], base: Path, source: Path | None) -> None:
        self.raw, self.base, self.source = raw, base, source
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return (p if p.is_absolute() else self.base / p).resolve()

    def run(self) -> SiteConfig:
        top = _Table(
            self.raw, "", self.problems, ["service", "database", "dicom", "tls", "destinations", "routes", "review"]
        )
        service = self.service(top.table("service"))
        database = self.database(top.table("database"), service.data_dir)
        dicom = self.dicom(top.table("dicom"))
        tls = self.tls(top.table("tls"))
        destinations = self.destinations(top.tables("destinations"), dicom)
        routes = self.routes(top, destinations)
        review = self.review(top.table("review"), destinations)
        self.cross_checks(service, dicom, tls)
        if self.problems:
            raise ConfigError(self.problems, self.source)
        return SiteConfig(
            self.source, service, database, dicom, tls, destinations, routes, tuple(self.warnings), review
        )

    # ---------------------------------------------------------------------------------------------- sections

    def service(self, raw: Mapping[str, Any] | None) -> ServiceConfig:
        keys = [
            "data_dir", "host", "http_port", "workers", "worker_mode", "quiet_period_s", "rerun_on_late",
            "job_timeout_s", "max_attempts", "backoff_s", "backoff_max_s", "min_free_mb", "max_stow_mb", "log_format",
        ]  # fmt: skip
        t = _Table(raw or {}, "service", self.problems, keys)
        data_dir = self.path(t.string("data_dir", str(DEFAULT_DATA_DIR)) or str(DEFAULT_DATA_DIR))
        self.check_data_dir(data_dir)
        host = self.host(t, "host", "127.0.0.1")
        backoff = t.number("backoff_s", 5.0)
        backoff_max = t.number("backoff_max_s", 300.0)
        if backoff_max < backoff:
            t.add("backoff_max_s", f"{backoff_max:g} is less than backoff_s ({backoff:g})")
        return ServiceConfig(
            data_dir=data_dir,
            host=host,
            http_port=t.integer("http_port", DEFAULT_HTTP_PORT, 1, 65535, "a port"),
            workers=t.integer("workers", 1, 1, None, "a worker count"),
            worker_mode=cast(WorkerMode, t.choice("worker_mode", "thread", ["thread", "process"])),
            quiet_period_s=t.number("quiet_period_s", 10.0),
            rerun_on_late=t.boolean("rerun_on_late", False),
            job_timeout_s=t.number("job_timeout_s", 300.0, positive=True),
            max_attempts=t.integer("max_attempts", 5, 1, None, "an attempt count"),
            backoff_s=backoff,
            backoff_max_s=backoff_max,
            min_free_mb=t.integer("min_free_mb", 500, 0, None, "a size in MB"),
            max_stow_mb=t.integer("max_stow_mb", 2048, 1, None, "a size in MB"),
            log_format=cast(LogFormat, t.choice("log_format", "text", ["text", "json"])),
        )

    def check_data_dir(self, data_dir: Path) -> None:
        """The folder must be (or become) a writable folder; nothing is created while checking."""
        where = "service.data_dir"
        if data_dir.exists():
            if not data_dir.is_dir():
                self.problems.append(f"{where}: {data_dir} is a file, not a folder")
            elif not os.access(data_dir, os.W_OK | os.X_OK):
                self.problems.append(f"{where}: {data_dir} is not writable")
            return
        parent = data_dir.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            self.problems.append(f"{where}: {data_dir} cannot be created ({parent} is not a writable folder)")

    def host(self, t: _Table, key: str, default: str) -> str:
        value = t.string(key, default)
        if not isinstance(value, str):
            return default
        problem = _host_problem(value)
        if problem:
            t.add(key, problem)
            return default
        return value

    def required_host(self, t: _Table) -> str | None:
        value = t.string("host")
        if isinstance(value, str):
            problem = _host_problem(value)
            if problem:
                t.add("host", problem)
                return None
        return cast("str | None", value)

    def database(self, raw: Mapping[str, Any] | None, data_dir: Path) -> DatabaseConfig:
        t = _Table(raw or {}, "database", self.problems, ["url", "password_env"])
        url = t.string("url", None)
        password_env = self.env_name(t, "password_env")
        if url is None:
            if password_env is not None:
                t.add("password_env", "only used with a PostgreSQL url")
            return DatabaseConfig(f"sqlite:///{data_dir / 'medsight.db'}", "sqlite")
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            t.add("url", "not a database URL (e.g. postgresql+psycopg://user@host/medsight)")
            return DatabaseConfig(f"sqlite:///{data_dir / 'medsight.db'}", "sqlite")
        if parsed.drivername == "postgresql+psycopg":
            if parsed.password:
                self.warnings.append("database.url holds a password; name an environment variable in password_env")
            return DatabaseConfig(url, "postgresql", password_env)
        if parsed.drivername.startswith("postgresql"):
            t.add("url", f'driver "{parsed.drivername}" is not installed; use postgresql+psycopg://...')
        elif parsed.drivername == "sqlite" and parsed.database:
            return DatabaseConfig(f"sqlite:///{self.path(parsed.database)}", "sqlite")
        else:
            t.add("url", f'"{parsed.drivername}" databases are not supported (postgresql+psycopg:// or sqlite:///)')
        return DatabaseConfig(f"sqlite:///{data_dir / 'medsight.db'}", "sqlite")

    def env_name(self, t: _Table, key: str) -> str | None:
        name = t.string(key, None)
        if name is None:
            return None
        if not _ENV_NAME.fullmatch(name):
            t.add(key, f'"{name}" is not an environment variable name (it names the variable, not the secret)')
            return None
        if name not in os.environ:
            t.add(key, f"environment variable {name} is not set")
        return str(name)

    def ae_title(self, t: _Table, key: str, default: Any = _MISSING) -> Any:
        value = t.string(key, default)
        if isinstance(value, str) and key in t.raw:
            problem = ae_title_problem(value)
            if problem:
                t.add(key, problem)
                return default if default is not _MISSING else None
            return value.strip()
        return value

    def dicom(self, raw: Mapping[str, Any] | None) -> DicomConfig:
        t = _Table(raw or {}, "dicom", self.problems, ["ae_title", "host", "port", "allow_any", "allowed"])
        host = self.host(t, "host", "127.0.0.1")
        allow_any = t.boolean("allow_any", False)
        allowed = []
        entries = t.tables("allowed")
        for i, entry in enumerate(entries):
            a = _Table(entry, f"dicom.allowed[{i}]", self.problems, ["ae_title", "host"])
            ae = self.ae_title(a, "ae_title")
            peer_host = self.required_host(a) if a.has("host") else None
            addresses: tuple[str, ...] = ()
            if peer_host:
                try:
                    addresses = tuple(sorted({str(info[4][0]) for info in socket.getaddrinfo(peer_host, None)}))
                except OSError:
                    a.add("host", f'cannot resolve "{peer_host}"')
            if ae:
                allowed.append(AllowedPeer(ae, peer_host, addresses))
        if allow_any and not is_loopback(host):
            t.add(
                "allow_any",
                f"only allowed when dicom.host is a loopback address ({host} is not); list the peers in "
                "[[dicom.allowed]]",
            )
        if not allow_any and not entries:
            t.add(
                "allowed", "no peer may send: list peers in [[dicom.allowed]] or set allow_any = true (loopback only)"
            )
        return DicomConfig(
            ae_title=self.ae_title(t, "ae_title", DEFAULT_AE_TITLE),
            host=host,
            port=t.integer("port", DEFAULT_DICOM_PORT, 1, 65535, "a port"),
            allow_any=allow_any,
            allowed=tuple(allowed),
        )

    def tls(self, raw: Mapping[str, Any] | None) -> TlsConfig | None:
        t = _Table(raw or {}, "tls", self.problems, ["certificate", "key"])
        if raw is None or not raw:
            return None
        files: dict[str, Path] = {}
        for key in ("certificate", "key"):
            value = t.string(key, None)
            if value is None:
                if key not in t.raw:
                    other = "key" if key == "certificate" else "certificate"
                    t.add(key, f"missing: give both certificate and key ({other} is given)")
                continue
            p = self.path(value)
            if not p.is_file():
                t.add(key, f"{p} does not exist")
            elif not os.access(p, os.R_OK):
                t.add(key, f"{p} is not readable")
            else:
                files[key] = p
        if len(files) != 2:
            return None
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(files["certificate"], files["key"])
        except (ssl.SSLError, OSError) as exc:
            self.problems.append(f"tls: the certificate and key do not load together ({exc.__class__.__name__}: {exc})")
            return None
        return TlsConfig(files["certificate"], files["key"])

    def destinations(self, entries: list[Mapping[str, Any]], dicom: DicomConfig) -> tuple[Destination, ...]:
        per_kind = {
            "dicom": ["ae_title", "host", "port", "calling_ae"],
            "dicomweb": ["url", "token_env"],
            "fhir": ["url", "token_env"],
            "hl7": ["host", "port", "application", "facility"],
        }
        out: list[Destination] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"destinations[{i}]"
            kind = entry.get("kind")
            if not isinstance(kind, str) or kind not in per_kind:
                options = ", ".join(f'"{k}"' for k in per_kind)
                if "kind" not in entry:
                    self.problems.append(f"{where}.kind: missing (required: one of {options})")
                else:
                    self.problems.append(
                        f"{where}.kind: {kind!r} is not one of {options}"
                        + (_suggest(kind, list(per_kind), quoted=True) if isinstance(kind, str) else "")
                    )
                continue
            if "token" in entry:
                self.problems.append(
                    f"{where}.token: tokens are never written in the file; put the token in an environment "
                    "variable and name that variable in token_env"
                )
                entry = {k: v for k, v in entry.items() if k != "token"}
            keys = ["name", "kind", *per_kind[kind]]
            t = _Table(
                {k: v for k, v in entry.items() if k in keys or k not in _ALL_DESTINATION_KEYS},
                where,
                self.problems,
                keys,
            )
            for key in entry:
                if key in _ALL_DESTINATION_KEYS and key not in keys:
                    t.add(key, f'not a key of a "{kind}" destination (it takes {", ".join(per_kind[kind])})')
            name = t.string("name")
            if isinstance(name, str):
                if name in seen:
                    t.add("name", f'"{name}" is used by another destination')
                seen.add(name)
            values: dict[str, Any] = {}
            if kind == "dicom":
                values["ae_title"] = self.ae_title(t, "ae_title")
                values["host"] = self.required_host(t)
                values["port"] = t.integer("port", _MISSING, 1, 65535, "a port")
                values["calling_ae"] = self.ae_title(t, "calling_ae", dicom.ae_title)
            elif kind == "hl7":
                values["host"] = self.required_host(t)
                values["port"] = t.integer("port", _MISSING, 1, 65535, "a port")
                values["application"] = t.string("application", "MEDSIGHT")
                values["facility"] = t.string("facility", "")
            else:
                url = t.string("url")
                if isinstance(url, str):
                    problem = _url_problem(url)
                    if problem:
                        t.add("url", problem)
                    elif url.startswith("http://") and not is_loopback(_url_host(url)):
                        self.warnings.append(f"{where}.url: results and tokens travel unencrypted to {url}")
                values["url"] = url
                values["token_env"] = self.env_name(t, "token_env")
            if isinstance(name, str):
                out.append(Destination(name=name, kind=cast(DestinationKind, kind), **values))
        return tuple(out)

    def routes(self, top: _Table, destinations: tuple[Destination, ...]) -> tuple[Route, ...]:
        from medsight.training.bundle import load_bundle

        entries = top.tables("routes")
        if not entries and "routes" not in top.raw:
            top.add("routes", "no [[routes]]: the service would receive studies and never run a model")
        by_name = {d.name: d for d in destinations}
        loaded: dict[Path, Any] = {}
        out: list[Route] = []
        seen: set[str] = set()
        keys = ["name", "bundle", "match", "send_to", "outputs", "apply_per"]
        for i, entry in enumerate(entries):
            t = _Table(entry, f"routes[{i}]", self.problems, keys)
            name = t.string("name")
            if isinstance(name, str):
                if name in seen:
                    t.add("name", f'"{name}" is used by another route')
                seen.add(name)
            meta = None
            bundle_value = t.string("bundle")
            bundle_path = self.path(bundle_value) if isinstance(bundle_value, str) else None
            if bundle_path is not None:
                if not (bundle_path / "bundle.json").is_file():
                    hint = "; run 'make demo' to make it, or give --config" if self.source is None else ""
                    t.add("bundle", f"{bundle_path} is not a bundle (no bundle.json){hint}")
                else:
                    try:
                        if bundle_path not in loaded:
                            loaded[bundle_path] = load_bundle(bundle_path)
                        meta = loaded[bundle_path].meta
                    except MedsightError as exc:
                        t.add("bundle", str(exc))
            match = self.match(t)
            send_to = t.strings("send_to")
            for dest in send_to:
                if dest not in by_name:
                    hint = _suggest(dest, list(by_name), quoted=True)
                    t.add("send_to", f'destination "{dest}" is not defined in [[destinations]]{hint}')
            apply_per = cast(ApplyPer, t.choice("apply_per", "auto", ["auto", "instance", "series"]))
            outputs = t.strings("outputs")
            for o in outputs:
                if o not in OUTPUTS:
                    t.add(
                        "outputs", f'"{o}" is not an output (sr, seg, sc, fhir, hl7){_suggest(o, OUTPUTS, quoted=True)}'
                    )
            if meta is None or not isinstance(name, str) or bundle_path is None:
                continue
            task = str(meta["task"])
            dims, channels = int(meta["input"]["spatial_dims"]), int(meta["input"]["n_channels"])
            if outputs:
                for o in outputs:
                    if o in OUTPUTS and o not in TASK_OUTPUTS[task]:
                        why = "masks" if o == "seg" else "heatmaps" if o == "sc" else o
                        t.add("outputs", f'a {task} bundle makes no {why}, so "{o}" cannot be an output')
            else:
                kinds = {by_name[d].kind for d in send_to if d in by_name}
                outputs = TASK_DEFAULT_OUTPUTS[task] + tuple(k for k in ("fhir", "hl7") if k in kinds)
            for dest in send_to:
                if dest in by_name and not (set(outputs) & by_name[dest].takes):
                    takes = ", ".join(sorted(by_name[dest].takes))
                    t.add("send_to", f'destination "{dest}" takes {takes}, which outputs does not include')
            for o in outputs:
                if o in ("fhir", "hl7") and not any(by_name[d].kind == o for d in send_to if d in by_name):
                    self.warnings.append(f'routes[{i}].outputs: "{o}" is made but no destination in send_to takes it')
            if dims == 2 and apply_per == "series":
                t.add("apply_per", '"series" needs a 3D model; this bundle takes 2D images (use "instance" or "auto")')
            if dims == 3 and apply_per == "instance":
                t.add("apply_per", '"instance" needs a 2D model; this bundle takes 3D volumes (use "series" or "auto")')
            if dims == 3 and channels > 1:
                t.add(
                    "bundle",
                    f"the model takes {channels}-channel volumes (several series at once), which the service cannot "
                    "assemble from one series",
                )
            out.append(
                Route(
                    name=name,
                    bundle=bundle_path,
                    task=task,
                    task_type=str(meta.get("task_type", "")),
                    spatial_dims=dims,
                    n_channels=channels,
                    label_names=tuple(str(n) for n in meta["label_names"]),
                    match=match,
                    send_to=send_to,
                    outputs=tuple(outputs),
                    apply_per=apply_per,
                )
            )
        return tuple(out)

    def review(self, raw: Mapping[str, Any] | None, destinations: tuple[Destination, ...]) -> ReviewConfig:
        """[review] send_to: destinations that take DICOM objects (the reader's SR and SEG)."""
        t = _Table(raw or {}, "review", self.problems, ["send_to"])
        by_name = {d.name: d for d in destinations}
        send_to = t.strings("send_to")
        for dest in send_to:
            if dest not in by_name:
                hint = _suggest(dest, list(by_name), quoted=True)
                t.add("send_to", f'destination "{dest}" is not defined in [[destinations]]{hint}')
            elif "sr" not in by_name[dest].takes:
                kind = by_name[dest].kind
                t.add("send_to", f'destination "{dest}" is {kind}; the reader\'s SR and SEG need a DICOM one')
        return ReviewConfig(send_to=tuple(dict.fromkeys(send_to)))

    def match(self, route: _Table) -> Match:
        raw = route.table("match")
        keys = ["modality", "sop_class", "body_part", "series_description", "calling_ae"]
        t = _Table(raw or {}, route.at("match"), self.problems, keys)
        sop: list[str] = []
        for value in t.strings("sop_class"):
            uid, problem = resolve_sop_class(value)
            if problem:
                t.add("sop_class", problem)
            elif uid is not None:
                sop.append(uid)
        pattern = None
        text = t.string("series_description", None)
        if isinstance(text, str):
            try:
                pattern = re.compile(text, re.IGNORECASE)
            except re.error as exc:
                t.add("series_description", f"/{text}/ is not a regular expression ({exc})")
        calling = t.strings("calling_ae")
        for ae in calling:
            problem = ae_title_problem(ae)
            if problem:
                t.add("calling_ae", problem)
        return Match(
            modality=tuple(m.upper() for m in t.strings("modality")),
            sop_class=tuple(sop),
            body_part=tuple(b.upper() for b in t.strings("body_part")),
            series_description=pattern,
            calling_ae=tuple(a.upper() for a in calling),
        )

    def cross_checks(self, service: ServiceConfig, dicom: DicomConfig, tls: TlsConfig | None) -> None:
        if service.http_port == dicom.port and _same_interface(service.host, dicom.host):
            self.problems.append(
                f"dicom.port: {dicom.port} is also service.http_port; the two listeners need two ports"
            )
        if not is_loopback(service.host) and tls is None:
            self.warnings.append(
                f"HTTP listens on {service.host} without TLS: bearer tokens travel in clear (configure [tls])"
            )


def _same_interface(a: str, b: str) -> bool:
    wildcard = {"0.0.0.0", "::"}
    return a == b or a in wildcard or b in wildcard or (is_loopback(a) and is_loopback(b))


_ALL_DESTINATION_KEYS = frozenset(
    {"ae_title", "host", "port", "calling_ae", "url", "token_env", "application", "facility"}
)
