"""Georeferenced imagery: reading orthophotos (:mod:`.raster`), the installed dgsamples WorldView scenes
(:mod:`.dgsamples`), synthetic test maps (:mod:`.synthetic`), satellite tiles (:mod:`.tiles`) and synthetic drone camera
views (:mod:`.render`).

Submodules are imported explicitly (``from mobilegeo_ros.geo.raster import read_orthophoto``) so that importing the
package stays cheap.
"""
