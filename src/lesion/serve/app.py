"""The explorer's web app: the page (plain HTML, JS and SVG) and the JSON API it runs on.

``create_app(explorer)`` returns a FastAPI app. The API is documented by the server itself: ``/docs``
renders ``/openapi.json`` without any network access.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from lesion.errors import LesionError
from lesion.serve._guard import BODY_TIMEOUT
from lesion.serve._http import LOCAL_HOSTS, MAX_BODY, BodyLimit, HostCheck, install_error_handlers
from lesion.serve.explorer import Explorer, compact
from lesion.serve.text import TextExplorer
from lesion.util.jsonable import jsonable

STATIC = Path(__file__).parent / "static"
DESCRIPTION = """Delete units of a trained network and measure what that does, on held-out data.

A unit is addressed as `layer:index` (`relu1:17`), where `layer` is a name from the model's
`named_modules()`; ranges (`relu1:0-9`), lists (`relu1:1,4,7`) and whole layers (`relu1:*`) are
accepted wherever units are. A deleted unit's activity is clamped to 0 after the nonlinearity, with
forward hooks that are removed after every evaluation: the model itself is never changed.

Errors are JSON `{"error": "..."}` with a 4xx status: 400 malformed JSON, 413 a body over 1 MiB,
415 a body not sent as JSON, 404 an unknown unit or route, 422 an unknown or out-of-range unit or a
request of the wrong shape, 408 a request whose headers (10 s) or body (30 s) arrive too slowly."""


class Site(BaseModel):
    name: str = Field(description="Module name, as in `model.named_modules()`.")
    module_type: str = Field(description="Class of the module, e.g. ReLU.")
    width: int = Field(description="Number of units (neurons, or channels of a conv layer).")
    shape: list[int] = Field(description="Output shape of one example.")
    spatial: bool = Field(description="True for conv-like sites, whose units are whole feature maps.")
    candidate: bool = Field(description="Whether its units are candidates of the cumulative curves.")


class Scores(BaseModel):
    n: int = Field(description="Held-out examples evaluated.")
    accuracy: float = Field(description="Fraction of examples classified correctly.")
    correct: int = Field(description="Examples classified correctly.")
    loss: float = Field(description="Mean cross-entropy.")
    per_class_accuracy: list[float | None] = Field(description="Accuracy per class (null: absent).")
    confusion: list[list[int]] = Field(description="Counts: rows true class, columns predicted class.")
    values: dict[str, float | None] = Field(
        description="Every scalar the explorer's metric gives (loss and accuracy, and a metric's own)."
    )


class MetricInfo(BaseModel):
    main: str = Field(description="The column effects are reported in (a unit's importance is its delta).")
    curve: str = Field(description="The column the cumulative deletion curves show.")
    higher_is_better: bool


class ModelInfo(BaseModel):
    name: str
    dataset: str
    classes: list[str]
    input_shape: list[int] = Field(description="Shape of one input example.")
    n_units: int
    sites: list[Site]
    intact: Scores = Field(description="The intact model on the held-out data.")
    metric: MetricInfo


class UnitRow(BaseModel):
    model_config = ConfigDict(json_schema_extra={"description": "One unit, measured on held-out data."})
    layer: str
    unit: int = Field(description="Index on the layer's unit axis.")
    selectivity: float | None = Field(description="Class selectivity index in [0, 1]; null if dead.")
    preferred_class: int = Field(description="Class with the largest mean activity; -1 if dead.")
    mutual_info: float | None = Field(description="Mutual information with the label, bits.")
    mean_activity: float
    sd_activity: float
    dead: bool = Field(description="True when the unit never responds on the held-out data.")
    loss: float = Field(description="Loss with this unit alone deleted.")
    accuracy: float = Field(description="Accuracy with this unit alone deleted.")
    delta_loss: float = Field(description="Loss deleted minus intact.")
    delta_accuracy: float = Field(description="Accuracy deleted minus intact.")
    main: float = Field(description="The metric's main value with this unit alone deleted (default: loss).")
    delta_main: float = Field(description="Its change against the intact model.")
    importance: float = Field(description="Harm when deleted alone: delta_main, negated if higher is better.")


class TopExample(BaseModel):
    index: int = Field(description="Held-out example; its image is `GET /api/images/{index}`.")
    label: int
    activity: float = Field(description="The unit's activity on it (feature maps averaged over space).")


class UnitDetail(UnitRow):
    address: str = Field(description="`layer:index`.")
    per_class_delta_accuracy: list[float | None] = Field(description="Per-class accuracy change.")
    class_means: list[float] = Field(description="Mean activity per class.")
    top_examples: list[TopExample] = Field(description="Held-out examples it responds to most.")


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    units: list[str] = Field(
        description="Units to delete; an empty list evaluates the intact model.",
        examples=[["relu1:0-9", "relu2:17"]],
    )


class Evaluated(Scores):
    units: list[str] = Field(description="The lesion, one address per deleted unit.")
    lesion: list[str] = Field(description="The lesion in compact form, one entry per layer.")
    n_deleted: int
    delta_accuracy: float = Field(description="Accuracy minus the intact model's.")
    delta_loss: float = Field(description="Loss minus the intact model's.")


class Curve(BaseModel):
    order: str = Field(description="random, selectivity_high (most selective first) or importance_high.")
    repeats: int
    n_ablated: list[int]
    value: list[float] = Field(description="The curve column (see Curves.column), mean over repeats.")
    value_sd: list[float]


class Curves(BaseModel):
    candidates: list[str] = Field(description="Layers whose units the curves delete.")
    n_candidates: int
    column: str = Field(description="The metric's column the curves show (accuracy by default).")
    curves: list[Curve]


router = APIRouter(prefix="/api")


def _explorer(request: Request) -> Explorer:
    return request.app.state.explorer


Ex = Annotated[Explorer, Depends(_explorer)]
UnitPath = Annotated[str, PathParam(description="`layer:index`, e.g. `relu1:17`.", examples=["relu1:17"])]


@router.get("/model", response_model=ModelInfo, summary="The model, its sites and the intact scores")
def model_info(ex: Ex) -> dict:
    cand = {s.name for s in ex.candidates}
    sites = [
        {"name": s.name, "module_type": s.module_type, "width": s.width, "shape": list(s.shape),
         "spatial": s.spatial, "candidate": s.name in cand}
        for s in ex.sites
    ]  # fmt: skip
    return {
        "name": ex.name, "dataset": ex.dataset, "classes": list(ex.classes),
        "input_shape": list(ex.x.shape[1:]), "n_units": len(ex.units),
        "sites": sites, "intact": _scores(ex.intact),
        "metric": {"main": ex.metric.main, "curve": ex.metric.curve_column,
                   "higher_is_better": bool(ex.metric.higher_is_better)},
    }  # fmt: skip


@router.get("/units", response_model=list[UnitRow], summary="Every unit: selectivity, importance")
def units(ex: Ex) -> list[dict]:
    """One object per unit, in site order, measured once on the held-out data when the server started."""
    return jsonable(ex.unit_rows())


@router.get(
    "/units/{unit}", response_model=UnitDetail, summary="One unit in detail",
    responses={404: {"description": "No such unit."}},
)  # fmt: skip
def unit_detail(unit: UnitPath, ex: Ex) -> dict:
    """Selectivity, mutual information, importance, per-class drops, class means and the held-out
    examples that drive the unit most."""
    try:
        return jsonable(ex.unit(unit))
    except LesionError as exc:
        raise HTTPException(404, str(exc)) from None


@router.get(
    "/cards/{unit}", summary="One unit's card, as atlas.html shows it",
    responses={404: {"description": "No such unit."}},
)  # fmt: skip
def card(unit: UnitPath, ex: Ex) -> dict:
    """The unit's card (``lesion.roles``): what it responds to, what breaks without it (zero and mean,
    95% intervals), what it pushes the output towards, who backs it up, its role in words and the scores
    of its explanation; the rules, and thumbnails of its examples. The first request measures every card."""
    try:
        return ex.card(unit)
    except LesionError as exc:
        raise HTTPException(404, str(exc)) from None


@router.post(
    "/evaluate", response_model=Evaluated, summary="Evaluate the model with units deleted",
    responses={400: {"description": "Malformed JSON."}, 413: {"description": "Body over 1 MiB."},
               422: {"description": "Unknown or out-of-range unit, or a body of the wrong shape."}},
)  # fmt: skip
def evaluate(body: EvaluateRequest, ex: Ex) -> dict:
    """Accuracy, loss, per-class accuracy and confusion matrix on the held-out data with ``units``
    deleted (clamped to 0), and the change against the intact model. Safe to call concurrently."""
    selection, result = ex.evaluate(body.units)
    scores = _scores(result)
    names = selection.to_strings()
    return {
        **scores, "units": names, "lesion": compact(selection), "n_deleted": len(names),
        "delta_accuracy": result.accuracy - ex.intact.accuracy, "delta_loss": result.loss - ex.intact.loss,
    }  # fmt: skip


@router.get("/curves", response_model=Curves, summary="Cumulative deletion curves")
def curves(ex: Ex) -> dict:
    """Accuracy (or the metric's curve column) as candidate units are deleted one after another, at
    random (mean and SD over repeats), most selective first, and most important first; measured on the
    held-out data at startup."""
    names = [s.name for s in ex.candidates]
    n = sum(s.width for s in ex.candidates)
    return {"candidates": names, "n_candidates": n, "column": ex.metric.curve_column,
            "curves": ex.curve_summary()}  # fmt: skip


@router.get(
    "/images/{index}", summary="One held-out example as a PNG", response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "No such example."}},
)  # fmt: skip
def image(index: Annotated[int, PathParam(ge=0)], ex: Ex) -> Response:
    try:
        png = ex.image_png(index)
    except LesionError as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def create_app(
    explorer: Explorer | TextExplorer,
    *,
    max_body: int = MAX_BODY,
    hosts: Sequence[str] | None = LOCAL_HOSTS,
    body_timeout: float = BODY_TIMEOUT,
) -> FastAPI:
    """The explorer app for ``explorer``: the page at ``/``, the API under ``/api``, docs at ``/docs``.

    ``hosts``: the Host names it answers to (default: this machine's own names, which defeats DNS
    rebinding); ``None`` answers any, for a server bound to a public interface. A body not received
    within ``body_timeout`` seconds is answered 408. A ``TextExplorer`` (a language model) gets the
    page of blocks, heads and tokens (``text.html``) and its own API.
    """
    from lesion.serve import text_app
    from lesion.util import VERSION as __version__

    text = isinstance(explorer, TextExplorer)
    app = FastAPI(
        title="lesion explorer", version=__version__,
        description=text_app.DESCRIPTION if text else DESCRIPTION, docs_url=None, redoc_url=None,
    )  # fmt: skip
    app.state.explorer = explorer
    app.add_middleware(BodyLimit, max_bytes=max_body, timeout=body_timeout)
    app.add_middleware(HostCheck, allowed=hosts)  # added last: runs first
    install_error_handlers(app, [f"{s.name}:0" for s in explorer.sites[:2]] or ["layer:0"])
    app.include_router(text_app.router if text else router)
    for path, page in (("/", "text.html" if text else "index.html"), ("/docs", "api.html")):
        app.add_api_route(path, _page(page), include_in_schema=False, methods=["GET"])
    for name, kind in (("card.js", "text/javascript"), ("card.css", "text/css")):  # the atlas's card template
        app.add_api_route(f"/roles/{name}", _template(name, kind), include_in_schema=False, methods=["GET"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _page(name: str):
    def page() -> FileResponse:
        return FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return page


def _template(name: str, kind: str):
    from lesion.roles.atlas import TEMPLATES

    def page() -> FileResponse:
        return FileResponse(TEMPLATES / name, media_type=kind, headers={"Cache-Control": "no-cache"})

    return page


def _scores(result) -> dict:
    return jsonable({
        "n": result.n, "accuracy": result.accuracy, "correct": int(result.confusion.trace()),
        "loss": result.loss, "per_class_accuracy": result.per_class_accuracy.tolist(),
        "confusion": result.confusion.astype(int).tolist(), "values": result.values,
    })  # fmt: skip
