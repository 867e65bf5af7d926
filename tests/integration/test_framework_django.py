"""Django 3.2 projects served inside pyhotd (--entry; the project's WSGI app on wsgiref, a
SQLite file), edited while they serve: the edits of issue 10 checked over HTTP, state
kept; and `import = all` with DJANGO_SETTINGS_MODULE (docs/reload.md, "Django")."""

import json

APP = {
    "settings.py": """\
import os

SECRET_KEY = "pyhot-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.messages", "shop"]
MIDDLEWARE = []
ROOT_URLCONF = "site_urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.path.join(os.environ["PYHOT_TEST_DB_DIR"], "shop.sqlite3")}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
""",
    "site_urls.py": """\
from django.urls import include, path

urlpatterns = [path("shop/", include("shop.urls"))]
""",
    "shop/__init__.py": "",
    "shop/models.py": """\
from django.db import models


class Product(models.Model):
    name = models.CharField(max_length=40)
    price = models.IntegerField()

    def label(self):
        return "%s costs %d" % (self.name, self.price)
""",
    "shop/admin.py": """\
from django.contrib import admin

from shop.models import Product


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("name",)
""",
    "shop/helpers.py": """\
def shout(text):
    return text.upper()
""",
    "shop/views.py": """\
from django.http import HttpResponse, JsonResponse

from shop.helpers import shout
from shop.models import Product

VISITS = {"count": 0}


def index(request):
    VISITS["count"] += 1
    return HttpResponse("shop v1")


def visits(request):
    return HttpResponse(str(VISITS["count"]))


def products(request):
    rows = list(Product.objects.order_by("id"))
    return JsonResponse({"labels": [p.label() for p in rows],
                         "same_class": all(isinstance(p, Product) for p in rows)})
""",
    "shop/urls.py": """\
from django.urls import path

from shop import views

urlpatterns = [
    path("", views.index),
    path("visits", views.visits),
    path("products", views.products),
]
""",
    "app.py": """\
import os
from wsgiref.simple_server import WSGIRequestHandler, make_server

import django


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    django.setup()
    from django.core.wsgi import get_wsgi_application
    from django.db import connection
    from shop.models import Product
    with connection.schema_editor() as editor:
        editor.create_model(Product)
    Product.objects.create(name="tea", price=3)
    server = make_server("127.0.0.1", int(os.environ["PYHOT_TEST_PORT"]),
                         get_wsgi_application(), handler_class=QuietHandler)
    server.serve_forever()
""",
}


def start(web_app, tmp_path, **kwargs):
    return web_app(APP, ready_path="/shop/visits",
                   env={"PYHOT_TEST_DB_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "settings"},
                   **kwargs)


def products(app):
    return json.loads(app.text("/shop/products"))


def test_view_text_edit_applies_and_state_is_kept(web_app, tmp_path):
    app = start(web_app, tmp_path)
    assert app.text("/shop/") == "shop v1"
    app.edit_ok("shop/views.py", APP["shop/views.py"].replace("shop v1", "shop v2"))
    assert app.text("/shop/") == "shop v2"
    assert app.text("/shop/visits") == "2"


def test_new_url_reaches_the_resolver(web_app, tmp_path):
    app = start(web_app, tmp_path)
    assert app.get("/shop/hello")[0] == 404
    app.edit_ok("shop/views.py", APP["shop/views.py"] + """

def hello(request):
    return HttpResponse(shout("hello"))
""")
    app.edit_ok("shop/urls.py", APP["shop/urls.py"].replace(
        "]\n", '    path("hello", views.hello),\n]\n'))
    assert app.text("/shop/hello") == "HELLO"
    assert app.text("/shop/") == "shop v1"


def test_model_method_edit_keeps_the_registered_class(web_app, tmp_path):
    app = start(web_app, tmp_path)
    assert products(app) == {"labels": ["tea costs 3"], "same_class": True}
    app.edit_ok("shop/models.py", APP["shop/models.py"].replace('"%s costs %d"', '"%s: %d EUR"'))
    assert products(app) == {"labels": ["tea: 3 EUR"], "same_class": True}
    assert app.daemon.eval("__import__('django.apps').apps.apps.get_model('shop', 'Product')"
                           " is __import__('shop.models').models.Product") is True
    assert "already registered" not in app.daemon.log()


def test_import_all_sets_django_up_first(web_app, tmp_path):
    config = "[daemon]\nsocket = {socket}\n[watch]\nroot = {root}\nimport = all\n"
    app = start(web_app, tmp_path, config=config)
    log = app.daemon.log()
    assert "AppRegistryNotReady" not in log and " failed: " not in log, log
    assert app.daemon.eval("'shop.views' in __import__('sys').modules") is True
    assert products(app)["same_class"] is True
    app.edit_ok("shop/models.py", APP["shop/models.py"].replace('"%s costs %d"', '"%s for %d"'))
    assert products(app) == {"labels": ["tea for 3"], "same_class": True}


def test_model_admin_options_edit_registers_the_admin_again(web_app, tmp_path):
    app = start(web_app, tmp_path)
    registered = ("(lambda a, m: (type(a.site._registry[m.Product]) is __import__('shop.admin')"
                  ".admin.ProductAdmin, a.site._registry[m.Product].list_display))"
                  "(__import__('django.contrib.admin').contrib.admin, __import__('shop.models').models)")
    assert app.daemon.eval(registered) == (True, ("name",))
    app.edit_ok("shop/admin.py", APP["shop/admin.py"].replace('("name",)', '("name", "price")'))
    assert app.daemon.eval(registered) == (True, ("name", "price"))
    batch, _ = app.edit("shop/admin.py", APP["shop/admin.py"].replace(
        '("name",)', '("name", "id")') + "\nraise RuntimeError('half way')\n")
    assert batch["result"] == "rolled_back", batch
    assert app.daemon.eval(registered) == (True, ("name", "price"))
