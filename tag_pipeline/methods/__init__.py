"""Node-classification methods behind one seam: one package and one registration entry each.

A method is a package ``tag_pipeline/methods/<name>/`` (its config, maths, lake stage and
report sections) plus one :class:`MethodSpec` in :data:`SPECS` (built-ins, here) or given to
:func:`register_method` (a plug-in or a test). The spec carries everything the rest of the
pipeline asks of a method, so neither the report, the leaderboard nor the flows keep a table
keyed by method names:

* ``config``: its config class, a :class:`MethodBase` subclass with a ``name`` literal.
* ``stages``: ``"module:function"`` of its stages function ``(run) -> list[RunSummary]``,
  which the ``tag`` flow calls (``flows/methods.py``; ``run`` is a
  :class:`~tag_pipeline.methods.base.MethodRun`). A method's own stages function lives in its
  package and runs each library stage through ``run.stage`` (one generic Prefect task), so it
  needs no ``tasks/`` file; the built-ins' live in ``flows/methods.py`` beside their tasks.
* ``headline_variants``: the predictors the leaderboard shows (none: all of the method's).
* ``accuracy_sections`` / ``run_sections``: ``"module:function"`` of its report sections
  (:func:`tag_pipeline.report.method_sections`; none: the default variant table / nothing).

:data:`MethodConfig` is the ``method`` field of the run config and the ``tag`` flow's
``method`` parameter: a pydantic union discriminated by ``name`` (``{"name": "gallon", ...}``),
so Prefect's UI renders a form per method. Built-in methods: ``tape`` (its code is the
library's own stages), ``gallon``, ``glem`` (PyG's GLEM), ``leading`` and ``dre`` (Dr.E).

How the package is laid out, so that imports run one way (``tests/test_import_boundaries.py``):

* ``<name>/config.py`` (and ``base_config.py``): the method's config class, pydantic and the
  standard library only, importing no other module of ``tag_pipeline`` but config modules;
  ``<name>/__init__.py`` holds a docstring and re-exports the config class only. This
  ``__init__`` imports config modules only and names hooks by strings, resolved by
  :func:`resolve` when called (``importlib`` with a computed name): so ``tag_pipeline.config``
  holds a method, and importing any ``tag_pipeline.methods.<x>`` runs no library code.
* ``<name>/stage.py``: its ``lake.Stage``, key, path and ``materialize_*``; beside it the maths
  modules it calls; ``<name>/report.py``: its report sections (they import the report's
  helpers; the report reaches them only through :func:`resolve`).
* ``base.py``: :class:`~tag_pipeline.methods.base.RunSummary`, the rows every method returns.

Adding a method (docs/methods.md, "Adding a method"): its package, and a :class:`MethodSpec` in
:data:`SPECS` with its config class in the :data:`MethodConfig` union (both in this file).
"""


from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import Field, PlainSerializer, WrapValidator

from tag_pipeline.methods.base_config import MethodBase
from tag_pipeline.methods.dre.config import DreMethod
from tag_pipeline.methods.gallon.config import GallonMethod
from tag_pipeline.methods.glem.config import GlemMethod
from tag_pipeline.methods.leading.config import LeadingMethod
from tag_pipeline.methods.stack.config import StackMethod
from tag_pipeline.methods.tape.config import TapeMethod


@dataclass(frozen=True)
class MethodSpec:
    """One method's registration: its config and the hooks the flow, report and leaderboard call.

    Attributes:
        config: the config class (a :class:`MethodBase` subclass whose ``name`` has a default).
        stages: ``"module:function"`` of its stages function, ``(run) -> list[RunSummary]``.
        headline_variants: the variants the leaderboard shows (empty: all of the method's).
        accuracy_sections: ``"module:function"``, ``(method, dataset, metrics) -> lines``, its
            accuracy part of the report (``None``: :func:`tag_pipeline.report.variant_table`).
        run_sections: ``"module:function"``, ``(method, runs) -> lines`` read from the runs'
            artifacts after the accuracy part (``None``: none).
    """

    config: type[MethodBase]
    stages: str
    headline_variants: tuple[str, ...] = ()
    accuracy_sections: str | None = None
    run_sections: str | None = None

    @property
    def name(self) -> str:
        return self.config.model_fields["name"].default


