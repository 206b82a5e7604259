"""The explorer's JSON API for a language model (``TextExplorer``): blocks of heads and neurons, the text
per token, and the next-token loss, total and per token, under any set of deleted units."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from lesion.errors import LesionError
from lesion.serve.explorer import compact
from lesion.serve.text import TextExplorer, TextResult
from lesion.util.jsonable import jsonable

DESCRIPTION = """Delete attention heads and MLP neurons of a language model and measure what that does to
its next-token loss on the evaluation text, in total and token by token.

A head is addressed as `attention-module:head` (`transformer.h.0.attn:3`, also `...attn:head3`), a neuron
as `activation-module:index` (`transformer.h.0.mlp.act:17`); ranges (`:0-9`), lists (`:1,4,7`) and whole
sites (`:*`) are accepted. A deleted unit is replaced by 0 (or by its mean over the text) at every position,
with hooks removed after every evaluation: the model itself is never changed.

Errors are JSON `{"error": "..."}` with a 4xx status: 400 malformed JSON, 413 a body over 1 MiB,
415 a body not sent as JSON, 404 an unknown route, 422 an unknown or out-of-range unit or a
request of the wrong shape, 408 a request whose headers (10 s) or body (30 s) arrive too slowly."""


class BlockInfo(BaseModel):
    name: str = Field(description="The block's module path, e.g. `transformer.h.0`.")
    heads: str | None = Field(description="Its attention head view (a site name), if any.")
    n_heads: int
    mlp: str | None = Field(description="Its MLP activation site, if any.")
    n_neurons: int


class Scores(BaseModel):
    loss: float = Field(description="Mean next-token cross-entropy over every scored token (NextTokenLoss).")
    accuracy: float = Field(description="Fraction of next tokens predicted top-1.")
    n_tokens: int = Field(description="Tokens scored: n sequences x (seq - 1).")
    token_loss: list[list[float]] = Field(
        description="Per shown sequence, the loss of predicting each token from the ones before it "
        "(entry t is token t + 1)."
    )
    logit_diff: float | None = Field(description="logit[a] - logit[b] at the last position (with an answer).")


class TextModelInfo(BaseModel):
    kind: Literal["text"] = "text"
    name: str
    dataset: str
    n_units: int
    n_sequences: int
    seq_len: int
    blocks: list[BlockInfo] = Field(description="One column of the page per block, in model order.")
    tokens: list[list[str]] = Field(description="The shown sequences, one string per token.")
    token_ids: list[list[int]]
    answer: list[int] | None = Field(description="Token ids (a, b) of the answer's logit difference.")
    replacements: list[str]
    intact: Scores


class TextEvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    units: list[str] = Field(
        description="Heads and neurons to delete; an empty list evaluates the intact model.",
        examples=[["transformer.h.0.attn:1", "transformer.h.1.mlp.act:0-9"]],
    )
    replacement: Literal["zero", "mean"] = Field("zero", description="What replaces a deleted unit.")


class TextEvaluated(Scores):
    units: list[str] = Field(description="The lesion, one address per deleted unit.")
    lesion: list[str] = Field(description="The lesion in compact form, one entry per site.")
    n_deleted: int
    replacement: str
    delta_loss: float = Field(description="Loss minus the intact model's.")
    delta_accuracy: float
    delta_logit_diff: float | None
    token_delta: list[list[float]] = Field(description="Per-token loss minus the intact model's.")


class Importance(BaseModel):
    delta_loss: dict[str, list[float]] = Field(
        description="Per site (head view or MLP activation), each unit's change in loss when deleted alone."
    )


router = APIRouter(prefix="/api")


def _explorer(request: Request) -> TextExplorer:
    return request.app.state.explorer


Ex = Annotated[TextExplorer, Depends(_explorer)]


@router.get("/model", response_model=TextModelInfo, summary="The model's blocks, the text and intact scores")
def model_info(ex: Ex) -> dict:
    shown = ex.shown()
    blocks = [
        {"name": b.name, "heads": b.heads and b.heads.name, "n_heads": b.heads.width if b.heads else 0,
         "mlp": b.mlp and b.mlp.name, "n_neurons": b.mlp.width if b.mlp else 0}
        for b in ex.blocks
    ]  # fmt: skip
    return {
        "name": ex.name, "dataset": ex.dataset, "n_units": ex.units, "n_sequences": len(ex.tokens),
        "seq_len": ex.tokens.shape[1], "blocks": blocks, "tokens": ex.strings[:shown],
        "token_ids": ex.tokens[:shown].tolist(), "answer": list(ex.answer) if ex.answer else None,
        "replacements": ["zero", "mean"], "intact": _scores(ex.intact, shown),
    }  # fmt: skip


@router.post(
    "/evaluate", response_model=TextEvaluated, summary="Next-token loss with heads and neurons deleted",
    responses={400: {"description": "Malformed JSON."}, 413: {"description": "Body over 1 MiB."},
               422: {"description": "Unknown or out-of-range unit, or a body of the wrong shape."}},
)  # fmt: skip
def evaluate(body: TextEvaluateRequest, ex: Ex) -> dict:
    """The loss in total and per token (and the answer's logit difference) with ``units`` deleted, and
    the change against the intact model. Safe to call concurrently."""
    selection, result = ex.evaluate(body.units, body.replacement)
    shown, intact = ex.shown(), ex.intact
    names = selection.to_strings()
    diff = None if result.logit_diff is None else result.logit_diff - intact.logit_diff
    return {
        **_scores(result, shown), "units": names, "lesion": compact(selection), "n_deleted": len(names),
        "replacement": body.replacement, "delta_loss": result.loss - intact.loss,
        "delta_accuracy": result.accuracy - intact.accuracy, "delta_logit_diff": diff,
        "token_delta": jsonable((result.token_loss[:shown] - intact.token_loss[:shown]).tolist()),
    }  # fmt: skip


@router.get(
    "/cards/{unit}", summary="One unit's card, as atlas.html shows it",
    responses={404: {"description": "No such unit."}},
)  # fmt: skip
def card(unit: str, ex: Ex) -> dict:
    """The unit's card (``lesion.roles``): the tokens it responds to in context, what breaks without it
    (zero and mean, intervals over sequences), which next tokens lose most, where a head attends, who
    backs it up and its role in words. The first request measures every card."""
    try:
        return ex.card(unit)
    except LesionError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/importance", response_model=Importance, summary="Every unit deleted alone")
def importance(ex: Ex) -> dict:
    """The change in next-token loss when each head and each neuron alone is deleted (zero replacement),
    from ``lesion.sweep`` with ``NextTokenLoss``; measured on the first request (one pass per unit), then
    kept."""
    return {"delta_loss": jsonable({k: v.tolist() for k, v in ex.importance().items()})}


def _scores(result: TextResult, shown: int) -> dict:
    return jsonable({
        "loss": result.loss, "accuracy": result.accuracy, "n_tokens": result.n_tokens,
        "token_loss": result.token_loss[:shown].tolist(), "logit_diff": result.logit_diff,
    })  # fmt: skip
