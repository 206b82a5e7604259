"""Rerun the hostile list of issue 30 against a lesion source tree and count what must be 0: raw
tracebacks, hangs, code executions, data lost (and expectations missed).

    python benchmarks/hostile/run_hostile.py                      # this tree's src/
    python benchmarks/hostile/run_hostile.py --src /tmp/old/src   # another tree (e.g. before the fix)

Every hostile input is built in a temporary folder (Hugging Face models from configs with transformers;
nothing is downloaded). Commands run in child processes, most of them one after another in one child
(imports paid once) with its peak RSS and each command's seconds; FIFOs and Ray addresses each in a child
of their own with a 30 s deadline. Each child's address space is capped (``--memory-limit-gb``, default
8) so that a bomb in an old tree cannot exhaust a shared machine. Prints a table and the counts, and
writes them as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]  # inputs are built with this tree

import numpy as np  # noqa: E402
from tests import hostile_support as H  # noqa: E402
from tests.test_untrusted import bomb_cases  # noqa: E402
from tests.test_untrusted_data import npy_claiming, zip_of  # noqa: E402

HANG_SECONDS = 30.0
WORDS = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "sat", "on", "the", "log"]


def build(d: Path) -> dict[str, Path]:
    """Every hostile input, by name."""
    p: dict[str, Path] = {}
    p["marker"] = d / "MARKER"
    p["evil"] = H.remote_code_dir(d / "evil", p["marker"])
    p["gpt2"] = H.word_tokenizer_dir(d / "gpt2", WORDS)
    p["mlp"] = H.mlp_file(d / "mlp.safetensors")
    p["resnet"] = H.resnet_dir(d / "resnet")
    for name, changes in {
        "typed": {"n_layer": "2"}, "quantised": {"quantization_config": {"quant_method": "bitsandbytes"}},
        "flash": {"_attn_implementation": "flash_attention_2"}, "labels_config": {"num_labels": 10**9},
    }.items():  # fmt: skip
        p[name] = H.edit_config(H.gpt2_dir(d / name), **changes)
    p["noncontig"] = H.gpt2_dir(d / "noncontig")
    raw = (p["noncontig"] / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"] = [o + 4 for o in header[first]["data_offsets"]]
    H.raw_safetensors(p["noncontig"] / "model.safetensors", header, raw[8 + n :])
    p["tok_class"] = H.gpt2_dir(d / "tok_class")  # no tokenizer.json to fall back on
    (p["tok_class"] / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "NoSuchTokenizer"}))
    p["tok_deep"] = H.gpt2_dir(d / "tok_deep")
    (p["tok_deep"] / "tokenizer.json").write_text('{"a":' + "[" * 100_000 + "]" * 100_000 + "}")
    p["symlink"] = d / "symlink"
    p["symlink"].mkdir()
    shutil.copy(p["gpt2"] / "config.json", p["symlink"])
    (p["symlink"] / "model.safetensors").symlink_to(p["gpt2"] / "model.safetensors")
    p["pickle_index"] = d / "pickle_index"
    p["pickle_index"].mkdir()
    shutil.copy(p["gpt2"] / "config.json", p["pickle_index"])
    (d / "outside.bin").write_bytes(b"\x80\x02}q\x00.")  # an empty pickled dict, outside the directory
    (p["pickle_index"] / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"w": "../outside.bin"}})
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 1, 8, 8)).astype(np.float32), np.arange(40) % 2
    y[:2] = 10**9
    np.savez(p.setdefault("labels_npz", d / "labels.npz"), x=x, y=y)
    np.savez(
        p.setdefault("empty_npz", d / "empty.npz"), x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64)
    )
    np.savez(
        p.setdefault("zero_width_npz", d / "zero_width.npz"),
        x=np.zeros((40, 0), np.float32),
        y=np.arange(40) % 2,
    )
    np.savez(
        p.setdefault("complex_npz", d / "complex.npz"), x=(x + 1j).astype(np.complex64), y=np.arange(40) % 2
    )
    (d / "bomb.npy").write_bytes(npy_claiming((10**12,), "<i8"))
    (d / "bomb.npz").write_bytes(zip_of({"input_ids.npy": npy_claiming((10**12,), "<i8")}))
    p["bomb_npy"], p["bomb_npz"] = d / "bomb.npy", d / "bomb.npz"
    p["big_text"] = d / "big.txt"
    with open(p["big_text"], "w") as f:  # 50 MB of text, of which 4 x 8 tokens are used
        line = " ".join(WORDS * 8000) + "\n"
        while f.tell() < 50 << 20:
            f.write(line)
    fifo = d / "fifo"
    fifo.mkdir()
    p["fifo_hf"] = fifo / "hf"
    p["fifo_hf"].mkdir()
    shutil.copy(p["gpt2"] / "config.json", p["fifo_hf"])
    os.mkfifo(p["fifo_hf"] / "model.safetensors")
    for name in ("own.safetensors", "ids.npy", "text.txt", "data.npz"):
        os.mkfifo(fifo / name)
    p["keep"] = d / "keep"  # an existing output folder: never replaced without --force
    p["keep"].mkdir()
    (p["keep"] / "precious.txt").write_text("results of a week")
    return p


def cli_cases(p: dict[str, Path], d: Path) -> list[tuple[str, list, str]]:
    """(name, lesion arguments, text the output must hold) run in one child."""
    out = ["--out", p["keep"]]
    lm = ["--repeats", "1", "--fractions", "2", "--seq-len", "8", "--sequences", "4"]
    cases = [(name, args, "error:") for name, args in bomb_cases(d / "bombs")]
    return [
        *cases,
        ("resnet_without_image_size", ["layers", p["resnet"]], "resnet"),
        ("typed_config", ["layers", p["typed"]], "expected a positive int"),
        ("quantised_config", ["layers", p["quantised"]], "quantised"),
        ("flash_attention_config", ["layers", p["flash"]], "transformer.h.0.attn"),
        ("num_labels_1e9", ["layers", p["labels_config"]], "num_labels"),
        ("non_contiguous_offsets", ["layers", p["noncontig"]], "contiguous"),
        ("unknown_tokenizer_class", ["layers", p["tok_class"]], "tokenizer files present but unreadable"),
        ("tokenizer_json_nested_100000", ["layers", p["tok_deep"]], "nested too deeply"),
        ("symlink_outside", ["layers", p["symlink"]], "leads outside"),
        ("pickle_index_dotdot", ["layers", p["pickle_index"], "--allow-pickle"], "leads outside"),
        (
            "npz_label_1e9",
            [
                "train",
                "--dataset",
                p["labels_npz"],
                "--widths",
                "4",
                "--epochs",
                "1",
                "--out",
                d / "trained.safetensors",
            ],
            "test accuracy",
        ),
        ("npy_header_1e12", ["analyze", p["gpt2"], "--tokens", p["bomb_npy"], *out, *lm], "header claims"),
        ("npz_header_1e12", ["analyze", p["gpt2"], "--tokens", p["bomb_npz"], *out, *lm], "header claims"),
        (
            "empty_arrays",
            ["train", "--dataset", p["empty_npz"], "--out", d / "e.safetensors"],
            "expected at least",
        ),
        (
            "zero_width_arrays",
            ["train", "--dataset", p["zero_width_npz"], "--out", d / "z.safetensors"],
            "expected at least",
        ),
        ("complex_x", ["train", "--dataset", p["complex_npz"], "--out", d / "c.safetensors"], "complex"),
        ("existing_out_folder", ["analyze", p["mlp"], "--dataset", "digits", *out], "wrote tables"),
    ]


def alone_cases(p: dict[str, Path], d: Path, port: int, refused: int) -> list[tuple[str, list, str, str]]:
    """(name, lesion arguments, text the output must hold, stdin) each run in a child of its own."""
    fifo = d / "fifo"
    lm = ["--repeats", "1", "--fractions", "2", "--seq-len", "8", "--sequences", "4"]
    ray = ["analyze", p["mlp"], "--dataset", "digits", "--repeats", "1", "--fractions", "2",
           "--noise-repeats", "1", "--backend", "ray"]  # fmt: skip
    return [
        ("remote_code_layers", ["layers", p["evil"]], "--trust-remote-code", "y\n" * 20),
        (
            "remote_code_analyze",
            ["analyze", p["evil"], "--out", d / "o1", "--tokens", p["bomb_npy"]],
            "--trust-remote-code",
            "y\n" * 20,
        ),
        ("fifo_hf_weights", ["layers", p["fifo_hf"]], "FIFO", ""),
        ("fifo_model_file", ["layers", fifo / "own.safetensors"], "FIFO", ""),
        (
            "fifo_tokens",
            ["analyze", p["gpt2"], "--tokens", fifo / "ids.npy", "--out", d / "o2", *lm],
            "FIFO",
            "",
        ),
        (
            "fifo_text",
            ["analyze", p["gpt2"], "--text", fifo / "text.txt", "--out", d / "o3", *lm],
            "FIFO",
            "",
        ),
        (
            "fifo_npz_dataset",
            ["train", "--dataset", fifo / "data.npz", "--out", d / "f.safetensors"],
            "FIFO",
            "",
        ),
        ("text_50mb", ["analyze", p["gpt2"], "--text", p["big_text"], "--out", d / "o4", *lm], "", ""),
        ("ray_not_ray", [*ray, "--address", f"127.0.0.1:{port}", "--out", d / "o5"], "not a Ray head", ""),
        (
            "ray_refused_port",
            [*ray, "--address", f"127.0.0.1:{refused}", "--out", d / "o6"],
            "cannot reach",
            "",
        ),
    ]


API = """
import json, warnings
import torch, transformers
import lesion
from lesion.errors import LesionError
from lesion.core.batch import LesionNote  # where it lived before lesion.errors
config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=4, vocab_size=50, n_positions=16)
torch.manual_seed(0)
gpt2 = transformers.GPT2LMHeadModel(config).eval()
llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=16, intermediate_size=24,
    num_hidden_layers=1, num_attention_heads=2, vocab_size=50, max_position_embeddings=12)).eval()
