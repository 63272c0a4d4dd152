"""Real `vigil schedule` processes for the reliability suite, with their logs in files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAN = re.compile(r"monitors\.scheduler: job (\S+) ran \(scheduled for ([^)]+)\)")


def scheduler_env(db_url: str, folder: Path, **extra: str) -> dict[str, str]:
    """Short intervals so a few seconds show many cycles; a private drop folder."""
    env = {
        **os.environ,
        "DO_NOT_TRACK": "1",
        "VIGIL_DATABASE_URL": db_url,
        "VIGIL_INBOX_DIR": str(folder / "inbox"),
        "VIGIL_PROCESSED_DIR": str(folder / "processed"),
        "VIGIL_SPOOL_DIR": str(folder / "spool"),
        "VIGIL_HEARTBEAT_SECONDS": "1",
        "VIGIL_COLLECT_INTERVAL_SECONDS": "1",
        "VIGIL_PAGING_INTERVAL_SECONDS": "1",
        "VIGIL_LEADER_POLL_SECONDS": "0.5",
        "VIGIL_LOG_LEVEL": "INFO",
    }
    env.pop("VIGIL_SLACK_BOT_TOKEN", None)
    env.update(extra)
    return env


@dataclass
class Scheduler:
    """One `vigil -v schedule` process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, env: dict[str, str], folder: Path) -> Scheduler:
        log = folder / f"{name}.log"
        handle = log.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "vigil", "-v", "schedule"],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        return cls(name, process, log)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, needle: str, timeout: float = 60.0) -> float:
        """Seconds until `needle` appears in the log; fails if the process dies first."""
        started = time.monotonic()
        while needle not in self.text():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.process.returncode}:\n{self.text()}"
                )
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{self.name}: no {needle!r} in {timeout}s:\n{self.text()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def leads(self) -> bool:
        return f"scheduler {self.process.pid} leads" in self.text()

    def runs(self) -> list[tuple[str, str]]:
        """(job id, scheduled time) of every job this process ran, in order."""
        return RAN.findall(self.text())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)
