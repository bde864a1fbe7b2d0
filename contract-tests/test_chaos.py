"""Chaos contract: runs keep completing, exactly, while worker processes are SIGKILLed.

``RUNS`` runs of ``chaos_app`` (a fan of branches, an ``all`` join, a chain after it; every node
writes the context) go through ``WORKERS`` ``flowcraft worker`` processes while a loop SIGKILLs
a random worker, preferably one in the middle of a node, and starts a new one, ``KILLS`` times
spread over the runs. Sizes come from ``FLOWCRAFT_CHAOS_RUNS`` / ``FLOWCRAFT_CHAOS_KILLS``
(default 200 / 20; ``./run chaos-<backend> -- --runs 1000 --kills 100`` sets them).

What must hold, and how it is observed. Delivery is at least once: a node whose worker dies
before its result is stored runs again on another worker. So "a join fired twice" cannot mean
"the join's code ran twice"; it means the join was routed again, or re-executed, when nothing
explains it. Workers keep nothing across a kill, so every execution appends ``start``/``end``
lines to a per-process file (``chaos_app``), and the test records when each worker died.

- Every run completed, and ``c3`` output the value computed from the run's seed.
- No context write lost: every node's key holds its value in the final context.
- No join before all its predecessors: every execution of the join, the stored one (its
  context record) and any that was killed or redone (its log lines), had every branch's output
  in its input and every branch's context write visible.
- Nothing fired twice: the executions of one node in one run, in start order, must each be
  explained by the previous one's worker dying: it started before that death, and the next
  one started after it (a job comes back only once the dead holder's lease runs out, never
  while its holder lives), and, if its code had finished, the worker died within ``LEASE`` of
  that (once the result is stored no redelivery executes the node again). Two jobs for one
  join, a second routing of the chain, or a redelivery while the holder lived all break this.
  A duplicate that is absorbed without executing (it re-routes from the stored result) is
  correct and invisible here; the workflow tests cover that case with a duplicated delivery.
- No job left behind: nothing dead-lettered and, where the fixture can count them
  (``queued_jobs(deployment) -> int``), no job left in its queues once the runs are done.

Workers' output goes to files, printed when the test fails.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import Harness

from flowcraft import WorkflowResult

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import chaos_app  # noqa: E402

RUNS = int(os.environ.get("FLOWCRAFT_CHAOS_RUNS", "200"))
KILLS = int(os.environ.get("FLOWCRAFT_CHAOS_KILLS", "20"))
WORKERS = 3
LEASE = 2.0
"""Short, so a dead worker's jobs come back soon; long enough that a loaded two-core machine
still renews leases in time (a lease lost by a live worker would read as a double fire)."""
WINDOW = 24
"""Runs in flight at once: about the three workers' slots, so each kill interrupts nodes."""
STUCK = max(30.0, 10 * LEASE)
"""A run not finished this long after its start is reported as stuck."""
BUDGET = 120.0 + 0.5 * RUNS + 2.0 * KILLS
"""Seconds after which no new run is started and no more workers are killed."""
SHOWN = 20

Spawn = Callable[[Any, str, Mapping[str, str]], subprocess.Popen[bytes]]


@dataclass
class Execution:
    run: str
    node: str
    pid: int
    start: float
    end: float | None = None
    inputs: dict[str, Any] | None = None
    context: list[str] | None = None


