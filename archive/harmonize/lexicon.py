"""The words of radiology procedure names: the rewrite rules and synonyms the matcher reads a
description (or a LOINC Long Common Name) with.

Everything here is general radiology vocabulary (abbreviations, synonyms, anatomy), written once
for any site; nothing names a particular description of the reference table. Descriptions and
code names are read with the same rules, so "XR Chest PA and Lateral" and "XR P CHEST PA/LAT"
come out as the same features.
"""

from __future__ import annotations

import re

# Rewrites applied, in order, to the upper-cased text padded with spaces. They turn phrases into
# single canonical tokens (CSPINE, WWO, V23, ...) before the text is split into words.
_REWRITES: list[tuple[str, str]] = [
    # Vendor protocol names: "Thorax^DE_CHEST_PE (Adult)"; brackets carry no meaning.
    (r"[\^_()\[\]{}\"';:]", " "),
    (r"\bX\s*-?\s*RAYS?\b|\bXRAYS?\b|\bRADIOGRAPHS?\b|\bRADIOGRAPHY\b", " XR "),
    (r"\bPET\s*[/+-]?\s*CT\b|\w*PETCT\w*", " PET CT "),
    (r"\bSPECT\s*/?\s*-?\s*CT\b", " SPECT CT "),
    (r"\bC\s*-\s*ARM\b|\bC ARM\b", " FLUORO "),
    # Contrast. W/O before W/, pairs (with and without) before single words.
    (r"\bW\s*/\s*O\b|\bW\s+O(?=\s+(?:IV|CONTRAST|CONT|CON|CM)\b)", " WO "),
    (r"\bWO\s*/\s*W\b", " WO W "),
    (r"\bW\s*/\s*", " W "),
    (r"\bWITHOUT\b|\bWITHOUT\b|\bW\s*OUT\b", " WO "),
    (r"\bWITH\b|\bWTH\b", " W "),
    (r"\bWAND\b", " W AND "),
    (r"\bNON\s*-?\s*CON(?:TRAST)?\b|\bNO\s+CON(?:TRAST)?\b|\bUNENHANCED\b|\bPLAIN\b", " WO CONTRAST "),
    (r"\bIVCON\w*\b|\bIV\s*CON\b", " IV CONTRAST "),
    (r"\bCONTRST\b|\bCONTRAS\b|\bCONTR\b|\bCONT\b|\bCON\b|\bCM\b|\bCNTRST\b|\bCONTRAST\w*", " CONTRAST "),
    (r"\bENHANCED\b", " W CONTRAST "),
    (r"\bWWO\b|\bW\s*(?:AND|&|\+|/|OR)?\s*WO\b|\bWO\s*(?:AND|&|\+|/|OR)?\s*W\b", " WWO "),
    # Spine before "thoracic" / "cervical" are read as chest / neck.
    (r"\b(?:CERVICAL|C)\s+AND\s+THORACIC\s+AND\s+LUMBAR\s+SPINES?\b", " CSPINE TSPINE LSPINE "),
    (r"\bTHORACIC\s+AND\s+LUMBAR\s+SPINES?\b|\bTHORACOLUMBAR(?:\s+SPINES?)?\b|\bT\s*-?\s*L\s+SPINES?\b",
     " TSPINE LSPINE "),
    (r"\bCERVICOTHORACIC(?:\s+SPINES?)?\b", " CSPINE TSPINE "),
    (r"\b(?:TOTAL|WHOLE|ENTIRE|COMPLETE|FULL)\s+SPINES?\b|\bSPINES?\s+SURVEY\b|\bSCOLIOSIS\b",
     " CSPINE TSPINE LSPINE "),
    (r"\bLUMBO\s*-?\s*SACRAL(?:\s+SPINES?)?\b|\bLUMBAR\s+(?:AND\s+)?SACRAL(?:\s+SPINES?)?\b"
     r"|\bL\s*-?\s*S\s+SPINES?\b|\bSPINES?\s+LUMBAR\s+AND\s+SACRUM\b", " LSPINE SACRUM "),
    (r"\bC\s*-?\s*SPINES?\b|\bCERVICAL\s+SPINES?\b|\bSPINES?\s+CERVICAL\b|\bCSPINE\b", " CSPINE "),
    (r"\bT\s*-?\s*SPINES?\b|\bTHORACIC\s+SPINES?\b|\bSPINES?\s+THORACIC\b|\bDORSAL\s+SPINES?\b", " TSPINE "),
    (r"\bL\s*-?\s*SPINES?\b|\bLUMBAR\s+SPINES?\b|\bSPINES?\s+LUMBAR\b|\bL\s*-?\s*SP\b", " LSPINE "),
    (r"\bCERVICAL\s+(?=CANCER|CA\b)", " CERVIX "),
    (r"\bTHORAC\w*\s+AND\s+ABDOMINAL\s+AORTA\b|\bTHORACO\s*-?\s*ABDOM\w*\b", " CHEST ABDOMEN ANGIO "),
    # Whole body and the usual PET ranges.
    (r"\b(?:BASE\s+OF\s+)?SKULL\s+(?:BASE\s+)?TO\s+(?:MID\s*-?\s*)?THIGHS?\b"
     r"|\bVERTEX\s+TO\s+(?:MID\s*-?\s*)?(?:THIGHS?|TOES?)\b|\bEYES?\s+TO\s+(?:MID\s*-?\s*)?THIGHS?\b"
     r"|\bWHOLE\s*-?\s*BODY\b|\bTOTAL\s+BODY\b|\bANY\s+SITE\b|\bWB\b", " WHOLEBODY "),
    (r"\bC\s*/?\s*A\s*/?\s*P\b", " CAP "),
    (r"\bA\s*/\s*P\b", " ABDOMEN PELVIS "),
    (r"\bUPPER\s+ABD\w*\b", " ABDOMEN "),
    (r"\bFLAT\s+PLATE\b", " KUB "),
    (r"\bFLAT\s+(?:AND\s+|&\s*)?(?:ERECT|UPRIGHT)\b|\bSUPINE\s+(?:AND\s+|&\s*)?(?:ERECT|UPRIGHT)\b",
     " SUPINE UPRIGHT "),
    # Projections and numbers of views.
    (r"\bA\s*-\s*P\b", " AP "),
    (r"\bP\s*-\s*A\b", " PA "),
    (r"\bPA\s*/\s*LT\b", " PA LAT "),
    (r"\b(?:AP|PA)\s*(?:/|OR|AND/OR|&)?\s*(?:AP|PA)\b", " FRONTAL "),
    (r"\bPOSTEROANTERIOR\b", " PA "),
    (r"\bANTEROPOSTERIOR\b", " AP "),
    (r"\b(?:1|ONE)\s*(?:OR|-|/|TO)\s*(?:2|TWO)\s*(?:VIEWS?|VWS?|V)\b", " V12 "),
    (r"\b(?:2|TWO)\s*(?:OR|-|/|TO)\s*(?:3|THREE)\s*(?:VIEWS?|VWS?|V)\b", " V23 "),
    (r"\b(?:MIN(?:IMUM)?\s+)?(\d)\s*(?:\+|OR\s+MORE|OR\s+GREATER)\s*(?:VIEWS?|VWS?|V)\b", r" V\1P "),
    (r"\bMIN(?:IMUM)?\s+(\d)\s*(?:VIEWS?|VWS?|V)\b|\b(\d)\s*(?:VIEWS?|VWS?|V)\s+MIN(?:IMUM)?\b", r" V\1\2P "),
    (r"\bGE\s+(\d)\s+VIEWS?\b", r" V\1P "),
    (r"\b(?:1|ONE|SINGLE)\s*-?\s*(?:VIEWS?|VWS?|V)\b|\bSINGLE\b", " V1 "),
    (r"\b(?:2|TWO)\s*-?\s*(?:VIEWS?|VWS?|V)\b", " V2 "),
    (r"\b(?:3|THREE)\s*-?\s*(?:VIEWS?|VWS?|V)\b|\bVIEWS?\s+3\b", " V3 "),
    (r"\b(?:4|FOUR)\s*-?\s*(?:VIEWS?|VWS?|V)\b", " V4 "),
    (r"\bINSP\w*\s*(?:/|AND|&)?\s*EXP\w*\b", " INSPEXP "),
    (r"\b(?:RIGHT|LEFT|BOTH|BILATERAL|RT|LT)\s+OBLIQUES?\b", " OBLIQUE "),
    # Purposes.
    (r"\bPULM\w*\s+EMB\w*|\bEMBOL\w*|\bCTPE\b|\bPE\b", " PE "),
    (r"\bPULM\w*\s+(?:ARTER\w*|ANGIO\w*|CTA)\b", " PULMART ANGIO "),
    (r"\bPULM\w*\b(?!\s+(?:NODULE|VEIN|FUNCTION|FIBROSIS|VENTILATION))", " PULMART "),
    (r"\bCALCIUM\s+SCOR\w*|\bCALCM\s+SCR\w*|\bCA\s+SCOR\w*|\bCACS?\b|\bAGATSTON\b|\bCALCIUM\b", " CALCIUM "),
    (r"\bLOW\s*-?\s*DOSE\b|\bLW\s+DOSE\b|\bLDCT\b", " LOWDOSE "),
    (r"\bVENTILATION\s*(?:/|AND|&)?\s*PERFUSION\b|\bV\s*/\s*Q\b|\bVQ\b", " VQ "),
    (r"\bPERFU\s+SION\b", " PERFUSION "),
    (r"\bLOCALI[SZ]ATION\s+OF\s+TUMOR\b", " TUMOR "),
    (r"\bRADIATION\s+(?:ONCOLOGY|THERAPY)(?:\s+\w+)?(?:\s+TREATMENT)?(?:\s+PLAN\w*)?\b|\bTREATMENT\s+PLAN\w*\b",
     " RADONC "),
    # Negated or optional features say nothing: "1 VIEW NOT PORTABLE", "(INCLUDING PORTABLE)".
    (r"\b(?:NOT|NON|NO|INCLUDING|OR)\s*-?\s*PORT(?:ABLE)?\b", " "),
    # A second modality inside one name is a combined exam ("CT Abdomen WO and CT Chest ...").
    (r"(?<=\w)(?:\s+AND\s+|\s*\+\s*)(?=CTA?\s)", " COMPOUND "),
    (r"\bBILATERAL\s+RUNOFF\b", " RUNOFF "),
]
REWRITES: list[tuple[re.Pattern[str], str]] = [(re.compile(p), r) for p, r in _REWRITES]

