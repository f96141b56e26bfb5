"""Training jobs started from the pages: `linesight project fit|learn` in a child process, followed live.

Why a child process: training needs torch and gigabytes the UI process never loads (it stays torch-free), a crash
or an out-of-memory kill there ends the job, not the UI, and cancel is a signal to its process group. Why its JSON
log lines: `--log-format json` gives every progress step and loss point as typed fields (trainer.progress,
trainer.selfsup), so nothing is parsed out of text. One job at a time: a 2-core line PC has no room for two fits.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from linesight.config.base import Strict
from linesight.config.project import TrainConfig
from linesight.project.workspace import now
from linesight.ui.events import Broadcaster, Event

log = logging.getLogger(__name__)

KEEP_JOBS = 20  # finished jobs the pages can still open
LOG_TAIL = 40  # log messages kept per job
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long

JobKind = Literal["fit", "learn", "tune"]


class Busy(Exception):
    """Another job is running (409)."""


class StageProgress(Strict):
    """One progress report of the child (trainer.progress.Progress)."""

    stage: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float


class LossPoint(Strict):
    """One validation point of self-supervised training (trainer.selfsup)."""

    step: int
    loss: float
    val_auroc: float


class Job(Strict):
    """What the training page shows of one job."""

    id: str
    project: str
    kind: JobKind
    by: str | None = Field(description="The token's name that started it")
    state: Literal["running", "done", "failed", "cancelled"]
    started: str
    ended: str | None = None
    seconds: float = 0.0
    progress: StageProgress | None = Field(None, description="The latest progress report")
    stages: list[StageProgress] = Field(default_factory=list, description="The last report of each stage, in order")
    loss: list[LossPoint] = Field(default_factory=list)
    log: list[str] = Field(default_factory=list, description=f"The last {LOG_TAIL} log messages")
    result: dict[str, Any] | None = Field(None, description="What the command printed (its JSON) when it succeeded")
    error: str | None = Field(None, description="Why it failed: the command's last error line")


class _Running:
    """A job's child process and its bookkeeping (the reader thread writes `job`; routes read copies)."""

    def __init__(self, job: Job, proc: subprocess.Popen, config_file: Path | None) -> None:
        self.job, self.proc, self.config_file = job, proc, config_file
        self.t0 = time.monotonic()
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self.cancelled = False


class JobRunner:
    """Starts, follows and cancels jobs; `events` carries a `job` event for every change."""

    def __init__(self) -> None:
        self.events = Broadcaster()
        self._lock = threading.Lock()
        self._jobs: dict[str, _Running] = {}

    # ------------------------------------------------------------------ reading
    def jobs(self) -> list[Job]:
        with self._lock:
            return [r.job.model_copy(deep=True) for r in reversed(self._jobs.values())]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            r = self._jobs.get(job_id)
            return None if r is None else r.job.model_copy(deep=True)

    # ------------------------------------------------------------------ starting and stopping
    def start(self, project: str, root: Path, kind: JobKind, by: str | None, args: tuple[str, ...] = (),
              config: TrainConfig | None = None) -> Job:
        """Start `linesight project KIND -p ROOT ARGS...` (fit: with `config` when given). Busy while one runs."""
        with self._lock:
            running = [r.job for r in self._jobs.values() if r.job.state == "running"]
            if running:
                raise Busy(f"job {running[0].id} ({running[0].kind} of {running[0].project}) is running; wait for "
                           "it or cancel it")
            config_file = None
            argv = [sys.executable, "-m", "linesight", "--log-format", "json", "project", kind, "-p", str(root), *args]
            if config is not None:
                fd, name = tempfile.mkstemp(prefix="linesight-train-", suffix=".json")
                with os.fdopen(fd, "w") as fh:
                    fh.write(config.model_dump_json(by_alias=True))
                config_file = Path(name)
                argv += ["--config", name]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, start_new_session=True)
            job = Job(id=uuid.uuid4().hex[:12], project=project, kind=kind, by=by, state="running", started=now())
            run = _Running(job, proc, config_file)
            self._jobs[job.id] = run
            while len(self._jobs) > KEEP_JOBS:
                oldest = next(k for k, r in self._jobs.items() if r.job.state != "running")
                del self._jobs[oldest]
        log.info("job started", extra={"job": job.id, "project": project, "kind": kind, "by": by})
        threading.Thread(target=self._follow, args=(run,), name=f"job-{job.id}", daemon=True).start()
        self._announce(run)
        return job.model_copy(deep=True)

    def cancel(self, job_id: str) -> Job | None:
        """SIGTERM to the job's process group (SIGKILL after STOP_GRACE_S); None when there is no such job."""
        with self._lock:
            run = self._jobs.get(job_id)
            if run is None:
                return None
            if run.job.state == "running":
                run.cancelled = True
                _signal(run.proc, signal.SIGTERM)
                threading.Timer(STOP_GRACE_S, _signal, (run.proc, signal.SIGKILL)).start()
            return run.job.model_copy(deep=True)

    def stop(self) -> None:
        """The UI stops: running jobs are cancelled (a build folder left behind is resumed by the next fit)."""
        for job in self.jobs():
            if job.state == "running":
                self.cancel(job.id)

    # ------------------------------------------------------------------ following
    def _follow(self, run: _Running) -> None:
        assert run.proc.stderr is not None and run.proc.stdout is not None
        last_error = None
        for line in run.proc.stderr:
            record = _record(line)
            with self._lock:
                if record is None:  # not one of our JSON lines (a library writing to stderr): kept as text
                    run.tail.append(line.rstrip()[:500])
                else:
                    if "progress" in record:
                        _progress(run.job, StageProgress.model_validate(record["progress"]))
                    if "loss" in record:
                        run.job.loss.append(LossPoint.model_validate(record["loss"]))
                    run.tail.append(f"{record.get('level', '')} {record.get('message', '')}"[:500])
                    if record.get("level") in ("ERROR", "CRITICAL"):
                        last_error = str(record.get("message", ""))
                if record is None and line.startswith("linesight"):  # the CLI's one-line user error
                    last_error = line.strip()
                run.job.log = list(run.tail)
                run.job.seconds = round(time.monotonic() - run.t0, 1)
            self._announce(run)
        out = run.proc.stdout.read()
        rc = run.proc.wait()
        if run.config_file is not None:
            run.config_file.unlink(missing_ok=True)
        with self._lock:
            job = run.job
            job.ended, job.seconds = now(), round(time.monotonic() - run.t0, 1)
            if run.cancelled:
                job.state = "cancelled"
            elif rc == 0:
                job.state = "done"
                try:
                    job.result = json.loads(out)
                except ValueError:
                    job.result = {"output": out[-2000:]}
            else:
                job.state, job.error = "failed", last_error or f"exit status {rc}"
        log.info("job ended", extra={"job": job.id, "state": job.state, "seconds": job.seconds})
        self._announce(run)

    def _announce(self, run: _Running) -> None:
        with self._lock:
            data = run.job.model_dump(mode="json")
        self.events.publish(Event("job", data))


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _progress(job: Job, p: StageProgress) -> None:
    """The newest report of each stage, stages in the order they last reported."""
    job.progress = p
    job.stages = [s for s in job.stages if s.stage != p.stage] + [p]


def _signal(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
