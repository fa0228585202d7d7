"""The site configuration of `medsight serve`: every mistake reported at once with its key path, paths resolved
against the file's folder, the default configuration, and the shipped example."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from medsight.errors import MedsightError
from medsight.serving.config import DEMO_BUNDLE, ConfigError, SiteConfig, load_config
from medsight.training.bundle import FORMAT, load_bundle, now_iso, write_bundle_json

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site.toml"


def make_bundle(folder: Path, task: str = "classification", dims: int = 2, channels: int = 1) -> Path:
    """A minimal bundle that load_bundle accepts: a bundle.json checked against the schema, and a weights file."""
    folder.mkdir(parents=True, exist_ok=True)
    size = [28] * dims
    meta: dict[str, Any] = {
        "format": FORMAT,
        "task": task,
        "task_type": "binary" if task == "classification" else "semantic",
        "label_names": ["normal", "pneumonia"] if task == "classification" else ["background", "organ"],
        "input": {
            "spatial_dims": dims,
            "n_channels": channels,
            "spatial_size": size,
            "patch_size": size,
            "spacing": [1.0] * dims,
            "layout": "N,C," + ",".join("DHW"[3 - dims :]),
            "dtype": "float32",
        },
        "network": {"name": "monai.networks.nets.DenseNet121", "kwargs": {}},
        "data": {"source": "test"},
        "training": {"seed": 0, "epochs_run": 1, "stopped_by": "epochs", "seconds": 1.0},
        "metrics": {"val": {}},
        "versions": {"medsight": "test", "torch": "test"},
        "created": now_iso(),
        "onnx": {},
        "calibration": {"temperature": 1.0},
        "operating_point": {"threshold": 0.5},
        "plan": {},
        "postprocessing": {},
    }
    write_bundle_json(folder, meta)
    (folder / "model.pt").write_bytes(b"")
    load_bundle(folder)  # what the config loader calls
    return folder


def write(tmp_path: Path, text: str, name: str = "site.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path.resolve()) in str(info.value)
    return info.value.problems


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site folder with a 2D classification bundle and a 3D segmentation bundle."""
    make_bundle(tmp_path / "bundles" / "cxr")
    make_bundle(tmp_path / "bundles" / "ct", task="segmentation", dims=3)
    return tmp_path


MINIMAL = """
[dicom]
allow_any = true
[[routes]]
name = "cxr"
bundle = "bundles/cxr"
"""


def test_minimal_file_gets_the_defaults_and_relative_paths(site: Path) -> None:
    config = load_config(write(site, MINIMAL))
    assert config.source == (site / "site.toml").resolve()
    s = config.service
    assert (s.host, s.http_port, s.workers, s.worker_mode, s.quiet_period_s) == ("127.0.0.1", 8080, 1, "thread", 10.0)
    assert (s.rerun_on_late, s.job_timeout_s, s.max_attempts, s.log_format) == (False, 300.0, 5, "text")
    assert s.data_dir == site.resolve() / "medsight_service"
    assert not s.data_dir.exists()  # checking creates nothing
    assert config.database.kind == "sqlite"
    assert config.database.url == f"sqlite:///{site.resolve() / 'medsight_service' / 'medsight.db'}"
    assert (config.dicom.ae_title, config.dicom.host, config.dicom.port) == ("MEDSIGHT", "127.0.0.1", 11112)
    route = config.routes[0]
    assert route.bundle == (site / "bundles" / "cxr").resolve()
    assert (route.task, route.spatial_dims, route.label_names) == ("classification", 2, ("normal", "pneumonia"))
    assert route.outputs == ("sr", "sc") and route.send_to == () and route.apply_per == "auto"
    assert config.tls is None and config.destinations == ()


