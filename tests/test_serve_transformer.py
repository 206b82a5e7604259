"""The explorer on a transformer, over real HTTP: blocks of heads and neurons, the text per token, and loss
changes that equal the Python API's (``lesion.sweep`` with ``NextTokenLoss``) and a hand-written head
ablation; bad units and bad text are clear errors; the model is never changed."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")

import lesion  # noqa: E402
from lesion.errors import DataError, LesionError  # noqa: E402
from lesion.serve import TextExplorer, create_app, explorer_for_text, running  # noqa: E402
from lesion.serve.text import token_losses  # noqa: E402
from tests.serve_support import hook_count, weights_digest  # noqa: E402
from tests.text_support import SEQ, VOCAB, ToyTokenizer, pattern, tiny_gpt  # noqa: E402

HEAD, NEURON = "transformer.h.0.attn:3", "transformer.h.1.mlp.act:5"


@pytest.fixture(scope="module")
def trained_gpt() -> torch.nn.Module:
    return tiny_gpt()  # trained once per session (cached)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return pattern(6, seed=1)


@pytest.fixture(scope="module")
def explorer(trained_gpt, tokens) -> TextExplorer:
    return explorer_for_text(trained_gpt, tokens, ToyTokenizer(), answer=(1, 2), name="tiny-gpt")


@pytest.fixture(scope="module")
def client(explorer):
    with running(create_app(explorer)) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def swept(model, tokens, units, metric=None, replacement=None) -> float:
    """delta of the metric's first column, from lesion.sweep (the Python API) for one lesion."""
    metric = metric or lesion.metrics.NextTokenLoss()
    les = lesion.Lesion(units) if replacement is None else lesion.Lesion(units, replacement)
    df = lesion.sweep(model, {"input_ids": tokens}, [les], metric)
    return float(df.filter(like="delta_").iloc[0, 0])


def by_hand(model, tokens, head: int, layer: int = 0) -> np.ndarray:
    """Per-token losses with one head zeroed by slicing the input of the attention output projection."""
    proj = model.transformer.h[layer].attn.c_proj
    dim = model.config.n_embd // model.config.n_head

    def zero(module, inputs):
        x = inputs[0].clone()
        x[..., head * dim : (head + 1) * dim] = 0
        return (x,)

    handle = proj.register_forward_pre_hook(zero)
    try:
        with torch.no_grad():
            logits = model(input_ids=tokens).logits
    finally:
        handle.remove()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return ce.reshape(len(tokens), -1).double().numpy()


def test_the_model_is_trained(explorer):
    # after the first three tokens every token is predictable: the loss there is near 0, while the
    # first two predictions are guesses (ln 24 = 3.2)
    per = explorer.intact.token_loss  # (6, 11)
    assert per[:, 2:].mean() < 0.1 and per[:, :2].mean() > 1.5


def test_per_token_losses_add_up_to_next_token_loss(trained_gpt, tokens, explorer):
    df = lesion.sweep(trained_gpt, {"input_ids": tokens}, [HEAD], lesion.metrics.NextTokenLoss())
    assert explorer.intact.loss == pytest.approx(df.attrs["intact"]["loss"], abs=1e-9)
    assert explorer.intact.token_loss.mean() == pytest.approx(explorer.intact.loss, abs=1e-7)
    assert explorer.intact.n_tokens == 6 * (SEQ - 1)
    _, result = explorer.evaluate([HEAD])
    assert result.loss == pytest.approx(df["loss"][0], abs=1e-7)
    assert result.token_loss.mean() == pytest.approx(result.loss, abs=1e-7)


def test_head_deletion_equals_slicing_the_projection_input_by_hand(trained_gpt, tokens, explorer):
    for head in range(4):
        _, result = explorer.evaluate([f"transformer.h.0.attn:{head}"])
        np.testing.assert_allclose(result.token_loss, by_hand(trained_gpt, tokens, head), atol=1e-5)
    _, result = explorer.evaluate(["transformer.h.1.attn:head2"])  # the "head2" spelling: the same unit
    np.testing.assert_allclose(result.token_loss, by_hand(trained_gpt, tokens, 2, layer=1), atol=1e-5)


