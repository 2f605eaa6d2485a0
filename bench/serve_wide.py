"""The server on wide synthetic indexes: first page, memory and page latency against the width.

    python bench/serve_wide.py [--latents 4608 65536 262144] [--clients 16] [--pages 200]

For each width: a synthetic index (bench/wide_index.py, written once to --dir), then `atlas`'s
app served by uvicorn in its own process (as bench/serve.py runs it, with a static file of a
latent page's size next to it). Reported: seconds to the first latent page answered, from the
start of `create_app` (the index opened and checked; the imports before it cost the same at any
width) and from the process's start; the server's RSS after `--pages` random latent pages and
at the end; p50 latency of random latent pages and of the static file under `--clients`
concurrent clients (each kind alone); the latent table sorted by density (the median of 5
requests, after warm-up). `make bench-serve-wide`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import CREATE_APP_STARTED, STATIC_ROUTE, free_port, load
from wide_index import write_wide_index


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_page(base: str, server: subprocess.Popen[bytes], started: float) -> float:
    """The wall-clock time (time.time) of the first 200 of a latent page."""
    while time.time() - started < 600:
        if server.poll() is not None:
            raise SystemExit("the server exited before answering")
        try:
            if httpx.get(f"{base}/latents/1", timeout=30).status_code == 200:
                return time.time()
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit("no latent page within 600 s")


def table_seconds(url: str, times: int = 5) -> float:
    """The median seconds of the latent table at `url`, after one request to warm it."""
    httpx.get(url, timeout=30).raise_for_status()
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        httpx.get(url, timeout=30).raise_for_status()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(index: Path, n_latents: int, *, clients: int, pages: int) -> dict[str, float]:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as static_dir:
        port = free_port()
        command = [sys.executable, str(Path(__file__).parent / "serve.py"), "--serve"]
        command += ["--index", str(index), "--port", str(port), "--static-dir", static_dir]
        started = time.time()
        server = subprocess.Popen(command)
        base = f"http://127.0.0.1:{port}"
        try:
            answered = first_page(base, server, started)
            created = float((Path(static_dir) / CREATE_APP_STARTED).read_text())
            size = len(httpx.get(f"{base}/latents/0").content)
            (Path(static_dir) / "page.html").write_bytes(b"x" * size)
            ids = [rng.randrange(n_latents) for _ in range(pages)]
            for latent_id in ids:
                httpx.get(f"{base}/latents/{latent_id}", timeout=30).raise_for_status()
            rss = rss_mb(server.pid)
            jobs = [("latent page", f"/latents/{rng.randrange(n_latents)}") for _ in range(pages)]
            statics = [("static file", f"{STATIC_ROUTE}/page.html")] * pages
            asyncio.run(load(base, statics[: 2 * clients], clients))  # warm connections
            page_p50 = statistics.median(asyncio.run(load(base, jobs, clients))["latent page"])
            static_p50 = statistics.median(asyncio.run(load(base, statics, clients))["static file"])
            table_s = table_seconds(base + "/latents?sort=density&order=desc")
            rss_after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {
        "first_page_s": answered - created,
        "process_first_page_s": answered - started,
        "rss_mb": rss,
        "rss_after_load_mb": rss_after,
        "page_p50_ms": 1000 * page_p50,
        "static_p50_ms": 1000 * static_p50,
        "x_static": page_p50 / static_p50,
        "table_by_density_s": table_s,
        "page_bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--latents", type=int, nargs="+", default=[4_608, 65_536, 262_144])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--pages", type=int, default=200, help="random latent pages")
    parser.add_argument("--dir", type=Path, default=Path("runs/wide"), help="where the indexes go")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    rows = {}
    for n in args.latents:
        index = args.dir / f"wide-{n}.duckdb"
        if not index.is_file():
            args.dir.mkdir(parents=True, exist_ok=True)
            write_wide_index(index, n_latents=n)
        rows[n] = measure(index, n, clients=args.clients, pages=args.pages)
        print(n, {k: round(v, 3) for k, v in rows[n].items()}, flush=True)
    keys = list(next(iter(rows.values())))
    print(f"\n{'latents':>9} " + " ".join(f"{k:>18}" for k in keys))
    smallest = rows[min(rows)]
    for n, row in rows.items():
        print(f"{n:>9,} " + " ".join(f"{row[k]:>18.3f}" for k in keys))
        ratios = " ".join(f"{row[k] / smallest[k]:>17.2f}x" for k in keys)
        print(f"{'growth':>9} {ratios}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
