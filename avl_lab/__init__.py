"""avl_lab."""