# Modality words: the family of methods a description names.
MODALITY_WORDS: dict[str, str] = {
    "XR": "XR", "DX": "XR", "CR": "XR", "DR": "XR", "DXR": "XR", "CXR": "XR", "PCXR": "XR",
    "KUB": "XR", "DIGITAL": "", "RADIOGRAPH": "XR",
    "CT": "CT", "CTA": "CT", "CCTA": "CT", "HRCT": "CT", "CAT": "CT",
    "MR": "MR", "MRI": "MR", "MRA": "MR", "MRCP": "MR", "MRV": "MR",
    "PET": "PT", "PT": "PT",
    "NM": "NM", "NUC": "NM", "NUCLEAR": "NM", "SPECT": "NM", "SCINTIGRAPHY": "NM", "SCAN": "",
    "US": "US", "ULTRASOUND": "US", "SONO": "US", "SONOGRAM": "US", "ECHO": "US",
    "ECHOCARDIOGRAM": "US", "ECHOCARDIOGRAPHY": "US", "TTE": "US", "TEE": "US", "DUPLEX": "US",
    "DOPPLER": "US", "TRANSTHORACIC": "US", "TRANSESOPHAGEAL": "US",
    "MG": "MG", "MAMMO": "MG", "MAMMOGRAM": "MG", "MAMMOGRAPHY": "MG", "DBT": "MG", "TOMO": "MG",
    "TOMOSYNTHESIS": "MG",
    "RF": "RF", "FL": "RF", "FLUORO": "RF", "FLUOROSCOPY": "RF", "FLUOROSCOPIC": "RF",
    "ESOPHAGRAM": "", "VIDEOGRAPHY": "RF",
}

