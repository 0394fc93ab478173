"""Harmonization of study descriptions to LOINC / RSNA Radiology Playbook codes (archive.harmonize).

The reference-based tests read MIDRC's files from ``../shared/reference/midrc-harmonization``
(skipped when it is missing, failed when CI=true); the shipped data in the package is always there.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from archive.harmonize import MAPPING_VERSION, Harmonizer
from archive.harmonize.descriptor import study_families
from archive.harmonize.evaluate import (
    cross_validate,
    oracle_precision,
    read_observed,
    self_consistency,
    weighted_coverage,
)
from archive.harmonize.normalize import modalities, normalize_description
from archive.harmonize.preview import OUTPUT_COLUMNS, preview
from archive.harmonize.table import (
    DATA,
    MAPPING_FILE,
    VOCABULARY_FILE,
    build_data,
    families_of,
    read_mapping_file,
    read_vocabulary_file,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/midrc-harmonization"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# What k-fold cross-validation measured (docs/harmonization.md); a change that loses ground fails.
FLOOR_SHIPPED = {"precision": 0.90, "coverage": 0.87}  # measured 0.916 / 0.891
FLOOR_STRICT = {"precision": 0.85, "coverage": 0.78}  # measured 0.869 / 0.808
# The issue's targets; not reached, because MIDRC's own labels disagree on equivalent
# descriptions (docs/harmonization.md, "Why not 98 %").
TARGET = {"precision": 0.98, "coverage": 0.90}


@pytest.fixture(scope="module")
def reference() -> Path:
    if not (REFERENCE / "mapping_table_train.tsv").is_file():
        if IN_CI:
            pytest.fail(f"CI=true but the MIDRC reference is missing at {REFERENCE}")
        pytest.skip(f"MIDRC reference not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="module")
def harmonizer() -> Harmonizer:
    return Harmonizer.load()


# -- normalization and the shipped data ------------------------------------------------------


def test_normalization_is_midrcs() -> None:
    assert normalize_description("  xr   port\tchest 1v \r\n") == "XR PORT CHEST 1V"
    assert normalize_description("(blank)") == normalize_description("[blank]") == ""
    assert normalize_description(None) == ""
    assert modalities("CR, DX") == ("CR", "DX")
    assert modalities("CT\\PT") == ("CT", "PT")
    assert modalities("['PT','NM']") == ("PT", "NM")
    assert modalities(["CT", "PR", "CT"]) == ("CT", "PR")
    assert modalities("[blank]") == ()


def test_shipped_data_and_license_are_in_the_package() -> None:
    assert MAPPING_FILE.is_file() and VOCABULARY_FILE.is_file()
    notice = (DATA / "LICENSE-MIDRC.txt").read_text()
    assert "MIT License" in notice and "Medical Imaging and Data Resource Center (MIDRC)" in notice
    assert MAPPING_VERSION in (DATA / "README.md").read_text()
    vocabulary = read_vocabulary_file(VOCABULARY_FILE)
    assert all(row.code in vocabulary for row in read_mapping_file(MAPPING_FILE))


def test_shipped_data_is_derived_from_the_reference(reference: Path, tmp_path: Path) -> None:
    build_data(reference, tmp_path)
    for name in (MAPPING_FILE.name, VOCABULARY_FILE.name):
        assert (tmp_path / name).read_text() == (DATA / name).read_text(), name


# -- exact lookups and overrides -------------------------------------------------------------


def test_exact_lookup_after_normalization(harmonizer: Harmonizer) -> None:
    for text in ("XR PORT CHEST 1V", "  xr  port chest   1v"):
        p = harmonizer.place("CR", text)
        assert (p.code, p.how, p.confidence) == ("36589-0", "exact", 1.0)
        assert p.procedure.method == "XR.portable" and p.procedure.system == "Chest"
    ct = harmonizer.place("CT", "CT CHEST WITH CONTRAST")
    assert (ct.code, ct.procedure.timing, ct.procedure.region) == ("24628-0", "W", "Chest")


def test_exact_lookup_by_the_studys_modalities(harmonizer: Harmonizer) -> None:
    # MIDRC maps this protocol name to the PET code on PT and to "CT Whole body" on CT: a
    # PET/CT study takes the PT row; a DR study finds the DX row of its family.
    assert harmonizer.place(["CT", "PT"], "PET^1HPPETCT_WholeBody (Adult)").code == "81555-5"
    assert harmonizer.place("CT", "PET^1HPPETCT_WholeBody (Adult)").code == "46305-9"
    dr = harmonizer.place("DR", "XR CHEST 1 VIEW AP")
    assert (dr.code, dr.how) == ("36572-6", "exact")
    # empty descriptions map per modality to MIDRC's "Unspecified body region" codes
    assert harmonizer.place("MR", "").code == "25056-3"
    assert harmonizer.place("ST", "").code == "43526-3"


def test_override_wins_and_teaches_the_matcher(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.tsv"
    overrides.write_text(
        "Modality\tStudyDescription\tLOINC code\tL-Long Common Name\n"
        "CR\tXR PORT CHEST 1V\t36554-4\tXR Chest Single view\n"
        "[blank]\tSITE CHEST THING\t30745-4\tXR Chest Views\n"
        # a code the vocabulary lacks (a test value): its attributes are read from the name
        "MR\tMRI SHOULDER WO, RT\tTEST-1\tMR Shoulder - right WO contrast\n")
    h = Harmonizer.load(overrides)
    p = h.place("CR", "XR PORT CHEST 1V")
    assert (p.code, p.how, p.confidence) == ("36554-4", "override", 1.0)
    assert h.place("DX", "XR PORT CHEST 1V").how == "exact"  # the override is for CR only
    assert h.place("DX", "site chest thing").code == "30745-4"  # [blank]: any modality ...
    assert not h.place("CT", "SITE CHEST THING").mapped  # ... that an XR code fits
    shoulder = h.place("MR", "MRI SHOULDER WO, RT")
    assert (shoulder.code, shoulder.procedure.method, shoulder.procedure.timing) == ("TEST-1", "MR", "WO")
    unseen = h.place("MR", "MR RIGHT SHOULDER WO IV CONTRAST")
    assert (unseen.code, unseen.how) == ("TEST-1", "matched")
    assert not Harmonizer.load().place("MR", "MR RIGHT SHOULDER WO IV CONTRAST").mapped


def test_override_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "overrides.tsv"
    bad.write_text("Modality\tDescription\tLOINC code\nCR\tX\t36554-4\n")
    with pytest.raises(ValueError, match="StudyDescription"):
        Harmonizer.load(bad)


# -- the matcher -----------------------------------------------------------------------------

# Descriptions from real submissions (study_descriptions_gen3.tsv) that are not in the table, with
# the code their words name; they exercise synonyms, protocol names, typos and implied features.
UNSEEN = [
    ("CT", "CT CHEST WO", "29252-4"),
    ("CT", "Thorax^CHEST_WO (Adult)", "29252-4"),
    ("CT", "CT CHEST WO CONTRST", "29252-4"),  # typo
    ("CT", "CTA CHEST (PE STUDY) W CONTRAST", "79077-4"),
    ("CT", "Thorax^CT_PE (Adult)", "79077-4"),
    ("CT", "CT HEAD WO CONTRAST", "30799-1"),
    ("CT", "CT CHEST ABDOMEN PELVIS WO CONTRAST", "72253-8"),
    ("CT", "CT ABDOMNAL AND PELVIS W IV CONTRAST", "36813-4"),  # typo
    ("MR", "MRI CERVICAL SPINE WITHOUT CONTRAST", "30667-0"),
    ("DX", "CHEST 1 VIEW", "36554-4"),
    ("CR", "XR P PORT CHEST 1 VIEW", "36589-0"),
    ("CR", "FLAT PLATE OF ABDOMEN PORTABLE", "36588-2"),
    ("DX", "X-RAY KNEE 3 VIEWS - RIGHT", "37742-4"),
    ("CR", "XR LEFT SHOULDER 2+ VIEWS", "79368-7"),
    (["CT", "PR"], "CT CHEST W IV CON", "24628-0"),
]


@pytest.mark.parametrize(("modality", "description", "code"), UNSEEN)
def test_matcher_places_unseen_descriptions(harmonizer: Harmonizer, modality: str, description: str,
                                            code: str) -> None:
    assert normalize_description(description) not in harmonizer.table.descriptions()
    p = harmonizer.place(modality, description)
    assert (p.code, p.how) == (code, "matched"), p.reason
    assert 0.6 <= p.confidence < 1.0


def test_description_of_another_modality_is_never_placed(harmonizer: Harmonizer) -> None:
    for modality, description in [("DX", "CHEST CT"), ("CR", "CT CHEST WO CONTRAST"),
                                  ("CT", "XR CHEST PA/LATERAL"), ("MR", "CT HEAD WO CONTRAST")]:
        p = harmonizer.place(modality, description)
        assert not p.mapped and p.code == "" and "but the study is" in p.reason, (description, p)


def test_codes_always_fit_the_modality(harmonizer: Harmonizer, reference: Path) -> None:
    """Every description seen anywhere, under each modality: the code's method is one the study's
    modality produces (a CR/DX study never gets a CT code), or nothing is placed."""
    texts = {o.description for o in read_observed(reference / "study_descriptions_gen3.tsv")}
    texts |= {r.description for r in read_mapping_file(reference / "mapping_table_train.tsv")}
    for modality in ("CR", "DX", "CT", "MR", "US", "MG"):
        for text in texts:
            p = harmonizer.place(modality, text)
            if p.mapped:
                assert study_families([modality]) & set(families_of(p.procedure)), (modality, text, p)


def test_nonsense_and_unknown_procedures_stay_unmapped(harmonizer: Harmonizer) -> None:
    nonsense = harmonizer.place("CR", "ASDF QWERTY")
    assert (nonsense.procedure, nonsense.how, nonsense.confidence) == (None, "unmapped", 0.0)
    assert "no body region" in nonsense.reason and "ASDF" in nonsense.reason
    knee = harmonizer.place("DX", "XR LEFT KNEE 4+ VIEWS")  # no such code in the vocabulary
    assert not knee.mapped and "no code in the vocabulary" in knee.reason
    # MIDRC maps "2 views" chest films to two codes: ambiguous, so not placed
    assert not harmonizer.place("CR", "Chest 2V").mapped


def test_body_part_and_number_of_images(harmonizer: Harmonizer) -> None:
    portable = harmonizer.place("CR", "PORTABLE", body_part="CHEST", n_images=1)
    assert portable.code == "36589-0"
    assert not harmonizer.place("CR", "PORTABLE").mapped
    same = harmonizer.place("CT", "CT CHEST WO", body_part="CHEST")
    doubtful = harmonizer.place("CT", "CT CHEST WO", body_part="KNEE")
    assert doubtful.confidence < same.confidence and "BodyPartExamined" in doubtful.reason


def test_threshold_leaves_low_confidence_unmapped() -> None:
    strict = Harmonizer.load(threshold=0.99)
    p = strict.place("CT", "CT CHEST WO")
    assert not p.mapped and "< 0.99" in p.reason and "29252-4" in p.reason
    assert strict.place("CT", "CT CHEST WO CONTRAST").how == "exact"


# -- preview ---------------------------------------------------------------------------------


def test_preview_reads_a_site_export_and_writes_placements(harmonizer: Harmonizer) -> None:
    source = io.StringIO("\ufeffStudyDate\tModality\tStudyDescription\r\n"
                         "20200101\tCR\tXR PORT CHEST 1V\r\n"
                         "20200102\tCT\tThorax^CHEST_WO (Adult)\r\n"
                         "20200103\tDX\tASDF QWERTY\r\n", newline="")
    out = io.StringIO()
    assert preview(source, out, harmonizer) == 3
    lines = [line.split("\t") for line in out.getvalue().splitlines()]
    assert tuple(lines[0]) == OUTPUT_COLUMNS
    assert lines[1][:5] == ["CR", "XR PORT CHEST 1V", "36589-0", "Portable XR Chest AP single view", "1.00"]
    assert lines[2][2] == "29252-4" and float(lines[2][4]) >= 0.6
    assert lines[3][2:5] == ["", "", "0.00"] and "no body region" in lines[3][5]


def test_preview_names_missing_columns(harmonizer: Harmonizer) -> None:
    with pytest.raises(ValueError, match="missing column.*StudyDescription"):
        preview(io.StringIO("Modality\tDescription\nCR\tCHEST\n"), io.StringIO(), harmonizer)


# -- quality, measured on MIDRC's table and real input ---------------------------------------


@pytest.fixture(scope="module")
def cv(reference: Path) -> dict[str, object]:
    rows = read_mapping_file(reference / "mapping_table_train.tsv")
    strict = read_vocabulary_file(reference / "filtering_attributes.csv")
    return {"strict": cross_validate(rows, strict),
            "shipped": cross_validate(rows, read_vocabulary_file(VOCABULARY_FILE))}


@pytest.mark.parametrize(("vocabulary", "floor"), [("strict", FLOOR_STRICT), ("shipped", FLOOR_SHIPPED)])
def test_cross_validation_holds_its_measured_figures(cv: dict, vocabulary: str, floor: dict) -> None:
    report = cv[vocabulary]
    assert report.overall.rows == 386
    # every held-out description was placed by the matcher: none was in its fold's table
    assert set(report.hows) <= {"matched", "unmapped"}
    assert report.overall.precision >= floor["precision"], report.table()
    assert report.overall.coverage >= floor["coverage"], report.table()


@pytest.mark.xfail(strict=True, reason="MIDRC's labels disagree on equivalent descriptions; "
                   "see docs/harmonization.md 'Why not 98 %'")
def test_cross_validation_meets_the_issue_targets(cv: dict) -> None:
    overall = cv["shipped"].overall
    assert overall.precision >= TARGET["precision"] and overall.coverage >= TARGET["coverage"]


def test_midrcs_own_labels_cap_the_precision(reference: Path) -> None:
    """Why the targets are out of reach: MIDRC gives different codes to descriptions that say the
    same (e.g. "CHEST AP PORTABLE" 36589-0, "XR CHEST AP PORTABLE" 24632-2), so even an oracle
    that knows every label stays under 98 % at 90 % coverage."""
    rows = read_mapping_file(reference / "mapping_table_train.tsv")
    assert self_consistency(rows) < TARGET["precision"]
    assert oracle_precision(rows, TARGET["coverage"]) < TARGET["precision"]


def test_real_input_is_covered(harmonizer: Harmonizer, reference: Path) -> None:
    placed, exact = weighted_coverage(harmonizer, read_observed(reference / "study_descriptions_gen3.tsv"))
    assert placed >= 0.95 and exact < placed