act = "transformer.h.0.mlp.act"
ids = lambda t: torch.randint(1, 50, (3, t), generator=torch.Generator().manual_seed(0))
def outcome(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            fn()
            result = "ok"
        except LesionError as e:
            result = "refused: " + str(e)[:200]
    notes = [str(x.message)[:200] for x in w if issubclass(x.category, LesionNote)]
    return result + (" | note: " + notes[0] if notes else "")
bad_vocab = ids(8)
bad_vocab[0, 0] = 60
mask = torch.ones(3, 8, dtype=torch.long)
mask[0, 4:] = 0
padded = {"input_ids": ids(8), "attention_mask": mask}
def mean_check():
    sites = {s.name: s for s in lesion.find_sites(gpt2, padded, [act])}
    got = []
    h = dict(gpt2.named_modules())[act].register_forward_hook(lambda m, i, o: got.append(o))
    with torch.no_grad():
        gpt2(**padded)
    h.remove()
    m = mask.double()
    hand = (got[0].double() * m[..., None]).sum((0, 1)) / m.sum()
    fitted = lesion.replacements.Mean().fit(gpt2, padded, sites, []).means[act].double()
    if not torch.allclose(fitted, hand, atol=1e-6):
        raise AssertionError("Mean averages padded positions")
def sweep(model, x, unit):
    return lambda: lesion.sweep(model, {"input_ids": x}, [unit], lesion.metrics.NextTokenLoss())
results = {
    "api_gpt2_context": outcome(sweep(gpt2, ids(20), act + ":0")),
    "api_llama_context": outcome(sweep(llama, ids(14), "model.layers.0.mlp.act_fn:0")),
    "api_vocab": outcome(sweep(gpt2, bad_vocab, act + ":0")),
    "api_last_position": outcome(sweep(gpt2, ids(8), act + ":17@-1")),
    "api_mean_padding": outcome(mean_check),
}
print("API", json.dumps(results))
"""
API_EXPECT = {
    "api_gpt2_context": "context of 16",
    "api_llama_context": "context of 12",
    "api_vocab": "vocabulary",
    "api_last_position": "note:",
    "api_mean_padding": "ok",
}

STORE = """
import json, warnings
from pathlib import Path
from lesion.experiments import KINDS, Job, Store, kind, run
@kind("value")
def value(params, inputs, out):
    total = params["i"] + sum(int((p / "value.txt").read_text()) for p in inputs.values())
    (out / "value.txt").write_text(str(total))
a = Job("value", {"i": 3}); b = Job("value", {"i": 4}, {"a": a})
root = Path("run")
run([b], Store(root))
doc = json.loads((root / "jobs" / a.key / "job.json").read_text()); doc["files"] = {}
(root / "jobs" / a.key / "value.txt").unlink()
(root / "jobs" / a.key / "job.json").write_text(json.dumps(doc))
import shutil; shutil.rmtree(root / "jobs" / b.key)
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    report = run([b], Store(root))
print("STORE", (root / "jobs" / b.key / "value.txt").read_text())
"""


def fake_ray() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def serve() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def digest(root: Path) -> dict[str, str]:
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and not f.is_symlink():
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="lesion source tree to test")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--memory-limit-gb", type=float, default=8.0, help="address-space cap of each child")
    ap.add_argument("--isolate", action="store_true",
                    help="run every command in a child of its own with a 60 s deadline (slower; for old "
                    "trees whose bombs would stall the shared child)")  # fmt: skip
    args = ap.parse_args()
    H.SRC = args.src.resolve()
    limit = int(args.memory_limit_gb * 2**30)
    H.PREEXEC = lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        d = Path(tmp)
        p = build(d)
        inputs = {k: v for k, v in digest(d).items() if not k.startswith(("bombs/", "keep/"))}
        before_keep = digest(p["keep"])
        cases = cli_cases(p, d)
        if args.isolate:
            found, ran = {}, None
            for name, cli, _ in cases:
                one, ran = H.lesion_cases([(name, cli)], timeout=60)
                found |= one
                if name not in one:
                    found[name] = H.Case(
                        name, -9 if ran.timed_out else ran.rc, ran.seconds, ran.rss_mb, ran.out
                    )
        else:
            found, ran = H.lesion_cases([(n, a) for n, a, _ in cases], timeout=600)
        for name, _, expect in cases:
            c = found.get(name)
            if c is None:
                rows.append(dict(name=name, rc=None, seconds=None, rss_mb=ran.rss_mb, traceback=ran.traceback,
                                 hang=ran.timed_out, ok=False, tail=ran.out[-300:]))  # fmt: skip
                continue
            hang = c.rc == -9
            raw = c.traceback or (c.rc not in (0, 2) and not hang)
            rows.append(dict(name=name, rc=c.rc, seconds=round(c.seconds, 2), rss_mb=round(c.rss_mb),
                             traceback=raw, hang=hang, ok=expect in c.out and not raw and not hang,
                             tail=c.out.strip().splitlines()[-1][:300] if c.out.strip() else ""))  # fmt: skip
        server, port = fake_ray()
        closed = socket.create_server(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
        closed.close()
        for name, cli, expect, stdin in alone_cases(p, d, port, refused):
            r = H.lesion_cli(*cli, stdin=stdin, timeout=HANG_SECONDS)
            raw = r.traceback or (r.rc not in (0, 2) and not r.timed_out)
            tail = r.out.strip().splitlines()[-1][:300] if r.out.strip() else ""
            ok = expect in r.out and not raw and not r.timed_out
            rows.append(dict(name=name, rc=r.rc, seconds=round(r.seconds, 2), rss_mb=round(r.rss_mb),
                             traceback=raw, hang=r.timed_out, ok=ok, tail=tail))  # fmt: skip
        server.close()
        for code, marker, expect in ((API, "API ", API_EXPECT), (STORE, "STORE ", None)):
            r = H.python_code(code, cwd=d, timeout=120)
            line = next((s for s in r.out.splitlines() if s.startswith(marker)), None)
            if expect is None:
                ok = line == "STORE 7" and not r.traceback
                rows.append(dict(name="job_json_no_files", rc=r.rc, seconds=round(r.seconds, 2),
                                 rss_mb=round(r.rss_mb), traceback=r.traceback, hang=r.timed_out, ok=ok,
                                 tail=(line or r.out.strip()[-300:])))  # fmt: skip
                continue
            got = json.loads(line.removeprefix(marker)) if line else {}
            for name, want in expect.items():
                said = got.get(name, r.out.strip()[-300:])
                rows.append(dict(name=name, rc=r.rc, seconds=None, rss_mb=round(r.rss_mb),
                                 traceback=r.traceback and not got, hang=r.timed_out,
                                 ok=want in got.get(name, ""), tail=said))  # fmt: skip
        after = {k: v for k, v in digest(d).items() if k in inputs}
        lost = sorted(k for k in inputs if after.get(k) != inputs[k]) + sorted(
            k for k in before_keep if digest(p["keep"]).get(k) != before_keep[k]
        )
        counts = {
            "commands": len(rows),
            "raw_tracebacks": sum(bool(r["traceback"]) for r in rows),
            "hangs": sum(bool(r["hang"]) for r in rows),
            "code_executions": int(p["marker"].exists()),
            "data_lost": len(lost),
            "expectations_missed": sum(not r["ok"] for r in rows),
            "max_rss_mb": max((r["rss_mb"] or 0) for r in rows),
            "max_seconds_in_shared_child": max((r["seconds"] or 0) for r in rows[: len(cases)]),
        }
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        flag = "ok " if r["ok"] else "BAD"
        facts = f"rc={r['rc']!s:<4} s={r['seconds']!s:<6} rss={r['rss_mb']!s:<5}"
        print(f"{flag} {r['name']:<{width}} {facts} {r['tail'][:150]}")
    print(json.dumps(counts, indent=2))
    if lost:
        print("data lost:", lost)
    if args.out:
        args.out.write_text(json.dumps({"counts": counts, "rows": rows, "lost": lost}, indent=2) + "\n")
    bad = counts["raw_tracebacks"] + counts["hangs"] + counts["code_executions"] + counts["data_lost"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
