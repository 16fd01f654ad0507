"""Video metrics. ``toy``: motion / colour / shape accuracy on the toy world from pixels only."""