def test_token_losses_of_a_plain_torch_model_are_computed_on_paper():
    # an embedding whose rows are the logits: logits of token a are E[a]; predicting b costs
    # logsumexp(E[a]) - E[a, b]
    emb = torch.nn.Embedding(3, 3)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]))
    net = torch.nn.Sequential(emb)
    total, per = token_losses(net, torch.tensor([[0, 1, 2]]))
    e = np.exp(1.0)
    want = [np.log(2 + np.exp(2)) - 2, np.log(2 + e) - 1]
    np.testing.assert_allclose(per[0], want, atol=1e-6)
    assert total["loss"] == pytest.approx(np.mean(want), abs=1e-6)
    assert total["accuracy"] == 1.0


def test_blocks_group_heads_and_neurons_in_model_order(explorer):
    blocks = explorer.blocks
    assert [b.name for b in blocks] == ["transformer.h.0", "transformer.h.1"]
    assert [(b.heads.name, b.heads.width, b.mlp.name, b.mlp.width) for b in blocks] == [
        ("transformer.h.0.attn", 4, "transformer.h.0.mlp.act", 64),
        ("transformer.h.1.attn", 4, "transformer.h.1.mlp.act", 64),
    ]


def test_blocks_of_a_llama_with_grouped_query_attention():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ex = explorer_for_text(model, torch.randint(0, 40, (2, 8)))
    assert [(b.name, b.heads.name, b.heads.width, b.mlp.name, b.mlp.width) for b in ex.blocks] == [
        ("model.layers.0", "model.layers.0.self_attn", 4, "model.layers.0.mlp.act_fn", 48),
        ("model.layers.1", "model.layers.1.self_attn", 4, "model.layers.1.mlp.act_fn", 48),
    ]
    _, result = ex.evaluate(["model.layers.1.self_attn:3"])
    assert result.loss - ex.intact.loss == pytest.approx(
        swept(model, ex.tokens, "model.layers.1.self_attn:3"), abs=1e-6
    )