# Body regions. Keys are words; values are canonical regions (several for a compound word).
REGION_WORDS: dict[str, tuple[str, ...]] = {
    "CHEST": ("CHEST",), "THORAX": ("CHEST",), "THOR": ("CHEST",), "THORACIC": ("CHEST",),
    "CXR": ("CHEST",), "PCXR": ("CHEST",), "LUNG": ("CHEST",), "LUNGS": ("CHEST",),
    "PULMONARY": ("CHEST",), "MEDIASTINUM": ("CHEST",), "CH": ("CHEST",),
    "ABDOMEN": ("ABDOMEN",), "ABD": ("ABDOMEN",), "ABDOMINAL": ("ABDOMEN",), "ABDOM": ("ABDOMEN",),
    "ABDO": ("ABDOMEN",), "KUB": ("ABDOMEN",),
    "PELVIS": ("PELVIS",), "PEL": ("PELVIS",), "PELV": ("PELVIS",), "PELVI": ("PELVIS",),
    "PELVIC": ("PELVIS",),
    "CAP": ("CHEST", "ABDOMEN", "PELVIS"),
    "HEAD": ("HEAD",), "BRAIN": ("HEAD",), "CRANIAL": ("HEAD",), "SKULL": ("HEAD",),
    "CEREBRAL": ("HEAD",), "INTRACRANIAL": ("HEAD",),
    "NECK": ("NECK",), "THYROID": ("NECK",), "LARYNX": ("NECK",),
    "FACE": ("FACE",), "FACIAL": ("FACE",), "SINUS": ("FACE",), "SINUSES": ("FACE",),
    "MAXILLOFACIAL": ("FACE",), "ORBIT": ("FACE",), "ORBITS": ("FACE",), "MANDIBLE": ("FACE",),
    "NASO": ("FACE",), "NASAL": ("FACE",),
    "HEART": ("HEART",), "CARDIAC": ("HEART",), "CARD": ("HEART",), "CORONARY": ("HEART",),
    "CORONARIES": ("HEART",), "CCTA": ("HEART",), "MYOCARDIAL": ("HEART",),
    "ECHOCARDIOGRAM": ("HEART",), "ECHOCARDIOGRAPHY": ("HEART",), "ECHO": ("HEART",),
    "TTE": ("HEART",), "TEE": ("HEART",), "CALCIUM": ("HEART",),
    "CSPINE": ("CSPINE",), "TSPINE": ("TSPINE",), "LSPINE": ("LSPINE",), "CERVICAL": ("CSPINE",),
    "LUMBAR": ("LSPINE",), "SPINE": ("SPINE",), "SACRUM": ("SACRUM",), "SACRAL": ("SACRUM",),
    "COCCYX": ("COCCYX",), "SI": ("SIJOINT",), "SACROILIAC": ("SIJOINT",),
    "KNEE": ("KNEE",), "KNEES": ("KNEE",), "PATELLA": ("KNEE",),
    "FOOT": ("FOOT",), "FEET": ("FOOT",), "TOE": ("TOE",), "TOES": ("TOE",),
    "HAND": ("HAND",), "HANDS": ("HAND",), "FINGER": ("FINGER",), "FINGERS": ("FINGER",),
    "THUMB": ("FINGER",),
    "WRIST": ("WRIST",), "WRISTS": ("WRIST",), "ANKLE": ("ANKLE",), "ANKLES": ("ANKLE",),
    "HEEL": ("CALCANEUS",), "CALCANEUS": ("CALCANEUS",),
    "SHOULDER": ("SHOULDER",), "SHOULDERS": ("SHOULDER",), "HIP": ("HIP",), "HIPS": ("HIP",),
    "ELBOW": ("ELBOW",), "ELBOWS": ("ELBOW",), "HUMERUS": ("HUMERUS",), "FEMUR": ("FEMUR",),
    "TIBIA": ("TIBIA",), "FIBULA": ("TIBIA",), "TIB": ("TIBIA",), "FIB": ("TIBIA",),
    "FOREARM": ("FOREARM",), "RADIUS": ("FOREARM",), "ULNA": ("FOREARM",), "LEG": ("LEG",),
    "ARM": ("ARM",), "EXTREMITY": ("EXTREMITY",), "EXTREMITIES": ("EXTREMITY",),
    "CLAVICLE": ("CLAVICLE",), "SCAPULA": ("SCAPULA",), "STERNUM": ("STERNUM",),
    "RIBS": ("RIBS",), "RIB": ("RIBS",),
    "BREAST": ("BREAST",), "BREASTS": ("BREAST",), "MAMMO": ("BREAST",), "MAMMOGRAM": ("BREAST",),
    "MAMMOGRAPHY": ("BREAST",), "DBT": ("BREAST",),
    "KIDNEY": ("KIDNEY",), "KIDNEYS": ("KIDNEY",), "RENAL": ("KIDNEY",), "LIVER": ("LIVER",),
    "HEPATIC": ("LIVER",), "PANCREAS": ("PANCREAS",), "GALLBLADDER": ("GALLBLADDER",),
    "SPLEEN": ("SPLEEN",), "BLADDER": ("BLADDER",), "PROSTATE": ("PROSTATE",),
    "UTERUS": ("PELVIS",), "OVARY": ("PELVIS",), "OVARIES": ("PELVIS",), "CERVIX": ("CERVIX",),
    "SCROTUM": ("SCROTUM",), "TESTICLE": ("SCROTUM",), "TESTES": ("SCROTUM",),
    "ESOPHAGUS": ("ESOPHAGUS",), "ESOPHAGRAM": ("ESOPHAGUS",), "ESOPHAGOGRAM": ("ESOPHAGUS",),
    "PHARYNX": ("PHARYNX",), "HYPOPHARYNX": ("PHARYNX",), "STOMACH": ("STOMACH",),
    "COLON": ("COLON",), "BOWEL": ("ABDOMEN",), "AORTA": ("AORTA",), "AAA": ("ABDOMEN",),
    "CAROTID": ("NECK",), "CAROTIDS": ("NECK",), "VENOUS": ("VEINS",), "RUNOFF": ("RUNOFF",),
    "ILIOFEMORAL": ("RUNOFF",), "WHOLEBODY": ("WHOLEBODY",), "AXILLA": ("AXILLA",),
    "TMJ": ("FACE",), "IAC": ("HEAD",), "PITUITARY": ("HEAD",),
}

