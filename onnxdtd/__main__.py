"""`python -m onnxdtd`: the command line."""
from .cli import main

raise SystemExit(main())
