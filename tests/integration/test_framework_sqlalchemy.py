"""SQLAlchemy 1.4 declarative models in an app served inside pyhotd (--entry; a WSGI app
on wsgiref, a SQLite file), their module edited while the app serves: no "Table already
defined", one class, ORM results still instances of it (docs/reload.md, "SQLAlchemy")."""

import json

APP = {
    "db.py": """\
import os

from sqlalchemy import create_engine
from sqlalchemy.orm import declarative_base, sessionmaker

engine = create_engine("sqlite:///" + os.path.join(os.environ["PYHOT_TEST_DB_DIR"], "shop.db"))
Session = sessionmaker(bind=engine)
Base = declarative_base()
""",
    "models.py": """\
from sqlalchemy import Column, Integer, String

from db import Base


class Item(Base):
    __tablename__ = "items"
    id = Column(Integer, primary_key=True)
    name = Column(String(40), nullable=False)
    price = Column(Integer, nullable=False)

    def label(self):
        return "%s costs %d" % (self.name, self.price)
""",
    "views.py": """\
import json

import models
from db import Session


def items():
    with Session() as session:
        rows = session.query(models.Item).order_by(models.Item.id).all()
        return {"labels": [row.label() for row in rows],
                "same_class": all(isinstance(row, models.Item) for row in rows)}


ROUTES = {"/items": items}


def application(environ, start_response):
    view = ROUTES.get(environ["PATH_INFO"])
    if view is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    body = json.dumps(view()).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
""",
    "app.py": """\
import os
from wsgiref.simple_server import WSGIRequestHandler, make_server

import models
import views
from db import Base, Session, engine


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def main():
    Base.metadata.create_all(engine)
    with Session() as session:
        session.add(models.Item(name="tea", price=3))
        session.commit()
    server = make_server("127.0.0.1", int(os.environ["PYHOT_TEST_PORT"]),
                         lambda environ, start: views.application(environ, start),
                         handler_class=QuietHandler)
    server.serve_forever()
""",
}


def start(web_app, tmp_path):
    return web_app(APP, ready_path="/items", env={"PYHOT_TEST_DB_DIR": str(tmp_path)})


def items(app):
    return json.loads(app.text("/items"))


def test_model_method_edit_applies_without_defining_the_table_again(web_app, tmp_path):
    app = start(web_app, tmp_path)
    assert items(app) == {"labels": ["tea costs 3"], "same_class": True}
    before = app.daemon.eval("id(__import__('models').Item)")
    app.edit_ok("models.py", APP["models.py"].replace('"%s costs %d"', '"%s: %d EUR"'))
    assert items(app) == {"labels": ["tea: 3 EUR"], "same_class": True}
    assert app.daemon.eval("id(__import__('models').Item)") == before
    assert app.daemon.eval("list(__import__('db').Base.metadata.tables)") == ["items"]


def test_model_module_edit_adding_a_method_and_a_model(web_app, tmp_path):
    app = start(web_app, tmp_path)
    app.edit_ok("models.py", APP["models.py"].replace(
        "    def label(self):", "    def cents(self):\n        return self.price * 100\n\n"
        "    def label(self):").replace('(self.name, self.price)', '(self.name, self.cents())')
        + """

class Tag(Base):
    __tablename__ = "tags"
    id = Column(Integer, primary_key=True)
    label = Column(String(20))
""")
    assert items(app) == {"labels": ["tea costs 300"], "same_class": True}
    assert app.daemon.eval("sorted(__import__('db').Base.metadata.tables)") == ["items", "tags"]
    # And again: the module that now defines two models keeps applying.
    batch, _ = app.edit_ok("models.py", APP["models.py"].replace('"%s costs %d"', '"%s at %d"'))
    assert items(app) == {"labels": ["tea at 3"], "same_class": True}


def test_view_edit_with_orm_results(web_app, tmp_path):
    app = start(web_app, tmp_path)
    app.edit_ok("views.py", APP["views.py"].replace(
        'ROUTES = {"/items": items}',
        'def count():\n    with Session() as session:\n        return {"count": session.query(models.Item).count()}\n\n\n'
        'ROUTES = {"/items": items, "/count": count}'))
    assert json.loads(app.text("/count")) == {"count": 1}
    assert items(app)["same_class"] is True


def test_column_edit_runs_the_class_statement_without_table_already_defined(web_app, tmp_path):
    app = start(web_app, tmp_path)
    length = "__import__('db').Base.metadata.tables['items'].c.name.type.length"
    batch, _ = app.edit("models.py", APP["models.py"].replace("String(40)", "String(60)")
                        + "\nraise RuntimeError('half way')\n")
    assert batch["result"] == "rolled_back", batch
    assert app.daemon.eval(length) == 40
    app.edit_ok("models.py", APP["models.py"].replace("String(40)", "String(80)").replace(
        '"%s costs %d"', '"%s is %d"'))
    assert items(app) == {"labels": ["tea is 3"], "same_class": True}
    assert app.daemon.eval(length) == 80


def test_module_mode_model_edit_replaces_the_table(web_app, tmp_path):
    source = '__pyhot_reload__ = "module"\n' + APP["models.py"]
    modules = dict(APP, **{"models.py": source})
    app = web_app(modules, ready_path="/items", env={"PYHOT_TEST_DB_DIR": str(tmp_path)})
    assert items(app)["labels"] == ["tea costs 3"]
    batch, reloads = app.edit_ok("models.py", source.replace('"%s costs %d"', '"%s: %d EUR"'))
    assert items(app)["labels"] == ["tea: 3 EUR"]
    assert app.daemon.eval("list(__import__('db').Base.metadata.tables)") == ["items"]
