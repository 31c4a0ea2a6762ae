"""The torch-free core every other package builds on (ARCHITECTURE.md).

What scanning, queueing, training and the CLI must agree on lives here once: how a video is scanned
(`options.ScanOptions` with its nested `Sampling`), which device runs it (`device.resolve_device`),
how logits become P(fake) and labels (`decision.Decision`), what a weights file says about itself
(`metadata`: read from the safetensors header with struct and json), file digests (`files`), the
deployment's `RALF_*` settings (`settings.Settings`) and the URL address policy they configure
(`addresses`).

Nothing here imports torch (tests/test_core.py checks it), so `ralf-cli enqueue`, `status` and
`config` stay light. The core imports only the standard library, pydantic and the torch-free
`ralf.config` and `ralf.shipped`; every package may import it.
"""
