"""`deepvid explore`: DeepVID's three linked views (dataset, latent, student) in a browser.

`Session` holds the dataset, the models and an optional `deepvid run` store and answers the
page's requests; `LivePrograms` are its compiled programs (band, instance and key are array
arguments, so dragging never recompiles); `Server` serves the page (all of its JavaScript and
CSS are in this package: it works offline) on 127.0.0.1.
"""

from deepvid_jax.explore.programs import LivePrograms, axis_order, pearson_agreement
from deepvid_jax.explore.server import Server, check_port, make_app
from deepvid_jax.explore.state import RequestError, Session, Store, check_band, open_store

__all__ = ["LivePrograms", "RequestError", "Server", "Session", "Store", "axis_order",
           "check_band", "check_port", "make_app", "open_store", "pearson_agreement"]
