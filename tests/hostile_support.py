"""Hostile model directories and data files (issue 30), and a runner that measures a command in a child
process: exit code, output, seconds and peak RSS (``os.wait4`` reports the child's own maximum).

Shared by ``tests/test_untrusted.py`` and ``benchmarks/hostile/run_hostile.py``; HF models are built from
configs with ``transformers`` (no hub).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PREEXEC = None  # e.g. a resource limit for every child (benchmarks/hostile/run_hostile.py sets one)


@dataclass
class Ran:
    rc: int
    out: str
    seconds: float  # the whole child, Python and imports included
    rss_mb: float
    timed_out: bool

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out


PEAK = """
import atexit as _atexit, resource as _resource, sys as _sys
def peak_mb():
    # this process's own peak RSS: VmHWM (getrusage's ru_maxrss also counts the parent's RSS at fork)
    try:
        with open("/proc/self/status") as f:
            return int(f.read().split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError, ValueError):
        return _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024
_atexit.register(lambda: print("PEAK_RSS_MB", peak_mb(), flush=True))
"""


def _wrapped(argv: list[str]) -> list[str]:
    """``python -m mod args`` or ``python -c code`` as ``python -c`` that reports its own peak RSS at exit."""
    if argv[0] == "-m":
        run = f"runpy.run_module({argv[1]!r}, run_name='__main__', alter_sys=True)"
        body = f"import runpy\n_sys.argv = {argv[1:]!r}\n{run}\n"
    else:
        body = argv[1]
    return ["-c", PEAK + body]


def run_child(argv: list[str], *, stdin: str = "y\ny\ny\n", timeout: float = 60.0, cwd=None) -> Ran:
    """Run ``python argv...`` (``-m module ...`` or ``-c code``) with this tree's ``src`` first on the path;
    stdin answers "y". ``rss_mb`` is the child's own peak (VmHWM, printed at exit; if it was killed,
    getrusage's ru_maxrss, which also counts the parent's RSS at fork)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env |= {"TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        p = subprocess.Popen([sys.executable, *_wrapped(argv)], stdin=subprocess.PIPE, stdout=out,
                             stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=PREEXEC)  # fmt: skip
        try:
            p.stdin.write(stdin.encode())
            p.stdin.close()
        except BrokenPipeError:
            pass
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            p.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    peaks = [float(line.split()[1]) for line in lines if line.startswith("PEAK_RSS_MB ")]
    text = "".join(line for line in lines if not line.startswith("PEAK_RSS_MB "))
    rss = peaks[-1] if peaks else usage.ru_maxrss / 1024
    return Ran(p.returncode, text, seconds, rss, killed.is_set())


CASES = """
import json, sys, time
import torch
try:
    import transformers.modeling_utils, transformers.models.gpt2.modeling_gpt2
    import transformers.models.resnet.modeling_resnet
except ImportError:
    pass
from lesion.cli import main
for name, args in CASES_LIST:
    print("CASE_START", name, flush=True)
    print("CASE_START", name, file=sys.stderr, flush=True)
    sys.argv = ["lesion", *args]
    start = time.perf_counter()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        import traceback
        traceback.print_exc()
        code = 99
    sys.stderr.flush()
    print("CASE_END", json.dumps([name, code, time.perf_counter() - start, peak_mb()]), flush=True)
"""


@dataclass
class Case:
    name: str
    rc: int
    seconds: float  # the command alone: torch and the transformers modules were imported before
    rss_mb: float  # peak RSS of the child so far (it only grows: a case that allocates shows a jump)
    out: str

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.out


def lesion_cases(cases: list[tuple[str, list]], *, timeout: float = 300.0) -> tuple[dict[str, Case], Ran]:
    """Run several ``lesion`` commands one after another in one child (imports paid once); each one's
    exit code, seconds, peak RSS and output."""
    listed = [(name, [str(a) for a in args]) for name, args in cases]
    ran = run_child(["-c", CASES.replace("CASES_LIST", repr(listed))], timeout=timeout)
    found, text = {}, ran.out
    for name, _ in listed:
        start = text.find(f"CASE_START {name}\n")
        end = text.find("CASE_END ", start)
        if start < 0 or end < 0:
            break
        line = text[end:].splitlines()[0]
        _, code, seconds, peak = json.loads(line.removeprefix("CASE_END "))
        body = text[start:end].replace(f"CASE_START {name}\n", "")
        found[name] = Case(name, code, seconds, peak, body)
    return found, ran


