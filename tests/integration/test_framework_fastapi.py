"""FastAPI 0.92 apps on uvicorn inside pyhotd (--entry), edited while they serve: the edits
of issue 10 checked over HTTP, with the app's state kept (docs/reload.md, "FastAPI")."""

import json

from conftest import ITEM_MODELS

APP = {
    "helpers.py": """\
def greet(name):
    return "hello " + name
""",
    "models.py": ITEM_MODELS,
    "items.py": """\
from fastapi import APIRouter

from helpers import greet
from models import Item, STORE

router = APIRouter(prefix="/items")


@router.get("/")
def list_items():
    STORE["hits"] += 1
    return {"items": [i.name for i in STORE["items"]], "version": 1}


@router.get("/first")
def first():
    item = STORE["items"][0]
    return {"label": item.label(), "same_class": isinstance(item, Item)}


@router.get("/greet")
def hello(name: str = "you"):
    return {"text": greet(name)}
""",
    "app.py": """\
import os

import uvicorn
from fastapi import FastAPI

import items
from models import STORE

app = FastAPI()
app.include_router(items.router, prefix="/api")


@app.get("/hits")
def hits():
    return {"hits": STORE["hits"]}


def main():
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PYHOT_TEST_PORT"]),
                log_level="warning")
""",
}


def start(web_app):
    return web_app(APP, ready_path="/hits")


def get_json(app, path):
    return json.loads(app.text(path))


def test_endpoint_edit_applies_and_state_is_kept(web_app):
    app = start(web_app)
    assert get_json(app, "/api/items/")["version"] == 1
    app.edit_ok("items.py", APP["items.py"].replace('"version": 1', '"version": 2'))
    assert get_json(app, "/api/items/")["version"] == 2
    assert get_json(app, "/hits") == {"hits": 2}


def test_route_added_to_an_included_router_reaches_the_app(web_app):
    app = start(web_app)
    assert app.get("/api/items/count")[0] == 404
    app.edit_ok("items.py", APP["items.py"] + """

@router.get("/count")
def count():
    return {"count": len(STORE["items"])}
""")
    assert get_json(app, "/api/items/count") == {"count": 1}
    assert get_json(app, "/api/items/")["version"] == 1
    assert app.daemon.eval("sorted(r.path for r in __import__('app').app.routes"
                           " if r.path.startswith('/api'))") == \
        ["/api/items/", "/api/items/count", "/api/items/first", "/api/items/greet"]
    assert "/api/items/count" in app.text("/openapi.json")


def test_new_query_parameter_is_passed_in(web_app):
    app = start(web_app)
    assert get_json(app, "/api/items/greet?name=ann") == {"text": "hello ann"}
    app.edit_ok("items.py", APP["items.py"].replace(
        'def hello(name: str = "you"):\n    return {"text": greet(name)}',
        'def hello(name: str = "you", times: int = 1):\n    return {"text": greet(name) * times}'))
    assert get_json(app, "/api/items/greet?name=ann&times=2") == {"text": "hello annhello ann"}
    assert app.get("/api/items/greet?times=many")[0] == 422  # validated as an int


def test_changed_route_decorator_moves_the_route(web_app):
    app = start(web_app)
    assert "label" in get_json(app, "/api/items/first")
    app.edit_ok("items.py", APP["items.py"].replace('@router.get("/first")', '@router.get("/top")'))
    assert get_json(app, "/api/items/top")["same_class"] is True
    assert app.get("/api/items/first")[0] == 404


def test_model_method_edit_keeps_one_class(web_app):
    app = start(web_app)
    assert get_json(app, "/api/items/first") == {"label": "tea costs 3", "same_class": True}
    app.edit_ok("models.py", APP["models.py"].replace('"%s costs %d"', '"%s: %d EUR"'))
    assert get_json(app, "/api/items/first") == {"label": "tea: 3 EUR", "same_class": True}


def test_helper_edit_reaches_the_endpoint(web_app):
    app = start(web_app)
    app.edit_ok("helpers.py", APP["helpers.py"].replace('"hello "', '"hi "'))
    assert get_json(app, "/api/items/greet?name=bo") == {"text": "hi bo"}


def test_rolled_back_batch_leaves_the_routes_as_they_were(web_app):
    app = start(web_app)
    batch, _ = app.edit("items.py", APP["items.py"] + """

@router.get("/broken")
def broken():
    return {}


raise RuntimeError("half way")
""")
    assert batch["result"] == "rolled_back", batch
    assert app.get("/api/items/broken")[0] == 404
    assert get_json(app, "/api/items/")["version"] == 1
    assert app.daemon.eval("len(__import__('items').router.routes)") == 3


DEPS = dict(APP, **{
    "deps.py": """\
def paging(limit: int = 10):
    return {"limit": limit}
""",
    "items.py": APP["items.py"].replace("from fastapi import APIRouter", "from fastapi import APIRouter, Depends\n\nfrom deps import paging") + """

@router.get("/page")
def page(p: dict = Depends(paging)):
    return p
""",
})


def test_dependency_signature_edit_reaches_the_routes_using_it(web_app):
    app = web_app(DEPS, ready_path="/hits")
    assert get_json(app, "/api/items/page?limit=5") == {"limit": 5}
    app.edit_ok("deps.py", DEPS["deps.py"].replace(
        "def paging(limit: int = 10):\n    return {\"limit\": limit}",
        "def paging(limit: int = 10, offset: int = 0):\n    return {\"limit\": limit, \"offset\": offset}"))
    assert get_json(app, "/api/items/page?limit=5&offset=20") == {"limit": 5, "offset": 20}


def test_recomputed_parameters_roll_back_with_the_batch(web_app):
    app = start(web_app)
    # A hook registered after the adapter's vetoes the batch once the adapter has run.
    app.daemon.exec("import pyhot\n"
                    "@pyhot.after_reload\n"
                    "def veto(info):\n"
                    "    raise RuntimeError('vetoed')\n")
    batch, _ = app.edit("items.py", APP["items.py"].replace(
        'def hello(name: str = "you"):\n    return {"text": greet(name)}',
        'def hello(name: str = "you", times: int = 1):\n    return {"text": greet(name) * times}'))
    assert batch["result"] == "rolled_back", batch
    assert "vetoed" in batch["error"]["message"]
    assert app.daemon.eval("sorted(p.name for r in __import__('app').app.routes"
                           " if getattr(r, 'name', '') == 'hello' for p in r.dependant.query_params)") == ["name"]
    assert get_json(app, "/api/items/greet?name=ann&times=2") == {"text": "hello ann"}
