"""Configuration: a TOML file mapped onto typed settings whose defaults work out of the box.

Every key is documented in ``config.example.toml``. Relative paths (and the SQLite file of a
relative ``sqlite`` URL) resolve against the folder of the config file, or the working directory
when the server runs without one.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from archive.release.sequester import SequesterConfig

DUPLICATE_POLICIES = ("reject", "overwrite")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Access roles (archive.auth), from least to most.
ROLES = ("anonymous", "contributor", "evaluator", "admin")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a bad value."""


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: list[str] = field(default_factory=list)
    # Public URL prefix for RetrieveURL/BulkDataURI when behind a proxy; "" = from each request.
    base_url: str = ""
    # Seconds a stopping server (SIGTERM) gives in-flight requests and DIMSE associations.
    shutdown_timeout: int = 30
    # Largest request body in bytes (413 beyond it); 0 = no limit (STOW-RS streams to storage).
    max_request_size: int = 0
    # Requests handled at once; more get 503 with Retry-After (/healthz exempt); 0 = no limit.
    max_concurrent_requests: int = 0
    # Seconds without a byte from a client in the middle of a request (headers or body) before
    # its connection is closed (slow clients); an idle timeout, not a total. 0 = never.
    read_timeout: float = 60.0
    # With no [[auth.tokens]] the server is single-user (everything allowed) and listens only on
    # a loopback address, unless this is set: an archive must not be open on a network by accident.
    allow_unauthenticated: bool = False
    # Server processes on the port (serve --workers): the kernel spreads connections over them;
    # DIMSE runs in the first. 1: one process.
    workers: int = 1


@dataclass
class PeerConfig:
    """A DICOM node the archive sends to (C-MOVE destination), ``[dimse.peers.NAME]``."""

    ae_title: str
    host: str
    port: int


@dataclass
class AllowConfig:
    """Calling AE titles allowed per service, ``[dimse.allow]``: "AE" or "AE@host".
    An empty list accepts every caller (with a warning at start-up)."""

    store: list[str] = field(default_factory=list)
    query: list[str] = field(default_factory=list)
    retrieve: list[str] = field(default_factory=list)


@dataclass
class DimseConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "IMAGING-ARCHIVE"
    max_associations: int = 10
    acse_timeout: int = 30  # seconds to wait for association messages
    dimse_timeout: int = 60  # seconds to wait for DIMSE messages
    network_timeout: int = 60  # seconds an idle association stays open
    allow: AllowConfig = field(default_factory=AllowConfig)
    peers: dict[str, PeerConfig] = field(default_factory=dict)
    ae: list[AeRoleConfig] = field(default_factory=list)  # [[dimse.ae]]: calling AE -> role


@dataclass
class S3Config:
    """``[storage.s3]``: the bucket of ``[storage] backend = "s3"`` (AWS S3, MinIO, Ceph RGW, GCS)."""

    bucket: str = ""
    # Start of every object's key ("" = the bucket's root), so that archives can share a bucket.
    prefix: str = ""
    # The service's URL for an S3-compatible service (path-style requests); "" = AWS S3.
    endpoint_url: str = ""
    # "" = boto3's default (AWS_REGION / AWS_DEFAULT_REGION, the AWS config file).
    region: str = ""
    # Both, or neither: then the standard AWS environment variables / boto3's credential chain.
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)  # never in a log line


@dataclass
class StorageConfig:
    backend: str = "filesystem"
    path: str = "archive-data/files"
    s3: S3Config = field(default_factory=S3Config)


@dataclass
class DatabaseConfig:
    url: str = "sqlite+aiosqlite:///archive-data/index.db"
    echo: bool = False


@dataclass
class IngestConfig:
    # What to do when a different instance arrives under a stored SOP Instance UID.
    duplicate_policy: str = "reject"
    # Largest binary value kept inline (base64) in stored metadata; larger ones get a BulkDataURI.
    bulk_data_threshold: int = 1024
    # Processes that parse incoming instances beside the event loop; 0 parses in threads.
    # -1 (default): 1 on a machine with more than one CPU, else 0.
    parse_processes: int = -1
    # Largest instance in bytes (as sent); a larger one fails with 0xA700; 0 = no limit.
    max_instance_size: int = 0