# Words naming the procedure's kind or purpose; per method family some are ignored (soft).
PURPOSE_WORDS: dict[str, str] = {
    "PE": "PE", "PULMART": "PULMART", "SCREEN": "SCREEN", "SCREENING": "SCREEN", "SCRN": "SCREEN",
    "CALCIUM": "CALCIUM", "BIOPSY": "BIOPSY", "BX": "BIOPSY", "FNA": "BIOPSY",
    "TUBE": "TUBE", "DRAIN": "TUBE", "DRAINAGE": "TUBE", "THORACOSTOMY": "TUBE",
    "GUIDANCE": "GUIDANCE", "GUIDED": "GUIDANCE",
    "PERFUSION": "PERFUSION", "VQ": "VQ", "STRESS": "STRESS", "PHARMACOLOGIC": "STRESS",
    "TREADMILL": "STRESS", "EXERCISE": "STRESS",
    "LIMITED": "LIMITED", "LTD": "LIMITED", "LIMIT": "LIMITED",
    "TUMOR": "TUMOR", "CANCER": "TUMOR", "LYMPHOMA": "TUMOR", "MYELOMA": "TUMOR",
    "MELANOMA": "TUMOR", "ONCOLOGY": "TUMOR", "ONCOLOGIC": "TUMOR", "METASTATIC": "TUMOR",
    "METASTASES": "TUMOR", "MALIGNANCY": "TUMOR", "NEOPLASM": "TUMOR", "SARCOMA": "TUMOR",
    "HODGKINS": "TUMOR", "HODGKIN": "TUMOR", "CARCINOMA": "TUMOR", "CA": "TUMOR",
    "BRONCHOSCOPY": "BRONCH", "SWALLOW": "SWALLOW", "SWALLOWING": "SWALLOW",
    "SURGERY": "SURGERY", "INTRAOPERATIVE": "SURGERY",
    "TRANSVAGINAL": "TRANSVAG", "TRANSVAG": "TRANSVAG", "ENDOVAGINAL": "TRANSVAG",
    "TRANSABDOMINAL": "TRANSABD", "TRANSABD": "TRANSABD", "DOPPLER": "DOPPLER", "DUPLEX": "DOPPLER",
    "STONE": "STONE", "UROGRAM": "UROGRAM", "UROGRAPHY": "UROGRAM", "ENTEROGRAPHY": "ENTEROGRAPHY",
    "COLONOGRAPHY": "COLONOGRAPHY", "ARTHROGRAM": "ARTHROGRAM", "ARTHRO": "ARTHROGRAM",
    "MRCP": "MRCP", "CHOLANGIOPANCREATOGRAPHY": "MRCP", "SPECTROSCOPY": "SPECTROSCOPY",
    "TOMO": "TOMO", "TOMOSYNTHESIS": "TOMO", "DBT": "TOMO", "3D": "TOMO", "DIAGNOSTIC": "DIAGNOSTIC",
    "INSPEXP": "INSPEXP",
    "FLEXION": "FLEXEXT", "EXTENSION": "FLEXEXT",
    "LOWDOSE": "LOWDOSE", "COMPOUND": "COMPOUND", "SPECT": "SPECT",
    "FOLLOW": "FOLLOWUP", "FOLLOWUP": "FOLLOWUP", "FUP": "FOLLOWUP", "FU": "FOLLOWUP",
    "SURVEILLANCE": "FOLLOWUP", "NODULE": "FOLLOWUP", "NODULES": "FOLLOWUP",
    # checking a line or tube that was just placed
    "LINE": "CHECK", "LINES": "CHECK", "PICC": "CHECK", "CVAD": "CHECK", "CVC": "CHECK",
    "PLACEMENT": "CHECK", "PLCMNT": "CHECK", "VERIFICATION": "CHECK", "INSERTION": "CHECK",
    "FEEDING": "CHECK", "NG": "CHECK", "OG": "CHECK", "DOBHOFF": "CHECK",
}

