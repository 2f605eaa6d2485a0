"""Latent-page and search latency under concurrent clients, next to a static file.

    python bench/serve.py --index runs/demo/index.duckdb [--clients 16] [--requests 600]

One `atlas` server (uvicorn, one process, as `atlas serve` runs it) serves the index and, from
the same process, a static file of exactly the size of a latent page. 16 concurrent clients
send an interleaved, shuffled mix of three kinds of request: a latent page (a random live
latent), a search (a random latent's top token or explanation word) and the static file, so
machine noise hits all three alike. Reported: p50 and p99 latency of each, the ratios to the
static file, and the errors (any status but 200, or a failed request). `make bench-serve`.

In the mixed load, a static request also waits behind the pages being rendered in the same
process, as it would on a real server. A second table runs each kind alone (three phases, in
alternating rounds): there the static file is at its fastest and the ratios are the cost of a
page over serving bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

STATIC_ROUTE = "/bench-static"
CREATE_APP_STARTED = "create_app_started"  # a file of the static folder: when create_app began


def serve(index: str, port: int, static_dir: str) -> None:
    """The server process: the app of `atlas serve` plus a static route for the baseline."""
    import uvicorn
    from fastapi.staticfiles import StaticFiles

    from app.main import create_app
    from app.settings import AppSettings

    (Path(static_dir) / CREATE_APP_STARTED).write_text(repr(time.time()))
    app = create_app(AppSettings(index=Path(index), port=port))
    app.mount(STATIC_ROUTE, StaticFiles(directory=static_dir), name="bench-static")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited before answering")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"no answer from {url} within {seconds:.0f} s")


def plan(base: str, static_dir: Path, *, requests: int, seed: int) -> list[tuple[str, str]]:
    """The shuffled job list, and the static file sized like a latent page."""
    rng = random.Random(seed)
    latents = httpx.get(
        f"{base}/api/latents?not_flag=dead&limit=200&sort=n_fires&order=desc", timeout=120
    )
    rows = latents.json()["latents"]
    ids = [row["latent_id"] for row in rows]
    words = [w for row in rows for w in ((row["top_token_text"] or "").strip(),) if len(w) > 1]
    words = words or ["the"]
    size = len(httpx.get(f"{base}/latents/{ids[0]}", timeout=120).content)  # the first page
    (static_dir / "page.html").write_bytes(b"x" * size)
    jobs = [("latent page", f"/latents/{rng.choice(ids)}") for _ in range(requests)]
    jobs += [("search", f"/search?q={rng.choice(words)}") for _ in range(requests)]
    jobs += [("static file", f"{STATIC_ROUTE}/page.html") for _ in range(requests)]
    rng.shuffle(jobs)
    print(f"latent page ~{size:,} bytes; static file {size:,} bytes")
    return jobs


async def load(base: str, jobs: list[tuple[str, str]], clients: int) -> dict[str, list[float]]:
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: dict[str, list[float]] = {kind: [] for kind, _ in jobs}
    errors: dict[str, int] = {kind: 0 for kind, _ in jobs}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            kind, path = queue.get_nowait()
            started = time.perf_counter()
            try:
                response = await http.get(base + path)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies[kind].append(time.perf_counter() - started)
            errors[kind] += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return {**latencies, **{f"{kind} errors": [float(n)] for kind, n in errors.items()}}


def by_phases(
    base: str, jobs: list[tuple[str, str]], clients: int, rounds: int = 3
) -> dict[str, list[float]]:
    """Each kind alone, in `rounds` alternating phases, merged per kind."""
    merged: dict[str, list[float]] = {}
    kinds = sorted({kind for kind, _ in jobs})
    for round_ in range(rounds):
        for kind in kinds:
            mine = [job for job in jobs if job[0] == kind][round_::rounds]
            for key, values in asyncio.run(load(base, mine, clients)).items():
                if key.endswith("errors") and key in merged:
                    merged[key][0] += values[0]
                else:
                    merged.setdefault(key, []).extend(values)
    return merged


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def report(
    results: dict[str, list[float]], seconds: float, *, title: str
) -> dict[str, dict[str, float]]:
    static_p50 = statistics.median(results["static file"])
    table: dict[str, dict[str, float]] = {}
    print(f"\n{title}")
    print(f"{'':14} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'x static p50':>13} {'errors':>7}")
    for kind in ("latent page", "search", "static file"):
        values = results[kind]
        row = {
            "n": len(values),
            "p50_ms": 1000 * statistics.median(values),
            "p99_ms": 1000 * percentile(values, 0.99),
            "x_static_p50": statistics.median(values) / static_p50,
            "errors": results[f"{kind} errors"][0],
        }
        table[kind] = row
        print(
            f"{kind:14} {row['n']:>6} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['x_static_p50']:>13.2f} {row['errors']:>7.0f}"
        )
    total = sum(row["n"] for row in table.values())
    print(f"\n{total:,} requests in {seconds:.1f} s ({total / seconds:.0f} req/s)")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--index", default="runs/demo/index.duckdb", help="the index to serve")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=600, help="requests of each kind")
    parser.add_argument("--seed", type=int, default=0, help="latent and query sampling seed")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--static-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.index, args.port, args.static_dir)
        return
    if not Path(args.index).is_file():
        raise SystemExit(f"{args.index} does not exist: run `make demo-index` first")
    with tempfile.TemporaryDirectory() as static_dir:
        port = free_port()
        command = [sys.executable, __file__, "--serve", "--index", args.index]
        command += ["--port", str(port), "--static-dir", static_dir]
        server = subprocess.Popen(command)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(base + "/api/build", server)
            jobs = plan(base, Path(static_dir), requests=args.requests, seed=args.seed)
            warm = [job for job in jobs[: 3 * args.clients]]
            asyncio.run(load(base, warm, args.clients))  # connections, caches, vocabulary
            started = time.perf_counter()
            results = asyncio.run(load(base, jobs, args.clients))
            mixed = report(results, time.perf_counter() - started, title="mixed load")
            started = time.perf_counter()
            results = by_phases(base, jobs, args.clients)
            alone = report(results, time.perf_counter() - started, title="each kind alone")
            table = {"mixed": mixed, "alone": alone}
        finally:
            server.terminate()
            server.wait(timeout=30)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
