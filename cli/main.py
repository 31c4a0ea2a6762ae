"""Console entry point `ralf-cli`: importing the command modules registers their commands."""

from cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
