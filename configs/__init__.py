"""The shipped training configs (package data: ``ls_video.shipped`` finds them from an installed wheel)."""
