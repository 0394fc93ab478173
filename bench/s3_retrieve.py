"""Retrieve throughput from the S3 storage backend (issue 8), beside the filesystem backend.

    python bench/s3_retrieve.py                      # 100 slices, a 100 MB instance (~1 min)
    python bench/s3_retrieve.py --slices 300 --big-mb 200 --requests 1000 --json bench/out/s3.json

Two archive servers in turn on the same data: ``[storage] backend = "filesystem"`` and
``backend = "s3"`` against moto in server mode (``python -m moto.server``, its own process on
127.0.0.1, in-memory buckets). Figures, each over 127.0.0.1:

 1. series retrieve, MB/s: WADO-RS of a 512x512 CT series as stored (``transfer-syntax=*``),
    best of ``--repeat``; small instances are read in batches (S3: parallel GETs);
 2. large instance retrieve, MB/s: one native multi-frame instance of ``--big-mb`` MB, as stored
    (S3: a streamed GET, chunk by chunk; best of ``--repeat``);
 3. single-frame requests/s: ``frames/1`` of every slice in turn, ``--clients`` at a time, as
    stored (what OHIF asks for; S3: one ranged GET per frame);
 4. the server's peak PSS while measured, with its children (MB);
 5. CPU seconds per figure of the archive server (with its children) and of moto, to see where
    the time goes on a small machine where the client, the server and moto share the cores.

moto is a Python server (Flask/werkzeug, one request per thread, objects in memory): on this
machine it is the slower end of every S3 figure, far from what AWS S3, MinIO or Ceph RGW serve.
Read the S3 column as "the archive's S3 path works and what it costs beside local files", not as
what a real object store would give. Every answer is checked; problems are listed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import datasets
import psutil
import report
from httpclient import RETRIEVE_ACCEPT, download, session
from pixels import OCTET_ANY, Series, describe, frame_urls, rate
from procs import ManagedProcess, MemorySampler
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from servers import Archive, Target

BUCKET = "bench-archive"
KEYS = {"access_key_id": "bench", "secret_access_key": "bench-secret"}


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 (its own process: not sharing the client's GIL)."""

    def __init__(self, run_dir: Path, port: int) -> None:
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = ManagedProcess("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                            "-p", str(port)], run_dir, run_dir / "moto.log",
                                   self.endpoint + "/moto-api/")

    def create_bucket(self) -> None:
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id=KEYS["access_key_id"],
                     aws_secret_access_key=KEYS["secret_access_key"]).create_bucket(Bucket=BUCKET)


class S3Archive(Archive):
    """The archive of ``servers.Archive`` with ``[storage] backend = "s3"`` on the moto bucket."""

    name = "archive on S3 (moto)"

    def __init__(self, run_dir: Path, port: int, endpoint: str) -> None:
        super().__init__(run_dir, port)
        config = run_dir / "archive.toml"
        text = config.read_text().replace("[storage]\n", '[storage]\nbackend = "s3"\n', 1)
        text += (f'[storage.s3]\nbucket = "{BUCKET}"\nprefix = "bench"\nendpoint_url = "{endpoint}"\n'
                 f'region = "us-east-1"\naccess_key_id = "{KEYS["access_key_id"]}"\n'
                 f'secret_access_key = "{KEYS["secret_access_key"]}"\n')
        config.write_text(text)


