"""The HTTP front door (`ralf-cli serve`): the scan API under /v1, the review desk under /review, health,
metrics and offline API docs. A FastAPI application over the same queue client (`worker.queue`), settings
(`ralf.core.settings.Settings`) and `Verdict` schema as the CLI; it never loads or runs the model.

Imports flow `cli -> api -> worker -> pipeline -> ralf`; nothing but `cli` imports this package.
"""
