"""Workers die with their driver (issue 12, item 5): SIGKILL the driver of a run with two worker
processes, and every process it started (workers, resource tracker) ends within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lesion.experiments import Job, kind

ROOT = Path(__file__).resolve().parents[1]


@kind("sleepy")
def sleepy(params, inputs, out):
    (Path(params["dir"]) / f"{os.getpid()}.pid").write_text("")
    time.sleep(120)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected


def test_sigkill_of_the_driver_ends_its_workers(tmp_path):
    code = (
        "import sys; from lesion.experiments import Job, Store, run; import tests.test_orphans; "
        "jobs = [Job('sleepy', {'dir': sys.argv[1], 'i': i}) for i in range(2)]; "
        "run(jobs, Store(sys.argv[1] + '/run'), workers=2)"
    )
    driver = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(list(tmp_path.glob("*.pid"))) < 2:
            time.sleep(0.05)
        workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert len(workers) == 2, "both jobs must be running in workers"
        started = children(driver.pid)
        assert set(workers) <= set(started)
        driver.send_signal(signal.SIGKILL)  # the driver alone, not its process group
        driver.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(alive(p) for p in started):
            time.sleep(0.05)
        assert not [p for p in started if alive(p)], "processes outlived their driver"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        os.killpg(driver.pid, signal.SIGKILL) if _group_alive(driver.pid) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def test_kind_is_registered():
    assert Job("sleepy", {"dir": "x"}).kind == "sleepy"
