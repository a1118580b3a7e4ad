"""Example avl_lab plugin package (see ``top_image.py``)."""
