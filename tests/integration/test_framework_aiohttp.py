"""aiohttp 3.8 apps inside pyhotd (--entry), edited while they serve (their router frozen):
the edits of issue 10 checked over HTTP, state kept (docs/reload.md, "aiohttp")."""

from conftest import ITEM_MODELS

APP = {
    "helpers.py": """\
def greet(name):
    return "hello " + name
""",
    "models.py": ITEM_MODELS,
    "views.py": """\
from aiohttp import web

from helpers import greet
from models import Item, STORE

routes = web.RouteTableDef()


@routes.get("/")
async def index(request):
    STORE["hits"] += 1
    return web.Response(text="hello v1")


@routes.get("/hits")
async def hits(request):
    return web.Response(text=str(STORE["hits"]))


@routes.get("/item")
async def item(request):
    first = STORE["items"][0]
    return web.Response(text="%s %s" % (first.label(), isinstance(first, Item)))


@routes.get("/greet/{name}")
async def hello(request):
    return web.Response(text=greet(request.match_info["name"]))
""",
    "app.py": """\
import os

from aiohttp import web

from views import routes

app = web.Application()
app.add_routes(routes)


def main():
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PYHOT_TEST_PORT"]),
                handle_signals=False, print=None)
""",
}


def start(web_app):
    return web_app(APP, ready_path="/hits")


def test_view_text_edit_applies_and_state_is_kept(web_app):
    app = start(web_app)
    assert app.text("/") == "hello v1"
    app.edit_ok("views.py", APP["views.py"].replace("hello v1", "hello v2"))
    assert app.text("/") == "hello v2"
    assert app.text("/hits") == "2"


def test_new_route_reaches_the_frozen_router(web_app):
    app = start(web_app)
    assert app.daemon.eval("__import__('app').app.router.frozen") is True
    assert app.get("/new")[0] == 404
    app.edit_ok("views.py", APP["views.py"] + """

@routes.get("/new")
async def new(request):
    return web.Response(text=greet("new"))
""")
    assert app.text("/new") == "hello new"
    assert app.text("/") == "hello v1"
    assert app.daemon.eval("__import__('app').app.router.frozen") is True


def test_changed_route_decorator_moves_the_route(web_app):
    app = start(web_app)
    app.edit_ok("views.py", APP["views.py"].replace('@routes.get("/item")', '@routes.get("/thing")'))
    assert app.text("/thing") == "tea costs 3 True"
    assert app.get("/item")[0] == 404


def test_model_method_edit_keeps_one_class(web_app):
    app = start(web_app)
    app.edit_ok("models.py", APP["models.py"].replace('"%s costs %d"', '"%s: %d EUR"'))
    assert app.text("/item") == "tea: 3 EUR True"


def test_rolled_back_batch_leaves_the_routes_as_they_were(web_app):
    app = start(web_app)
    batch, _ = app.edit("views.py", APP["views.py"] + """

@routes.get("/broken")
async def broken(request):
    return web.Response(text="never")


raise RuntimeError("half way")
""")
    assert batch["result"] == "rolled_back", batch
    assert app.get("/broken")[0] == 404
    assert app.text("/") == "hello v1"
    assert app.daemon.eval("len(__import__('views').routes)") == 4
    assert app.daemon.eval("__import__('app').app.router.frozen") is True


def test_route_added_directly_to_the_started_app(web_app):
    app = start(web_app)
    app.edit_ok("app.py", APP["app.py"].replace(
        "app.add_routes(routes)\n",
        "app.add_routes(routes)\napp.router.add_get(\"/direct\", hits)\n").replace(
        "from views import routes", "from views import hits, routes"))
    assert app.text("/direct") == "0"
    assert app.daemon.eval("__import__('app').app.router.frozen") is True
