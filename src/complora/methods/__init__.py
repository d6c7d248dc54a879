"""Methods: named entries bound to a family (complora.methods.families), one module per family, and the
registry from family names to those modules (complora.methods.registry)."""
