"""pyhot's aiohttp adapter (`_pyhot_adapter_aiohttp`); docs/reload.md, "aiohttp".

aiohttp freezes an application's router when the app starts: from then on adding a route
raises "Cannot register a resource into frozen router". And `app.add_routes(routes)`
registers what a `RouteTableDef` holds at that moment; a route decorated later into the
table never reaches the app. So:

- while a batch runs, the routers of started apps are unfrozen (and frozen again after),
  so `app.router.add_get(...)` in reloaded code works;
- after a batch, the routes the batch added to a `RouteTableDef` are registered on every
  router the table was added to;
- a handler whose definition ran again (its decorator line changed) replaces the routes
  of the old handler instead of adding a second route that would never match.

All of it is undone if the batch rolls back. Nothing here runs until aiohttp.web is
imported; aiohttp 3.x.
"""

import sys
import weakref

import pyhot
from _pyhot_adapters import Instances, definition_of, when_imported

_routers = Instances()  # every UrlDispatcher
_tables = []                   # [(weakref to router, weakref to RouteTableDef)]


def _start(urldispatcher):
    dispatcher_class = urldispatcher.UrlDispatcher
    init = dispatcher_class.__init__
    add_routes = dispatcher_class.add_routes

    def tracking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _routers.add(self)

    def recording_add_routes(self, routes):
        registered = add_routes(self, routes)
        if isinstance(getattr(routes, "_items", None), list):
            if not any(r() is self and t() is routes for r, t in _tables):
                _tables.append((weakref.ref(self), weakref.ref(routes)))
        return registered

    for wrapper, original in ((tracking_init, init), (recording_add_routes, add_routes)):
        wrapper.__wrapped__ = original
        wrapper.__doc__ = original.__doc__
    dispatcher_class.__init__ = tracking_init
    dispatcher_class.add_routes = recording_add_routes


when_imported("aiohttp.web_urldispatcher", _start)


class _RouterState:
    def __init__(self, router):
        self.router = router
        self.frozen = router.frozen
        self.resources = list(router._resources)
        self.named = dict(router._named_resources)
        self.routes = {id(res): (res, list(_routes_of(res))) for res in self.resources}
        self.route_ids = {id(route) for _res, routes in self.routes.values() for route in routes}

    def restore(self):
        router = self.router
        router._resources[:] = self.resources
        router._named_resources.clear()
        router._named_resources.update(self.named)
        for res, routes in self.routes.values():
            if isinstance(getattr(res, "_routes", None), list):
                res._routes[:] = routes
        router._frozen = self.frozen


_states = []        # the running batch's [_RouterState]
_table_items = []   # the running batch's [(table, its items before)]


@pyhot.before_reload
def _before(info):
    _states.clear()
    _table_items.clear()
    if "aiohttp.web_urldispatcher" not in sys.modules:
        return
    for router in _routers:
        state = _RouterState(router)
        _states.append(state)
        info.on_rollback(state.restore)
        router._frozen = False
    for _router_ref, table_ref in _tables:
        table = table_ref()
        if table is not None and not any(t is table for t, _ in _table_items):
            _table_items.append((table, list(table._items)))
    saved_tables = list(_table_items)

    def restore_tables():
        for table, items in saved_tables:
            table._items[:] = items
    info.on_rollback(restore_tables)


@pyhot.after_reload
def _after(info):
    states, _states[:] = list(_states), []
    old_items = {id(table): items for table, items in _table_items}
    _table_items.clear()
    if not states:
        return
    new_defs = {}  # id(table) -> [RouteDef added by the batch]
    for _router_ref, table_ref in _tables:
        table = table_ref()
        if table is not None and id(table) in old_items:
            old_ids = {id(d) for d in old_items[id(table)]}
            new_defs[id(table)] = [d for d in table._items if id(d) not in old_ids]
    redefined = set()
    for defs in new_defs.values():
        redefined.update(definition_of(getattr(d, "handler", None)) for d in defs)
    for state in states:
        for res in state.router._resources:
            for route in _routes_of(res):
                if id(route) not in state.route_ids:
                    redefined.add(definition_of(route.handler))
    redefined.discard(None)
    if redefined:
        for state in states:
            _drop_old_routes(state, redefined)
        for _router_ref, table_ref in _tables:
            table = table_ref()
            if table is not None and id(table) in old_items:
                fresh = {id(d) for d in new_defs.get(id(table), ())}
                table._items[:] = [d for d in table._items if id(d) in fresh or
                                   definition_of(getattr(d, "handler", None)) not in redefined]
    for router_ref, table_ref in _tables:
        router, table = router_ref(), table_ref()
        if router is not None and table is not None:
            for route_def in new_defs.get(id(table), ()):
                route_def.register(router)
    for state in states:
        if state.frozen:
            state.router.freeze()


def _routes_of(resource):
    """A Resource's routes (a list); a static or sub-app resource has none we change."""
    routes = getattr(resource, "_routes", None)
    return routes if isinstance(routes, list) else ()


def _drop_old_routes(state, redefined):
    """Removes the routes that existed before the batch whose handler was defined again."""
    router = state.router
    for res, routes in state.routes.values():
        stale = [r for r in routes if definition_of(r.handler) in redefined and r in _routes_of(res)]
        for route in stale:
            res._routes.remove(route)
        if stale and not res._routes and res in router._resources:
            router._resources.remove(res)
            if res.name is not None and router._named_resources.get(res.name) is res:
                del router._named_resources[res.name]