def big_instance(cache: Path, megabytes: int) -> Path:
    """A native 16-bit multi-frame CT of about ``megabytes`` MB, 1024x1024 frames (cached)."""
    frames = max(1, megabytes * 10**6 // (1024 * 1024 * 2))
    path = cache / f"s3-big-{frames}frames.dcm"
    if path.exists():
        return path
    print(f"  generating a {frames}-frame instance into {path} ...", flush=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "S3BENCH", "S3^BENCH", "CT"
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    rng = random.Random(8)
    ds.PixelData = b"".join(rng.randbytes(1024 * 1024 * 2) for _ in range(frames))
    ds["PixelData"].VR = "OW"
    cache.mkdir(parents=True, exist_ok=True)
    ds.save_as(path.with_suffix(".tmp"), enforce_file_format=True)
    path.with_suffix(".tmp").rename(path)
    return path


async def best_download(url: str, repeat: int, parts: int) -> dict[str, Any]:
    """The fastest of ``repeat`` retrieves of ``url``; each must carry ``parts`` parts."""
    errors: list[str] = []
    best = None
    async with session(1) as http:
        for _ in range(repeat):
            got = await download(http, url, RETRIEVE_ACCEPT, count_parts=True)
            if got.status != 200 or got.parts != parts:
                errors.append(f"HTTP {got.status}, {got.parts} parts of {parts}: {got.head[:100]!r}")
            elif best is None or got.seconds < best.seconds:
                best = got
    if best is None:
        return {"mb_per_s": 0.0, "errors": errors[:3], "error_count": len(errors)}
    return {"mb_per_s": best.mb_per_s, "bytes": best.bytes, "seconds": best.seconds,
            "errors": errors[:3], "error_count": len(errors)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in procs)


class CpuMeter:
    """CPU seconds the archive server and moto spend between ``start`` and ``take``."""

    def __init__(self, server: int, moto: int) -> None:
        self.pids = {"server_cpu_s": server, "moto_cpu_s": moto}
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {k: cpu_seconds(pid) for k, pid in self.pids.items()}

    def take(self, figure: dict[str, Any]) -> dict[str, Any]:
        figure.update({k: cpu_seconds(pid) - self.before[k] for k, pid in self.pids.items()})
        return figure


async def measure(t: Target, series: Series, big: Series, args: argparse.Namespace,
                  cpu: CpuMeter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    series_url = f"{t.base}/studies/{series.study}/series/{series.series}"
    await best_download(series_url, 1, len(series.sops))  # warm-up (connections, caches)
    cpu.start()
    out["series"] = cpu.take(await best_download(series_url, args.repeat, len(series.sops)))
    big_url = f"{t.base}/studies/{big.study}/series/{big.series}"
    cpu.start()
    out["big"] = cpu.take(await best_download(big_url, args.repeat, 1))
    await rate(frame_urls(t, series, min(args.requests, 20)), OCTET_ANY, args.clients, "multipart")
    cpu.start()
    r = await rate(frame_urls(t, series, args.requests), OCTET_ANY, args.clients, "multipart")
    out["frames"] = cpu.take({"per_s": r.per_s, "requests": r.requests, "seconds": r.seconds,
                              "errors": r.errors[:3], "error_count": len(r.errors)})
    return out


ROWS = [("series", "mb_per_s", "series retrieve, 512x512 CT as stored (MB/s)"),
        ("big", "mb_per_s", "large instance retrieve, streamed (MB/s)"),
        ("frames", "per_s", "single-frame requests, as stored (requests/s)"),
        ("memory", "peak_pss_mb", "server peak PSS while measured, with children (MB)"),
        ("series", "server_cpu_s", "  series retrieves: archive CPU (s)"),
        ("series", "moto_cpu_s", "  series retrieves: moto CPU (s)"),
        ("big", "server_cpu_s", "  large retrieves: archive CPU (s)"),
        ("big", "moto_cpu_s", "  large retrieves: moto CPU (s)"),
        ("frames", "server_cpu_s", "  frame requests: archive CPU (s)"),
        ("frames", "moto_cpu_s", "  frame requests: moto CPU (s)")]


def show(results: dict[str, dict[str, Any]]) -> list[str]:
    return report.side_by_side(results, ROWS, 24, "S3 / filesystem")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/imaging-archive-bench"))
    p.add_argument("--slices", type=int, default=100, help="slices of the CT series (default 100)")
    p.add_argument("--big-mb", type=int, default=100, help="size of the large instance (default 100)")
    p.add_argument("--requests", type=int, default=500, help="single-frame requests (default 500)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3, help="retrieves per figure, best kept")
    p.add_argument("--port", type=int, default=18094)
    p.add_argument("--moto-port", type=int, default=18095)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    cache = args.workdir / "cache"
    run_dir = args.workdir / f"s3-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    print("1. data")
    ct = datasets.ct_set(cache, 0, 1, 1, args.slices, tag="pixels")
    series, big = describe(ct.files), describe([big_instance(cache, args.big_mb)])
    print(f"  CT series: {len(series.files)} x 512x512, {series.bytes / 1e6:.1f} MB; "
          f"large instance: {big.bytes / 1e6:.1f} MB")
    moto = MotoServer(run_dir, args.moto_port)
    (run_dir / "fs").mkdir()
    (run_dir / "s3").mkdir()
    targets: list[Target] = [Archive(run_dir / "fs", args.port),
                             S3Archive(run_dir / "s3", args.port, moto.endpoint)]
    targets[0].name = "archive on files"
    results: dict[str, dict[str, Any]] = {}
    try:
        moto.proc.start(timeout=60)
        moto.create_bucket()
        for t in targets:
            print(f"2. {t.name}: start, store {len(series.files) + 1} instances, measure")
            t.proc.start(timeout=60)
            t.store(series.files + big.files)
            sampler = MemorySampler(t.proc.pid, 0.1)
            sampler.start()
            cpu = CpuMeter(t.proc.pid, moto.proc.pid)
            results[t.name] = asyncio.run(measure(t, series, big, args, cpu))
            sampler.stop()
            results[t.name]["memory"] = {"peak_pss_mb": sampler.peak.pss / 1e6,
                                         "peak_rss_mb": sampler.peak.rss / 1e6}
            t.proc.stop()
    finally:
        for t in targets:
            t.proc.stop()
        moto.proc.stop()
    problems = show(results)
    print("\n(moto is a Python server holding the bucket in memory: the S3 column is a floor, "
          "not what AWS S3, MinIO or Ceph RGW would give)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(run_dir, ignore_errors=True)
    if problems:
        print("\nproblems:\n  " + "\n  ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
