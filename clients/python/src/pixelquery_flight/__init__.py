"""PixelQuery Flight for Python: numpy rasters in, Arrow tables, xarray
cubes and pandas time series out, over ``pyarrow.flight``.

>>> from pixelquery_flight import Client
>>> c = Client("grpc://127.0.0.1:8815")
"""

from .client import Client, cog_scene_id
from .errors import AlreadyExists, InvalidRequest, NotFound, PixelQueryError, ServerError, Unauthorized

__all__ = ["Client", "cog_scene_id", "PixelQueryError", "InvalidRequest", "NotFound", "AlreadyExists", "Unauthorized", "ServerError"]
__version__ = "0.1.0"
