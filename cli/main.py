"""Console entry point `ralf-cli`: importing the command modules registers their commands.

The import order is the order `ralf-cli --help` lists them: scanning first, deployment last.
"""

from cli import config as _config  # noqa: F401  (config)
from cli import engine as _engine  # noqa: F401  (export/calibrate)
from cli import import_weights as _import_weights  # noqa: F401  (import-weights)
from cli import queue as _queue  # noqa: F401  (enqueue/status/result/jobs/worker)
from cli import report as _report  # noqa: F401  (report)
from cli import scan as _scan  # noqa: F401  (scan/demo/schema)
from cli import serve as _serve  # noqa: F401  (serve, keys, reviews: the HTTP front door)
from cli import train as _train  # noqa: F401  (prepare/train/evaluate)
from cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
