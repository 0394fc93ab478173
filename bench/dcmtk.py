"""The DIMSE side of the benchmark, driven by dcmtk's command-line tools (``/usr/bin`` by default).

* ``store``: C-STORE with ``storescu`` over N parallel associations (one ``storescu`` process per
  folder, files found with ``+sd +r +sp *.dcm`` rather than on the command line). Timed from the
  start of the first process to the exit of the last, so the figure includes each process's start
  and its scan of the files (it reads every header before it associates). Each store's status comes
  from the ``-v`` log ("Received Store Response (Success)").
* ``move``: C-MOVE with ``movescu`` (study root, STUDY level) to a ``storescp`` this module starts
  as the move destination, writing to a folder (no fsync) or, with ``ignore``, discarding the data.
  Timed from the start of ``movescu`` to its exit; the sub-operation counts come from the final
  C-MOVE response in its ``-d`` log, and the files are counted when they are written.

pynetdicom installs console scripts with the same names as dcmtk's, often first on PATH: the tools
are always called by absolute path, and ``tool`` checks that ``--version`` says dcmtk.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DCMTK_BIN = Path(os.environ.get("BENCH_DCMTK_BIN", "/usr/bin"))
STORE_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")
# movescu -d prints each C-MOVE-RSP with "Completed Suboperations       : 500" etc.
SUBOPS = re.compile(r"(Remaining|Completed|Failed|Warning) Sub-?operations\s*:\s*(\d+)", re.I)
MOVE_RESPONSE = re.compile(r"Received (Final )?Move Response(?: \(([^)]*)\))?")
DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*(0x[0-9A-Fa-f]{4})(?::\s*(.*))?")


class DcmtkError(RuntimeError):
    """A dcmtk tool is missing, is not dcmtk, or did not start."""


_checked: dict[str, str] = {}


def tool(name: str) -> str:
    """Absolute path of a dcmtk tool, checked once to be dcmtk (not pynetdicom's namesake)."""
    if name not in _checked:
        path = DCMTK_BIN / name
        if not path.exists():
            raise DcmtkError(f"{path} not found (install dcmtk, or set BENCH_DCMTK_BIN)")
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
        version = (out.stdout + out.stderr).strip().splitlines()
        if not version or "dcmtk" not in version[0].lower():
            raise DcmtkError(f"{path} --version does not say dcmtk: {version[:1]}")
        _checked[name] = version[0]
    return str(DCMTK_BIN / name)


def version(name: str) -> str:
    tool(name)
    return _checked[name]


def checked_versions() -> dict[str, str]:
    """The tools checked so far and their ``--version`` first line."""
    return dict(_checked)


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DcmtkError(f"process exited with {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise DcmtkError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f} s")


# ------------------------------------------------------------------------------------------ C-STORE


@dataclass
class StoreRun:
    """One timed ``storescu`` run over ``len(folders)`` parallel associations."""

    associations: int
    files: int
    bytes: int
    seconds: float
    statuses: Counter[str] = field(default_factory=Counter)  # store response status -> count
    exit_codes: list[int] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return self.statuses.get("Success", 0)

    @property
    def instances_per_s(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        """Part 10 bytes of the files sent, over the wall time (all sent files, as for STOW-RS)."""
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def link_folders(files: list[Path], parts: int, root: Path) -> list[Path]:
    """Split ``files`` into ``parts`` contiguous runs, each a folder of symlinks under ``root``."""
    folders = []
    per = -(-len(files) // parts)
    for i in range(parts):
        folder = root / f"assoc-{i + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        for path in files[i * per:(i + 1) * per]:
            (folder / path.name).symlink_to(path.resolve())
        folders.append(folder)
    return folders


def store(folders: list[Path], files: int, total_bytes: int, port: int, called_ae: str, calling_ae: str,
          log_dir: Path, timeout: float = 3600) -> StoreRun:
    """One ``storescu`` per folder, all started together; each sends every ``*.dcm`` in its folder."""
    exe = tool("storescu")
    log_dir.mkdir(parents=True, exist_ok=True)
    run = StoreRun(len(folders), files, total_bytes, 0.0)
    procs: list[subprocess.Popen[bytes]] = []
    handles = []
    start = time.perf_counter()
    try:
        for i, folder in enumerate(folders, start=1):
            log = log_dir / f"storescu-{len(folders)}x-{i}.log"
            run.logs.append(log)
            handles.append(log.open("wb"))
            argv = [exe, "-v", "-nh", "-aet", calling_ae, "-aec", called_ae, "+sd", "+r", "+sp", "*.dcm",
                    "127.0.0.1", str(port), str(folder)]
            procs.append(subprocess.Popen(argv, stdout=handles[-1], stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
        deadline = start + timeout
        for proc in procs:
            run.exit_codes.append(proc.wait(max(1.0, deadline - time.perf_counter())))
        run.seconds = time.perf_counter() - start
    finally:
        for proc in procs:  # only on a timeout or an error: our own children, by pid
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for handle in handles:
            handle.close()
    for log in run.logs:
        run.statuses.update(STORE_RESPONSE.findall(log.read_text(errors="replace")))
    return run


def log_excerpt(log: Path, lines: int = 6) -> str:
    """The error/warning lines of a dcmtk log (``E:``/``W:``/``F:``), else its last lines."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    picked = [line for line in text if line[:2] in ("E:", "F:", "W:")] or text[-lines:]
    return " | ".join(picked[:lines])


# ------------------------------------------------------------------------------------------- C-MOVE


@dataclass
class MoveRun:
    """One timed ``movescu`` run to a ``storescp`` destination."""

    expected: int
    bytes: int  # Part 10 bytes of the instances asked for (the files they were stored from)
    seconds: float
    exit_code: int | None
    status: str  # the final C-MOVE response's DIMSE status ("0x0000: Success"), "" if none seen
    completed: int | None
    failed: int | None
    warning: int | None
    files_written: int | None  # files storescp wrote; None when it discarded the data (--ignore)
    bytes_written: int | None
    received: int  # C-STORE requests storescp logged
    destination: str
    log: Path
    scp_log: Path

    @property
    def instances_per_s(self) -> float:
        return (self.completed or 0) / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0


def _final_move(text: str) -> tuple[str, dict[str, int]]:
    """The DIMSE status and sub-operation counts of the last C-MOVE response in a ``movescu -d`` log."""
    start = max(text.rfind("Received Final Move Response"), 0)
    tail = text[start:]
    counts = {kind.lower(): int(n) for kind, n in SUBOPS.findall(tail)}
    status = DIMSE_STATUS.search(tail)
    final = MOVE_RESPONSE.search(tail)
    shown = ""
    if status:
        shown = status.group(1) + (f": {status.group(2).strip()}" if status.group(2) else "")
    elif final and final.group(2):
        shown = final.group(2)
    return shown, counts


def move(study_uid: str, expected: int, total_bytes: int, port: int, called_ae: str, dest_ae: str,
         scp_port: int, out_dir: Path, ignore: bool, log_dir: Path, calling_ae: str = "BENCHMOVE",
         timeout: float = 3600) -> MoveRun:
    """Start ``storescp`` as ``dest_ae`` on ``scp_port``, C-MOVE the study there, stop ``storescp``."""
    movescu, storescp = tool("movescu"), tool("storescp")
    log_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    log, scp_log = log_dir / "movescu.log", log_dir / "storescp.log"
    scp_argv = [storescp, "-v", "-aet", dest_ae, "+xa", "-od", str(out_dir)]
    scp_argv += ["--ignore"] if ignore else []
    scp_argv.append(str(scp_port))
    with scp_log.open("wb") as scp_out:
        scp = subprocess.Popen(scp_argv, stdout=scp_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(scp_port, 10, scp)
        argv = [movescu, "-d", "-S", "-aet", calling_ae, "-aec", called_ae, "-aem", dest_ae,
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                "127.0.0.1", str(port)]
        with log.open("wb") as out:
            start = time.perf_counter()
            code: int | None = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, timeout=timeout).returncode
            seconds = time.perf_counter() - start
    finally:
        scp.terminate()  # our own child, by pid
        try:
            scp.wait(10)
        except subprocess.TimeoutExpired:
            scp.kill()
            scp.wait(5)
    status, counts = _final_move(log.read_text(errors="replace"))
    received = scp_log.read_text(errors="replace").count("Received Store Request")
    written = None if ignore else [p for p in out_dir.iterdir() if p.is_file()]
    where = "discarded by storescp --ignore" if ignore else f"written by storescp to {out_dir} (no fsync)"
    return MoveRun(expected, total_bytes, seconds, code, status, counts.get("completed"),
                   counts.get("failed"), counts.get("warning"), None if written is None else len(written),
                   None if written is None else sum(p.stat().st_size for p in written), received, where,
                   log, scp_log)
