"""Geometry shared by data, models and rendering: the leaves of the import graph.

``cameras`` (the one camera convention: orbits, intrinsics, rays, Plücker maps) and ``ccm``
(canonical coordinate maps, supplementary section 1.2). Neither imports anything of the package
but each other (ccm uses cameras).
"""
