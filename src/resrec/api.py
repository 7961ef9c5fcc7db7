"""The HTTP API and its web page: a FastAPI app around one loaded :class:`Recommender`.

>>> app = create_app(Recommender.load("runs/ml-100k-tutorial"))
>>> uvicorn.run(app, host="127.0.0.1", port=8000)      # or: resrec serve RUN

Endpoints (JSON; the OpenAPI schema is at ``/openapi.json``, its pages at ``/docs``
and ``/redoc``, which load their scripts from a CDN and so need internet access):

==========================================  =============================================
``GET  /api/health``                        the run, its size, the rating scale
``GET  /api/predict?user_id&movie_id``      one prediction (``fallback=true`` for unknown ids)
``GET  /api/explain?user_id&movie_id``      a prediction and its additive terms
``GET  /api/users``                         user_ids of the run (for pickers)
``GET  /api/users/{user_id}/recommendations``  top-N for a user
``POST /api/recommendations``               top-N for a new user from posted ratings
``GET  /api/movies/search?q``               movies by title
``GET  /api/movies/{movie_id}``             one movie
``GET  /api/movies/{movie_id}/similar``     nearest movies by embedding cosine
``GET  /``                                  the web page (``/static/*`` its files)
==========================================  =============================================

Every mistake in a request gets a 4xx JSON answer ``{"detail": ..., "hint": ...}``:
404 for an unknown id or path, 422 for a value outside what is allowed (the
hint says what the first offending field expects), 413 for a body over
:data:`MAX_BODY_BYTES`, which is refused before it is read. Values are
not converted: a posted body takes JSON integers for ids and counts (not
``"1"``, ``1.0`` or ``true``), JSON numbers for ratings and ``true``/``false``
for flags; in a query or path an integer is written with digits only (an
optional minus, no ``4.0``, spaces or underscores) and a flag as ``true`` or
``false``. A query parameter the endpoint does not take, or one given twice,
gets a 422 too. ``HEAD`` is answered wherever ``GET`` is. A request line
and headers over about 80 KB (the limit of uvicorn's HTTP parser) get
uvicorn's own plain-text 400 before the app sees them.

The recommender is read-only and needs no locks. Quick endpoints run on the
event loop (a thread hop costs more than their work); fold-in and title search
run in the server's thread pool. For more than one core, serve with several
workers (``resrec serve --workers N``), each loading its own copy of the run.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Body, FastAPI, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resrec import __version__
from resrec.errors import ConfigError, ResrecError, UnknownIdError
from resrec.inference import Recommender

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_N = 1000
MAX_RATINGS = 10_000
MAX_BODY_BYTES = 1 << 20
"""The largest request body read (1 MiB: about 20,000 ratings); a larger one gets a 413."""

DOCS_HINT = "see /docs for every endpoint and what each parameter expects"

_WHOLE_NUMBER = re.compile(r"-?[0-9]+")


def _digits_only(value: object) -> object:
    """Refuse query and path text that pydantic would convert to an int, such as "4.0"."""
    if isinstance(value, str) and not _WHOLE_NUMBER.fullmatch(value):
        raise ValueError("expected a whole number written with digits only, such as 42")
    return value


def _true_or_false(value: object) -> object:
    """Refuse query text that pydantic would convert to a bool, such as "1" or "yes"."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("expected true or false")
    return value


Digits = BeforeValidator(_digits_only)
TrueOrFalse = BeforeValidator(_true_or_false)

RawId = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
UserIdQuery = Annotated[int, Query(ge=INT64_MIN, le=INT64_MAX, description="user_id"), Digits]
MovieIdQuery = Annotated[int, Query(ge=INT64_MIN, le=INT64_MAX, description="movie_id"), Digits]
UserIdPath = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX, description="user_id"), Digits]
MovieIdPath = Annotated[int, Path(ge=INT64_MIN, le=INT64_MAX, description="movie_id"), Digits]
CountQuery = Annotated[int, Query(ge=1, le=MAX_N, description="How many movies to return."), Digits]
FallbackQuery = Annotated[
    bool,
    Query(description="Use the bias estimate for an unknown user or movie instead of a 404."),
    TrueOrFalse,
]
ExplainQuery = Annotated[
    bool, Query(description="Add each prediction's additive terms."), TrueOrFalse
]


