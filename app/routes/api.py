"""The JSON API (DESIGN §11): the same data as the pages, documented at /openapi.json."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, Field

from app import records as r
from app.db import IndexDB
from app.live import LiveEncoder
from app.routes.params import db_of, latent_query, live_of, search_query

router = APIRouter(prefix="/api", tags=["api"])
LatentId = Annotated[int, Path(ge=-(2**31), le=2**31 - 1, description="the latent's index")]
ERRORS: dict[int | str, dict[str, object]] = {
    404: {"description": "no such latent"},
    413: {"description": "text too long"},
    422: {"description": "bad parameters"},
}


class TextIn(BaseModel):
    """Text to run through the model and the SAE."""

    text: str = Field(max_length=100_000, description="the text; the app's own cap applies")


@router.get("/build", response_model=r.BuildInfo)
def build_info(db: Annotated[IndexDB, Depends(db_of)]) -> r.BuildInfo:
    """The index's provenance: model, layer, SAE, corpus, settings and metrics."""
    return db.build


@router.get("/latents", response_model=r.LatentTablePage, responses=ERRORS)
def list_latents(
    db: Annotated[IndexDB, Depends(db_of)],
    query: Annotated[r.LatentQuery, Depends(latent_query)],
) -> r.LatentTablePage:
    """A page of the latent table, sorted and filtered."""
    return db.latent_page(query)


@router.get("/latents/{latent_id}", response_model=r.LatentDetail, responses=ERRORS)
def latent_detail(db: Annotated[IndexDB, Depends(db_of)], latent_id: LatentId) -> r.LatentDetail:
    """Everything on a latent's page."""
    return db.latent_detail(latent_id, tokens=True)


@router.get("/search", response_model=r.SearchResults, responses=ERRORS)
def search(
    db: Annotated[IndexDB, Depends(db_of)],
    query: Annotated[r.SearchQuery, Depends(search_query)],
) -> r.SearchResults:
    """A page of latents ranked by BM25 over their explanation, top tokens and top examples
    (each with `latent_id`, `score` and a snippet of its best example), and the latents firing
    most on a vocabulary token equal to `q`; `reason` says why none is listed."""
    return db.search(query)


@router.post("/activations", response_model=r.LiveResult, responses=ERRORS)
def activations(
    db: Annotated[IndexDB, Depends(db_of)],
    live: Annotated[LiveEncoder, Depends(live_of)],
    body: Annotated[TextIn, Body()],
) -> r.LiveResult:
    """Run the model and SAE on `text`: each token's strongest latents."""
    return live.encode(body.text, explanations=db.explanations)