# Purposes that change the code in these families; the others are ignored there.
HARD_PURPOSES: dict[str, frozenset[str]] = {
    "XR": frozenset({"INSPEXP", "SURGERY", "FLEXEXT"}),
    "CT": frozenset({"PE", "PULMART", "SCREEN", "CALCIUM", "BIOPSY", "TUBE", "GUIDANCE", "PERFUSION",
                     "LIMITED", "COLONOGRAPHY", "ENTEROGRAPHY", "COMPOUND"}),
    "MR": frozenset({"LIMITED", "ARTHROGRAM", "MRCP", "SPECTROSCOPY", "PERFUSION", "STRESS"}),
    "PT": frozenset(),
    "NM": frozenset({"STRESS", "VQ", "PERFUSION", "SPECT"}),
    "US": frozenset({"LIMITED", "GUIDANCE", "BIOPSY", "TUBE", "TRANSVAG", "TRANSABD", "DOPPLER"}),
    "MG": frozenset({"SCREEN", "TOMO", "DIAGNOSTIC"}),
    "RF": frozenset({"GUIDANCE", "BRONCH", "SWALLOW"}),
}

PROJECTION_WORDS: dict[str, str] = {
    "AP": "AP", "PA": "PA", "FRONTAL": "FRONTAL", "LAT": "LAT", "LATERAL": "LAT", "LATERALS": "LAT",
    "OBLIQUE": "OBLIQUE", "OBLIQUES": "OBLIQUE", "OBL": "OBLIQUE", "LORDOTIC": "LORDOTIC",
    "APICAL": "LORDOTIC", "UPRIGHT": "UPRIGHT", "ERECT": "UPRIGHT", "STANDING": "UPRIGHT",
    "SUPINE": "SUPINE", "DECUBITUS": "DECUBITUS", "KUB": "KUB",
}
# Patient positions: not projections, they do not count views.
POSITIONS = frozenset({"UPRIGHT", "SUPINE", "DECUBITUS"})