# --------------------------------------------------------------------------- schemas


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class MovieOut(_Out):
    movie_id: int
    title: str | None = Field(description="None when no movie metadata lists it.")
    genres: list[str]
    n_ratings: int = Field(description="Training ratings; 0 means the model cannot score it.")
    known: bool = Field(description="Whether the model can score this movie.")


class ExplanationOut(_Out):
    """``raw = mu + user_bias + movie_bias + dot + side``; ``prediction`` is ``raw`` clipped."""

    mu: float
    user_bias: float
    movie_bias: float
    dot: float
    side: float
    raw: float
    prediction: float


class PredictionOut(_Out):
    user_id: int | None
    movie: MovieOut
    prediction: float = Field(description="Clipped to the rating scale.")
    raw: float = Field(description="Before clipping.")
    estimate: Literal["model", "folded-in", "fallback"]
    note: str | None = None
    explanation: ExplanationOut | None = None


class RecommendationOut(_Out):
    rank: int
    movie: MovieOut
    prediction: float
    raw: float
    explanation: ExplanationOut | None = None


class RecommendationsOut(_Out):
    user_id: int | None
    items: list[RecommendationOut]
    estimate: Literal["model", "folded-in", "fallback"]
    excluded_rated: int
    candidates: int
    note: str | None = None
    reason: str | None = Field(None, description="Why the list is empty or short.")


class SimilarMovieOut(_Out):
    movie: MovieOut
    similarity: float


class SimilarMoviesOut(_Out):
    movie: MovieOut
    items: list[SimilarMovieOut]


class ScaleOut(BaseModel):
    low: float
    high: float
    step: float


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    run: str
    model: str
    n_users: int
    n_movies: int
    known_users: int
    known_movies: int
    movie_metadata: bool
    rating_scale: ScaleOut


class UserOut(BaseModel):
    user_id: int
    n_ratings: int


class UsersOut(BaseModel):
    total: int
    items: list[UserOut]


class RatingIn(BaseModel):
    """One rating of a new user: a JSON integer ``movie_id`` and a JSON number ``rating``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    movie_id: RawId
    rating: Annotated[
        float,
        Field(allow_inf_nan=False, description="On the run's rating scale; 4 and 4.0 are alike."),
    ]


class NewUserIn(BaseModel):
    """Values are taken as JSON types, never converted (``"10"`` is not an integer)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ratings: Annotated[list[RatingIn], Field(min_length=1, max_length=MAX_RATINGS)]
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 10
    include_rated: bool = False
    explain: bool = False
    unknown: Literal["error", "ignore"] = Field(
        "error", description="What to do with a rated movie the model does not know."
    )


class ErrorOut(BaseModel):
    detail: str
    hint: str | None = None


_MOVIE_LIST = TypeAdapter(list[MovieOut])

ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "Unknown user_id or movie_id"},
    422: {"description": "A value outside what is allowed"},
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    413: {"model": ErrorOut, "description": f"A body larger than {MAX_BODY_BYTES:,} bytes"},
}


# --------------------------------------------------------------------------- app


