"""The README runs as written: its tour's commands and every Python block, in a fresh directory.

What runs, verbatim, in one temporary directory (the tour's steps build on each other), each step in a
subprocess with ``PYTHONPATH`` set to this tree's ``src`` and ``lesion`` on ``PATH`` resolving to this
tree's command line (``python -m lesion.cli``, through a two-line shim):
- every ```` ```bash ```` block of the section "A five-minute tour", line by line, in README order;
- every ```` ```python ```` block of the README, at its place in that order;
- ``lesion serve ...`` lines are started with ``--port 0`` appended (the last ``--port`` wins), so a
  busy port 8000 on a shared machine cannot fail them; the test waits for the URL the command prints,
  asks ``/api/evaluate`` to delete units, checks the answer, and stops the server with Ctrl+C (SIGINT).

Marked slow (``-m slow``), because they take minutes on 2 cores: the commands the tour names in its
text after the blocks ("From there: ``lesion analyze ...``"), run verbatim in the same way.

Not run, and why:
- "Quick start": ``pip install ...`` would change the environment these tests run in (and needs the
  network); ``lesion reproduce`` takes about 8 minutes on a quiet 2-core CPU; ``python -m pytest`` is
  this suite. CI runs the second line itself (``test_ci_runs_the_readmes_test_command`` checks that).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOUR = "A five-minute tour"
TIMEOUT = 900  # seconds per step: generous, for a machine shared with other test suites
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def sections(text: str) -> dict[str, str]:
    """``## Heading`` -> the text under it, up to the next ``## `` heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def tour_steps(text: str) -> list[tuple[str, str]]:
    """(language, code) of the tour's bash blocks and every python block, in README order."""
    tour = sections(text)[TOUR]
    steps = []
    for match in FENCE.finditer(text):
        lang, code = match.group(1), match.group(2)
        if lang == "python" or (lang == "bash" and code in tour):
            steps.append((lang, code))
    return steps


def tour_prose_commands(text: str) -> list[str]:
    """``lesion analyze/train/serve ...`` commands written inline in the tour's text (not in blocks)."""
    prose = FENCE.sub("", sections(text)[TOUR])
    return re.findall(r"`(lesion (?:analyze|train|serve) [^`]+)`", prose)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    shims = tmp_path_factory.mktemp("bin")
    shim = shims / "lesion"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lesion.cli "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(shims), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    took = time.perf_counter() - started
    print(f"[{took:6.1f} s] {command[-1][:100]!r}")
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{command[-1]}\nexit {done.returncode}\n{output}"


def serve(line: str, cwd: Path, env: dict[str, str], units: list[str]) -> dict:
    """Start ``line`` (a ``lesion serve`` command) on a free port, delete ``units``, stop it."""
    command = line.split(" #")[0].strip()  # a trailing comment would swallow the appended option
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command} --port 0"], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = []
    try:
        deadline = time.monotonic() + TIMEOUT
        url = None
        while url is None and time.monotonic() < deadline:
            out = proc.stdout.readline()
            if not out and proc.poll() is not None:
                break
            seen.append(out)
            found = re.search(r"lesion explorer: (http://\S+)", out)
            url = found and found.group(1)
        assert url, f"{line}: no URL printed\n{''.join(seen)[-3000:]}"
        body = json.dumps({"units": units}).encode()
        request = urllib.request.Request(
            f"{url}/api/evaluate", data=body, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            assert answer.status == 200
            return json.loads(answer.read())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_readme_is_short_and_has_the_two_quick_start_commands():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    quick = FENCE.findall(sections(text)["Quick start"])
    assert [lang for lang, _ in quick] == ["bash"]
    lines = [line for line in quick[0][1].splitlines() if line.strip()]
    assert len(lines) == 2 and lines[1].endswith("&& python -m pytest"), lines


def test_ci_runs_the_readmes_test_command():
    quick = FENCE.findall(sections(README.read_text())["Quick start"])[0][1]
    test_command = [line for line in quick.splitlines() if line.strip()][1]
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_the_tour_runs_as_written(tmp_path, env):
    steps = tour_steps(README.read_text())
    assert [lang for lang, _ in steps] == ["bash", "python", "bash", "bash"], "the tour's blocks changed"
    for i, (lang, code) in enumerate(steps):
        if lang == "python":
            script = tmp_path / f"readme_block_{i}.py"
            script.write_text(code)
            run([sys.executable, script.name], tmp_path, env)
            continue
        for line in filter(str.strip, code.splitlines()):
            if line.startswith("lesion serve "):
                answer = serve(line, tmp_path, env, ["relu1:0-9", "relu2:17"])
                assert 0 <= answer["accuracy"] <= 1 and answer["delta_loss"] != 0, answer
            else:
                run(["bash", "-c", line], tmp_path, env)
    manifest = json.loads((tmp_path / "atlas" / "manifest.json").read_text())  # the atlas step, complete
    assert manifest and (tmp_path / "atlas" / "atlas.html").stat().st_size > 0


@pytest.mark.slow
def test_the_commands_named_after_the_tour_run_as_written(tmp_path, env):
    commands = tour_prose_commands(README.read_text())
    assert commands, "the tour names no further commands: update me"
    first = tour_steps(README.read_text())[0][1]  # the tour's first block trains m.safetensors, read here
    run(["bash", "-c", first], tmp_path, env)
    for line in commands:
        if line.startswith("lesion serve "):
            answer = serve(line, tmp_path, env, [])  # no units: the intact model's scores
            assert 0 <= answer["accuracy"] <= 1, answer
        else:
            run(["bash", "-c", line], tmp_path, env)
