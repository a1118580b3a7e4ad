"""Model families the engine supports, one file each where a family differs (see ``base``)."""

from avl_lab.engine.families.base import (
    Family,
    families,
    family_for_type,
    family_of,
    register_family,
)

__all__ = ["Family", "families", "family_for_type", "family_of", "register_family"]