@dataclass
class QidoConfig:
    # Most results one QIDO-RS response returns; beyond it a Warning header says the list was cut.
    max_results: int = 1000
    # Seconds a QIDO-RS query may run before it is interrupted (503); 0 = no limit.
    timeout: float = 30.0


@dataclass
class RenderConfig:
    """Rendered resources and thumbnails (PS3.18 §10.4.1.1.4, §10.4.1.1.5), ``[render]``."""

    # Longest side, in pixels, of a thumbnail requested without a viewport parameter.
    thumbnail_size: int = 128
    # JPEG quality (1-100) of rendered images and thumbnails without a quality parameter.
    jpeg_quality: int = 90
    # Keep rendered thumbnails on disk and serve them again.
    thumbnail_cache: bool = True
    # Folder of the thumbnail cache; "" = "cache/thumbnails" beside the storage folder.
    cache_path: str = ""
    # Worker processes for codec work (decoding frames, transcoding): the JPEG 2000 and JPEG
    # codecs hold the GIL, so threads use one core. -1: one per CPU when there are several;
    # 0: threads only. Workers start at the first codec request, not with the server.
    codec_processes: int = -1


@dataclass
class HarmonizeConfig:
    """Harmonized study descriptions (archive.harmonize), ``[harmonize]``."""

    # Place each study on a LOINC / RSNA Radiology Playbook procedure at ingest.
    enabled: bool = True
    # The operator's mappings (TSV with MIDRC's columns: Modality, StudyDescription, LOINC code,
    # L-Long Common Name); they win over the shipped table. "" = none.
    override_file: str = ""
    # Confidence below which a description never seen stays unmapped (0..1).
    threshold: float = 0.6


@dataclass
class DeidentifyConfig:
    """``[deidentify]``: de-identification at ingest (docs/deidentification.md)."""

    # Apply the PS3.15 Annex E profile to every incoming instance (off for the embedded demo).
    enabled: bool = False
    # File holding the pseudonym secret (keyed UIDs, PatientID, date shifts); required when
    # enabled, made (random, mode 0600) at the first start if it does not exist. Keep it out of
    # the index, the logs and backups of the public side.
    secret_file: str = ""


@dataclass
class ReleaseConfig:
    """``[release]``: release states of new patients and the sequestration rule."""

    # State of a patient when its first instance arrives: "open" (public at once) or "pending"
    # (visible to admins only until `imaging-archive sequester` or an admin releases it).
    initial_state: str = "open"
    # Assign each new patient at ingest by the sequestration rule, keeping the running balance
    # of its stratum (instead of initial_state).
    assign_on_ingest: bool = False
    # Share of patients sequestered, per site and stratum.
    fraction: float = 0.2
    # Seed of the rule's random draws (the same seed gives the same assignment).
    seed: int = 1
    # Strata: any of covid, age_band, race, sex, ethnicity.
    strata: list[str] = field(default_factory=lambda: ["covid", "age_band", "race", "sex", "ethnicity"])
    # A stratum of at least this many patients is split exactly; a smaller one is drawn per patient.
    min_stratum: int = 5
    # Public aggregate counts (cohort counts and facets for callers who are not evaluators or
    # admins) below this are shown as "<N", so that small groups cannot be singled out.
    min_cell_count: int = 10


@dataclass
class TokenConfig:
    name: str
    role: str
    sha256: str  # hex SHA-256 of the bearer token; the token itself is never stored


@dataclass
class JwtConfig:
    """``[auth.jwt]``: bearer tokens that are JWTs signed by an identity provider (OIDC)."""

    issuer: str = ""  # the "iss" a token must carry
    audience: str = ""  # the "aud" a token must carry
    jwks_file: str = ""  # the provider's public keys (JWKS), a file ...
    jwks_url: str = ""  # ... or the provider's jwks_uri
    roles_claim: str = "roles"  # the claim with the caller's role(s); dotted for nested claims
    algorithms: list[str] = field(default_factory=lambda: ["RS256", "ES256"])


