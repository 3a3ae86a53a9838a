"""Where reference distributions come from: one :class:`ReferenceType` per kind, named from recipes as
``reference.type`` (see :mod:`rlkit.references.registry` for the life of a reference in a run).

Add one: write a small module with a :class:`ReferenceType` subclass (and its ``Config``), then add one
``register_reference("name")(Class)`` line below (``docs/extending.md``).
"""

from .initial import InitialReference
from .proxy import ProxyReference
from .registry import (
    ReferenceConfig,
    ReferenceSetup,
    ReferenceSource,
    ReferenceType,
    as_reference_config,
    available_references,
    reference_type,
    register_reference,
    validate_reference,
)
from .soup import SoupReference, soup_state_dict
from .teacher import TeacherReference

register_reference("initial")(InitialReference)
register_reference("soup")(SoupReference)
register_reference("teacher")(TeacherReference)
register_reference("proxy")(ProxyReference)

__all__ = [
    "ReferenceConfig",
    "ReferenceSetup",
    "ReferenceSource",
    "ReferenceType",
    "as_reference_config",
    "available_references",
    "reference_type",
    "register_reference",
    "soup_state_dict",
    "validate_reference",
]
