"""Flatten included routers into the app's own route table.

FastAPI ≥ 0.16x keeps ``include_router`` lazy: the app's table holds one wrapper per
included router, and a request is matched against a wrapper's routes twice (``matches``
then ``handle``), once more per nesting level, with scope bookkeeping around every
candidate. For the compat write (third router, nested one level) that was ~600 µs of CPU
per request, as much as the rest of the request. Rebuilding each included route as a
plain ``APIRoute`` with its effective path, dependencies and settings gives Starlette's
single linear scan, in the same order, so which route answers a request is unchanged.
"""

from __future__ import annotations

import logging

import fastapi.routing
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

log = logging.getLogger(__name__)


def flatten_routes(app: FastAPI) -> None:
    """Replace ``app``'s included-router wrappers by equivalent top-level routes.

    Leaves the table as it is if it holds anything this cannot rebuild faithfully (a
    non-FastAPI route inside an included router, FastAPI's frontend route groups), or on
    a FastAPI without ``iter_route_contexts`` (those already include routers flat).
    """
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:
        return
    top_level = {id(r) for r in app.router.routes}
    flat: list[BaseRoute] = []
    for ctx in iter_contexts(app.router.routes):
        original = ctx.original_route
        if id(original) in top_level:
            flat.append(original)  # already a top-level route (docs, mounts, app routes)
            continue
        if not isinstance(original, APIRoute):
            log.debug("routes not flattened: %r is not an APIRoute", original)
            return
        flat.append(
            APIRoute(
                ctx.path,
                ctx.endpoint,
                response_model=ctx.response_model,
                status_code=ctx.status_code,
                tags=list(ctx.tags),
                dependencies=list(ctx.dependencies),
                summary=ctx.summary,
                description=ctx.description,
                response_description=ctx.response_description,
                responses=dict(ctx.responses),
                deprecated=ctx.deprecated,
                name=ctx.name,
                methods=set(ctx.methods or ()),
                operation_id=ctx.operation_id,
                response_model_include=ctx.response_model_include,
                response_model_exclude=ctx.response_model_exclude,
                response_model_by_alias=ctx.response_model_by_alias,
                response_model_exclude_unset=ctx.response_model_exclude_unset,
                response_model_exclude_defaults=ctx.response_model_exclude_defaults,
                response_model_exclude_none=ctx.response_model_exclude_none,
                include_in_schema=ctx.include_in_schema,
                response_class=ctx.response_class,
                dependency_overrides_provider=ctx.dependency_overrides_provider,
                callbacks=ctx.callbacks,
                openapi_extra=ctx.openapi_extra,
                generate_unique_id_function=ctx.generate_unique_id_function,
                strict_content_type=ctx.strict_content_type,
                max_body_size=ctx.max_body_size,
                form_limits=original.form_limits,
            )
        )
    app.router.routes[:] = flat
