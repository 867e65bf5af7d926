"""pyhot's Flask adapter (`_pyhot_adapter_flask`); docs/reload.md, "Flask".

Flask refuses setup calls (`@app.route`, `register_blueprint`, `before_request`, ...) once
an app has handled its first request, and refuses to map an endpoint to a second view
function. A reload is exactly such a late setup call, so while a batch runs:

- the "first request already handled" check of Flask and Blueprint is off, so a new
  `@app.route` registers on the app being served;
- a view registered again under an endpoint it already had (its decorator line changed)
  replaces the endpoint's old view and rules instead of raising;
- a route added to a blueprint that is already registered reaches every app it is
  registered on, with the options it was registered with; registering that blueprint
  again under the same name (its statement ran again) is a no-op, and registering a new
  blueprint object under a registered name (its module ran again as a whole) replaces
  the old blueprint's endpoints, rules and request functions.

Every change to an app's rules and views is undone if the batch rolls back. Nothing here
runs until flask is imported; Flask 2.x.
"""

import sys
import weakref

import pyhot
from _pyhot_adapters import ClassPatch, when_imported

_registrations = weakref.WeakKeyDictionary()  # blueprint -> [(weakref to app, options)]


def _start(flask):
    blueprint_class = flask.Blueprint
    register = blueprint_class.register

    def recording_register(self, app, options):
        register(self, app, options)
        _registrations.setdefault(self, []).append((weakref.ref(app), dict(options)))

    recording_register.__wrapped__ = register
    blueprint_class.register = recording_register


when_imported("flask", _start)


# The app's registries keyed by blueprint name (None: the app's own), flask/scaffold.py.
_PER_BLUEPRINT = ("error_handler_spec", "before_request_funcs", "after_request_funcs",
                  "teardown_request_funcs", "template_context_processors",
                  "url_value_preprocessors", "url_default_functions")


class _AppState:
    """One app's routing as it was before the batch first touched it."""

    def __init__(self, app):
        self.app = app
        self.view_functions = dict(app.view_functions)
        self.rules_by_endpoint = {k: list(v) for k, v in app.url_map._rules_by_endpoint.items()}
        self.blueprints = dict(app.blueprints)
        self.per_blueprint = {attr: dict(getattr(app, attr)) for attr in _PER_BLUEPRINT}
        self.replaced_endpoints = set()

    def restore(self):
        app = self.app
        app.view_functions.clear()
        app.view_functions.update(self.view_functions)
        _set_rules(app.url_map, self.rules_by_endpoint)
        app.blueprints.clear()
        app.blueprints.update(self.blueprints)
        for attr, saved in self.per_blueprint.items():
            registry = getattr(app, attr)
            registry.clear()
            registry.update(saved)

    def forget_blueprint(self, name):
        """Takes a blueprint registered as name (and those nested in it) out of the app:
        its endpoints, rules and request functions, so a new blueprint of that name can
        be registered in its place."""
        app = self.app
        nested = name + "."
        names = [n for n in app.blueprints if n == name or n.startswith(nested)]
        for n in names:
            del app.blueprints[n]
            for attr in _PER_BLUEPRINT:
                getattr(app, attr).pop(n, None)
        endpoints = [e for e in app.view_functions if e.startswith(nested)]
        for endpoint in endpoints:
            del app.view_functions[endpoint]
        rules = {k: v for k, v in app.url_map._rules_by_endpoint.items() if not k.startswith(nested)}
        _set_rules(app.url_map, rules)


def _set_rules(url_map, rules_by_endpoint):
    """Rebuilds a werkzeug Map's matcher from rules_by_endpoint (werkzeug 2.2 keeps the
    rules in Map._rules_by_endpoint and compiles them into Map._matcher)."""
    matcher = type(url_map._matcher)(url_map.merge_slashes)
    for rules in rules_by_endpoint.values():
        for rule in rules:
            if not rule.build_only:
                matcher.add(rule)
    with url_map._remap_lock:
        url_map._rules_by_endpoint = {k: list(v) for k, v in rules_by_endpoint.items()}
        url_map._matcher = matcher
        url_map._remap = True


class _Batch:
    def __init__(self, flask, info):
        self.flask = flask
        self.info = info
        self.apps = {}  # id(app) -> _AppState
        self.patch = ClassPatch()

    def touch(self, app):
        state = self.apps.get(id(app))
        if state is None:
            state = self.apps[id(app)] = _AppState(app)
            self.info.on_rollback(state.restore)
        return state

    def install(self):
        flask = self.flask
        batch = self
        add_url_rule = flask.Flask.add_url_rule
        register_blueprint = flask.Flask.register_blueprint
        record = flask.Blueprint.record

        def no_check(self, f_name):
            return None

        def replacing_add_url_rule(self, rule, endpoint=None, view_func=None, **options):
            state = batch.touch(self)
            if endpoint is None and view_func is not None:
                endpoint = flask.scaffold._endpoint_from_view_func(view_func)
            old = self.view_functions.get(endpoint)
            if (view_func is not None and old is not None and old != view_func
                    and endpoint not in state.replaced_endpoints):
                # The endpoint's definition ran again: its old rules and view go, the new
                # ones come (stacked decorators add their rules one by one after this).
                state.replaced_endpoints.add(endpoint)
                del self.view_functions[endpoint]
                rules = dict(self.url_map._rules_by_endpoint)
                rules.pop(endpoint, None)
                _set_rules(self.url_map, rules)
            return add_url_rule(self, rule, endpoint, view_func, **options)

        def once_register_blueprint(self, blueprint, **options):
            name = options.get("name", blueprint.name)
            registered = self.blueprints.get(name)
            if registered is blueprint:
                # Registered again (the statement ran again): its routes already reach
                # the app, through applying_record.
                return None
            if registered is not None:
                # A new blueprint object of that name (its module ran again): it
                # takes the old one's place.
                batch.touch(self).forget_blueprint(name)
            return register_blueprint(self, blueprint, **options)

        def applying_record(self, func):
            record(self, func)
            for app_ref, options in _registrations.get(self, ()):
                app = app_ref()
                if app is not None:
                    func(self.make_setup_state(app, options, False))

        self.patch.apply(self.info, flask.Flask, _check_setup_finished=no_check,
                         add_url_rule=replacing_add_url_rule,
                         register_blueprint=once_register_blueprint)
        self.patch.apply(self.info, flask.Blueprint, _check_setup_finished=no_check,
                         record=applying_record)


_current = []  # the running batch's _Batch (one batch runs at a time)


@pyhot.before_reload
def _before(info):
    flask = sys.modules.get("flask")
    if flask is None or not hasattr(flask, "Flask"):
        return
    batch = _Batch(flask, info)
    batch.install()
    _current.append(batch)
    info.on_rollback(_current.clear)


@pyhot.after_reload
def _after(info):
    while _current:
        _current.pop().patch.restore()