def create_app(recommender: Recommender) -> FastAPI:
    """The FastAPI app serving ``recommender`` (loaded once, shared read-only).

    Builds the recommender's top-N bounds first (:meth:`Recommender.prepare_top_n`),
    so that the first requests are as fast as the later ones.
    """
    recommender.prepare_top_n()
    app = FastAPI(
        title="resrec",
        version=__version__,
        description="Rating predictions and recommendations from a residual-network "
        "recommender trained on MovieLens. Ids are raw MovieLens ids.",
        docs_url=None,  # served by _add_docs, with a note that the pages need internet access
        redoc_url=None,
    )
    app.router.route_class = StrictQueryRoute
    app.state.recommender = recommender
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(HeadAsGet)
    app.add_exception_handler(ResrecError, _resrec_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(QueryError, _query_error)  # type: ignore[arg-type]
    _add_routes(app, recommender)
    _add_docs(app)
    web = resources.files("resrec") / "web"
    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    return app


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` with several workers.

    Reads the run from ``RESREC_RUN``, optional metadata from ``RESREC_MOVIES``
    and the torch threads per process from ``RESREC_THREADS`` (default 1).
    """
    import torch

    run = os.environ.get("RESREC_RUN")
    if not run:
        raise ConfigError("RESREC_RUN must name the run directory to serve")
    torch.set_num_threads(int(os.environ.get("RESREC_THREADS") or 1))
    return create_app(Recommender.load(run, os.environ.get("RESREC_MOVIES") or None))


def _json(model: BaseModel) -> Response:
    """An already-validated model as a JSON response (skips FastAPI's second validation)."""
    return Response(model.model_dump_json(), media_type="application/json")


async def _resrec_error(request: Request, exc: ResrecError) -> JSONResponse:
    status = 404 if isinstance(exc, UnknownIdError) else 422
    return JSONResponse({"detail": exc.message, "hint": exc.hint or DOCS_HINT}, status_code=status)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's answers (an unknown path, a wrong method) with a hint added.

    A body that is not UTF-8 (FastAPI's bare 400) gets a 422 like malformed JSON.
    """
    if isinstance(exc.__cause__, UnicodeDecodeError):
        cause = exc.__cause__
        byte = cause.object[cause.start : cause.start + 1].hex()
        detail = [
            {
                "loc": ["body", str(cause.start)],
                "msg": f"not UTF-8 text: byte 0x{byte} at position {cause.start}",
            }
        ]
        hint = f"encode the body as UTF-8; {_BODY_HINT}"
        return JSONResponse({"detail": detail, "hint": hint}, status_code=422)
    body = {"detail": str(exc.detail), "hint": _HTTP_HINTS.get(exc.status_code, DOCS_HINT)}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


_HTTP_HINTS = {
    404: f"no such endpoint; {DOCS_HINT}",
    405: f"this endpoint takes another HTTP method; {DOCS_HINT}",
}


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 answer without the offending input echoed back.

    The input can be a value JSON cannot hold (``NaN`` in a posted body), which
    would turn the answer into a 500.
    """
    detail = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in exc.errors()
    ]
    scale = request.app.state.recommender.scale
    hint = validation_hint([e["loc"] for e in detail], scale.describe())
    return JSONResponse({"detail": detail, "hint": hint}, status_code=422)


def validation_hint(locations: Sequence[Sequence[str]], scale: str) -> str:
    """What the first offending field expects, as one sentence."""
    if not locations or not locations[0]:
        return DOCS_HINT
    where = locations[0]
    name = next((part for part in reversed(where) if not part.isdigit()), where[-1])
    expected = _FIELD_HINTS.get(name)
    if expected is None:
        if where[0] == "body" and len(where) > 1:
            return f"{name} is not a field of the body; {_BODY_HINT}"
        return DOCS_HINT
    if name == "body":
        return expected.format(scale=scale)
    return f"{name} takes {expected.format(scale=scale)}"


_DIGITS = "written with digits only (a JSON integer in a body)"
_BODY_HINT = (
    'post a JSON object such as {"ratings": [{"movie_id": 50, "rating": 5}], "n": 10}, '
    "with optional include_rated, explain (true or false) and unknown ('error' or 'ignore')"
)
_FIELD_HINTS = {
    "user_id": f"a whole number such as 196, {_DIGITS}",
    "movie_id": f"a whole number such as 50, {_DIGITS}",
    "n": f"a whole number from 1 to {MAX_N}, {_DIGITS}",
    "limit": "a whole number from 1 to the endpoint's maximum, written with digits only",
    "offset": "a whole number >= 0, written with digits only",
    "q": "1 to 200 characters of a title",
    "rating": "a JSON number on the run's rating scale ({scale}), such as 4 or 4.5",
    "ratings": f"a list of 1 to {MAX_RATINGS:,} objects such as "
    '{{"movie_id": 50, "rating": 5}}',
    "fallback": "true or false",
    "include_rated": "true or false",
    "explain": "true or false",
    "unknown": "'error' or 'ignore'",
    "body": _BODY_HINT.replace("{", "{{").replace("}", "}}"),
}


class QueryError(Exception):
    """A query parameter the endpoint does not take, or one given more than once."""

    def __init__(self, name: str, msg: str, hint: str) -> None:
        super().__init__(msg)
        self.name = name
        self.msg = msg
        self.hint = hint


async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
    """A 422 in the shape of FastAPI's own, as for an unknown field of a body."""
    detail = [{"loc": ["query", exc.name], "msg": exc.msg}]
    return JSONResponse({"detail": detail, "hint": exc.hint}, status_code=422)


class StrictQueryRoute(APIRoute):
    """An endpoint that refuses query parameters it does not take, and any given twice.

    FastAPI ignores an unknown query parameter and keeps the last of repeated
    ones, so a misspelt ``fallback`` or a stray ``user_id`` would go
    unnoticed. The web page itself (outside the schema) takes any query.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.include_in_schema:
            return handler
        allowed = _query_names(self.dependant)
        path, body = self.path, self.body_field is not None

        async def checked(request: Request) -> Response:
            _check_query(request, allowed, path, body)
            return await handler(request)

        return checked


def _query_names(dependant: Dependant) -> list[str]:
    """The query parameters an endpoint takes, in the order it declares them."""
    names = [param.alias for param in dependant.query_params]
    for sub in dependant.dependencies:
        names += [name for name in _query_names(sub) if name not in names]
    return names


def _check_query(request: Request, allowed: list[str], path: str, body: bool) -> None:
    counts = Counter(name for name, _ in request.query_params.multi_items())
    for name, count in counts.items():
        if name not in allowed:
            takes = f"it takes {_listed(allowed)}" if allowed else "it takes no query parameters"
            if body:
                takes += "; its values go in the JSON body"
            raise QueryError(
                name,
                "unknown query parameter",
                f"{name or 'an empty name'} is not a parameter of {path}; {takes}",
            )
        if count > 1:
            raise QueryError(name, f"given {count} times", f"give {name} once; {_query_hint(name)}")


def _listed(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _query_hint(name: str) -> str:
    expected = _FIELD_HINTS.get(name)
    return f"{name} takes {expected}" if expected else DOCS_HINT


class HeadAsGet:
    """ASGI middleware: answers ``HEAD`` as ``GET`` would, with the headers and no body.

    FastAPI's endpoints answer only the methods they declare; with this,
    ``HEAD`` works wherever ``GET`` does (it costs what the ``GET`` costs).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class BodyLimit:
    """ASGI middleware: answers 413 to a request body over ``limit`` bytes, unread.

    A declared ``Content-Length`` over the limit is refused at once; a body
    sent without one (chunked) is read up to the limit and refused on the
    first byte beyond it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            await self._refuse(scope, receive, send)
            return
        if length is not None:
            await self.app(scope, receive, send)
            return
        messages = await self._read_up_to_limit(receive)
        if messages is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, _replay(messages, receive), send)

    async def _read_up_to_limit(self, receive: Receive) -> list[Message] | None:
        """The body's messages, or None once they exceed the limit."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return None
            if message["type"] != "http.request" or not message.get("more_body", False):
                return messages

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {
            "detail": f"the request body is larger than {self.limit:,} bytes",
            "hint": f"send at most {MAX_RATINGS:,} ratings in a body under {self.limit:,} bytes",
        }
        response = JSONResponse(body, status_code=413, headers={"connection": "close"})
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then waits on the real one."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


def _add_routes(app: FastAPI, rec: Recommender) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(resources.files("resrec") / "web" / "index.html"))

    @app.get("/api/health", response_model=HealthOut, tags=["service"])
    async def health() -> HealthOut:
        """The served run and its size."""
        return HealthOut(
            status="ok",
            version=__version__,
            run=rec.name,
            model=rec.kind,
            n_users=rec.n_users,
            n_movies=rec.n_movies,
            known_users=int(rec.trained_users.sum()),
            known_movies=int(rec.trained_movies.sum()),
            movie_metadata=rec.movies is not None,
            rating_scale=ScaleOut(**rec.scale.to_dict()),
        )

    @app.get("/api/predict", response_model=PredictionOut, responses=ERRORS, tags=["predict"])
    async def predict(
        user_id: UserIdQuery, movie_id: MovieIdQuery, fallback: FallbackQuery = False
    ) -> Response:
        """The prediction for one user and movie, clipped to the rating scale."""
        result = rec.predict(user_id, movie_id, fallback=fallback)
        out = PredictionOut.model_validate(result)
        out.explanation = None
        return _json(out)

    @app.get("/api/explain", response_model=PredictionOut, responses=ERRORS, tags=["predict"])
    async def explain(
        user_id: UserIdQuery, movie_id: MovieIdQuery, fallback: FallbackQuery = False
    ) -> Response:
        """A prediction with mu, biases, dot product and side branch, which sum to ``raw``."""
        return _json(
            PredictionOut.model_validate(rec.explain(user_id, movie_id, fallback=fallback))
        )

    @app.get("/api/users", response_model=UsersOut, tags=["users"])
    async def users(
        limit: Annotated[int, Query(ge=1, le=MAX_N), Digits] = 20,
        offset: Annotated[int, Query(ge=0, le=INT64_MAX), Digits] = 0,
    ) -> UsersOut:
        """user_ids with training ratings, in ascending order."""
        items = [UserOut(user_id=u, n_ratings=c) for u, c in rec.users(limit, offset)]
        return UsersOut(total=int(rec.trained_users.sum()), items=items)

    @app.get(
        "/api/users/{user_id}/recommendations",
        response_model=RecommendationsOut,
        responses=ERRORS,
        tags=["recommend"],
    )
    async def user_recommendations(
        user_id: UserIdPath,
        n: CountQuery = 10,
        include_rated: Annotated[
            bool, Query(description="Keep movies rated in training."), TrueOrFalse
        ] = False,
        fallback: FallbackQuery = False,
        explain: ExplainQuery = False,
    ) -> Response:
        """The user's top-N movies by prediction, without those rated in training."""
        result = rec.recommend(
            user_id, n, include_rated=include_rated, fallback=fallback, explain=explain
        )
        return _json(RecommendationsOut.model_validate(result))

    @app.post(
        "/api/recommendations",
        response_model=RecommendationsOut,
        responses=BODY_ERRORS,
        tags=["recommend"],
    )
    def new_user_recommendations(body: Annotated[NewUserIn, Body()]) -> Response:
        """Fold a new user in from a few ratings and return their top-N.

        Runs in the server's thread pool: fitting the user takes tens of milliseconds.
        """
        result = rec.recommend_for_ratings(
            [(r.movie_id, r.rating) for r in body.ratings],
            body.n,
            include_rated=body.include_rated,
            unknown=body.unknown,
            explain=body.explain,
        )
        return _json(RecommendationsOut.model_validate(result))

    @app.get("/api/movies/search", response_model=list[MovieOut], responses=ERRORS, tags=["movies"])
    def search(
        q: Annotated[str, Query(min_length=1, max_length=200, description="Part of a title.")],
        limit: Annotated[int, Query(ge=1, le=100), Digits] = 10,
    ) -> Response:
        """Movies whose title contains ``q`` (case-insensitive), movies the model knows first."""
        if rec.movies is None:
            raise UnknownIdError(
                "no movie metadata is loaded, so titles cannot be searched",
                hint="restart the server with --movies PATH",
            )
        found = [MovieOut.model_validate(m) for m in rec.search_movies(q, limit)]
        return Response(_MOVIE_LIST.dump_json(found), media_type="application/json")

    @app.get("/api/movies/{movie_id}", response_model=MovieOut, responses=ERRORS, tags=["movies"])
    async def movie(movie_id: MovieIdPath) -> Response:
        """One movie: title, genres and how many training ratings the model saw."""
        found = rec.movie(movie_id)
        if found.n_ratings == 0 and found.title is None:
            raise UnknownIdError(
                f"unknown movie_id {movie_id}: neither the model nor the metadata has it"
            )
        return _json(MovieOut.model_validate(found))

    @app.get(
        "/api/movies/{movie_id}/similar",
        response_model=SimilarMoviesOut,
        responses=ERRORS,
        tags=["movies"],
    )
    async def similar(movie_id: MovieIdPath, n: CountQuery = 10) -> Response:
        """Movies with the most similar embeddings (cosine; ignores biases and side branch)."""
        return _json(SimilarMoviesOut.model_validate(rec.similar(movie_id, n)))


_OFFLINE_NOTE = (
    '<p style="font: 14px sans-serif; margin: 8px 16px">This page loads {what} from '
    "cdn.jsdelivr.net, so it needs internet access. Offline, the schema it shows is at "
    '<a href="/openapi.json">/openapi.json</a>.</p>'
)


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc``, each saying that it needs internet access.

    Their scripts come from a CDN (no package of the dependencies ships them),
    so offline the pages would otherwise be blank.
    """

    def with_note(page: HTMLResponse, what: str) -> HTMLResponse:
        html = bytes(page.body).decode()
        html = html.replace("<body>", "<body>" + _OFFLINE_NOTE.format(what=what), 1)
        return HTMLResponse(html)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="resrec API")
        return with_note(page, "Swagger UI")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return with_note(get_redoc_html(openapi_url="/openapi.json", title="resrec API"), "ReDoc")