@dataclass
class ExecutionLog:
    """Reads the workers' execution files as they grow."""

    directory: Path
    executions: list[Execution] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    _offsets: dict[Path, int] = field(default_factory=dict)
    _rest: dict[Path, bytes] = field(default_factory=dict)
    _open: dict[tuple[int, str, str], list[Execution]] = field(default_factory=dict)

    def refresh(self) -> None:
        for path in sorted(self.directory.glob("*.log")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            self._offsets[path] = offset + len(data)
            *lines, rest = (self._rest.pop(path, b"") + data).split(b"\n")
            if rest:
                self._rest[path] = rest
            for line in lines:
                self._add(line, path)

    def _add(self, line: bytes, path: Path) -> None:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.torn.append(f"{path.name}: {line[:120]!r}")
            return
        key = (int(record["pid"]), str(record["run"]), str(record["node"]))
        if record["ev"] == "start":
            execution = Execution(key[1], key[2], key[0], float(record["t"]))
            execution.inputs = record.get("inputs")
            self.executions.append(execution)
            self._open.setdefault(key, []).append(execution)
            return
        running = self._open.get(key) or []
        if not running:
            self.torn.append(f"{path.name}: {record['ev']} without start: {line[:120]!r}")
            return
        if record["ev"] == "saw":
            running[0].context = list(record["context"])
        elif record["ev"] == "end":
            running.pop(0).end = float(record["t"])

    def finish(self) -> None:
        """Lines a killed worker left half written count as torn, not as lost."""
        for path, rest in self._rest.items():
            self.torn.append(f"{path.name}: unterminated {rest[:120]!r}")
        self._rest.clear()

    def running(self, pid: int) -> int:
        """Executions the worker ``pid`` has begun and not finished."""
        return sum(len(v) for k, v in self._open.items() if k[0] == pid)


@dataclass
class Pool:
    """The worker processes; each one's stdout and stderr go to a file of its own."""

    spawn: Spawn
    deployment: Any
    env: dict[str, str]
    directory: Path
    live: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    died: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Killed workers: when the signal was sent (nothing of theirs runs after it) and when
    the process was reaped (every line they wrote precedes it)."""
    outputs: dict[int, Path] = field(default_factory=dict)

    def start(self) -> int:
        path = self.directory / f"worker-{len(self.outputs) + 1:03d}.out"
        sys.stdout.flush()
        sys.stderr.flush()
        # The fixture's spawn_worker lets the child inherit our stdout and stderr; pointing
        # them at the file just for the fork keeps the interface and separates each worker.
        saved = os.dup(1), os.dup(2)
        with path.open("wb") as out:
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                process = self.spawn(self.deployment, "chaos_app:app", self.env)
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        self.live[process.pid] = process
        self.outputs[process.pid] = path
        return process.pid

    async def kill(self, pid: int) -> None:
        process = self.live.pop(pid)
        # Both times: a queue may hand the dead worker's job over before the reaping returns
        # (RabbitMQ does as the connection drops), and its lines may be written up to then.
        signalled = time.time()
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        self.died[pid] = (signalled, time.time())

    async def stop(self) -> dict[int, int | None]:
        """SIGTERM every live worker (a graceful stop); SIGKILL what is left after 15 s."""
        for process in self.live.values():
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        codes: dict[int, int | None] = {}
        for pid, process in self.live.items():
            try:
                left = max(0.0, deadline - time.monotonic())
                codes[pid] = await asyncio.to_thread(process.wait, left)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
                codes[pid] = None
        self.live.clear()
        return codes

    def dump(self, lines: int = 60) -> str:
        parts = []
        for pid, path in self.outputs.items():
            fate = "killed" if pid in self.died else "stopped"
            text = path.read_text(errors="replace").splitlines()
            if len(text) <= 1:
                parts.append(f"--- worker {pid} ({fate}): {text[0] if text else 'no output'}")
                continue
            parts.append(f"--- worker {pid} ({fate}), last {lines} lines of {path}:")
            parts.extend(text[-lines:])
        return "\n".join(parts)


async def test_runs_complete_exactly_while_workers_are_sigkilled(
    harness: Harness, tmp_path: Path
) -> None:
    spawn: Spawn | None = getattr(harness.backend, "spawn_worker", None)
    if spawn is None:
        pytest.skip(reason="this backend lives in one process: it has no worker processes to kill")
    executions_dir = tmp_path / "executions"
    executions_dir.mkdir()
    harness.deployment = harness.backend.deployment(lease=LEASE)
    harness.add(chaos_app.flow)
    client = harness.client
    env = {
        "FLOWCRAFT_CHAOS_DIR": str(executions_dir),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        # Without it a killed worker's last log lines die in its buffer.
        "PYTHONUNBUFFERED": "1",
    }
    pool = Pool(spawn, harness.deployment, env, tmp_path)
    log = ExecutionLog(executions_dir)
    seeds: dict[str, int] = {}
    results: dict[str, WorkflowResult] = {}
    stuck: dict[str, str] = {}
    kills_mid_node = 0
    began = time.monotonic()
    deadline = began + BUDGET
    finished = 0
    progress = asyncio.Condition()
    notes: list[str] = []

    async def one(seed: int) -> None:
        nonlocal finished
        try:
            run_id = await client.start(chaos_app.BLUEPRINT_ID, {"seed": seed})
            seeds[run_id] = seed
            try:
                results[run_id] = await client.wait(run_id, timeout=STUCK)
            except TimeoutError:
                stuck[run_id] = f"not finished {STUCK:.0f} s after its start"
        finally:
            finished += 1
            async with progress:
                progress.notify_all()

    async def submit() -> None:
        slots = asyncio.Semaphore(WINDOW)
        tasks: list[asyncio.Task[None]] = []

        async def guarded(seed: int) -> None:
            try:
                await one(seed)
            finally:
                slots.release()

        for seed in range(RUNS):
            await slots.acquire()
            if time.monotonic() > deadline:
                notes.append(f"budget of {BUDGET:.0f} s spent: started only {seed} runs")
                slots.release()
                break
            tasks.append(asyncio.create_task(guarded(seed)))
        await asyncio.gather(*tasks)

    async def chaos() -> None:
        nonlocal kills_mid_node
        # Kill k is due once k/(KILLS+1) of the runs finished: kills spread over the whole
        # workload whatever the machine's speed, and the last one still has runs in flight.
        for k in range(1, KILLS + 1):
            due = math.ceil(k * RUNS / (KILLS + 1))
            try:
                async with progress:
                    await asyncio.wait_for(
                        # Awaited within this iteration, so the late binding of `due` is moot.
                        progress.wait_for(lambda: finished >= due),  # noqa: B023
                        max(0.0, deadline - time.monotonic()),
                    )
            except TimeoutError:
                notes.append(f"budget spent: only {k - 1} of {KILLS} kills done")
                return
            victim = None
            # A worker in the middle of a node, if one shows up within a lease; a worker still
            # starting up (or idle) holds no job, and killing it proves little.
            wait_until = time.monotonic() + LEASE
            while victim is None and time.monotonic() < wait_until:
                log.refresh()
                busy = [pid for pid in pool.live if log.running(pid)]
                if busy:
                    victim = random.choice(busy)
                    kills_mid_node += 1
                else:
                    await asyncio.sleep(0.01)
            if victim is None:
                # The longest-lived worker: the newest may still be importing and joining (on a
                # loaded machine for seconds), and killing it then tests nothing but costs a
                # recovery (a group rebalance, a lease) all the same.
                victim = next(iter(pool.live))
            await pool.kill(victim)
            pool.start()

    for _ in range(WORKERS):
        pool.start()
    queued: int | None = None
    try:
        await asyncio.gather(submit(), chaos())
        wall = time.monotonic() - began
        # A run that timed out may have finished since: it is slow, not stuck.
        for run_id in list(stuck):
            try:
                results[run_id] = await client.wait(run_id, timeout=0.5)
                notes.append(f"run {run_id} finished only after {STUCK:.0f} s")
                del stuck[run_id]
            except TimeoutError:
                stuck[run_id] += f"; status {await client.status(run_id)}"
                stuck[run_id] += await _unfinished_jobs(client, run_id)
        queued_jobs = getattr(harness.backend, "queued_jobs", None)
        if queued_jobs is None:
            print("note: the fixture has no queued_jobs(deployment); queues were not checked")
        else:
            # Jobs of killed workers come back after their lease and are dropped on arrival
            # (their runs are over): allow a few leases for that with the workers still up.
            drain_until = time.monotonic() + 4 * LEASE + 10
            while True:
                queued = int(await _maybe_await(queued_jobs(harness.deployment)))
                if queued == 0 or time.monotonic() > drain_until:
                    break
                await asyncio.sleep(0.2)
        dead = harness.dead_letters()
    finally:
        exit_codes = await pool.stop()
    log.refresh()
    log.finish()

    failures = _judge(seeds, results, stuck, log, pool)
    if dead:
        failures.append(f"{len(dead)} job(s) dead-lettered: {dead[:SHOWN]}")
    if queued:
        failures.append(f"{queued} job(s) left in the queues after the runs ended")
    not_stopped = [pid for pid, code in exit_codes.items() if code != 0]
    if not_stopped:
        notes.append(f"workers without a clean stop (pid: exit code): {exit_codes}")
    if len(pool.died) < KILLS:
        failures.append(f"only {len(pool.died)} of {KILLS} kills happened")
    repeats = len(log.executions) - len({(e.run, e.node) for e in log.executions})
    summary = (
        f"chaos [{harness.backend.name}]: {len(seeds)} runs, {len(pool.died)} kills"
        f" ({kills_mid_node} mid-node), {WORKERS} workers, lease {LEASE} s;"
        f" {sum(r.status == 'completed' for r in results.values())} completed,"
        f" {len(stuck)} stuck; {len(log.executions)} node executions"
        f" ({repeats} repeated after kills); wall {wall:.1f} s"
        + ("" if queued is None else f"; {queued} jobs queued at the end")
    )
    print(summary)
    for note in notes + log.torn[:SHOWN]:
        print(f"note: {note}")
    if failures:
        print(pool.dump())
        shown = "\n".join(f"- {f}" for f in failures[:SHOWN])
        more = f"\n... and {len(failures) - SHOWN} more" if len(failures) > SHOWN else ""
        pytest.fail(f"{summary}\n{shown}{more}", pytrace=False)


def _judge(
    seeds: Mapping[str, int],
    results: Mapping[str, WorkflowResult],
    stuck: Mapping[str, str],
    log: ExecutionLog,
    pool: Pool,
) -> list[str]:
    """One line per run that went wrong (all its problems), then problems of the whole test."""
    problems: dict[str, list[str]] = defaultdict(list)
    for run_id, why in stuck.items():
        problems[run_id].append(f"stuck: {why}")
    for run_id, result in results.items():
        seed = seeds[run_id]
        if result.status != "completed":
            errors = "; ".join(str(e) for e in result.errors) or "no errors"
            problems[run_id].append(f"ended {result.status}: {errors}")
            continue
        output = result.context.get("_outputs.c3")
        if output != chaos_app.expected_output(seed):
            problems[run_id].append(f"output {output!r}, not {chaos_app.expected_output(seed)}")
        for key, value in chaos_app.expected_context(seed).items():
            if result.context.get(key) != value:
                got = result.context.get(key)
                problems[run_id].append(f"context {key} = {got!r}, not {value!r}")

    by_node: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for execution in log.executions:
        by_node[execution.run, execution.node].append(execution)
    for run_id in results:
        missing = [n for n in chaos_app.NODES if (run_id, n) not in by_node]
        if missing:
            problems[run_id].append(f"no execution logged for {missing} (log broken?)")
    for (run_id, node), executions in sorted(by_node.items()):
        known = seeds.get(run_id)
        if node == "join" and known is not None:
            want = {b: chaos_app.branch_value(known, b) for b in chaos_app.BRANCHES}
            for e in executions:
                if e.inputs != want:
                    problems[run_id].append(f"join in {e.pid} ran on input {e.inputs}, not {want}")
                if e.context is not None and e.context != chaos_app.BRANCHES:
                    problems[run_id].append(f"join in {e.pid} saw only {e.context} in the context")
        executions.sort(key=lambda e: e.start)
        for before, after in itertools.pairwise(executions):
            problems[run_id].extend(_unexplained(node, before, after, pool.died))

    failures = [
        f"run {run_id} (seed {seeds.get(run_id, '?')}): {'; '.join(found)}"
        for run_id, found in problems.items()
        if found
    ]
    if failures:
        failures.insert(0, f"{len(failures)} of {len(seeds)} runs went wrong")
    counts = Counter(e.pid for e in log.executions)
    if counts and not any(pid in pool.died for pid in counts):
        failures.append("no killed worker had executed anything: the kills tested nothing")
    return failures


def _unexplained(
    node: str, before: Execution, after: Execution, died: Mapping[int, tuple[float, float]]
) -> list[str]:
    again = f"{node} ran again in {after.pid} at {after.start:.3f}"
    times = died.get(before.pid)
    if times is None:
        return [f"{again} after its execution in {before.pid}, a worker that never died"]
    death, reaped = times
    if not (before.start <= reaped and death <= after.start):
        return [
            f"{again}; its execution in {before.pid} ({before.start:.3f}) does not explain it:"
            f" that worker was killed at {death:.3f}"
        ]
    if before.end is not None and death - before.end > LEASE:
        return [
            f"{again}, though its execution in {before.pid} had finished at {before.end:.3f},"
            f" {death - before.end:.1f} s before that worker died"
        ]
    return []


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def _unfinished_jobs(client: Any, run_id: str) -> str:
    """The run's enqueued jobs not marked done, read from the coordination store."""
    try:
        adapter = client.adapter
        enqueued = await adapter.coordination.members(adapter.keys.enqueued(run_id))
        done = await adapter.coordination.members(adapter.keys.done(run_id))
    except Exception as exc:  # Diagnostics only: the store layout may differ per backend.
        return f"; jobs unreadable ({exc!r})"
    return f"; jobs enqueued but not done: {sorted(set(enqueued) - set(done))}"
