"""Load on the study server: simulated participants answering at once, for a bounded time, on 127.0.0.1 only.

The server runs as ``python -m portraitisr.study serve`` in a child process (one uvicorn worker, as in use) on a
free loopback port; each simulated participant is an ``httpx.AsyncClient`` with its own cookies that starts a
questionnaire, downloads each question's images, answers, re-sends some answers (a retry after a lost connection
must be acknowledged as ``repeat`` and stored once) and starts a new questionnaire when it finishes. After the time
is up, in-flight requests finish, the server stops, and the database is checked: every acknowledged answer is stored
once with its choice, nothing else is stored.

    python tools/benchmarks/study_load.py                          # 50 participants, 20 s
    python tools/benchmarks/study_load.py --participants 100 --duration 30 --json out.json

Prints requests per second and latency percentiles per kind of request, and the loss / duplicate counts (which must
be zero; the exit status is 1 otherwise).
"""
import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from portraitisr.study.create import create_study  # noqa: E402
from portraitisr.utils.image_io import write_image  # noqa: E402

TOKEN = 'load-benchmark-admin-token-00'
HOST = '127.0.0.1'


def make_study(root: Path, methods: int, items: int, size: int, questions: int) -> Path:
    """A WR_id study over synthetic images (smooth random colour fields, ``size`` px PNGs)."""
    rng = np.random.default_rng(0)
    names = [f'method{m}' for m in range(methods)]
    for i in range(items):
        base = rng.random((8, 8, 3)).astype(np.float32)
        gt = np.kron(base, np.ones((size // 8, size // 8, 1), np.float32))
        write_image(root / 'gt' / f'{i:04d}.png', gt)
        for m, name in enumerate(names):
            write_image(root / name / f'{i:04d}.png', np.clip(gt + 0.02 * m, 0, 1))
    create_study(root / 'study', 'wr_id', {n: root / n for n in names}, gt=root / 'gt', questions=questions,
                 attention_checks=2, seed=0)
    return root / 'study'


class Stats:
    def __init__(self) -> None:
        self.latency: dict = {}
        self.errors: list = []
        self.acknowledged: dict = {}  # question id -> choice acknowledged as recorded
        self.repeats = 0
        self.repeat_mismatch = 0
        self.questionnaires = 0

    def add(self, kind: str, seconds: float) -> None:
        self.latency.setdefault(kind, []).append(seconds)


async def timed(stats: Stats, kind: str, call):
    start = time.perf_counter()
    response = await call
    stats.add(kind, time.perf_counter() - start)
    return response


async def participant(url: str, deadline: float, stats: Stats, repeat_rate: float, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=4)
    while time.monotonic() < deadline:
        # trust_env=False: no proxy settings; every request goes to the loopback server
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, trust_env=False) as client:
            response = await timed(stats, 'start', client.post('/api/start'))
            if response.status_code != 200:
                stats.errors.append(('start', response.status_code, response.text[:200]))
                return
            state = response.json()
            while not state['done'] and time.monotonic() < deadline:
                question = state['question']
                images = question['options'] + ([question['reference']] if question['reference'] else [])
                got = await asyncio.gather(*(timed(stats, 'image', client.get(src)) for src in images))
                for r in got:
                    if r.status_code != 200:
                        stats.errors.append(('image', r.status_code, r.text[:200]))
                choice = rng.randrange(len(question['options']))
                body = {'question_id': question['id'], 'choice': choice}
                response = await timed(stats, 'answer', client.post('/api/answer', json=body))
                if response.status_code != 200:
                    stats.errors.append(('answer', response.status_code, response.text[:200]))
                    return
                data = response.json()
                if data['status'] == 'recorded':
                    stats.acknowledged[question['id']] = choice
                if rng.random() < repeat_rate:  # the same answer again, as after a lost connection
                    again = await timed(stats, 'answer (repeat)', client.post('/api/answer', json=body))
                    stats.repeats += 1
                    if again.status_code != 200 or again.json()['status'] != 'repeat':
                        stats.repeat_mismatch += 1
                state = data['state']
            if state['done']:
                stats.questionnaires += 1


def start_server(study: Path, db: Path):
    env = dict(os.environ, PORTRAITISR_STUDY_ADMIN_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, '-m', 'portraitisr.study', 'serve', str(study), '--db', str(db),
                                '--host', HOST, '--port', '0'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT)
    line = process.stdout.readline()
    if ' at http://' not in line:
        process.kill()
        raise RuntimeError(f'the server did not start: {line}{process.stdout.read()}')
    url = line.split(' at ', 1)[1].split()[0].rstrip('/')
    if not url.startswith(f'http://{HOST}:'):
        process.kill()
        raise RuntimeError(f'refusing to load anything but the loopback server, got {url}')
    return process, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere): the server's cost per request, which a
    busy machine changes less than it changes latencies."""
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except (OSError, IndexError, ValueError):
        return float('nan')


def wait_ready(url: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + '/', timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f'{url} did not answer within {timeout} s')


def check_database(db: Path, stats: Stats) -> dict:
    con = sqlite3.connect(db)
    try:
        stored = con.execute('SELECT question_id, choice FROM answers').fetchall()
        positions = con.execute('SELECT participant_id, position, COUNT(*) FROM answers '
                                'GROUP BY participant_id, position HAVING COUNT(*) > 1').fetchall()
        participants = con.execute('SELECT COUNT(*) FROM participants').fetchone()[0]
    finally:
        con.close()
    by_id = {}
    duplicates = len(positions)
    for question_id, choice in stored:
        duplicates += question_id in by_id
        by_id[question_id] = choice
    lost = sum(1 for q, c in stats.acknowledged.items() if by_id.get(q) != c)
    unacknowledged = len(set(by_id) - set(stats.acknowledged))
    return dict(stored=len(stored), acknowledged=len(stats.acknowledged), lost=lost, duplicated=duplicates,
                stored_but_unacknowledged=unacknowledged, participants_in_db=participants)


def percentile(values, q):
    return float(np.percentile(values, q)) * 1000 if values else float('nan')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--participants', type=int, default=50)
    parser.add_argument('--duration', type=float, default=20.0, help='seconds of load (bounded)')
    parser.add_argument('--questions', type=int, default=8, help='questions per questionnaire (then a new one)')
    parser.add_argument('--methods', type=int, default=5, help='candidates per question (HeadsUp: 5)')
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--repeat-rate', type=float, default=0.1, help='share of answers sent twice')
    parser.add_argument('--json', help='also write the numbers here')
    args = parser.parse_args()
    if args.duration > 600 or args.participants > 500:
        parser.error('keep the load bounded: at most 600 s and 500 participants')

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        study = make_study(root, args.methods, items=max(args.questions, 40), size=args.image_size,
                           questions=args.questions)
        db = root / 'answers.sqlite'
        process, url = start_server(study, db)
        try:
            wait_ready(url)
            stats = Stats()

            async def run():
                deadline = time.monotonic() + args.duration
                await asyncio.gather(*(participant(url, deadline, stats, args.repeat_rate, seed)
                                       for seed in range(args.participants)))

            cpu_before = cpu_seconds(process.pid)
            began = time.perf_counter()
            asyncio.run(run())
            elapsed = time.perf_counter() - began
            server_cpu = cpu_seconds(process.pid) - cpu_before
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        check = check_database(db, stats)

    total = sum(len(v) for v in stats.latency.values())
    every = [x for v in stats.latency.values() for x in v]
    result = dict(participants=args.participants, duration_s=round(elapsed, 2), requests=total,
                  requests_per_s=round(total / elapsed, 1), server_cpu_s=round(server_cpu, 2),
                  server_cpu_ms_per_request=round(server_cpu / max(total, 1) * 1000, 2),
                  load_average=os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
                  p50_ms=round(percentile(every, 50), 1),
                  p95_ms=round(percentile(every, 95), 1), p99_ms=round(percentile(every, 99), 1),
                  questionnaires_finished=stats.questionnaires, repeats=stats.repeats,
                  repeat_not_acknowledged=stats.repeat_mismatch, http_errors=len(stats.errors),
                  per_kind={k: dict(count=len(v), p50_ms=round(percentile(v, 50), 1),
                                    p95_ms=round(percentile(v, 95), 1), mean_ms=round(statistics.mean(v) * 1000, 1))
                            for k, v in sorted(stats.latency.items())}, **check)
    print(f'{args.participants} participants for {elapsed:.1f} s against {url}: {total} requests, '
          f'{result["requests_per_s"]} requests/s, latency p50 {result["p50_ms"]} ms, p95 {result["p95_ms"]} ms, '
          f'p99 {result["p99_ms"]} ms\nserver CPU {server_cpu:.1f} s = {result["server_cpu_ms_per_request"]} ms per '
          f'request; machine load average {result["load_average"]} on {os.cpu_count()} cores')
    for kind, numbers in result['per_kind'].items():
        print(f'  {kind:16s} {numbers["count"]:6d} requests  p50 {numbers["p50_ms"]:7.1f} ms  '
              f'p95 {numbers["p95_ms"]:7.1f} ms')
    print(f'answers: {check["acknowledged"]} acknowledged, {check["stored"]} stored, {check["lost"]} lost, '
          f'{check["duplicated"]} duplicated, {check["stored_but_unacknowledged"]} stored without acknowledgement '
          f'(in flight at the end); {stats.repeats} repeats, {stats.repeat_mismatch} not acknowledged as repeat; '
          f'{stats.questionnaires} questionnaires finished; {len(stats.errors)} HTTP errors')
    for error in stats.errors[:5]:
        print('  error:', error)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + '\n', encoding='utf-8')
    ok = not (check['lost'] or check['duplicated'] or stats.errors or stats.repeat_mismatch)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
