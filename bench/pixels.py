"""Benchmark of the pixel services (issue 4): frames, rendered, thumbnails, transcoding.

    python bench/pixels.py                 # archive, and Orthanc beside it when installed
    python bench/pixels.py --no-orthanc    # archive only
    python bench/pixels.py --slices 50 --requests 200 --json bench/out/pixels.json

Data (cached under ``<workdir>/cache``): a 512x512 16-bit CT series (Explicit VR Little Endian,
the synthetic CT of ``datasets.py``) and the same slices encoded as JPEG 2000 lossless (a second
series with UIDs of its own), stored into each server by STOW-RS (Orthanc: its REST upload).

Figures, each measured over 127.0.0.1 with ``--clients`` concurrent HTTP clients:
 1. single-frame retrieve, frames/s: ``frames/1`` of every slice in turn, native series and
    J2K series, ``Accept: multipart/related; type=application/octet-stream; transfer-syntax=*``
    (what OHIF v3 sends: the stored bytes, no decoding), and the J2K series decoded to native
    (``transfer-syntax=1.2.840.10008.1.2.1``);
 2. rendered JPEG images/s: instance ``/rendered`` of the native series, ``Accept: image/jpeg``;
 3. study thumbnail: first request (cold) and the median of the next ones (cached);
 4. transcoding MB/s: series retrieve of the J2K series as Explicit VR Little Endian
    (MB of DICOM sent per second; MB = 10^6 bytes);
 5. the server's peak memory while measured: PSS summed over it and its children (the codec
    worker processes), sampled every 100 ms.

Orthanc (Debian packages ``orthanc``, ``orthanc-dicomweb``, ``orthanc-gdcm``) runs on its own
ports and data folder with its DICOMweb plugin; requests the plugin does not offer are shown as
"n/a". Every answer is checked (status, part count, image header); problems are listed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import datasets
import pydicom
import report
from procs import MemorySampler
from pydicom.uid import JPEG2000Lossless
from servers import ORTHANC_BIN, Archive, Orthanc, Target

OCTET_ANY = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OCTET_ELE = "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
DICOM_ELE = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


@dataclass
class Series:
    study: str
    series: str
    sops: list[str]
    files: list[Path]
    bytes: int


def j2k_series(cache: Path, native: datasets.CtSet) -> list[Path]:
    """The native slices re-encoded as JPEG 2000 lossless with new UIDs (cached)."""
    folder = cache / f"pixels-j2k-{len(native.files)}"
    done = folder / "done"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"  encoding {len(native.files)} slices as JPEG 2000 into {folder} ...", flush=True)
        study, series = datasets.make_uid("pix-j2k-study"), datasets.make_uid("pix-j2k-series")
        for k, path in enumerate(native.files):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = datasets.make_uid("pix-j2k-sop", k)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.compress(JPEG2000Lossless)
            ds.save_as(folder / f"{k:05d}.dcm", enforce_file_format=True)
        done.write_text("ok")
    return sorted(folder.glob("*.dcm"))


def describe(files: list[Path]) -> Series:
    sops = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sops.append(str(ds.SOPInstanceUID))
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    return Series(study, series, sops, files, sum(p.stat().st_size for p in files))


# ------------------------------------------------------------------------------------------ measures


@dataclass
class Rate:
    requests: int
    seconds: float
    bytes: int
    errors: list[str]

    @property
    def per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def _check(status: int, ctype: str, body: bytes, expect: str) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    if expect == "multipart" and not ctype.startswith("multipart/related"):
        return f"Content-Type {ctype}"
    if expect == "jpeg" and not body.startswith(b"\xff\xd8"):
        return f"not a JPEG ({ctype})"
    return None


async def rate(urls: list[str], accept: str, clients: int, expect: str) -> Rate:
    """GET every URL (``clients`` at a time), reading each body whole."""
    errors: list[str] = []
    queue = list(reversed(urls))
    total = 0
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=clients)) as http:
        async def worker() -> None:
            nonlocal total
            while queue:
                url = queue.pop()
                try:
                    async with http.get(url, headers={"Accept": accept}) as r:
                        body = await r.read()
                        total += len(body)
                        problem = _check(r.status, r.headers.get("Content-Type", ""), body, expect)
                except aiohttp.ClientError as exc:  # counted against the server, not fatal
                    problem = f"{type(exc).__name__}: {exc}"
                if problem:
                    errors.append(f"{url.split('/dicom-web')[1][:90]}: {problem}")
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return Rate(len(urls), seconds, total, errors)


def instance_url(t: Target, s: Series, sop: str) -> str:
    return f"{t.base}/studies/{s.study}/series/{s.series}/instances/{sop}"


def frame_urls(t: Target, s: Series, n: int) -> list[str]:
    return [instance_url(t, s, s.sops[i % len(s.sops)]) + "/frames/1" for i in range(n)]


async def measure(t: Target, native: Series, j2k: Series, args: argparse.Namespace) -> dict[str, Any]:
    n, c = args.requests, args.clients
    out: dict[str, Any] = {}
    await rate(frame_urls(t, native, min(n, 20)), OCTET_ANY, c, "multipart")  # warm caches
    runs = {
        "frames_native": (frame_urls(t, native, n), OCTET_ANY, "multipart"),
        "frames_j2k_as_stored": (frame_urls(t, j2k, n), OCTET_ANY, "multipart"),
        "frames_j2k_decoded": (frame_urls(t, j2k, n), OCTET_ELE, "multipart"),
        "rendered_jpeg": ([instance_url(t, native, native.sops[i % len(native.sops)]) + "/rendered"
                           for i in range(n)], "image/jpeg", "jpeg"),
    }
    for key, (urls, accept, expect) in runs.items():
        r = await rate(urls, accept, c, expect)
        out[key] = {"per_s": r.per_s, "requests": r.requests, "seconds": r.seconds,
                    "errors": r.errors[:3], "error_count": len(r.errors)}
    thumb = f"{t.base}/studies/{native.study}/thumbnail"
    times, errors = [], []
    for _ in range(6):
        started = time.perf_counter()
        r = await rate([thumb], "image/jpeg", 1, "jpeg")
        times.append(time.perf_counter() - started)
        errors += r.errors
    out["thumbnail_study"] = {"cold_ms": times[0] * 1e3, "cached_ms": statistics.median(times[1:]) * 1e3,
                              "errors": errors[:3], "error_count": len(errors)}
    series_url = f"{t.base}/studies/{j2k.study}/series/{j2k.series}"
    best: Rate | None = None
    for _ in range(args.repeat):
        r = await rate([series_url], DICOM_ELE, 1, "multipart")
        if best is None or r.seconds < best.seconds:
            best = r
    assert best is not None
    out["transcode_j2k_to_ele"] = {"mb_per_s": best.mb_per_s, "bytes": best.bytes,
                                   "seconds": best.seconds, "source_bytes": j2k.bytes,
                                   "errors": best.errors[:3], "error_count": len(best.errors)}
    return out


# ------------------------------------------------------------------------------------------ report


ROWS = [("frames_native", "per_s", "single-frame retrieve, native CT (frames/s)"),
        ("frames_j2k_as_stored", "per_s", "single-frame retrieve, J2K as stored (frames/s)"),
        ("frames_j2k_decoded", "per_s", "single-frame retrieve, J2K decoded (frames/s)"),
        ("rendered_jpeg", "per_s", "rendered JPEG, 512x512 CT (images/s)"),
        ("thumbnail_study", "cold_ms", "study thumbnail, first request (ms)"),
        ("thumbnail_study", "cached_ms", "study thumbnail, cached (ms)"),
        ("transcode_j2k_to_ele", "mb_per_s", "transcoding J2K -> Explicit VR LE (MB/s)"),
        ("memory", "peak_pss_mb", "server peak PSS while measured, with children (MB)")]


def show(results: dict[str, dict[str, Any]]) -> list[str]:
    return report.side_by_side(results, ROWS)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"))
    p.add_argument("--slices", type=int, default=100, help="slices per series (default 100)")
    p.add_argument("--requests", type=int, default=400, help="requests per figure (default 400)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="series transcodes, best kept")
    p.add_argument("--port", type=int, default=18090)
    p.add_argument("--orthanc-port", type=int, default=18092)
    p.add_argument("--orthanc-dicom-port", type=int, default=18093)
    p.add_argument("--no-orthanc", action="store_true")
    p.add_argument("--codec-processes", type=int, help="[render] codec_processes of the archive "
                   "(default: not set, the server's default)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    cache = args.workdir / "cache"
    run_dir = args.workdir / f"pixels-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    print("1. data")
    ct = datasets.ct_set(cache, 0, 1, 1, args.slices, tag="pixels")
    native, j2k = describe(ct.files), describe(j2k_series(cache, ct))
    print(f"  native series: {len(native.files)} x 512x512, {native.bytes / 1e6:.1f} MB; "
          f"J2K series: {j2k.bytes / 1e6:.1f} MB")
    (run_dir / "archive").mkdir()
    targets: list[Target] = [Archive(run_dir / "archive", args.port, args.codec_processes)]
    if not args.no_orthanc:
        if Path(ORTHANC_BIN).exists():
            targets.append(Orthanc(run_dir, args.orthanc_port, args.orthanc_dicom_port))
        else:
            print(f"  (Orthanc not installed at {ORTHANC_BIN}: archive only)")
    results: dict[str, dict[str, Any]] = {}
    try:
        for t in targets:
            print(f"2. {t.name}: start, store {len(native.files) + len(j2k.files)} instances, measure")
            t.proc.start(timeout=60)
            t.store(native.files + j2k.files)
            sampler = MemorySampler(t.proc.pid, 0.1)
            sampler.start()
            results[t.name] = asyncio.run(measure(t, native, j2k, args))
            sampler.stop()
            results[t.name]["memory"] = {"peak_pss_mb": sampler.peak.pss / 1e6,
                                         "peak_rss_mb": sampler.peak.rss / 1e6}
            t.proc.stop()
    finally:
        for t in targets:
            t.proc.stop()
    problems = show(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(run_dir, ignore_errors=True)
    if problems:
        print("\nproblems:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
