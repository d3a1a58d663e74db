"""PixelQuery Flight for Python: numpy rasters in, Arrow tables, xarray
cubes and pandas time series out, over ``pyarrow.flight``.

>>> from pixelquery_flight import Client
>>> c = Client("grpc://127.0.0.1:8815")
"""

from .client import Client
from .errors import AlreadyExists, InvalidRequest, NotFound, PixelQueryError, ServerError, Unauthorized

__all__ = ["Client", "PixelQueryError", "InvalidRequest", "NotFound", "AlreadyExists", "Unauthorized", "ServerError"]
__version__ = "0.1.0"