@dataclass
class AuthConfig:
    """``[auth]``: bearer tokens (``[[auth.tokens]]``), JWTs (``[auth.jwt]``); neither =
    single-user mode."""

    tokens: list[TokenConfig] = field(default_factory=list)
    jwt: JwtConfig | None = None


@dataclass
class AeRoleConfig:
    """``[[dimse.ae]]``: the role of a calling AE title (from ``host`` only, if given)."""

    ae_title: str
    role: str
    host: str = ""


@dataclass
class UiConfig:
    """``[ui]``: the data explorer page served at ``/`` (docs/explorer.md)."""

    # Serve the page (and its files under /ui/); the API is served either way.
    enabled: bool = True
    # The heading and title of the page.
    title: str = "Imaging data commons"
    # Link from each study to a DICOMweb viewer: {StudyInstanceUID} is replaced by the study's
    # UID, e.g. "https://viewer.example/viewer?StudyInstanceUIDs={StudyInstanceUID}". "" = no link.
    viewer_url: str = ""


@dataclass
class LogConfig:
    level: str = "info"
    format: str = "text"


@dataclass
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    dimse: DimseConfig = field(default_factory=DimseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    qido: QidoConfig = field(default_factory=QidoConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    harmonize: HarmonizeConfig = field(default_factory=HarmonizeConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    release: ReleaseConfig = field(default_factory=ReleaseConfig)
    deidentify: DeidentifyConfig = field(default_factory=DeidentifyConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    log: LogConfig = field(default_factory=LogConfig)
    base_dir: Path = field(default_factory=Path.cwd)

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def storage_path(self) -> Path:
        return self.resolve(self.storage.path)

    @property
    def thumbnail_cache_path(self) -> Path:
        """``[render] cache_path``, by default ``cache/thumbnails`` beside the storage folder."""
        if self.render.cache_path:
            return self.resolve(self.render.cache_path)
        return self.storage_path.parent / "cache" / "thumbnails"

    @property
    def harmonize_override_path(self) -> Path | None:
        return self.resolve(self.harmonize.override_file) if self.harmonize.override_file else None

    @property
    def deid_secret_path(self) -> Path | None:
        return self.resolve(self.deidentify.secret_file) if self.deidentify.enabled else None

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path made absolute against ``base_dir``."""
        url = self.database.url
        for prefix in ("sqlite+aiosqlite:///", "sqlite:///"):
            if url.startswith(prefix):
                rest = url[len(prefix):]
                if rest and not rest.startswith("/") and not rest.startswith(":memory:"):
                    return prefix + str(self.resolve(rest))
        return url


_SECTIONS: dict[str, type] = {
    "http": HttpConfig,
    "dimse": DimseConfig,
    "storage": StorageConfig,
    "database": DatabaseConfig,
    "ingest": IngestConfig,
    "qido": QidoConfig,
    "render": RenderConfig,
    "harmonize": HarmonizeConfig,
    "auth": AuthConfig,
    "release": ReleaseConfig,
    "deidentify": DeidentifyConfig,
    "ui": UiConfig,
    "log": LogConfig,
}


def _section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in [{name}]")
        default = getattr(cls(), key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{name}] {key} must be true or false")
        if isinstance(default, int) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"[{name}] {key} must be an integer")
        if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"[{name}] {key} must be a number")
        if isinstance(default, float):
            value = float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"[{name}] {key} must be a string")
        if isinstance(default, list) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(f"[{name}] {key} must be a list of strings")
        kwargs[key] = value
    return cls(**kwargs)


_AE_TITLE_MAX = 16


def check_ae_title(value: str, what: str) -> str:
    """PS3.5 AE: 1-16 characters, no backslash or control characters, not all spaces."""
    if not 0 < len(value) <= _AE_TITLE_MAX or not value.strip() or "\\" in value or any(
            ord(c) < 32 or ord(c) > 126 for c in value):
        raise ConfigError(f"{what} must be an AE title of 1-16 printable characters")
    return value


def _dimse_section(values: Any) -> DimseConfig:
    if not isinstance(values, dict):
        raise ConfigError("[dimse] must be a table")
    values = dict(values)
    allow = _section("dimse.allow", AllowConfig, values.pop("allow", {}))
    peers_raw = values.pop("peers", {})
    if not isinstance(peers_raw, dict):
        raise ConfigError("[dimse.peers] must hold tables [dimse.peers.NAME]")
    peers: dict[str, PeerConfig] = {}
    for name, peer in peers_raw.items():
        if not isinstance(peer, dict) or set(peer) != {"ae_title", "host", "port"}:
            raise ConfigError(f"[dimse.peers.{name}] needs exactly ae_title, host and port")
        if not isinstance(peer["port"], int) or not 0 < peer["port"] < 65536:
            raise ConfigError(f"[dimse.peers.{name}] port must be between 1 and 65535")
        if not isinstance(peer["host"], str) or not isinstance(peer["ae_title"], str):
            raise ConfigError(f"[dimse.peers.{name}] ae_title and host must be strings")
        peers[name] = PeerConfig(check_ae_title(peer["ae_title"], f"[dimse.peers.{name}] ae_title"),
                                 peer["host"], peer["port"])
    ae_roles = [_entry("dimse.ae", AeRoleConfig, e) for e in _table_list("dimse.ae", values.pop("ae", []))]
    cfg = _section("dimse", DimseConfig, values)
    cfg.allow = allow
    cfg.peers = peers
    cfg.ae = ae_roles
    return cfg


def _table_list(name: str, values: Any) -> list[dict[str, Any]]:
    if not isinstance(values, list) or not all(isinstance(v, dict) for v in values):
        raise ConfigError(f"[[{name}]] must be an array of tables")
    return values


def _entry(name: str, cls: type, values: dict[str, Any]) -> Any:
    """One table of an array of tables: every field without a default is required, all strings."""
    known = {f.name: f for f in fields(cls)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in [[{name}]]")
        if not isinstance(value, str):
            raise ConfigError(f"[[{name}]] {key} must be a string")
    missing = [k for k, f in known.items()
               if k not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"[[{name}]] needs {', '.join(missing)}")
    return cls(**values)


def _storage_section(values: Any) -> StorageConfig:
    if not isinstance(values, dict):
        raise ConfigError("[storage] must be a table")
    values = dict(values)
    s3 = _section("storage.s3", S3Config, values.pop("s3", {}))
    cfg = _section("storage", StorageConfig, values)
    cfg.s3 = s3
    return cfg


def _check_storage(cfg: StorageConfig) -> None:
    if cfg.backend not in ("filesystem", "s3"):
        raise ConfigError('[storage] backend must be "filesystem" or "s3"')
    if cfg.backend != "s3":
        return
    s3 = cfg.s3
    if not s3.bucket:
        raise ConfigError('[storage] backend = "s3" needs [storage.s3] bucket')
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}", s3.bucket):
        raise ConfigError("[storage.s3] bucket must be a bucket name (letters, digits, '.', '-', '_')")
    if s3.prefix.strip("/") and not re.fullmatch(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", s3.prefix.strip("/")):
        raise ConfigError("[storage.s3] prefix must be folder names of letters, digits, '.', '-', '_' "
                          "separated by '/'")
    if any(part in (".", "..") for part in s3.prefix.split("/")):
        raise ConfigError("[storage.s3] prefix must not contain '.' or '..' folders")
    if s3.endpoint_url and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", s3.endpoint_url):
        raise ConfigError("[storage.s3] endpoint_url must be an http:// or https:// URL (or empty)")
    if bool(s3.access_key_id) != bool(s3.secret_access_key):
        raise ConfigError("[storage.s3] access_key_id and secret_access_key go together "
                          "(or leave both out to use the AWS environment variables)")


def _auth_section(values: Any) -> AuthConfig:
    if not isinstance(values, dict):
        raise ConfigError("[auth] must be a table")
    values = dict(values)
    raw = _table_list("auth.tokens", values.pop("tokens", []))
    tokens = [_entry("auth.tokens", TokenConfig, t) for t in raw]
    jwt = _section("auth.jwt", JwtConfig, values.pop("jwt")) if "jwt" in values else None
    if values:
        raise ConfigError(f"unknown key {next(iter(values))!r} in [auth]")
    return AuthConfig(tokens=tokens, jwt=jwt)


def _validate(cfg: Config) -> None:
    if cfg.ingest.duplicate_policy not in DUPLICATE_POLICIES:
        raise ConfigError(f"[ingest] duplicate_policy must be one of {', '.join(DUPLICATE_POLICIES)}")
    _check_storage(cfg.storage)
    if not 0 < cfg.http.port < 65536 or not 0 < cfg.dimse.port < 65536:
        raise ConfigError("ports must be between 1 and 65535")
    check_ae_title(cfg.dimse.ae_title, "[dimse] ae_title")
    for what in ("max_associations", "acse_timeout", "dimse_timeout", "network_timeout"):
        if getattr(cfg.dimse, what) < 1:
            raise ConfigError(f"[dimse] {what} must be at least 1")
    for service in ("store", "query", "retrieve"):
        for entry in getattr(cfg.dimse.allow, service):
            check_ae_title(entry.split("@", 1)[0], f"[dimse.allow] {service} entry {entry!r}")
    if cfg.qido.max_results < 1:
        raise ConfigError("[qido] max_results must be at least 1")
    if not 0 <= cfg.qido.timeout < float("inf"):
        raise ConfigError("[qido] timeout must be 0 (no limit) or a number of seconds")
    if not 0 <= cfg.http.read_timeout < float("inf"):
        raise ConfigError("[http] read_timeout must be 0 (no limit) or a number of seconds")
    if not 1 <= cfg.http.workers <= 64:
        raise ConfigError("[http] workers must be between 1 and 64")
    for what in ("shutdown_timeout", "max_request_size", "max_concurrent_requests"):
        if getattr(cfg.http, what) < 0:
            raise ConfigError(f"[http] {what} must not be negative")
    if cfg.ingest.max_instance_size < 0:
        raise ConfigError("[ingest] max_instance_size must not be negative")
    if cfg.ingest.parse_processes < -1:
        raise ConfigError("[ingest] parse_processes must be -1 (automatic), 0 or more")
    if cfg.ingest.bulk_data_threshold < 0:
        raise ConfigError("[ingest] bulk_data_threshold must not be negative")
    if not 1 <= cfg.render.thumbnail_size <= 4096:
        raise ConfigError("[render] thumbnail_size must be between 1 and 4096")
    if not 1 <= cfg.render.jpeg_quality <= 100:
        raise ConfigError("[render] jpeg_quality must be between 1 and 100")
    if cfg.render.codec_processes < -1:
        raise ConfigError("[render] codec_processes must be -1 (automatic), 0 or more")
    for token in cfg.auth.tokens:
        if token.role not in ROLES:
            raise ConfigError(f"[[auth.tokens]] {token.name!r}: role must be one of {', '.join(ROLES)}")
        if not re.fullmatch(r"[0-9a-f]{64}", token.sha256):
            raise ConfigError(f"[[auth.tokens]] {token.name!r}: sha256 must be 64 lower-case hex digits")
    jwt = cfg.auth.jwt
    if jwt is not None:
        if not jwt.issuer or not jwt.audience or bool(jwt.jwks_file) == bool(jwt.jwks_url):
            raise ConfigError("[auth.jwt] needs issuer, audience, and one of jwks_file or jwks_url")
        if jwt.jwks_file:
            _check_jwks(cfg.resolve(jwt.jwks_file))
        if not jwt.algorithms or any(a.startswith("HS") or a == "none" for a in jwt.algorithms):
            raise ConfigError("[auth.jwt] algorithms must be asymmetric ones (e.g. RS256, ES256)")
    if len({t.name for t in cfg.auth.tokens}) != len(cfg.auth.tokens):
        raise ConfigError("[[auth.tokens]] names must be unique")
    for entry in cfg.dimse.ae:
        check_ae_title(entry.ae_title, "[[dimse.ae]] ae_title")
        if entry.role not in ROLES:
            raise ConfigError(f"[[dimse.ae]] {entry.ae_title!r}: role must be one of {', '.join(ROLES)}")
    if cfg.deidentify.enabled and not cfg.deidentify.secret_file:
        raise ConfigError("[deidentify] enabled needs secret_file: the file of the pseudonym secret "
                          "(made at the first start when it does not exist)")
    if cfg.release.initial_state not in ("open", "pending"):
        raise ConfigError('[release] initial_state must be "open" or "pending"')
    if not 0 < cfg.release.fraction < 1:
        raise ConfigError("[release] fraction must be between 0 and 1")
    try:  # the rule's own checks (strata known and not repeated, min_stratum), not a copy
        SequesterConfig(fraction=cfg.release.fraction, strata=tuple(cfg.release.strata),
                        min_stratum=cfg.release.min_stratum)
    except ValueError as exc:
        raise ConfigError(f"[release] {exc}") from None
    if cfg.release.min_cell_count < 1:
        raise ConfigError("[release] min_cell_count must be at least 1 (1 suppresses nothing)")
    if not 0 <= cfg.harmonize.threshold <= 1:
        raise ConfigError("[harmonize] threshold must be between 0 and 1")
    if cfg.harmonize.override_file and not cfg.resolve(cfg.harmonize.override_file).is_file():
        raise ConfigError(f"[harmonize] override_file {cfg.harmonize.override_file!r} is not a file")
    _check_viewer_url(cfg.ui.viewer_url)
    if cfg.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"[log] level must be one of {', '.join(LOG_LEVELS)}")
    if cfg.log.format not in LOG_FORMATS:
        raise ConfigError(f"[log] format must be one of {', '.join(LOG_FORMATS)}")


def _check_viewer_url(url: str) -> None:
    """``[ui] viewer_url``: empty, or an http(s) URL (or a path on this host) with the placeholder."""
    if not url:
        return
    if not url.startswith(("https://", "http://", "/")) or url.startswith("//"):
        raise ConfigError("[ui] viewer_url must start with https://, http:// or / (or be empty)")
    if "{StudyInstanceUID}" not in url:
        raise ConfigError("[ui] viewer_url must contain {StudyInstanceUID}, where the study's UID goes")
    if any(c.isspace() or c in '"<>' for c in url):
        raise ConfigError("[ui] viewer_url must not contain spaces, quotes or angle brackets")


def _check_jwks(path: Path) -> None:
    import jwt as pyjwt  # only when a JWKS is configured

    try:
        pyjwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, pyjwt.PyJWTError) as exc:
        raise ConfigError(f"[auth.jwt] jwks_file {str(path)!r}: not a usable JWK set ({exc})") from None


def from_dict(data: dict[str, Any], base_dir: Path | None = None) -> Config:
    """Settings from a parsed TOML document (unknown sections or keys are errors)."""
    cfg = Config(base_dir=base_dir or Path.cwd())
    for name, values in data.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}]")
        if name == "dimse":
            cfg.dimse = _dimse_section(values)
        elif name == "auth":
            cfg.auth = _auth_section(values)
        elif name == "storage":
            cfg.storage = _storage_section(values)
        else:
            setattr(cfg, name, _section(name, _SECTIONS[name], values))
    _validate(cfg)
    return cfg


def load(path: str | Path | None) -> Config:
    """Settings from ``path``, or the defaults when ``path`` is None."""
    if path is None:
        cfg = Config()
        _validate(cfg)
        return cfg
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    return from_dict(data, base_dir=p.resolve().parent)
