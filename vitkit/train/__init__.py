"""Training: the loop (loop.py), recipes (recipes.py), the plan for image folders (plan.py), the command (cli.py).

The package is also the function `vitkit.train(...)`: calling it calls `vitkit.train.cli.train`, the Python form of
`vitkit train` (recipe < config file < the keys given, then the plan). A function exported under the same name as
this package would be replaced by the package whenever a submodule is first imported (Python sets the parent's
attribute then), so the package itself is made callable instead; `vitkit.train.loop` and the rest stay reachable.
"""

import sys as _sys
import types as _types


class _CallableTraining(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        from .cli import train

        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableTraining
