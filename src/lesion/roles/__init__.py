"""The role of every unit: one card per neuron or feature map, and the atlas that shows them all.

A card (``Card``, a frozen record) joins what a unit responds to, what breaks without it (with
intervals), what it pushes the output towards, who backs it up, its role in words by the stated rules
of ``lesion.roles.rules``, and scores that let its explanation fail. ``roles(model, data)`` returns one
row per unit (``lesion.roles(model, data)``: the package is callable);
``lesion.roles.atlas.write_atlas`` writes the table, the card data and one self-contained
HTML page, whose card template (``templates/card.js``) the explorer reuses.

May import: analyses, pipeline, training, backends, engine, models, core, data, util, errors; never
experiments, report, serve or cli.
"""

import sys
import types

from lesion.roles.assemble import Atlas, build
from lesion.roles.assemble import roles as _roles
from lesion.roles.card import Card

__all__ = ["Atlas", "Card", "build", "roles"]


class _CallableModule(types.ModuleType):
    """``lesion.roles`` is this package and, called, ``lesion.roles.assemble.roles``: one name for both, so
    that importing a submodule (which binds ``lesion.roles`` to the package) never hides the function."""

    def __call__(self, model, data, **kwargs):
        return _roles(model, data, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
roles = sys.modules[__name__]  # ``from lesion.roles import roles``: this package, callable
