"""pyhot's FastAPI adapter (`_pyhot_adapter_fastapi`); docs/reload.md, "FastAPI".

FastAPI does two things once, at registration, that a reload must redo:

- `app.include_router(router)` copies the router's routes into the app; a route added to
  the router later never reaches it. The adapter remembers every inclusion (target,
  router, options) and, after a batch, includes the routes the batch added to a router
  into everything it was included in, with the same options (prefix, tags, ...).
- `APIRoute` computes the endpoint's parameters (its "dependant": query, path, body
  parameters and dependencies) from the signature when the route is created. After a
  batch, every route whose endpoint or one of its dependencies took new code gets them
  computed again, so a new query parameter is passed in.

A route whose definition ran again (its decorator line changed) replaces the routes of the
old function, in its router and wherever the router was included. The OpenAPI schema is
rebuilt on its next request. All of it is undone if the batch rolls back. Nothing here runs
until fastapi is imported; FastAPI 0.9x (Starlette routing).
"""

import sys
import weakref

import pyhot
from _pyhot_adapters import Instances, definition_of, qualified_name, when_imported

_routers = Instances()   # every APIRouter (an app's own router included)
_apps = Instances()      # every FastAPI app, for its cached OpenAPI schema
_inclusions = []               # [_Inclusion], in the order include_router ran
_include_original = [None]


class _Inclusion:
    def __init__(self, target, source, options):
        self.target = weakref.ref(target)
        self.source = weakref.ref(source)
        self.options = options


def _start(fastapi):
    router_class = fastapi.routing.APIRouter
    app_class = fastapi.FastAPI
    router_init = router_class.__init__
    app_init = app_class.__init__
    include_router = router_class.include_router
    _include_original[0] = include_router

    def tracking_router_init(self, *args, **kwargs):
        router_init(self, *args, **kwargs)
        _routers.add(self)

    def tracking_app_init(self, *args, **kwargs):
        app_init(self, *args, **kwargs)
        _apps.add(self)

    def recording_include_router(self, router, **options):
        include_router(self, router, **options)
        if isinstance(router, router_class):
            # Included again (the statement ran again): one inclusion, the latest options.
            _inclusions[:] = [i for i in _inclusions
                              if i.target() is not self or i.source() is not router]
            _inclusions.append(_Inclusion(self, router, options))

    for wrapper, original in ((tracking_router_init, router_init), (tracking_app_init, app_init),
                              (recording_include_router, include_router)):
        wrapper.__wrapped__ = original
        wrapper.__doc__ = original.__doc__
    router_class.__init__ = tracking_router_init
    app_class.__init__ = tracking_app_init
    router_class.include_router = recording_include_router


when_imported("fastapi", _start)

_before_routes = {}  # id(router) -> (router, list of its routes before the batch)


@pyhot.before_reload
def _before(info):
    _before_routes.clear()
    if "fastapi" not in sys.modules or not _routers:
        return
    for router in _routers:
        _before_routes[id(router)] = (router, list(router.routes))

    def restore(saved=dict(_before_routes)):
        for router, routes in saved.values():
            router.routes[:] = routes
        _forget_schemas()
    info.on_rollback(restore)


def _forget_schemas():
    for app in _apps:
        app.openapi_schema = None


@pyhot.after_reload
def _after(info):
    if not _before_routes:
        return
    before = dict(_before_routes)
    _before_routes.clear()
    touched = _rebuild_changed_routes(set(info.patched), info)
    added_by_router = {}
    for router_id, (router, old_routes) in before.items():
        old_ids = {id(r) for r in old_routes}
        added = [r for r in router.routes if id(r) not in old_ids]
        if added:
            added_by_router[router_id] = added
    if added_by_router:
        _propagate(added_by_router, before)
    if touched or added_by_router:
        _forget_schemas()


def _endpoint_key(route):
    endpoint = getattr(route, "endpoint", None)
    return None if endpoint is None else definition_of(endpoint)


def _propagate(added_by_router, before):
    """Drops the routes of redefined endpoints, then includes each router's new routes
    into the routers it was included in, following inclusions of inclusions."""
    stale = set()  # endpoints (by identity) whose definition ran again
    for router_id, added in added_by_router.items():
        new_keys = {_endpoint_key(r) for r in added} - {None}
        router, old_routes = before[router_id]
        redefined = {id(r) for r in old_routes if _endpoint_key(r) in new_keys}
        if redefined:
            stale.update(id(r.endpoint) for r in old_routes if id(r) in redefined)
            # By identity: Starlette routes compare equal by path, endpoint and methods.
            router.routes[:] = [r for r in router.routes if id(r) not in redefined]
    if stale:
        for router in _routers:
            router.routes[:] = [r for r in router.routes
                                if id(getattr(r, "endpoint", None)) not in stale]
    pending = dict(added_by_router)
    rounds = 0
    while pending and rounds < 16:  # inclusions nest a few levels; a cycle must not loop
        rounds += 1
        next_pending = {}
        for inclusion in _inclusions:
            source, target = inclusion.source(), inclusion.target()
            if source is None or target is None or id(source) not in pending:
                continue
            count = len(target.routes)
            _include_only(target, source, pending[id(source)], inclusion.options)
            next_pending.setdefault(id(target), []).extend(target.routes[count:])
        pending = next_pending


def _include_only(target, source, routes, options):
    saved = source.routes, source.on_startup, source.on_shutdown
    source.routes, source.on_startup, source.on_shutdown = list(routes), [], []
    try:
        _include_original[0](target, source, **options)
    finally:
        source.routes, source.on_startup, source.on_shutdown = saved


def _calls_of(dependant, seen):
    call = getattr(dependant, "call", None)
    if call is not None:
        yield call
    for sub in dependant.dependencies:
        if id(sub) not in seen:
            seen.add(id(sub))
            yield from _calls_of(sub, seen)


def _rebuild_changed_routes(patched, info):
    """Computes the parameters again of every route whose endpoint or a dependency of it
    was patched; returns how many."""
    if not patched:
        return 0
    from fastapi.dependencies.utils import get_body_field, get_dependant, get_parameterless_sub_dependant
    from fastapi.routing import APIRoute, request_response
    count = 0
    for router in _routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            if not any(qualified_name(call) in patched for call in _calls_of(route.dependant, set())):
                continue
            saved = (route.dependant, route.body_field, route.app)
            info.on_rollback(lambda route=route, saved=saved: _set_route(route, *saved))
            # APIRoute.__init__'s own steps (fastapi/routing.py), in its order.
            dependant = get_dependant(path=route.path_format, call=route.endpoint)
            for depends in route.dependencies[::-1]:
                dependant.dependencies.insert(
                    0, get_parameterless_sub_dependant(depends=depends, path=route.path_format))
            route.dependant = dependant
            route.body_field = get_body_field(dependant=dependant, name=route.unique_id)
            route.app = request_response(route.get_route_handler())
            count += 1
    return count


def _set_route(route, dependant, body_field, app):
    route.dependant, route.body_field, route.app = dependant, body_field, app