#: The built-in methods, by name.
SPECS: dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec(TapeMethod, stages="flows.methods:tape_stages",
               headline_variants=("TAPE", "TA"),  # h_TAPE, and a GNN on the LM's TA embedding alone
               accuracy_sections="tag_pipeline.report:tape_sections"),
    MethodSpec(GallonMethod, stages="flows.methods:gallon_stages", headline_variants=("student", "mlp"),
               accuracy_sections="tag_pipeline.methods.gallon.report:gallon_sections"),
    MethodSpec(GlemMethod, stages="flows.methods:glem_stages", headline_variants=("lm", "gnn")),
    MethodSpec(LeadingMethod, stages="flows.methods:leading_stages", headline_variants=("TA", "E"),
               accuracy_sections="tag_pipeline.methods.leading.report:leading_sections"),
    MethodSpec(DreMethod, stages="flows.methods:dre_stages",
               headline_variants=("dre", "zero-shot"),  # Dr.E, and its decoder zero-shot without graph tokens
               accuracy_sections="tag_pipeline.methods.dre.report:dre_sections",
               run_sections="tag_pipeline.methods.dre.report:dre_run_sections"),
    MethodSpec(StackMethod, stages="flows.methods:stack_stages", headline_variants=("stack",),
               run_sections="tag_pipeline.methods.stack.report:stack_run_sections"),
)}
BUILTIN_METHODS: dict[str, type[MethodBase]] = {name: s.config for name, s in SPECS.items()}
#: every method's spec, by name (built-ins plus :func:`register_method`)
METHOD_SPECS: dict[str, MethodSpec] = dict(SPECS)
#: every method the run config accepts, by name (built-ins plus :func:`register_method`)
METHODS: dict[str, type[MethodBase]] = dict(BUILTIN_METHODS)


def register_method(spec: MethodSpec) -> MethodSpec:
    """Accept ``spec.config`` as a ``method`` from now on, in this process, with ``spec``'s hooks.
    Returns ``spec``.

    Raises:
        ValueError: the name is a built-in method's, or ``spec.config`` is not a method config.
    """
    cls = spec.config
    if not (isinstance(cls, type) and issubclass(cls, MethodBase)):
        raise ValueError(f"{cls!r} is not a MethodBase subclass")
    name = spec.name
    if name in BUILTIN_METHODS and BUILTIN_METHODS[name] is not cls:
        raise ValueError(f"{name!r} is a built-in method's name")
    METHODS[name] = cls
    METHOD_SPECS[name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Forget a method :func:`register_method` added (built-ins stay)."""
    if name not in SPECS:
        METHODS.pop(name, None)
        METHOD_SPECS.pop(name, None)


def method_spec(name: str) -> MethodSpec | None:
    """The spec of method ``name`` (``None``: not registered)."""
    return METHOD_SPECS.get(name)


def resolve(path: str) -> Any:
    """The object a hook names, ``"package.module:attribute"``, imported on first use.

    Raises:
        ImportError, AttributeError: no such module or attribute.
    """
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _registered(value: Any, handler) -> Any:
    """Let registered (non-built-in) methods through the built-ins' discriminated union."""
    if isinstance(value, MethodBase) and METHODS.get(value.name) is type(value):
        return value
    if isinstance(value, Mapping) and value.get("name") in METHODS and value.get("name") not in BUILTIN_METHODS:
        return METHODS[value["name"]].model_validate(dict(value))
    return handler(value)


#: The ``method`` field: one of the methods, told apart by ``name``.
MethodConfig = Annotated[
    Union[TapeMethod, GallonMethod, GlemMethod, LeadingMethod, DreMethod, StackMethod],
    Field(discriminator="name"),
    WrapValidator(_registered),
    PlainSerializer(lambda v, info: v.model_dump(mode=info.mode), return_type=dict),
]


def method_config(value: Any) -> MethodBase:
    """Validate ``value`` (a method config, a dict with ``name``, or a bare name) as a method.

    Raises:
        ValueError: unknown method name, or bad fields (named).
    """
    from pydantic import TypeAdapter

    if isinstance(value, str):
        value = {"name": value}
    return TypeAdapter(MethodConfig).validate_python(value)


__all__ = [
    "BUILTIN_METHODS", "METHODS", "METHOD_SPECS", "SPECS", "DreMethod", "GallonMethod", "GlemMethod", "LeadingMethod",
    "MethodBase", "MethodConfig", "MethodSpec", "StackMethod", "TapeMethod", "method_config", "method_spec", "register_method",
    "resolve", "unregister_method",
]
