"""Release states of patients in the index: read, set and log (who, when, which rule)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from archive.auth import STATES
from archive.index.schema import patients, release_log


class ReleaseError(ValueError):
    """A state change that is not allowed (the message says why)."""


@dataclass(frozen=True)
class Change:
    patient_id: str
    issuer: str
    previous: str
    state: str


def set_state(conn: Connection, patient_id: str, state: str, actor: str, rule: str = "manual",
              reason: str = "", issuer: str | None = None, only_from: str | None = None) -> list[Change]:
    """Set the release state of the patient(s) with ``patient_id`` (of ``issuer``, or any issuer
    when None) and log each change. ``only_from``: change only the rows now in that state (the
    assignment rule places pending patients, never another issuer's patient of the same
    PatientID that is already open or sequestered). Raises ReleaseError for an unknown state or
    patient."""
    if state not in STATES:
        raise ReleaseError(f"state must be one of {', '.join(STATES)}")
    # No stored value holds NUL (PostgreSQL text cannot): such an id names no patient.
    patient_id, reason = patient_id.replace("\x00", ""), reason.replace("\x00", "")
    stmt = select(patients.c.pk, patients.c.patient_id, patients.c.issuer_of_patient_id,
                  patients.c.release_state).where(patients.c.patient_id == patient_id)
    if issuer is not None:
        stmt = stmt.where(patients.c.issuer_of_patient_id == issuer)
    rows = conn.execute(stmt).all()
    if not rows:
        raise ReleaseError(f"no patient {patient_id!r} is stored")
    changes: list[Change] = []
    for row in rows:
        if row.release_state == state or (only_from is not None and row.release_state != only_from):
            continue
        conn.execute(update(patients).where(patients.c.pk == row.pk).values(release_state=state))
        conn.execute(insert(release_log).values(
            patient_id=row.patient_id, issuer_of_patient_id=row.issuer_of_patient_id,
            previous_state=row.release_state, state=state, actor=actor, rule=rule, reason=reason[:500]))
        changes.append(Change(row.patient_id, row.issuer_of_patient_id, row.release_state, state))
    return changes