VIEW_WORDS: dict[str, str] = {
    "V1": "1", "V2": "2", "V3": "3", "V4": "4", "V12": "1-2", "V23": "2-3", "V2P": "2+", "V3P": "3+",
    "V4P": "4+", "V5P": "4+", "VIEWS": "N", "VWS": "N", "SERIES": "N",
}

SIDE_WORDS: dict[str, str] = {
    "LEFT": "LEFT", "LT": "LEFT", "L": "LEFT", "RIGHT": "RIGHT", "RT": "RIGHT", "R": "RIGHT",
    "BILATERAL": "BILATERAL", "BILAT": "BILATERAL", "BOTH": "BILATERAL", "BL": "BILATERAL",
}

ANGIO_WORDS = frozenset({"CTA", "CCTA", "MRA", "ANGIO", "ANGIOGRAM", "ANGIOGRAPHY", "ANG",
                         "ARTERIOGRAM", "ARTERIOGRAPHY", "ANGIOGRAPHIC", "VASCULAR", "DISSECTION",
                         "RUNOFF", "AORTA", "AAA"})
# Radiographs taken at the bedside (an ICU film is a portable film).
PORTABLE_WORDS = frozenset({"PORT", "PORTABLE", "PCXR", "BEDSIDE", "MOBILE", "ICU"})
CONTRAST_WORDS = frozenset({"W", "WO", "WWO", "CONTRAST", "IV", "AND", "OR"})

