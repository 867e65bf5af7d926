"""pyhot's SQLAlchemy adapter (`_pyhot_adapter_sqlalchemy`); docs/reload.md, "SQLAlchemy".

A declarative model defines its `Table` in the `MetaData` of its base once; defining it
again raises "Table 'items' is already defined for this MetaData instance". The reload
engine updates a model class in place (its metaclass does not run again), so an edit of a
method or of a column's options does not define the table again. When a model's class
statement does run again (its bases changed, a new declarative base, or `mode = module`),
this adapter lets the new definition replace the old table in its MetaData for the
length of the batch, and puts the old one back if the batch rolls back.

A changed `Column` statement of a mapped class reaches the class through setattr, which
SQLAlchemy's declarative metaclass turns into a second column under the same attribute
("Implicitly combining column items.name with column items.name"). When the new column
differs from the mapped one only in its type, nullability, doc or comment, the adapter
gives the mapped column those (the database is not migrated); other changes (keys,
defaults, constraints) still fail the batch with SQLAlchemy's error.

Nothing here runs until sqlalchemy is imported; SQLAlchemy 1.4.
"""

import sys

import pyhot
from _pyhot_adapters import ClassPatch

_patch = ClassPatch()


def _table_key(schema_module, args, kw):
    name, metadata = args[0], args[1]
    schema = kw.get("schema")
    if schema is None:
        schema = metadata.schema
    elif schema is schema_module.BLANK_SCHEMA:
        schema = None
    return metadata, schema_module._get_table_key(name, schema)


@pyhot.before_reload
def _before(info):
    schema_module = sys.modules.get("sqlalchemy.sql.schema")
    if schema_module is None:
        return
    table_class = schema_module.Table
    original_new = table_class.__dict__["__new__"].__func__

    def replacing_new(cls, *args, **kw):
        redefines = (len(args) > 2 and not kw.get("keep_existing")
                     and not kw.get("extend_existing"))
        if redefines:
            metadata, key = _table_key(schema_module, args, kw)
            old = metadata.tables.get(key)
            if old is not None:
                metadata.remove(old)
                info.on_rollback(lambda: _put_back(metadata, key, old))
        return original_new(cls, *args, **kw)

    _patch.apply(info, table_class, __new__=staticmethod(replacing_new))
    decl_api = sys.modules.get("sqlalchemy.orm.decl_api")
    if decl_api is not None:
        _patch_declarative_setattr(decl_api, schema_module.Column, info)


_UPDATABLE = ("type", "nullable", "doc", "comment")


def _structure(column, key):
    """What must not change for a column to be updated in place: everything but
    _UPDATABLE that the table, its constraints and the mapper rely on."""
    def arg(default):
        return None if default is None else repr(getattr(default, "arg", default))
    return (column.name or key, column.key if column.name else key, column.primary_key,
            column.unique, column.index, column.autoincrement, arg(column.default),
            arg(column.onupdate), arg(column.server_default), arg(column.server_onupdate),
            sorted(fk._get_colspec() for fk in column.foreign_keys))


def _patch_declarative_setattr(decl_api, column_class, info):
    meta = decl_api.DeclarativeMeta
    original = meta.__dict__["__setattr__"]

    def updating_setattr(cls, key, value):
        mapper = cls.__dict__.get("__mapper__")
        prop = mapper.column_attrs.get(key) if mapper is not None and isinstance(value, column_class) else None
        old = prop.columns[0] if prop is not None and len(prop.columns) == 1 else None
        if old is not None and isinstance(old, column_class) and _structure(old, key) == _structure(value, key):
            saved = tuple(getattr(old, name) for name in _UPDATABLE)
            info.on_rollback(lambda: [setattr(old, n, v) for n, v in zip(_UPDATABLE, saved)])
            for name in _UPDATABLE:
                setattr(old, name, getattr(value, name))
            mapper._expire_memoizations()
            return
        original(cls, key, value)

    _patch.apply(info, meta, __setattr__=updating_setattr)


def _put_back(metadata, key, table):
    current = metadata.tables.get(key)
    if current is not table:
        if current is not None:
            metadata.remove(current)
        metadata._add_table(table.name, table.schema, table)


@pyhot.after_reload
def _after(info):
    _patch.restore()
