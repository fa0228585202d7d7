"""Agreement figures on known verdicts (Wilson CIs from statsmodels), password hashing, `medsight users password`,
the users schema upgrade from version 1, and the [review] section of the site configuration."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest

from medsight.cli import main
from medsight.errors import MedsightError
from medsight.review.agreement import agreement, render_page, wilson
from medsight.review.passwords import hash_password, verify_password
from medsight.review.verdicts import Verdict
from medsight.serving.config import ConfigError, load_config
from medsight.serving.database import open_database
from medsight.serving.security import UserDirectory
from serving.test_service_config import make_bundle

WEEK = 7 * 86400.0
MONDAY = 1_767_571_200.0  # 2026-01-05T00:00Z, a Monday (ISO week 2026-W02)


def _v(n: int, decision: str, ai: bool, reader: bool, when: float, who: str = "r1") -> Verdict:
    return Verdict(
        verdict_id=n,
        study_uid=f"1.{n}",
        finding_id=f"cr-{n}/0",
        model="cr",
        model_version="1",
        bundle_checksum="c",
        label="x",
        probability=0.5,
        ai_positive=ai,
        reader=who,
        role="radiologist",
        decision=decision,
        reader_label="x",
        reader_positive=reader,
        comment="",
        seconds_spent=float(n),
        edit=None,
        source_sop_uids=(),
        reader_sr_sop_uid=None,
        reader_seg_sop_uid=None,
        submitted_at=when,
    )


def test_agreement_counts_sensitivity_specificity_and_weeks() -> None:
    verdicts = [
        _v(1, "agree", True, True, MONDAY),  # TP
        _v(2, "agree", True, True, MONDAY + 3600),  # TP
        _v(3, "disagree", True, False, MONDAY + 7200),  # FP
        _v(4, "agree", False, False, MONDAY + WEEK),  # TN
        _v(5, "disagree", False, True, MONDAY + WEEK),  # FN
        _v(6, "edit", True, True, MONDAY + WEEK + 1),  # TP
    ]
    # A reader's second verdict on finding 3 replaces the first; another model's verdicts are ignored.
    changed = _v(3, "agree", True, True, MONDAY + 2 * WEEK)
    other = Verdict(**{**_v(9, "agree", True, True, MONDAY).__dict__, "model": "ct"})
    found = agreement("cr", [*verdicts, changed, other])
    out = found.to_json()
    assert out["n_verdicts"] == 6 and out["readers"] == 1
    assert out["counts"] == {"agree": 4, "disagree": 1, "edit": 1}
    assert out["confusion"] == {"tp": 4, "fp": 0, "fn": 1, "tn": 1}
    assert out["sensitivity"]["value"] == pytest.approx(0.8) and out["sensitivity"]["n"] == 5
    # Wilson 95% interval for 4/5: 0.3755 to 0.9638 (Newcombe 1998, method 3).
    assert out["sensitivity"]["ci95"] == pytest.approx([0.3755, 0.9638], abs=1e-4)
    assert out["specificity"]["value"] == 1.0 and out["specificity"]["ci95"][1] == 1.0
    assert [w["week"] for w in out["weeks"]] == ["2026-W02", "2026-W03", "2026-W04"]
    assert [w["counts"]["agree"] for w in out["weeks"]] == [2, 1, 1]
    assert out["weeks"][0]["start"] == "2026-01-05"
    assert out["seconds_spent_median"] == 3.5
    page = render_page(found)
    assert page.count("data:image/png;base64,") == 2 and "0.800 (0.376–0.964)" in page
    assert wilson(0, 0) == {"value": None, "ci95": [None, None], "n": 0}


def test_passwords_are_salted_scrypt_and_checked() -> None:
    first, second = hash_password("s3cret-pass"), hash_password("s3cret-pass")
    assert first != second and first.startswith("scrypt$16384$8$1$") and "s3cret" not in first
    assert verify_password(first, "s3cret-pass") and not verify_password(first, "s3cret-Pass")
    assert not verify_password(None, "s3cret-pass") and not verify_password("md5$abc", "s3cret-pass")


def test_users_password_command_and_schema_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    # A users database written before passwords existed (schema version 1, no password column).
    data.mkdir()
    with sqlite3.connect(data / "medsight.db") as db:
        db.executescript(
            """CREATE TABLE medsight_users (name VARCHAR(64) PRIMARY KEY, role VARCHAR(16) NOT NULL,
                   created_at FLOAT NOT NULL);
               CREATE TABLE medsight_security_schema (component VARCHAR(32) PRIMARY KEY, version INTEGER NOT NULL);
               INSERT INTO medsight_security_schema VALUES ('security', 1);
               INSERT INTO medsight_users VALUES ('alice', 'radiologist', 0);"""
        )
    monkeypatch.setattr("sys.stdin", io.StringIO("a long password\n"))
    assert main(["users", "password", "alice", "--password-stdin", "--data-dir", str(data)]) == 0
    users = UserDirectory(open_database(None, data))
    assert users.verify_password("alice", "a long password") == "radiologist"
    assert users.verify_password("alice", "a long passwore") is None
    assert users.verify_password("bob", "a long password") is None
    with sqlite3.connect(data / "medsight.db") as db:
        assert db.execute("SELECT version FROM medsight_security_schema").fetchone() == (2,)
        stored = db.execute("SELECT password_scrypt FROM medsight_users").fetchone()[0]
    assert stored.startswith("scrypt$") and "long" not in stored
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "password", "alice", "--data-dir", str(data)]) == 2
    with pytest.raises(MedsightError, match="no user"):
        users.set_password("bob", "a long password")


def test_review_section_of_the_site_configuration(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")

    def site(review: str) -> Path:
        path = tmp_path / "site.toml"
        path.write_text(
            f"""[service]
data_dir = "{tmp_path / "data"}"
[dicom]
allow_any = true
[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
[[destinations]]
name = "ehr"
kind = "fhir"
url = "http://127.0.0.1:9/fhir"
[[routes]]
name = "cr"
bundle = "{bundle}"
match.modality = ["CR"]
{review}
""",
            encoding="utf-8",
        )
        return path

    assert load_config(site('[review]\nsend_to = ["pacs"]')).review.send_to == ("pacs",)
    assert load_config(site("")).review.send_to == ()
    with pytest.raises(ConfigError) as err:
        load_config(site('[review]\nsend_to = ["pcas", "ehr"]\nsendto = 1'))
    problems = err.value.problems
    assert 'review.send_to: destination "pcas" is not defined in [[destinations]] (did you mean "pacs"?)' in problems
    assert 'review.send_to: destination "ehr" is fhir; the reader\'s SR and SEG need a DICOM one' in problems
    assert any(p.startswith("review.sendto: unknown key") for p in problems)