# Organs inside a larger region: named beside that region they are the indication, not the
# extent ("CT CHEST ABDOMEN PELVIS W CONTRAST (PANCREAS)").
CONTAINED_IN: dict[str, str] = {
    "LIVER": "ABDOMEN", "PANCREAS": "ABDOMEN", "KIDNEY": "ABDOMEN", "SPLEEN": "ABDOMEN",
    "GALLBLADDER": "ABDOMEN", "STOMACH": "ABDOMEN", "COLON": "ABDOMEN", "AORTA": "ABDOMEN",
    "BLADDER": "PELVIS", "PROSTATE": "PELVIS", "CERVIX": "PELVIS",
}

# Words that say a study was brought in from elsewhere: no body region to expect.
OUTSIDE_WORDS = frozenset({"OUTSIDE", "IMPORT", "IMPORTED", "REFERENCE", "EXCHANGE", "UNSPECIFIED",
                           "UNKNOWN", "MISC", "MISCELLANEOUS", "RADONC", "SIMULATION", "SIM"})

# Words that carry no meaning for the code: scheduling, sites, administrative tails, and the
# vendor protocol decorations ("DE", "XL", "FLASH", "Customized").
NOISE_WORDS = frozenset("""
A AN THE OF FOR TO AND OR IN ON AT BY WHEN ONLY PERFORMED INCLUDING INCLUDE INCLUDES PER AS
STUDY EXAM EXAMINATION PROTOCOL PROTOCOLS PROCEDURE IMAGING IMAGE IMAGES IMAG IMG IMGS SCAN
ROUTINE STANDARD STND STD STAT URGENT PRIORITY ADULT ADULTS PEDS PED PEDI PEDIATRIC PEDIATRICS
CHILD CHILDREN INFANT NEONATE NEONATAL CUSTOMIZED CUSTOM GR DE XL FLASH SPIRAL HELICAL
THIN SLICE SLICES RECON RECONS RECONSTRUCT RECONSTRUCTION RECONSTRUCTIONS REFORMAT REFORMATS
MPR MIP HR HI HIGH RES RESOLUTION NEW NEWHIRES HIRES CS RAD RADIOLOGY DIAG DIAGNOSIS
INITIAL FOLLOW FOLLOWUP UP FU FUP CHARGE NO NOT NON COMPLETE COMPL LEVEL ED ER IP OP
INPATIENT OUTPATIENT AM PM MORNING ROUNDS SERVICE ACUTE CHRONIC PAIN ARTHRITIS EVAL EVALUATION
EVALUATE RULE OUT CHECK CHK POST PRE OPERATIVE ORTHO ORTHOPEDICS NEURO BODY IR
LINE LINES PLACEMENT PLCMNT PL PLACE PICC CVAD CVC PORTACATH INSERTION VERIFICATION FEEDING NG
PEG OG ET DOBHOFF PUMP INJ INJECTION NODULE NODULES MASS CODE STROKE TRAUMA
SOFT TISSUE ADDITIONAL ADD ANNUAL BASELINE SURVEILLANCE VIEW VW UNILATERAL REGION REGIONS
ISCHEMIA HEMATURIA OVER UNDER YEARS YR YRS ABOVE BELOW WHOLE TOTAL ENTIRE LOW DOSE MAX SIZE
OTHER SMALL LARGE ROOM ASAP EMERGENCY VIEWONLY INCLUSIVE COMBINATION COMBINED CONVENTIONAL SEE NOTE
COMMENTS PHYSICIAN ORDER ORDERED ORDERABLE ORERABLE BILLING BILL BONE BONES JOINT JOINTS IV VIA
DOUBLE SET FILM FILMS DIGITIZED CD PACS FDG F18 18F NETSPOT DOTATATE AXUMIN PSMA GALLIUM AMYLOID
""".split())

# Words that read as noise in one context only: "W" is contrast unless a body part or view follows.
FOLLOWER_NOT_CONTRAST = frozenset(set(REGION_WORDS) | set(PROJECTION_WORDS) | set(MODALITY_WORDS)
                                  | {"UPRIGHT", "ERECT", "BOTH", "LOWDOSE", "LOW", "OBLIQUE", "V1", "V2",
                                     "SUPINE", "FLEXION", "OVER", "UNDER", "AM", "PUMP", "CAP", "AP"})
