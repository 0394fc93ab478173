"""Sequestration against the index: read the patients with what the rule needs (clinical case,
modalities, state), run :mod:`archive.release.sequester`, write and log the decisions."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.engine import Connection

from archive.auth import PENDING
from archive.config import ReleaseConfig
from archive.index.schema import cases, patients, series, studies
from archive.release.sequester import Assignment, PatientRecord, SequesterConfig, assign_new, sequester
from archive.release.states import set_state


def rule_config(cfg: ReleaseConfig) -> SequesterConfig:
    return SequesterConfig(fraction=cfg.fraction, strata=tuple(cfg.strata), min_stratum=cfg.min_stratum)


def load_patients(conn: Connection) -> list[PatientRecord]:
    """Every stored patient, with its case's values (linked by PatientID = submitter_id) and the
    modalities of its series; the state is None while pending (unassigned)."""
    mods: dict[int, set[str]] = defaultdict(set)
    for pk, modality in conn.execute(
            select(studies.c.patient_pk, series.c.modality).distinct()
            .select_from(series.join(studies, series.c.study_pk == studies.c.pk))
            .where(series.c.modality.is_not(None))):
        mods[pk].add(modality)
    rows = conn.execute(
        select(patients.c.pk, patients.c.patient_id, patients.c.release_state, cases.c.site,
               cases.c.covid19_positive, cases.c.age_at_index, cases.c.age_at_index_gt89, cases.c.race,
               cases.c.sex, cases.c.ethnicity)
        .select_from(patients.outerjoin(cases, cases.c.submitter_id == patients.c.patient_id))
        .order_by(patients.c.pk))
    return [PatientRecord(r.patient_id, r.site or "", frozenset(mods.get(r.pk, ())), r.covid19_positive,
                          r.age_at_index, r.age_at_index_gt89 == "Yes", r.race, r.sex, r.ethnicity,
                          None if r.release_state == PENDING else r.release_state)
            for r in rows]


def run_sequester(conn: Connection, cfg: ReleaseConfig, seed: int, actor: str,
                  dry_run: bool = False) -> tuple[Assignment, list[PatientRecord]]:
    """Assign every pending patient (``imaging-archive sequester``); returns the assignment and
    the patients as read (for the balance report)."""
    people = load_patients(conn)
    assignment = sequester(people, rule_config(cfg), seed)
    if not dry_run:
        for decision in assignment.decisions.values():
            set_state(conn, decision.patient_id, decision.state, actor, assignment.rule,
                      f"{decision.reason} ({decision.site or 'no site'}, {decision.modality})",
                      only_from=PENDING)
    return assignment, people


def assign_pending_on_ingest(conn: Connection, cfg: ReleaseConfig, patient_ids: list[str]) -> int:
    """Assign the newly stored (pending) ``patient_ids`` by the running balance of their strata
    (``[release] assign_on_ingest``); returns how many were assigned. Reads every patient: the
    balance is over the whole commons."""
    people = load_patients(conn)
    wanted = set(patient_ids)
    sc = rule_config(cfg)
    current = list(people)
    done = 0
    for i, p in enumerate(people):
        if p.patient_id not in wanted or p.state is not None:
            continue
        state, reason = assign_new(p, current, sc, cfg.seed)
        set_state(conn, p.patient_id, state, "ingest", sc.rule(cfg.seed), reason, only_from=PENDING)
        current[i] = PatientRecord(p.patient_id, p.site, p.modalities, p.covid, p.age, p.age_gt89,
                                   p.race, p.sex, p.ethnicity, state)
        done += 1
    return done
