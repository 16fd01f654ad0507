"""The user commands, one module each with a ``main(argv)``: ``ls-video NAME`` (``ls_video/cli.py``) or
``python -m ls_video.commands.NAME``. They compose the library (``ls_video``); nothing there imports them."""