def lesion_cli(*args, **kwargs) -> Ran:
    """``lesion ARGS`` in a child process of its own (stdin answers "y")."""
    return run_child(["-m", "lesion.cli", *map(str, args)], **kwargs)


def python_code(code: str, **kwargs) -> Ran:
    return run_child(["-c", code], **kwargs)


# --------------------------------------------------------------------------- Hugging Face directories


def gpt2_dir(path: Path, **config) -> Path:
    """A tiny random GPT-2 saved as safetensors (``config`` overrides the sizes)."""
    import torch
    import transformers

    sizes = dict(
        n_layer=1, n_embd=16, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**(sizes | config))).save_pretrained(
        path, safe_serialization=True
    )
    return path


def edit_config(path: Path, **changes) -> Path:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        config.pop(k)
    (path / "config.json").write_text(json.dumps(config))
    return path


def remote_code_dir(path: Path, marker: Path) -> Path:
    """A GPT-2 whose config names its own code in auto_map: importing it would create ``marker``."""
    gpt2_dir(path)
    edit_config(
        path,
        model_type="evil",
        architectures=["EvilModel"],
        auto_map={
            "AutoConfig": "configuration_evil.EvilConfig",
            "AutoModelForCausalLM": "modeling_evil.EvilModel",
        },
    )
    touch = f"open({str(marker)!r}, 'w').write('code ran')\n"
    (path / "configuration_evil.py").write_text(
        touch
        + "from transformers import GPT2Config\n\nclass EvilConfig(GPT2Config):\n    model_type = 'evil'\n"
    )
    (path / "modeling_evil.py").write_text(
        touch + "from transformers import GPT2LMHeadModel\nfrom .configuration_evil import EvilConfig\n\n"
        "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n"
    )
    return path


def config_bomb_dir(path: Path, **config) -> Path:
    """A tiny GPT-2's weights under a config that describes a much larger model."""
    gpt2_dir(path)
    return edit_config(path, **config)


def resnet_dir(path: Path, **config) -> Path:
    """A tiny ResNetForImageClassification saved as a genuine one is: its config has no image_size."""
    import torch
    import transformers

    sizes = dict(num_channels=1, embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], num_labels=3)
    torch.manual_seed(0)
    transformers.ResNetForImageClassification(transformers.ResNetConfig(**sizes)).save_pretrained(
        path, safe_serialization=True
    )
    return edit_config(path, **config) if config else path


def raw_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


# --------------------------------------------------------------------------- lesion's own model files


def lesion_file(path: Path, arch: dict, state: dict | None = None) -> Path:
    """A lesion model file whose header records ``arch`` (weights: ``state``, or one dummy tensor)."""
    import torch
    from safetensors.torch import save_file

    meta = {"format": "lesion-model", "version": "1", "arch": json.dumps(arch), "metadata": "{}"}
    save_file(state or {"w": torch.zeros(1)}, str(path), metadata=meta)
    return path


def word_tokenizer_dir(path: Path, words: list[str]) -> Path:
    """A tiny GPT-2 with a word-level tokenizer (built offline with ``tokenizers``) of ``words``."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    gpt2_dir(path, vocab_size=max(50, len(fast)))
    fast.save_pretrained(path)
    return path


def mlp_file(path: Path) -> Path:
    """An untrained lesion MLP for 8x8 digits (``--dataset digits``)."""
    from lesion.models import build_model, save_model

    arch = {"kind": "mlp", "input_shape": [1, 8, 8], "widths": [8], "n_classes": 10}
    save_model(build_model(arch, seed=0), path, arch=arch, metadata={"dataset": "digits"})
    return path


def finishes(fn, fifos: list[Path], seconds: float = 20.0):
    """``fn()``'s exception (or None) if it returns within ``seconds``; an AssertionError if it blocks,
    after unblocking it by opening each FIFO for writing (so a regression fails instead of hanging)."""
    box: list = []

    def run() -> None:
        try:
            fn()
            box.append(None)
        except BaseException as e:
            box.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for f in fifos:
            with contextlib.suppress(OSError):  # no reader: nothing was blocked on this one
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        raise AssertionError(f"blocked for more than {seconds} s on a FIFO")
    return box[0]