def test_request_errors_suggest_this_models_unit_names(client, explorer):
    """Issue 30, item 7: the language-model explorer never suggests MLP classifier names (relu1:0)."""
    r = client.post("/api/evaluate", content=b'{"units": ["x"', headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "relu" not in error and f"{explorer.sites[0].name}:0" in error, error


def test_model_info(client, explorer):
    info = client.get("/api/model").json()
    assert info["kind"] == "text" and info["name"] == "tiny-gpt"
    assert info["n_units"] == 2 * (4 + 64) and info["n_sequences"] == 6 and info["seq_len"] == SEQ
    assert [b["n_heads"] for b in info["blocks"]] == [4, 4]
    assert info["blocks"][1] == {
        "name": "transformer.h.1", "heads": "transformer.h.1.attn", "n_heads": 4,
        "mlp": "transformer.h.1.mlp.act", "n_neurons": 64,
    }  # fmt: skip
    assert info["tokens"][0] == [f"t{i}" for i in explorer.tokens[0].tolist()]
    assert info["token_ids"] == explorer.tokens.tolist()
    assert info["answer"] == [1, 2] and info["replacements"] == ["zero", "mean"]
    assert info["intact"]["loss"] == explorer.intact.loss
    assert np.array(info["intact"]["token_loss"]).shape == (6, SEQ - 1)


@pytest.mark.parametrize("units", [[HEAD], [NEURON], [HEAD, NEURON], ["transformer.h.1.mlp.act:0-31"]])
def test_evaluate_equals_the_python_api(client, trained_gpt, tokens, units):
    r = client.post("/api/evaluate", json={"units": units})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["delta_loss"] == pytest.approx(swept(trained_gpt, tokens, units), abs=1e-6)
    assert body["n_tokens"] == 66 and body["replacement"] == "zero"
    delta = np.array(body["token_delta"])
    assert delta.shape == (6, SEQ - 1)
    assert delta.mean() == pytest.approx(body["delta_loss"], abs=1e-6)
    ld = swept(trained_gpt, tokens, units, lesion.metrics.LogitDiff(1, 2))
    assert body["delta_logit_diff"] == pytest.approx(ld, abs=1e-5)


def test_the_head_matters_and_hurts_the_predictable_tokens(client):
    body = client.post("/api/evaluate", json={"units": [HEAD]}).json()
    assert body["delta_loss"] > 0.1
    delta = np.array(body["token_delta"])
    assert delta[:, 2:].mean() > 0  # the copied tokens get worse


def test_mean_replacement_equals_the_python_api(client, trained_gpt, tokens):
    body = client.post("/api/evaluate", json={"units": [HEAD, NEURON], "replacement": "mean"}).json()
    assert body["replacement"] == "mean"
    want = swept(trained_gpt, tokens, [HEAD, NEURON], replacement=lesion.replacements.Mean())
    assert body["delta_loss"] == pytest.approx(want, abs=1e-6)
    zero = client.post("/api/evaluate", json={"units": [HEAD, NEURON]}).json()
    assert body["delta_loss"] != zero["delta_loss"]


def test_empty_lesion_is_the_intact_model(client, explorer):
    body = client.post("/api/evaluate", json={"units": []}).json()
    assert body["loss"] == explorer.intact.loss and body["delta_loss"] == 0 and body["n_deleted"] == 0
    assert np.all(np.array(body["token_delta"]) == 0)


@pytest.mark.parametrize(
    ("units", "words"),
    [
        (["transformer.h.0.attn:4"], ["4", "transformer.h.0.attn"]),  # head beyond the 4 heads
        (["transformer.h.0.attn:head9"], ["9"]),
        (["transformer.h.1.mlp.act:64"], ["64"]),
        (["transformer.h.7.attn:0"], ["transformer.h.7.attn"]),
        (["nonsense"], ["nonsense"]),
    ],
)
def test_bad_units_are_clear_422s(client, units, words):
    r = client.post("/api/evaluate", json={"units": units})
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert all(w in message for w in words), message
    assert client.get("/api/model").status_code == 200  # still serving


@pytest.mark.parametrize(
    "body",
    [{"units": [HEAD], "replacement": "resample"}, {"units": [HEAD], "extra": 1}, {"units": HEAD}, {}],
)
def test_malformed_requests_are_422s(client, body):
    r = client.post("/api/evaluate", json=body)
    assert r.status_code == 422 and r.json()["error"]


def test_bad_text_is_a_clear_error(trained_gpt):
    with pytest.raises(DataError, match="longer than the model's context of 16"):
        explorer_for_text(trained_gpt, torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(DataError, match=f"outside the model's vocabulary of {VOCAB}"):
        explorer_for_text(trained_gpt, torch.tensor([[1, 2, VOCAB]]))
    with pytest.raises(DataError, match="integer token ids"):
        explorer_for_text(trained_gpt, torch.rand(2, 5))
    with pytest.raises(DataError, match="seq >= 2"):
        explorer_for_text(trained_gpt, torch.tensor([3]))
    with pytest.raises(DataError, match="convert_ids_to_tokens or decode"):
        explorer_for_text(trained_gpt, pattern(1, seed=0), tokenizer=object())
    with pytest.raises(LesionError, match="unknown replacement"):
        explorer_for_text(trained_gpt, pattern(1, seed=0)).evaluate([HEAD], "peak")


def test_decode_only_tokenizer_and_ids_without_one(trained_gpt):
    class Decoder:
        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)

    ids = torch.tensor([[0, 1, 2, 0, 1, 2]])
    assert explorer_for_text(trained_gpt, ids, Decoder()).strings == [list("abcabc")]
    assert explorer_for_text(trained_gpt, ids).strings == [["0", "1", "2", "0", "1", "2"]]


def test_concurrent_requests_and_the_model_is_never_changed(client, trained_gpt, tokens):
    before, hooks = weights_digest(trained_gpt), hook_count(trained_gpt)
    lesions = [[f"transformer.h.{b}.attn:{h}"] for b in range(2) for h in range(4)] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda u: client.post("/api/evaluate", json={"units": u}).json(), lesions))
    for units, body in zip(lesions, answers, strict=True):
        assert body["units"] == units
        assert body["delta_loss"] == pytest.approx(swept(trained_gpt, tokens, units), abs=1e-6)
    assert weights_digest(trained_gpt) == before and hook_count(trained_gpt) == hooks


