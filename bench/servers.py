"""The servers the side-by-side benchmarks start: imaging-archive and Orthanc, each on its own ports and
throw-away data folder, both bound to (or only answering) 127.0.0.1. Used by ``pixels.py`` and
``versus.py``.

* ``Archive``: ``python -m archive serve --config FILE`` from the repo root, HTTP on 127.0.0.1; with a
  ``dimse_port`` its DIMSE listener too (127.0.0.1, C-STORE allowed from the given calling AE titles
  at 127.0.0.1 only).
* ``Orthanc``: Debian's ``/usr/sbin/Orthanc`` with its DICOMweb (and GDCM) plugin. Orthanc 1.10 binds
  every interface and has no listen-address option, so it is kept to local clients:
  ``RemoteAccessAllowed: false`` (HTTP from other hosts answered 403), and on the DICOM port no
  "always allow" for any service, ``DicomCheckModalityHost: true`` and one known modality per calling
  AE title at 127.0.0.1: only those AE titles, from this machine, may associate.
* ``ensure_orthanc``: installs the Debian packages with apt-get when the binary is missing (root or
  ``sudo -n``) and checks that no system Orthanc service is left running on 8042/4242.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import requests
from procs import ManagedProcess

REPO = Path(__file__).resolve().parent.parent
ORTHANC_BIN = "/usr/sbin/Orthanc"
ORTHANC_PLUGINS = "/usr/share/orthanc/plugins"
ORTHANC_PACKAGES = ("orthanc", "orthanc-dicomweb", "orthanc-gdcm")
ORTHANC_SYSTEM_PORTS = (8042, 4242)  # the Debian service's HTTP and DICOM ports
BOUNDARY = "benchserversboundary"


class Target:
    """A server under test: how to start it, store files, and name its DICOMweb root."""

    name: str
    base: str  # DICOMweb root, e.g. http://127.0.0.1:PORT/dicom-web
    proc: ManagedProcess
    dicom_port: int | None = None
    ae_title: str = ""

    def start(self, timeout: float = 60) -> None:
        self.proc.start(timeout=timeout)

    def stop(self) -> int | None:
        return self.proc.stop()

    def store(self, files: list[Path]) -> None:
        """Load files (set-up, not timed), raising on any failure."""
        raise NotImplementedError


def _stow_files(base: str, name: str, files: list[Path], batch: int = 25) -> None:
    for i in range(0, len(files), batch):
        parts = [p.read_bytes() for p in files[i:i + batch]]
        body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + d + b"\r\n"
                        for d in parts) + f"--{BOUNDARY}--\r\n".encode()
        r = requests.post(base + "/studies", data=body, timeout=600, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json"})
        if r.status_code != 200:
            raise RuntimeError(f"STOW to {name} answered {r.status_code}: {r.text[:300]}")


class Archive(Target):
    name = "imaging-archive"

    def __init__(self, run_dir: Path, port: int, codec_processes: int | None = None,
                 dimse_port: int | None = None, store_aets: tuple[str, ...] = ("BENCHSCU",),
                 max_results: int | None = None, repo: Path = REPO, workers: int = 1,
                 database_url: str | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.base = f"http://127.0.0.1:{port}/dicom-web"
        self.dicom_port, self.ae_title = dimse_port, "IMAGING-ARCHIVE"
        index = database_url or "sqlite+aiosqlite:///" + str(run_dir / "index.db")
        text = (f'[http]\nhost = "127.0.0.1"\nport = {port}\nworkers = {workers}\n'
                f'[storage]\npath = {json.dumps(str(run_dir / "files"))}\n'
                f'[database]\nurl = {json.dumps(index)}\n'
                '[log]\nlevel = "warning"\n')
        if codec_processes is not None:
            text += f"[render]\ncodec_processes = {codec_processes}\n"
        if max_results is not None:
            text += f"[qido]\nmax_results = {max_results}\n"
        if dimse_port is None:
            text += "[dimse]\nenabled = false\n"
        else:
            allowed = json.dumps([f"{aet}@127.0.0.1" for aet in store_aets])
            text += (f'[dimse]\nenabled = true\nhost = "127.0.0.1"\nport = {dimse_port}\n'
                     f'ae_title = "{self.ae_title}"\n[dimse.allow]\nstore = {allowed}\n')
        config = run_dir / "archive.toml"
        config.write_text(text)
        argv = [sys.executable, "-m", "archive", "serve", "--config", str(config)]
        self.proc = ManagedProcess(self.name, argv, repo, run_dir / "server.log",
                                   f"http://127.0.0.1:{port}/healthz")

    def store(self, files: list[Path]) -> None:
        _stow_files(self.base, self.name, files)


def orthanc_plugins() -> list[str]:
    """The DICOMweb and GDCM plugins only (the folder also holds worklists and serve-folders)."""
    folder = Path(ORTHANC_PLUGINS)
    picked = [str(p) for p in sorted(folder.glob("lib*.so*")) if "DicomWeb" in p.name or "Gdcm" in p.name]
    return picked or [ORTHANC_PLUGINS]


class Orthanc(Target):
    name = "Orthanc"

    def __init__(self, run_dir: Path, port: int, dicom_port: int,
                 scu_aets: tuple[str, ...] = ("BENCHSCU",)) -> None:
        self.rest = f"http://127.0.0.1:{port}"
        self.base = self.rest + "/dicom-web"
        self.dicom_port, self.ae_title = dicom_port, "ORTHANC"
        folder = run_dir / "orthanc"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "orthanc.json"
        modalities = {f"bench{i}": {"AET": aet, "Host": "127.0.0.1", "Port": 11112}
                      for i, aet in enumerate(scu_aets)}
        config.write_text(json.dumps({
            "Name": "bench", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomServerEnabled": True, "DicomAet": self.ae_title, "DicomPort": dicom_port,
            "DicomCheckCalledAet": False, "DicomCheckModalityHost": True, "DicomModalities": modalities,
            "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False, "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "Plugins": orthanc_plugins(), "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "Gdcm": {"Enable": True}, "ConcurrentJobs": 2, "HttpCompressionEnabled": False,
            "SaveJobs": False}))
        self.proc = ManagedProcess(self.name, [ORTHANC_BIN, str(config)], folder, folder / "orthanc.log",
                                   f"{self.rest}/system")

    def store(self, files: list[Path]) -> None:
        with requests.Session() as http:
            for path in files:
                r = http.post(self.rest + "/instances", data=path.read_bytes(), timeout=600)
                if r.status_code != 200:
                    raise RuntimeError(f"upload to Orthanc answered {r.status_code}: {r.text[:300]}")


# ------------------------------------------------------------------------------------- installation


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _system_orthancs() -> list[psutil.Process]:
    """Orthanc processes not started by this benchmark (their config is not under a bench folder)."""
    found = []
    for proc in psutil.process_iter(["exe", "cmdline", "ppid"]):
        try:
            exe, cmd = proc.info["exe"] or "", proc.info["cmdline"] or []
        except psutil.Error:
            continue
        if (exe == ORTHANC_BIN or (cmd and cmd[0] == ORTHANC_BIN)) and "/etc/orthanc" in " ".join(cmd):
            found.append(proc)
    return found


def _privileged(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo", "-n", *argv]
    raise RuntimeError(f"{ORTHANC_BIN} is missing and this is neither root nor has sudo: install "
                       f"{' '.join(ORTHANC_PACKAGES)} by hand")


def ensure_orthanc(log=print) -> list[str]:  # noqa: ANN001 - a print-like callable
    """Install Orthanc from Debian's packages when missing; stop a system service our install started.
    Returns notes (what was done, what is wrong); raises when Orthanc cannot be made available."""
    notes: list[str] = []
    installed_now = False
    if not Path(ORTHANC_BIN).exists():
        if not shutil.which("apt-get"):
            raise RuntimeError(f"{ORTHANC_BIN} is missing and there is no apt-get: install "
                               f"{' '.join(ORTHANC_PACKAGES)} by hand")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        log(f"  installing {' '.join(ORTHANC_PACKAGES)} with apt-get (Debian's packages) ...")
        for argv in (["apt-get", "update"],
                     ["apt-get", "install", "-y", "--no-install-recommends", *ORTHANC_PACKAGES]):
            out = subprocess.run(_privileged(argv), env=env, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr[-800:]}")
        installed_now = True
        notes.append(f"installed {' '.join(ORTHANC_PACKAGES)} with apt-get")
    running = _system_orthancs()
    if running and installed_now:
        # the package's maintainer script starts the service unless policy-rc.d denies it
        log("  stopping the system Orthanc service the package started ...")
        for argv in (["systemctl", "stop", "orthanc"], ["systemctl", "disable", "orthanc"],
                     ["service", "orthanc", "stop"]):
            if shutil.which(argv[0]):
                subprocess.run(_privileged(argv), capture_output=True, timeout=120)
        running = _system_orthancs()
    if running:
        notes.append(f"a system Orthanc is running (pids {', '.join(str(p.pid) for p in running)}); "
                     "it was not started by this benchmark and is left alone")
    busy = [port for port in ORTHANC_SYSTEM_PORTS if _listening(port)]
    if busy:
        notes.append(f"something listens on 127.0.0.1:{'/'.join(map(str, busy))} (Orthanc's default ports)")
    return notes


def orthanc_versions(rest: str) -> dict[str, str]:
    """Orthanc's own version and its plugins' (from its REST API)."""
    out: dict[str, str] = {}
    try:
        out["Orthanc"] = requests.get(rest + "/system", timeout=10).json().get("Version", "?")
        for plugin in requests.get(rest + "/plugins", timeout=10).json():
            try:  # "explorer.js" answers JavaScript, not JSON
                out[plugin] = requests.get(f"{rest}/plugins/{plugin}", timeout=10).json()["Version"]
            except (ValueError, KeyError, TypeError):
                continue
    except (requests.RequestException, ValueError):
        pass
    return out
