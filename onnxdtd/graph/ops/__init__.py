"""Op handlers, one module per op family; importing this package registers them all."""
from . import activation, arith, batchnorm, conv, dense, index, pad, pool, reduce, shape  # noqa: F401