def test_paths_resolve_against_the_config_folder_not_the_working_directory(
    site: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    (site / "conf").mkdir()
    path = write(
        site / "conf",
        '[service]\ndata_dir = "../data"\n[database]\nurl = "sqlite:///queue/jobs.db"\n'
        '[dicom]\nallow_any = true\n[[routes]]\nname = "cxr"\nbundle = "../bundles/cxr"\n',
    )
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    config = load_config(Path(os.path.relpath(path)))
    assert config.service.data_dir == site.resolve() / "data"
    assert config.routes[0].bundle == (site / "bundles" / "cxr").resolve()
    assert config.database.url == f"sqlite:///{(site / 'conf' / 'queue' / 'jobs.db').resolve()}"


def test_every_mistake_is_reported_at_once_with_its_key_path(site: Path) -> None:
    (site / "afile").write_text("x")
    path = write(
        site,
        """
[service]
data_dir = "afile"
http_port = "8080"
workers = 0
worker_mode = "threads"
quiet_period_s = -1
job_timeout_s = 0
rerun_on_late = "yes"
backoff_s = 10
backoff_max_s = 5
log_format = "xml"
quiet_periode_s = 3

[dicom]
ae_title = "A_VERY_LONG_AE_TITLE"
host = "0.0.0.0"
port = 70000
allow_any = true

[[dicom.allowed]]
ae_title = "BAD\\\\AE"

[tls]
certificate = "missing.crt"

[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
url = "http://x"

[[destinations]]
name = "pacs"
kind = "dicomweb"
url = "ftp://pacs/dicom-web"
token = "s3cret"
token_env = "NOT_SET_ANYWHERE_12345"

[[destinations]]
name = "ehr"
kind = "fihr"

[[routes]]
name = "cxr"
bundle = "bundles/cxr"
send_to = ["pacs", "archive"]
outputs = ["sr", "seg", "pdf"]
apply_per = "series"
[routes.match]
modality = ["CR", 3]
sop_class = ["CTImageStorag", "1.2.840.10008.1.1", "1.2.3.4"]
series_description = "chest("
calling_ae = ["TOO_LONG_CALLING_AE"]
bodypart = ["CHEST"]

[[routes]]
name = "cxr"
bundle = "bundles/nothing_here"

[[route]]
name = "typo"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert isinstance(err, MedsightError)
    root = site.resolve()
    expected = [
        "route: unknown key (did you mean 'routes'?)",
        "service.quiet_periode_s: unknown key (did you mean 'quiet_period_s'?)",
        f"service.data_dir: {root / 'afile'} is a file, not a folder",
        "service.backoff_max_s: 5 is less than backoff_s (10)",
        "service.http_port: must be an integer, not a string ('8080')",
        "service.workers: 0 is not a worker count (>= 1)",
        'service.worker_mode: "threads" is not one of "thread" or "process" (did you mean "thread"?)',
        "service.quiet_period_s: -1 must be 0 or more",
        "service.rerun_on_late: must be true or false, not a string ('yes')",
        "service.job_timeout_s: 0 must be greater than 0",
        'service.log_format: "xml" is not one of "text" or "json"',
        'dicom.allowed[0].ae_title: "BAD\\AE" holds a character an AE title may not (backslash, control codes or '
        "non-ASCII)",
        "dicom.allow_any: only allowed when dicom.host is a loopback address (0.0.0.0 is not); list the peers in "
        "[[dicom.allowed]]",
        'dicom.ae_title: "A_VERY_LONG_AE_TITLE" is longer than 16 characters (20)',
        "dicom.port: 70000 is not a port (1-65535)",
        f"tls.certificate: {root / 'missing.crt'} does not exist",
        "tls.key: missing: give both certificate and key (certificate is given)",
        'destinations[0].url: not a key of a "dicom" destination (it takes ae_title, host, port, calling_ae)',
        "destinations[1].token: tokens are never written in the file; put the token in an environment variable and "
        "name that variable in token_env",
        'destinations[1].name: "pacs" is used by another destination',
        'destinations[1].url: "ftp://pacs/dicom-web" is not an http:// or https:// URL',
        "destinations[1].token_env: environment variable NOT_SET_ANYWHERE_12345 is not set",
        'destinations[2].kind: \'fihr\' is not one of "dicom", "dicomweb", "fhir", "hl7" (did you mean "fhir"?)',
        "routes[0].match.bodypart: unknown key (did you mean 'body_part'?)",
        'routes[0].match.sop_class: "CTImageStorag" is not a storage SOP class keyword or UID (did you mean '
        '"CTImageStorage"?)',
        "routes[0].match.sop_class: 1.2.840.10008.1.1 (Verification SOP Class) is not a storage SOP class",
        "routes[0].match.sop_class: 1.2.3.4 is not a storage SOP class UID pydicom knows",
        "routes[0].match.series_description: /chest(/ is not a regular expression (missing ), unterminated "
        "subpattern at position 5)",
        'routes[0].match.calling_ae: "TOO_LONG_CALLING_AE" is longer than 16 characters (19)',
        "routes[0].match.modality: must be a string or an array of strings, not an array (['CR', 3])",
        'routes[0].send_to: destination "archive" is not defined in [[destinations]]',
        'routes[0].outputs: "pdf" is not an output (sr, seg, sc, fhir, hl7)',
        'routes[0].outputs: a classification bundle makes no masks, so "seg" cannot be an output',
        'routes[0].apply_per: "series" needs a 3D model; this bundle takes 2D images (use "instance" or "auto")',
        'routes[1].name: "cxr" is used by another route',
        f"routes[1].bundle: {root / 'bundles' / 'nothing_here'} is not a bundle (no bundle.json)",
    ]
    assert sorted(err.problems) == sorted(expected)
    # one error, one line per problem, under the file's name
    text = str(err)
    assert text.startswith(f"{path.resolve()}: {len(expected)} problems in the site configuration:\n")
    assert all(f"\n  {p}" in text for p in expected)
    assert "s3cret" not in text


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '[service]\nhost = "127.0.0.1"\nworkers = = 2\n')
    with pytest.raises(MedsightError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: TOML syntax error at line 3, column 11: Invalid value"
    with pytest.raises(MedsightError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


def test_missing_required_keys_and_wrong_section_types(site: Path) -> None:
    path = write(
        site,
        'service = "fast"\ndestinations = { name = "x" }\n[dicom]\n[[dicom.allowed]]\nhost = "no host!"\n'
        '[[routes]]\nsend_to = "pacs"\n[routes.match]\nmodality = ""\n',
    )
    assert sorted(problems(path)) == sorted(
        [
            "service: must be a table ([service] or { ... }), not a string",
            "destinations: must be an array of tables ([[destinations]]), not a table",
            "dicom.allowed[0].ae_title: missing (required)",
            'dicom.allowed[0].host: "no host!" is not an IP address or host name',
            "routes[0].name: missing (required)",
            "routes[0].bundle: missing (required)",
            'routes[0].send_to: destination "pacs" is not defined in [[destinations]]',
            "routes[0].match.modality: holds an empty string",
        ]
    )
    path = write(
        site,
        '[dicom]\nallow_any = true\n[[destinations]]\nkind = "dicom"\n'
        '[[destinations]]\nname = "h"\nkind = "hl7"\nport = 0\n[[routes]]\nname = "r"\nbundle = "bundles/cxr"\n',
    )
    assert sorted(problems(path)) == sorted(
        [
            "destinations[0].name: missing (required)",
            "destinations[0].ae_title: missing (required)",
            "destinations[0].host: missing (required)",
            "destinations[0].port: missing (required)",
            "destinations[1].host: missing (required)",
            "destinations[1].port: 0 is not a port (1-65535)",
        ]
    )


def test_no_peer_allowed_no_routes_and_clashing_ports(site: Path) -> None:
    path = write(site, "[service]\nhttp_port = 11112\n")
    assert sorted(problems(path)) == sorted(
        [
            "dicom.allowed: no peer may send: list peers in [[dicom.allowed]] or set allow_any = true (loopback only)",
            "routes: no [[routes]]: the service would receive studies and never run a model",
            "dicom.port: 11112 is also service.http_port; the two listeners need two ports",
        ]
    )


def test_route_outputs_must_reach_their_destinations(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_bundle(site / "bundles" / "mr4", task="segmentation", dims=3, channels=4)
    monkeypatch.setenv("EHR_TOKEN", "t")
    path = write(
        site,
        """
[dicom]
allow_any = true
[[destinations]]
name = "ehr"
kind = "fhir"
url = "https://fhir.example.org/r4"
token_env = "EHR_TOKEN"
[[destinations]]
name = "ris"
kind = "hl7"
host = "localhost"
port = 2575
[[routes]]
name = "cxr"
bundle = "bundles/cxr"
send_to = ["ehr"]
outputs = ["sr"]
[[routes]]
name = "ct"
bundle = "bundles/ct"
apply_per = "instance"
outputs = ["sc"]
[[routes]]
name = "brain"
bundle = "bundles/mr4"
""",
    )
    assert sorted(problems(path)) == sorted(
        [
            'routes[0].send_to: destination "ehr" takes fhir, which outputs does not include',
            'routes[1].outputs: a segmentation bundle makes no heatmaps, so "sc" cannot be an output',
            'routes[1].apply_per: "instance" needs a 2D model; this bundle takes 3D volumes (use "series" or "auto")',
            "routes[2].bundle: the model takes 4-channel volumes (several series at once), which the service cannot "
            "assemble from one series",
        ]
    )
    # without explicit outputs, the task's DICOM objects plus what the destinations take
    path = write(
        site,
        '[dicom]\nallow_any = true\n[[destinations]]\nname = "ehr"\nkind = "fhir"\nurl = "https://fhir.example.org/r4"\n'
        '[[destinations]]\nname = "ris"\nkind = "hl7"\nhost = "localhost"\nport = 2575\n'
        '[[routes]]\nname = "cxr"\nbundle = "bundles/cxr"\nsend_to = ["ehr", "ris"]\n'
        '[[routes]]\nname = "ct"\nbundle = "bundles/ct"\noutputs = ["seg", "fhir"]\n',
    )
    config = load_config(path)
    assert config.route("cxr").outputs == ("sr", "sc", "fhir", "hl7")
    assert config.route("ct").outputs == ("seg", "fhir")
    assert config.warnings == ('routes[1].outputs: "fhir" is made but no destination in send_to takes it',)


def test_a_broken_bundle_is_reported_with_the_loader_reason(site: Path) -> None:
    broken = site / "bundles" / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text('{"format": "medsight-bundle/1"}')
    path = write(site, '[dicom]\nallow_any = true\n[[routes]]\nname = "old"\nbundle = "bundles/broken"\n')
    assert problems(path) == [
        f"routes[0].bundle: {broken.resolve() / 'bundle.json'}: bundle format 1 is from an older medsight (this one "
        "reads format 2); retrain it with 'medsight train'"
    ]


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_files_are_checked_and_must_belong_together(site: Path) -> None:
    (site / "tls").mkdir()
    cert, key = _self_signed(site / "tls", "a")
    _, other_key = _self_signed(site / "tls", "b")
    base = '[service]\nhost = "0.0.0.0"\n[dicom]\nallow_any = true\n[[routes]]\nname = "r"\nbundle = "bundles/cxr"\n'
    config = load_config(write(site, base + '[tls]\ncertificate = "tls/a.crt"\nkey = "tls/a.key"\n'))
    assert config.tls is not None and config.tls.certificate == cert.resolve() and config.tls.key == key.resolve()
    assert config.warnings == ()
    assert "https://0.0.0.0:8080" in config.describe()
    mismatched = problems(write(site, base + '[tls]\ncertificate = "tls/a.crt"\nkey = "tls/b.key"\n'))
    assert len(mismatched) == 1 and mismatched[0].startswith("tls: the certificate and key do not load together (")
    assert other_key.exists()
    assert problems(write(site, base + '[tls]\nkey = "tls/a.key"\n')) == [
        "tls.certificate: missing: give both certificate and key (key is given)"
    ]
    if os.geteuid() != 0:  # root reads any file
        key.chmod(0)
        assert problems(write(site, base + '[tls]\ncertificate = "tls/a.crt"\nkey = "tls/a.key"\n')) == [
            f"tls.key: {key.resolve()} is not readable"
        ]
    # without TLS, a network-facing HTTP listener is started but warned about
    config = load_config(write(site, base))
    assert config.warnings == ("HTTP listens on 0.0.0.0 without TLS: bearer tokens travel in clear (configure [tls])",)


def test_database_urls(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = '[dicom]\nallow_any = true\n[[routes]]\nname = "r"\nbundle = "bundles/cxr"\n'
    monkeypatch.setenv("DB_PASSWORD", "pw-from-env")
    config = load_config(
        write(
            site, base + '[database]\nurl = "postgresql+psycopg://medsight@db:5432/ms"\npassword_env = "DB_PASSWORD"\n'
        )
    )
    assert config.database.kind == "postgresql"
    assert config.database.sqlalchemy_url() == "postgresql+psycopg://medsight:pw-from-env@db:5432/ms"
    assert "pw-from-env" not in config.describe()
    config = load_config(write(site, base + '[database]\nurl = "postgresql+psycopg://medsight:inline@db/ms"\n'))
    assert "inline" not in config.describe() and "***" in config.describe()
    assert config.warnings == ("database.url holds a password; name an environment variable in password_env",)
    got = problems(write(site, base + '[database]\nurl = "postgresql://db/ms"\npassword_env = "NOPE_NOT_SET"\n'))
    assert sorted(got) == sorted(
        [
            'database.url: driver "postgresql" is not installed; use postgresql+psycopg://...',
            "database.password_env: environment variable NOPE_NOT_SET is not set",
        ]
    )
    assert problems(write(site, base + '[database]\nurl = "mysql://db/ms"\n')) == [
        'database.url: "mysql" databases are not supported (postgresql+psycopg:// or sqlite:///)'
    ]


def test_allow_list(site: Path) -> None:
    path = write(
        site,
        '[[dicom.allowed]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\n[[dicom.allowed]]\nae_title = "STORESCU"\n'
        '[[routes]]\nname = "r"\nbundle = "bundles/cxr"\n',
    )
    dicom = load_config(path).dicom
    assert dicom.allows("ORTHANC", "127.0.0.1") and dicom.allows("ORTHANC  ", "127.0.0.1")
    assert not dicom.allows("ORTHANC", "10.1.2.3")
    assert dicom.allows("STORESCU", "10.1.2.3")
    assert not dicom.allows("orthanc", "127.0.0.1") and not dicom.allows("OTHER", "127.0.0.1")


def test_default_configuration_is_the_demo_bundle_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None)
    assert info.value.problems == [
        f"routes[0].bundle: {tmp_path.resolve() / DEMO_BUNDLE} is not a bundle (no bundle.json); run 'make demo' "
        "to make it, or give --config"
    ]
    assert str(info.value).startswith("the default configuration: 1 problem in the site configuration:")
    make_bundle(tmp_path / DEMO_BUNDLE)
    config = load_config(None)
    assert config.source is None
    assert config.service.data_dir == tmp_path.resolve() / "medsight_service"
    assert config.service.host == "127.0.0.1" and config.dicom.host == "127.0.0.1"
    assert (config.service.http_port, config.dicom.port) == (8080, 11112)  # not Orthanc's 8042 / 4242
    assert config.dicom.ae_title == "MEDSIGHT" and config.dicom.allow_any
    assert config.service.quiet_period_s == 10.0 and config.database.kind == "sqlite"
    assert [(r.name, r.bundle, r.match.modality) for r in config.routes] == [
        ("demo", (tmp_path / DEMO_BUNDLE).resolve(), ("CR", "DX"))
    ]
    other = make_bundle(tmp_path / "mine")
    assert load_config(None, bundle=Path("mine")).routes[0].bundle == other.resolve()


def example_site(tmp_path: Path) -> Path:
    """The shipped example, copied beside the bundles it names."""
    shutil.copy(EXAMPLE, tmp_path / "site.toml")
    make_bundle(tmp_path / "bundles" / "pneumonia")
    make_bundle(tmp_path / "bundles" / "lung_ct", task="segmentation", dims=3)
    make_bundle(tmp_path / "bundles" / "brain_mr", task="segmentation", dims=3)
    return tmp_path / "site.toml"


def test_the_shipped_example_validates_and_describes_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSIGHT_PACS_TOKEN", "pacs-secret-token")
    monkeypatch.setenv("MEDSIGHT_FHIR_TOKEN", "fhir-secret-token")
    config = load_config(example_site(tmp_path))
    assert isinstance(config, SiteConfig)
    assert config.warnings == ()  # plain http to a loopback PACS is not warned about
    assert config.service.workers == 2 and config.dicom.allow_any is False
    assert [p.ae_title for p in config.dicom.allowed] == ["ORTHANC", "STORESCU"]
    assert [(d.name, d.kind) for d in config.destinations] == [
        ("pacs", "dicom"), ("pacs-web", "dicomweb"), ("ehr", "fhir"), ("ris", "hl7")
    ]  # fmt: skip
    assert config.destination("pacs-web").token() == "pacs-secret-token"
    assert config.destination("pacs").calling_ae == "MEDSIGHT"
    ct = config.route("ct-lungs")
    assert ct.match.sop_class == ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")
    assert ct.match.series_description is not None and ct.match.series_description.search("THORAX 1mm")
    assert ct.outputs == ("seg", "sr") and ct.task == "segmentation" and ct.spatial_dims == 3
    assert config.route("brain-mr").match.modality == ("MR",)
    text = config.describe()
    for expected in (
        "AE MEDSIGHT on 127.0.0.1:11112; accepts ORTHANC@127.0.0.1, STORESCU",
        "http://127.0.0.1:8080",
        "route chest-xray: modality CR|DX -> ",
        "-> sr, sc, fhir -> pacs, ehr",
        "sop_class CTImageStorage|EnhancedCTImageStorage, series_description /lung|chest|thorax/",
        "destination pacs-web: DICOMweb http://127.0.0.1:8042/dicom-web, token from $MEDSIGHT_PACS_TOKEN",
        "destination ris: HL7 v2 MLLP 127.0.0.1:2575",
    ):
        assert expected in text, expected
    assert "secret-token" not in text
    # the example's tokens are required once named: without them, one line each
    monkeypatch.delenv("MEDSIGHT_FHIR_TOKEN")
    assert problems(tmp_path / "site.toml") == [
        "destinations[2].token_env: environment variable MEDSIGHT_FHIR_TOKEN is not set"
    ]
