"""Node-classification methods behind one seam: their configs, and the union the run config holds.

:data:`MethodConfig` is the ``method`` field of the run config and the ``tag`` flow's
``method`` parameter: a pydantic union discriminated by ``name`` (``{"name": "gallon", ...}``),
so Prefect's UI renders a form per method. Its members are :class:`MethodBase` subclasses (the
base class, :mod:`~tag_pipeline.methods.base_config`). Built-in methods: ``tape``
(:mod:`~tag_pipeline.methods.tape_config`; its code is the library's own stages), ``gallon``
(:mod:`~tag_pipeline.methods.gallon`), ``glem`` (:mod:`~tag_pipeline.methods.glem`, PyG's
GLEM), ``leading`` (:mod:`~tag_pipeline.methods.leading`) and ``dre``
(:mod:`~tag_pipeline.methods.dre`, Dr.E).

How the package is laid out, so that imports run one way (``tests/test_import_boundaries.py``):

* ``<name>_config.py`` (and ``base_config.py``): the method's config class, pydantic and the
  standard library only, importing no other module of ``tag_pipeline`` but config modules.
  This ``__init__`` imports nothing else, so ``tag_pipeline.config`` holds a method, and
  importing any ``tag_pipeline.methods.<x>`` runs no library code on the way.
* ``<name>.py``: what the method computes and its lake stage; it imports its config (and
  re-exports the class: ``from tag_pipeline.methods.gallon import GallonMethod`` works) and the
  library (``lake``, ``train``, ``datasets``...).
* ``base.py``: :class:`~tag_pipeline.methods.base.RunSummary`, the rows every method returns.
* The report's layout of each method lives in the report, looked up by the method's name
  (:func:`tag_pipeline.report.method_sections`, :data:`tag_pipeline.report.ACCURACY_SECTIONS`);
  the report imports the configs and, for Dr.E's words, ``methods.dre``; no method module
  imports the report. So config <- method module <- report, with no edge back.

Adding a method (docs/methods.md, "Adding a method"): a config class in
``methods/<name>_config.py`` with ``name: Literal["<name>"]``, listed in
:data:`BUILTIN_METHODS` and the :data:`MethodConfig` union (or, for a plug-in or a test,
:func:`register_method`), its code in ``methods/<name>.py``, a stages function registered in
``flows/methods.py``, and, when the default table does not fit, its sections in
:data:`tag_pipeline.report.ACCURACY_SECTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Union

from pydantic import Field, PlainSerializer, WrapValidator

from tag_pipeline.methods.base_config import MethodBase
from tag_pipeline.methods.dre_config import DreMethod
from tag_pipeline.methods.gallon_config import GallonMethod
from tag_pipeline.methods.glem_config import GlemMethod
from tag_pipeline.methods.leading_config import LeadingMethod
from tag_pipeline.methods.tape_config import TapeMethod

BUILTIN_METHODS: dict[str, type[MethodBase]] = {"tape": TapeMethod, "gallon": GallonMethod, "glem": GlemMethod,
                                              "leading": LeadingMethod, "dre": DreMethod}
#: every method the run config accepts, by name (built-ins plus :func:`register_method`)
METHODS: dict[str, type[MethodBase]] = dict(BUILTIN_METHODS)


def register_method(cls: type[MethodBase]) -> type[MethodBase]:
    """Accept ``cls`` (a :class:`MethodBase` subclass whose ``name``
    field has a default) as a ``method`` from now on, in this process. Returns ``cls``.

    Raises:
        ValueError: the name is a built-in method's, or ``cls`` is not a method config.
    """
    if not (isinstance(cls, type) and issubclass(cls, MethodBase)):
        raise ValueError(f"{cls!r} is not a MethodBase subclass")
    name = cls.model_fields["name"].default
    if name in BUILTIN_METHODS and BUILTIN_METHODS[name] is not cls:
        raise ValueError(f"{name!r} is a built-in method's name")
    METHODS[name] = cls
    return cls


def _registered(value: Any, handler) -> Any:
    """Let registered (non-built-in) methods through the built-ins' discriminated union."""
    if isinstance(value, MethodBase) and METHODS.get(value.name) is type(value):
        return value
    if isinstance(value, Mapping) and value.get("name") in METHODS and value.get("name") not in BUILTIN_METHODS:
        return METHODS[value["name"]].model_validate(dict(value))
    return handler(value)


#: The ``method`` field: one of the methods, told apart by ``name``.
MethodConfig = Annotated[
    Union[TapeMethod, GallonMethod, GlemMethod, LeadingMethod, DreMethod],
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
    "BUILTIN_METHODS", "METHODS", "DreMethod", "GallonMethod", "GlemMethod", "LeadingMethod", "MethodBase",
    "MethodConfig", "TapeMethod", "method_config", "register_method",
]
