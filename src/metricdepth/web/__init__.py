"""The local web page (``metricdepth serve``): drop a photo, see metric depth and its 3-D points.

Needs the ``web`` extra (``pip install 'metricdepth[web]'``): ``metricdepth.web.app`` imports
FastAPI. ``create_app(model)`` builds the app; the page itself is ``static/`` (our own HTML, CSS
and JavaScript, with a small WebGL point-cloud viewer; nothing is fetched from the network).
"""