def test_the_page_and_docs_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text.js" in page.text
    assert client.get("/static/text.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/evaluate" in schema["paths"] and "attention" in schema["info"]["description"]


def fake_loader(monkeypatch, model, ids, *, language=True):
    """Stand-ins for the loader of language models on disk (``lesion.pipeline.lm``, ``study.open_any``)
    with the interface ``explorer_for_file`` calls, so the hook is tested whether or not it is built."""
    import types

    from lesion.pipeline import classifier as study

    calls = {}
    fake = types.ModuleType("lesion.pipeline.lm")
    fake.TextConfig = lambda **kw: kw
    fake.facts = lambda net, info: {"tokenizer": ToyTokenizer()}
    fake.is_language_model = lambda info: info["arch"]["kind"] == "gpt"
    fake.lm_data = lambda net, info, config: (
        calls.setdefault("config", config) and {"input_ids": ids},
        "ids.npy",
    )
    monkeypatch.setitem(sys.modules, "lesion.pipeline.lm", fake)
    kind = "gpt" if language else "mlp"
    monkeypatch.setattr(study, "open_any", lambda path: (model, {"arch": {"kind": kind}}), raising=False)
    return calls


def test_lesion_serve_on_a_language_model_file(monkeypatch, trained_gpt, tokens, tmp_path):
    from typer.testing import CliRunner

    import lesion.serve
    from lesion.cli import app

    calls = fake_loader(monkeypatch, trained_gpt, tokens)
    served = []

    class NoServer:  # stands in for uvicorn, so that the command returns
        def __init__(self, app):
            served.append(app)

        def run(self, sockets):
            pass

    monkeypatch.setattr(lesion.serve, "server", NoServer)
    ids = tmp_path / "ids.npy"
    r = CliRunner().invoke(
        app, ["serve", str(tmp_path / "gpt.safetensors"), "--port", "0", "--tokens", str(ids)]
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("lesion explorer: http://127.0.0.1:")
    explorer = served[0].state.explorer
    assert isinstance(explorer, TextExplorer) and explorer.name == "gpt.safetensors"
    assert explorer.dataset == "ids.npy" and torch.equal(explorer.tokens, tokens)
    assert explorer.strings[0][0] == f"t{int(tokens[0, 0])}"
    assert calls["config"] == {"text": None, "tokens": str(ids), "sequences": 16}


def test_explorer_for_file_leaves_classifiers_to_the_classic_explorer(monkeypatch, trained_gpt, tokens):
    from lesion.serve.text import explorer_for_file

    fake_loader(monkeypatch, trained_gpt, tokens, language=False)
    assert explorer_for_file(Path("mlp.safetensors")) is None
    with pytest.raises(LesionError, match=r"--text/--tokens are for language models; mlp\.safetensors"):
        explorer_for_file(Path("mlp.safetensors"), tokens=Path("ids.npy"))


def test_explorer_for_a_real_gpt_file_equals_the_python_api(tmp_path):
    """No stand-ins: `lesion train --arch gpt` writes the file, the real loaders read it back."""
    from lesion.pipeline import classifier as study
    from lesion.serve.text import explorer_for_file

    path = tmp_path / "gpt.safetensors"
    study.train_model(study.TrainConfig(arch="gpt", dataset="markov", epochs=1), path)
    ex = explorer_for_file(path, sequences=4, say=lambda *_: None)
    net, _ = study.open_any(path)
    _, got = ex.evaluate(["h.0.attn:1", "h.1.mlp.act:5"], "zero")
    df = lesion.sweep(net, [ex.tokens], [["h.0.attn:1", "h.1.mlp.act:5"]], lesion.metrics.NextTokenLoss())
    assert got.loss == pytest.approx(float(df.loss[0]), abs=1e-6)


def test_huge_ranges_and_bodies_are_refused_cheaply(client):
    r = client.post("/api/evaluate", json={"units": ["transformer.h.1.mlp.act:0-999999999"]})
    assert r.status_code == 422 and "999999999" in r.json()["error"]
    r = client.post("/api/evaluate", json={"units": ["transformer.h.0.attn:0"] * 100_000})  # 2.6 MB
    assert r.status_code == 413 and "1,048,576" in r.json()["error"]
    r = client.post("/api/evaluate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.get("/api/model", headers={"host": "evil.example"})  # DNS rebinding: refused
    assert r.status_code in (400, 421)
    assert client.get("/api/model").status_code == 200


def test_importance_is_each_unit_deleted_alone(client, explorer):
    body = client.get("/api/importance").json()["delta_loss"]
    assert {k: len(v) for k, v in body.items()} == {
        "transformer.h.0.attn": 4, "transformer.h.0.mlp.act": 64,
        "transformer.h.1.attn": 4, "transformer.h.1.mlp.act": 64,
    }  # fmt: skip
    for site, index in (
        ("transformer.h.0.attn", 3),
        ("transformer.h.1.attn", 0),
        ("transformer.h.1.mlp.act", 5),
    ):
        _, result = explorer.evaluate([f"{site}:{index}"])
        assert body[site][index] == pytest.approx(result.loss - explorer.intact.loss, abs=1e-6)
    assert max(body["transformer.h.0.attn"]) == body["transformer.h.0.attn"][3]  # the copying head
    assert client.get("/api/importance").json()["delta_loss"] == body  # measured once, then kept
