"""``ls-video app``: a Gradio page for a Latent-Shift model (``pip install 'ls-video[app]'``, docs/APP.md).

:mod:`ls_video.app.engine` loads the model once and runs requests (no Gradio); :mod:`ls_video.app.ui` is the
page; :mod:`ls_video.app.modes` is where generation modes plug in; :mod:`ls_video.app.space` writes the files a
Hugging Face Space needs.
"""
