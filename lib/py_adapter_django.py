"""pyhot's Django adapter (`_pyhot_adapter_django`); docs/reload.md, "Django".

Django resolves URLs through a resolver it builds once per URLconf and caches
(django.urls.get_resolver, an lru_cache), together with the patterns of every included
URLconf: an edit of `urlpatterns` applies, but the served site keeps the old list. After
a batch that ran a module defining `urlpatterns`, the adapter clears Django's URL caches
(django.urls.clear_url_caches), so the next request resolves against the new patterns;
again if the batch rolls back.

Models need nothing here: the engine updates a model class in place, so the class the
app registry holds (and `Model.objects` returns instances of) stays the one class. With
`[watch] import = all`, `django.setup()` runs before the roots are imported
(lib/py_support.py, import_roots), when DJANGO_SETTINGS_MODULE is set.

Nothing here runs until django.urls is imported; Django 3.2 and later.
"""

import sys

import pyhot


def _clear_url_caches():
    urls = sys.modules.get("django.urls")
    if urls is not None:
        urls.clear_url_caches()


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
