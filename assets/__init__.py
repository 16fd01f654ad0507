"""Shipped model files: ``toy-base/``, the toy text-to-image base (package data of the wheel)."""
