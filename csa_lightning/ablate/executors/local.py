"""The local executor: each run a process on this machine, ``--parallel`` at once, one GPU each when
there are GPUs (CUDA_VISIBLE_DEVICES). SIGTERM or SIGINT to the runner is passed on to the runs, which
it waits for; each run holds a lock on its folder itself (SIGKILL cannot be passed on)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ...run_folder import AblationFolder, RunFolder, log_attempt, read_attempts, stopped_by_signal
from ...run_folder.attempts import last_attempt_lines
from ..job import start_training
from ..plan import Variant
from ..records import finish_record
from . import Executor, Run, Status


class LocalExecutor(Executor):
    name = "local"

    def live(self, out: Path, variants: Sequence[Variant]) -> Dict[str, Status]:
        from ...checks import run_lock_holder

        live = {}
        for v in variants:
            run = AblationFolder(out).run(v.name)
            pid = run_lock_holder(str(run.lock))
            if pid is not None:
                live[v.name] = Status("running", job=f"pid {pid}", log=str(run.log()))
        return live

    def status(self, out: Path, variant: Variant) -> Status:
        return status_from_attempts(AblationFolder(out).run(variant.name).path)

    def submit(self, out: Path, runs: Sequence[Run], finished) -> List[str]:
        devices = _gpu_ids()
        running: Dict[int, Tuple[Run, subprocess.Popen, float]] = {}
        slots = list(range(max(1, self.args.parallel)))
        failures: List[str] = []
        with _stop_runs_on_signal(running):
            _run_queue(list(runs), devices, running, slots, failures, finished)
        return failures

    def cancel(self, out: Path, variants: Sequence[Variant]) -> List[str]:
        import os
        import signal

        stopped = []
        for name, status in self.live(out, variants).items():
            os.kill(int(str(status.job).split()[1]), signal.SIGTERM)  # "pid N": the run stops at a batch boundary
            stopped.append(name)
        return stopped


def status_from_attempts(run_dir: Path) -> Status:
    """A run without a record and no live process, from its attempt log and its output."""
    log = RunFolder(Path(run_dir)).log()
    events = read_attempts(run_dir)
    ends = [e for e in events if e.get("event") == "end"]
    if events and events[-1].get("event") == "stop" and events[-1].get("cause") == "runner ended":
        return Status("stopped", log=str(log), detail=f"stopped when its runner (pid {events[-1].get('runner_pid')}) "
                      "ended; run again to resume")  # fmt: skip
    if not ends:
        return Status("not started" if not run_dir.is_dir() else "failed", log=str(log) if log.exists() else None,
                      detail="" if not run_dir.is_dir() else "ended without a record")  # fmt: skip
    code = ends[-1].get("code")
    if stopped_by_signal(code):
        how = "killed by it" if int(code or 0) < 0 else f"exit {code}"
        name = "SIGTERM" if code in (143, -15) else "SIGINT"
        return Status("stopped", log=str(log), detail=f"stopped by {name} ({how}); run again to resume")
    return Status("failed", log=str(log), detail=last_error_line(log) or f"exit {code}")


def last_error_line(log: Path) -> str:
    """The last line of a Python error (or the project's one-line error) the last attempt wrote to a log
    (a log holds every attempt's output: an earlier attempt's error is not this one's), if any."""
    lines = [line.strip() for line in last_attempt_lines(log)[-200:] if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: ") or (":" in line and line.split(":", 1)[0].endswith(("Error", "Exception"))):
            return line[:300]
    return ""


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


class _stop_runs_on_signal:
    """SIGTERM or SIGINT to the runner: pass SIGTERM on to every running training process, wait for
    them (each saves nothing new but stops at a batch boundary; its last epoch-end checkpoint is what
    the next runner resumes), then exit 143 (130 for SIGINT) with one line. SIGKILL cannot be passed
    on: the runs' own locks keep a restarted runner from training into a folder a live run still uses."""

    def __init__(self, running: Dict[int, Tuple[Run, subprocess.Popen, float]]) -> None:
        self.running = running

    def __enter__(self):
        import signal
        import threading

        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Stopped(signum)

    def __exit__(self, kind, error, tb):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if kind is KeyboardInterrupt:
            error = _Stopped(signal.SIGINT)
        if not isinstance(error, _Stopped):
            return False
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the wait short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs = [proc for _, proc, _ in self.running.values() if proc.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait()
        for run, proc, _ in self.running.values():
            log_attempt(run.run_dir, "end", code=proc.returncode)
        names = ", ".join(r.variant.name for r, _, _ in self.running.values()) or "none"
        print(
            f"error: ablation stopped by {signal.Signals(error.signum).name}; {len(procs)} run(s) interrupted "
            f"({names}) and ended; run the same command again to resume them from their last checkpoints",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(143 if error.signum == signal.SIGTERM else 130)


def _run_queue(todo: List[Run], devices, running, slots, failures: List[str], finished) -> None:
    total = len(todo)
    done = 0
    while todo or running:
        while todo and slots:
            slot = slots.pop(0)
            run = todo.pop(0)
            device = devices[slot % len(devices)] if devices else None
            print(
                f"[{done + len(running) + 1}/{total}] running {run.variant.group} seed={run.variant.seed} "
                f"({len(todo)} queued){'' if device is None else f' on GPU {device}'}",
                flush=True,
            )
            env = dict(run.env)
            if device is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(device)
            # the training ends if this runner dies, however it dies (this loop runs in the main thread)
            running[slot] = (run, start_training(run.run_dir, run.command, env, end_with_parent=True), time.time())
        time.sleep(0.5)
        for slot, (run, proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            slots.append(slot)
            log_attempt(run.run_dir, "end", code=proc.returncode)
            why = f"exit {proc.returncode}"
            if proc.returncode == 0:
                try:
                    finish_record(run.run_dir, time.time() - started)
                    why = ""
                except ValueError as err:  # the run ended without its metric: not done
                    why = str(err)
            if why:
                failures.append(run.variant.name)
                print(f"    {run.variant.name} failed ({why}); see {RunFolder(run.run_dir).log()}", flush=True)
                continue
            done += 1
            finished()
            print(f"    done {run.variant.name}: {done}/{total} of this run finished", flush=True)


def _gpu_ids() -> List[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:
        return []
