"""pyhot's SQLAlchemy adapter (`_pyhot_adapter_sqlalchemy`); docs/reload.md, "SQLAlchemy".

A declarative model defines its `Table` in the `MetaData` of its base once; defining it
again raises "Table 'items' is already defined for this MetaData instance". The reload
engine updates a model class in place (its metaclass does not run again), so an edit of a
method or of a column's options does not define the table again. When a model's class
statement does run again (its bases changed, a new declarative base, or `mode = module`),
this adapter lets the new definition replace the old table in its MetaData for the
length of the batch, and puts the old one back if the batch rolls back.

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


def _put_back(metadata, key, table):
    current = metadata.tables.get(key)
    if current is not table:
        if current is not None:
            metadata.remove(current)
        metadata._add_table(table.name, table.schema, table)


@pyhot.after_reload
def _after(info):
    _patch.restore()
