"""pyhot's Django adapter (`_pyhot_adapter_django`); docs/reload.md, "Django".

Django resolves URLs through a resolver it builds once per URLconf and caches
(django.urls.get_resolver, an lru_cache); each `include()`d URLconf is a resolver object
inside its parent's `urlpatterns` that caches its own patterns (URLResolver.url_patterns,
a cached_property) and reverse tables: an edit of `urlpatterns` applies, but the served
site keeps the old list. After a batch that ran a module defining `urlpatterns`, the
adapter clears Django's URL caches (django.urls.clear_url_caches) and the caches of every
resolver reachable from the root URLconf, so the next request resolves against the new
patterns; again if the batch rolls back.

A `ModelAdmin` whose class statement runs again (its options changed: `list_display`, ...)
registers its model again through `@admin.register(Model)` or `admin.site.register`, which
Django refuses ("The model Product is already registered"). While a batch runs, registering
a model that a site already holds replaces its `ModelAdmin`; the sites' registries are put
back if the batch rolls back.

Models need nothing here: the engine updates a model class in place, so the class the
app registry holds (and `Model.objects` returns instances of) stays the one class. With
`[watch] import = all`, `django.setup()` runs before the roots are imported
(lib/py_support.py, import_roots), when DJANGO_SETTINGS_MODULE is set.

Nothing here runs until django.urls is imported; Django 3.2 and later.
"""

import sys

import pyhot
from _pyhot_adapters import ClassPatch

_admin_patch = ClassPatch()


def _clear_url_caches():
    urls = sys.modules.get("django.urls")
    if urls is None:
        return
    urls.clear_url_caches()
    try:
        from django.conf import settings
        root = getattr(settings, "ROOT_URLCONF", None)
    except Exception:  # settings not configured: nothing is resolved yet
        return
    root_module = sys.modules.get(root) if isinstance(root, str) else None
    if root_module is not None:
        _forget_resolved(getattr(root_module, "urlpatterns", ()), urls.URLResolver, set())


def _forget_resolved(patterns, resolver_class, seen):
    """Drops the cached patterns and reverse tables of the resolvers among patterns and
    below them (django/urls/resolvers.py, URLResolver.__init__ and its cached_property
    attributes); they are computed again from the URLconf modules on the next request."""
    for entry in patterns:
        if not isinstance(entry, resolver_class) or id(entry) in seen:
            continue
        seen.add(id(entry))
        entry.__dict__.pop("url_patterns", None)
        entry.__dict__.pop("urlconf_module", None)
        entry._reverse_dict.clear()
        entry._namespace_dict.clear()
        entry._app_dict.clear()
        entry._callback_strs.clear()
        entry._populated = False
        try:
            below = entry.url_patterns
        except Exception:  # a broken URLconf: reported when a request resolves it
            continue
        _forget_resolved(below, resolver_class, seen)


@pyhot.after_reload
def _after(info):
    if "django.urls" not in sys.modules:
        return
    for name in info.modules:
        module = sys.modules.get(name)
        if module is not None and "urlpatterns" in getattr(module, "__dict__", {}):
            _clear_url_caches()
            info.on_rollback(_clear_url_caches)
            return


@pyhot.before_reload
def _before(info):
    sites = sys.modules.get("django.contrib.admin.sites")
    if sites is None:
        return
    saved = [(site, dict(site._registry)) for site in list(sites.all_sites)]

    def restore():
        for site, registry in saved:
            site._registry.clear()
            site._registry.update(registry)
    info.on_rollback(restore)
    register = sites.AdminSite.register

    def replacing_register(self, model_or_iterable, admin_class=None, **options):
        models = [model_or_iterable] if isinstance(model_or_iterable, type) else model_or_iterable
        models = list(models)
        for model in models:
            self._registry.pop(model, None)
        return register(self, models, admin_class, **options)

    _admin_patch.apply(info, sites.AdminSite, register=replacing_register)


@pyhot.after_reload
def _restore_admin(info):
    _admin_patch.restore()
