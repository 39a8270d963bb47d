"""The long run behind RELIABILITY.md's figures (not collected by pytest, not run in CI).

    python3 -m tests.reliability.soak                      # every phase, default sizes
    python3 -m tests.reliability.soak --phases seq,conc --sequential 20000
    python3 -m tests.reliability.soak --json soak.json     # also write the figures as JSON

Phases (each on a fresh agent, every exit status and output byte checked):

- ``seq``: N execs one after the other through one ipc agent; the agent's fds, threads and
  RSS sampled every 10%, zombies counted at the end.
- ``conc``: R rounds of 1,000 execs running at once on one connection.
- ``cuts``: the random-cut workload of test_faults.py for M minutes over CURVE tcp; an agent
  that dies (libzmq's abort was BUG-2) is counted and restarted, and the phase goes on.
- ``kill``: K cycles of "SIGKILL the agent under 20 running execs and 60 waiters, restart it";
  how long the waiters took to be released (all with 255) is recorded.
- ``fuzz``: the hypothesis properties of test_fuzz_codec.py and test_fuzz_agent.py with
  UVMEXEC_FUZZ_EXAMPLES examples and a fresh seed each (pytest subprocesses).

Every figure is printed as it comes; nothing here asserts, it counts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from host_proxy import AgentClient
from tests.reliability import test_faults, test_load
from tests.reliability.helpers import (
    FreezableRelay,
    connect_tcp,
    footprint,
    warm_up,
)
from tests.support.agent import ROOT, AgentProcess, Keys, free_port, private_directory, tcp_address
from tests.support.procs import descendants, kill_and_wait


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def phase_seq(count: int) -> dict[str, Any]:
    directory = private_directory("soak-seq-")
    agent = AgentProcess([f"ipc://{directory}/agent.sock"]).start()
    samples: list[dict[str, Any]] = []
    lost = 0
    try:
        with AgentClient.connect(agent.endpoints[0], timeout=10) as client:
            warm_up(client)
            events = test_load.EventCounter()
            for index in range(200):
                test_load.run_one(client, index, events)
            start = footprint(client, agent.pid)
            samples.append({"done": 0, "fds": start.fds, "threads": start.threads, "rss_kib": start.rss_kib})
            began = time.monotonic()
            for index in range(200, 200 + count):
                try:
                    test_load.run_one(client, index, events)
                except AssertionError as error:
                    lost += 1
                    say(f"seq: exec {index} lost something: {error}")
                done = index - 199
                if done % max(1, count // 10) == 0:
                    now = footprint(client, agent.pid)
                    samples.append({"done": done, "fds": now.fds, "threads": now.threads, "rss_kib": now.rss_kib,
                                    "seconds": round(time.monotonic() - began, 1)})
                    say(f"seq: {done}/{count} in {time.monotonic() - began:.0f}s; {now}")
            elapsed = time.monotonic() - began
            end = footprint(client, agent.pid)
    finally:
        agent.stop()
    return {"execs": count, "seconds": round(elapsed, 1), "ms_per_exec": round(elapsed / count * 1000, 2),
            "lost": lost, "zombies_at_end": len(end.zombies), "children_at_end": end.children, "samples": samples}


def phase_conc(rounds: int) -> dict[str, Any]:
    directory = private_directory("soak-conc-")
    agent = AgentProcess([f"ipc://{directory}/agent.sock"]).start()
    gate = f"{directory}/gate"
    os.mkfifo(gate)
    per_round, lost = [], 0
    try:
        with AgentClient.connect(agent.endpoints[0], timeout=10) as client:
            warm_up(client)
            cold = footprint(client, agent.pid)
            for round_no in range(rounds):
                began = time.monotonic()
                try:
                    test_load.run_concurrent_round(client, agent, gate, round_no)
                except AssertionError as error:
                    lost += 1
                    say(f"conc: round {round_no} lost something: {error}")
                now = footprint(client, agent.pid)
                per_round.append({"round": round_no, "seconds": round(time.monotonic() - began, 2), "fds": now.fds,
                                  "threads": now.threads, "rss_kib": now.rss_kib, "zombies": len(now.zombies)})
                say(f"conc: round {round_no} ({test_load.CONCURRENT} at once) in {time.monotonic() - began:.1f}s; {now}")
    finally:
        agent.stop()
    return {"rounds": rounds, "concurrent": test_load.CONCURRENT, "cold": {"fds": cold.fds, "threads": cold.threads,
            "rss_kib": cold.rss_kib}, "rounds_with_loss": lost, "per_round": per_round}


def phase_cuts(minutes: float) -> dict[str, Any]:
    directory = private_directory("soak-cuts-")
    keys = Keys.create(f"{directory}/keys")
    deadline = time.monotonic() + minutes * 60
    totals: dict[str, Any] = {"execs": 0, "cuts": 0, "execs_with_loss": 0, "agent_aborts": 0, "client_gave_up": 0, "losses": []}
    pacing = random.Random(test_faults.SEED)
    counter = [0]  # the next job's index, shared by every agent's workers
    while time.monotonic() < deadline:
        agent = AgentProcess([f"tcp://127.0.0.1:{free_port()}"],
                             ["--server-key", keys.agent_secret, "--authorized-keys", keys.authorized]).start()
        relay = FreezableRelay(tcp_address(agent))
        jobs: list[test_faults.Job] = []
        lock = threading.Lock()
        stop = threading.Event()
        try:
            with connect_tcp(relay.endpoint, keys, reconnect_timeout=20) as client:

                workers = [threading.Thread(target=_cut_worker, args=(client, jobs, lock, stop, deadline, counter))
                           for _ in range(4)]
                for thread in workers:
                    thread.start()
                while any(thread.is_alive() for thread in workers):
                    workers[0].join(pacing.uniform(0.0, 0.2))
                    if agent.process is not None and agent.process.poll() is not None:
                        stop.set()
                        client.close()
                        break
                    back = client.reconnects
                    relay.cut()
                    totals["cuts"] += 1
                    try:
                        while client.reconnects <= back and not stop.is_set():
                            client.ping()
                    except Exception:
                        stop.set()
                        break
                for thread in workers:
                    thread.join(60)
        finally:
            aborted = agent.process is not None and agent.process.poll() == -signal.SIGABRT
            relay.close()
            agent.stop()
        totals["execs"] += len(jobs)
        broken = [job for job in jobs if job.problems]
        if aborted:
            totals["agent_aborts"] += 1
            say(f"cuts: the agent aborted after {len(jobs)} execs; restarting it")
            broken = [job for job in broken if not any("Error" in problem for problem in job.problems)]
        elif broken and any("Unavailable" in problem for job in broken for problem in job.problems):
            totals["client_gave_up"] += 1
        for job in broken:
            totals["losses"].append({job.name: job.problems})
        totals["execs_with_loss"] += len(broken)
        say(f"cuts: {totals['execs']} execs, {totals['cuts']} cuts, {totals['execs_with_loss']} with a loss, "
            f"{totals['agent_aborts']} agent aborts")
    totals["losses"] = totals["losses"][:20]
    return totals


def _cut_worker(client: AgentClient, jobs: list[test_faults.Job], lock: threading.Lock, stop: threading.Event,
                deadline: float, counter: list[int]) -> None:
    while not stop.is_set() and time.monotonic() < deadline:
        with lock:
            job = test_faults.make_job(counter[0])
            counter[0] += 1
            jobs.append(job)
        try:
            test_faults.run_job(client, job)
        except Exception as error:  # an agent that died, a client that gave up
            job.problems.append(f"{type(error).__name__}: {error}")
            stop.set()
            return


def _wait_all(execs: list[Any], results: list[int]) -> list[threading.Thread]:
    """Three waiters per exec, each appending the status it got."""
    return [threading.Thread(target=lambda made=made: results.append(made.wait(60).exit_status))
            for made in execs for _ in range(3)]


def phase_kill(cycles: int) -> dict[str, Any]:
    directory = private_directory("soak-kill-")
    endpoint = f"ipc://{directory}/agent.sock"
    released, wrong = [], 0
    for _ in range(cycles):
        agent = AgentProcess([endpoint]).start()
        leftovers: list[int] = []
        try:
            with AgentClient.connect(endpoint, timeout=10, reconnect_timeout=2.0) as client:
                execs = []
                for index in range(20):
                    made = client.create_exec("soak-kill", f"e{index}", test_faults.sh("sleep 1000"))
                    made.start()
                    execs.append(made)
                results: list[int] = []
                waiters = _wait_all(execs, results)
                for waiter in waiters:
                    waiter.start()
                leftovers = descendants(agent.pid)
                killed = time.monotonic()
                agent.kill()
                for waiter in waiters:
                    waiter.join(60)
                released.append(round(time.monotonic() - killed, 2))
                wrong += sum(1 for status in results if status != 255) + (len(waiters) - len(results))
        finally:
            agent.stop()
            kill_and_wait(leftovers)
    say(f"kill: {cycles} cycles, waiters released after {min(released)}-{max(released)}s, {wrong} wrong or hung")
    return {"cycles": cycles, "waiters_per_cycle": 60, "deadline_s": 2.0, "released_after_s_min": min(released),
            "released_after_s_max": max(released), "wrong_or_hung": wrong}


def phase_fuzz(examples: int) -> dict[str, Any]:
    seed = random.randrange(2**32)
    env = {**os.environ, "UVMEXEC_FUZZ_EXAMPLES": str(examples), "UVMEXEC_FUZZ_SEED": str(seed)}
    figures = {}
    for target in ("tests/reliability/test_fuzz_codec.py", "tests/reliability/test_fuzz_agent.py::"
                   "test_generated_frames_and_requests_never_break_the_agent"):
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                                 "-o", "timeout=0", target], cwd=ROOT, env=env, capture_output=True, text=True)
        summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
        figures[target] = {"seed": seed, "examples_per_property": examples, "seconds": round(time.monotonic() - began),
                           "summary": summary,
                           "wire": [line for line in result.stdout.splitlines() if "over-the-wire fuzz" in line]}
        say(f"fuzz: {target}: {summary}")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="seq,conc,cuts,kill,fuzz")
    parser.add_argument("--sequential", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cut-minutes", type=float, default=5.0)
    parser.add_argument("--kill-cycles", type=int, default=20)
    parser.add_argument("--fuzz-examples", type=int, default=10_000)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    figures: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "host_cores": os.cpu_count()}
    runners = {
        "seq": lambda: phase_seq(args.sequential),
        "conc": lambda: phase_conc(args.rounds),
        "cuts": lambda: phase_cuts(args.cut_minutes),
        "kill": lambda: phase_kill(args.kill_cycles),
        "fuzz": lambda: phase_fuzz(args.fuzz_examples),
    }
    for name in args.phases.split(","):
        began = time.monotonic()
        say(f"phase {name}")
        figures[name] = runners[name]()
        figures[name]["phase_seconds"] = round(time.monotonic() - began)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(figures, out, indent=2)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
