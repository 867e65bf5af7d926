"""Flask 2.2 apps served inside pyhotd (--entry), edited while they serve: the edits of
issue 10 checked over HTTP, with the app's state kept (docs/reload.md, "Flask")."""

from conftest import ITEM_MODELS

APP = {
    "core.py": """\
from flask import Flask

app = Flask(__name__)
""",
    "helpers.py": """\
def shout(text):
    return text.upper()
""",
    "models.py": ITEM_MODELS,
    "views.py": """\
from core import app
from helpers import shout
from models import Item, STORE


@app.route("/")
def index():
    STORE["hits"] += 1
    return "hello v1"


@app.route("/hits")
def hits():
    return str(STORE["hits"])


@app.route("/item")
def item():
    first = STORE["items"][0]
    return "%s %s" % (first.label(), isinstance(first, Item))


@app.route("/shout/<word>")
def shout_word(word):
    return shout(word)
""",
    "shop.py": """\
from flask import Blueprint

bp = Blueprint("shop", __name__, url_prefix="/shop")


@bp.route("/")
def shop_index():
    return "shop v1"
""",
    "app.py": """\
import os

from core import app
import shop
import views  # noqa: F401 (registers the routes)

app.register_blueprint(shop.bp)


def main():
    app.run(host="127.0.0.1", port=int(os.environ["PYHOT_TEST_PORT"]), use_reloader=False,
            threaded=True)
""",
}


def test_view_text_edit_applies_after_the_first_request(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/") == "hello v1"
    assert app.text("/") == "hello v1"
    app.edit_ok("views.py", APP["views.py"].replace("hello v1", "hello v2"))
    assert app.text("/") == "hello v2"
    assert app.text("/hits") == "3"  # the store kept its count
    app.edit_ok("views.py", APP["views.py"].replace("hello v1", "hello v3"))
    assert app.text("/") == "hello v3"


def test_new_route_reaches_the_served_app(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/") == "hello v1"
    assert app.get("/new")[0] == 404
    app.edit_ok("views.py", APP["views.py"] + """

@app.route("/new")
def new():
    return shout("new route")
""")
    assert app.text("/new") == "NEW ROUTE"
    assert app.text("/") == "hello v1"
    assert app.daemon.eval("len(__import__('core').app.url_map._rules)") == \
        len(["/", "/hits", "/item", "/shout/<word>", "/shop/", "/new", "static"])


def test_changed_route_decorator_moves_the_endpoint(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/hits") == "0"
    app.edit_ok("views.py", APP["views.py"].replace('@app.route("/hits")', '@app.route("/count")'))
    assert app.text("/count") == "0"
    assert app.get("/hits")[0] == 404


def test_model_method_edit_keeps_one_class(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/item") == "tea costs 3 True"
    before = app.daemon.eval("id(__import__('models').Item)")
    app.edit_ok("models.py", APP["models.py"].replace('"%s costs %d"', '"%s: %d EUR"'))
    assert app.text("/item") == "tea: 3 EUR True"
    assert app.daemon.eval("id(__import__('models').Item)") == before


def test_helper_edit_reaches_the_view(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/shout/hi") == "HI"
    app.edit_ok("helpers.py", APP["helpers.py"].replace("text.upper()", 'text.upper() + "!"'))
    assert app.text("/shout/hi") == "HI!"


def test_blueprint_routes_reach_the_app(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/shop/") == "shop v1"
    app.edit_ok("shop.py", APP["shop.py"].replace("shop v1", "shop v2") + """

@bp.route("/cart")
def cart():
    return "cart"
""")
    assert app.text("/shop/") == "shop v2"
    assert app.text("/shop/cart") == "cart"


def test_rolled_back_batch_leaves_the_routes_as_they_were(web_app):
    app = web_app(APP, ready_path="/shout/ready")
    assert app.text("/") == "hello v1"
    batch, _ = app.edit("views.py", APP["views.py"] + """

@app.route("/broken")
def broken():
    return "never"


raise RuntimeError("half way")
""")
    assert batch["result"] == "rolled_back", batch
    assert app.get("/broken")[0] == 404
    assert app.text("/") == "hello v1"
    app.edit_ok("views.py", APP["views.py"] + """

@app.route("/broken")
def broken():
    return "now"
""")
    assert app.text("/broken") == "now"


CLASSIC = {
    "app.py": """\
import os

from flask import Flask

app = Flask(__name__)

import views  # noqa: E402,F401 (the views need `app`: Flask's classic circular import)


def main():
    app.run(host="127.0.0.1", port=int(os.environ["PYHOT_TEST_PORT"]), use_reloader=False)
""",
    "views.py": """\
from app import app


@app.route("/")
def index():
    return "classic v1"
""",
}


def test_classic_circular_layout(web_app):
    app = web_app(CLASSIC)
    assert app.text("/") == "classic v1"
    app.edit_ok("views.py", CLASSIC["views.py"].replace("classic v1", "classic v2") + """

@app.route("/about")
def about():
    return "about"
""")
    assert app.text("/") == "classic v2"
    assert app.text("/about") == "about"
    app.edit_ok("app.py", CLASSIC["app.py"].replace("app = Flask(__name__)\n",
                                                    "app = Flask(__name__)\nVERSION = 2\n"))
    assert app.text("/about") == "about"
    assert app.daemon.eval("__import__('app').VERSION") == 2


def test_blueprint_module_run_as_a_whole_replaces_the_blueprint(web_app):
    source = '__pyhot_reload__ = "module"\n' + APP["shop.py"]
    app = web_app(dict(APP, **{"shop.py": source}), ready_path="/shout/ready")
    assert app.text("/shop/") == "shop v1"
    batch, _ = app.edit_ok("shop.py", source.replace("shop v1", "shop v2") + """

@bp.route("/cart")
def cart():
    return "cart"
""")
    assert app.text("/shop/") == "shop v2"
    assert app.text("/shop/cart") == "cart"
    assert app.daemon.eval("__import__('core').app.blueprints['shop'] is __import__('shop').bp")
