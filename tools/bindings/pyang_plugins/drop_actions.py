"""pyang transform `drop-actions`: leaves YANG 1.1 actions out of the schema tree.

pyangbind 0.8.7 stops with "unhandled keyword with children action" on any
container or list that defines an action, so bindings are generated from
the tree without them (actions are operations, not data, and bindings hold
data).
"""
from pyang import plugin


def pyang_plugin_init() -> None:
    plugin.register_plugin(DropActions())


class DropActions(plugin.PyangPlugin):
    def add_transform(self, xforms: dict) -> None:
        xforms["drop-actions"] = self

    def transform(self, ctx, modules) -> bool:
        for module in ctx.modules.values():
            _drop_actions(module)
        return True  # the tree stays valid: nothing needs re-validating


def _drop_actions(statement) -> None:
    children = getattr(statement, "i_children", None)
    if children is None:
        return
    statement.i_children = [child for child in children if child.keyword != "action"]
    for child in statement.i_children:
        _drop_actions(child)
