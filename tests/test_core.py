"""The torch-free core (`ralf.core`): it loads without torch, enqueue stays torch-free with RALF_WEIGHTS set,
stored flat sampling keys still load into the nested `Sampling`, and one `Decision` maps logits."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
import torch
from pydantic import ValidationError

from pipeline import synthetic
from ralf.config import RALFConfig
from ralf.core.decision import Decision, fake_probabilities
from ralf.core.device import DeviceUnavailable, resolve_device
from ralf.core.metadata import Calibration, read_metadata
from ralf.core.options import Sampling, ScanOptions
from ralf.core.settings import settings_env_names
from ralf.model import RALF
from ralf.weights import save_weights
from worker.jobs import ScanOverrides

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379/13"


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a loaded machine: imports under nice can take a while
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


IMPORT_THE_CORE = """
import importlib, pkgutil, sys
import ralf.core
names = [m.name for m in pkgutil.walk_packages(ralf.core.__path__, "ralf.core.")]
for name in names:
    importlib.import_module(name)
print(len(names), "torch" in sys.modules)
"""


def test_importing_the_core_does_not_import_torch() -> None:
    count, torch_loaded = _run(IMPORT_THE_CORE).split()
    assert int(count) >= 7 and torch_loaded == "False"


IMPORT_THE_API = """
import importlib, pkgutil, sys
import api
names = [m.name for m in pkgutil.walk_packages(api.__path__, "api.")]
for name in names:
    importlib.import_module(name)
importlib.import_module("api.app").create_app()
print(len(names), "torch" in sys.modules)
"""


def test_the_http_service_never_imports_torch() -> None:
    # The API enqueues and reads verdicts; the model runs only on the workers.
    count, torch_loaded = _run(IMPORT_THE_API).split()
    assert int(count) >= 10 and torch_loaded == "False"


ENQUEUE_WITH_WEIGHTS = """
import json, sys
from ralf.core.settings import Settings
from worker.queue import connect, enqueue_scan, model_version
settings = Settings()
job = enqueue_scan(connect(settings), settings, sys.argv[1])
print(json.dumps({"version": model_version(settings), "job": job.job_id, "torch": "torch" in sys.modules}))
"""


def _redis_answers() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(not os.environ.get("CI") and not _redis_answers(), reason="no Redis at 127.0.0.1:6379")
def test_enqueue_with_weights_set_does_not_import_torch(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    written = save_weights(weights, RALF(RALFConfig.tiny()).eval())
    media = tmp_path / "media"
    media.mkdir()
    clip = synthetic.write_face_clip(media / "face.mp4", codec="h264", num_frames=4, size=(160, 120), fps=6.0)
    prefix = f"c{uuid.uuid4().hex[:10]}"
    env = {name: value for name, value in os.environ.items() if name not in settings_env_names()}
    env.update({
        "RALF_WEIGHTS": str(weights), "RALF_REDIS_URL": REDIS_URL, "RALF_KEY_PREFIX": prefix,
        "RALF_QUEUE_HIGH": f"{prefix}-high", "RALF_QUEUE_DEFAULT": f"{prefix}-default",
        "RALF_QUEUE_LOW": f"{prefix}-low", "RALF_MEDIA_ROOTS": str(media),
    })  # fmt: skip
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        enqueued = json.loads(_run(ENQUEUE_WITH_WEIGHTS, str(clip), env=env))
    finally:
        for key in connection.scan_iter(match=f"*{prefix}*"):
            connection.delete(key)
    assert enqueued["version"] == written.model_version == read_metadata(weights).model_version
    assert enqueued["job"].startswith(f"{prefix}-")
    assert enqueued["torch"] is False


# -- options: the nested sampling, and the flat keys stored payloads and RALF_* settings carry ----------


def test_flat_sampling_keys_fold_into_sampling() -> None:
    assert ScanOptions().sampling == Sampling(target_fps=2.0)
    assert ScanOptions.model_validate({"every_n": 5}).sampling == Sampling(every_n=5)
    assert ScanOptions(every_n=None).sampling == Sampling(target_fps=2.0)  # no mode chosen: the default
    assert ScanOptions(target_fps=None).sampling == Sampling()  # explicitly none: every frame
    assert ScanOptions(max_frames=3, every_n=None).sampling == Sampling(max_frames=3)
    with pytest.raises(ValidationError, match="at most one"):
        ScanOptions(every_n=2, target_fps=1.0)
    with pytest.raises(ValidationError, match="not both"):
        ScanOptions.model_validate({"every_n": 2, "sampling": {"max_frames": 3}})


def test_a_stored_job_payload_gives_the_same_options_as_before() -> None:
    # Job payloads keep the flat keys (their JSON decides the job id); they must keep loading.
    overrides = ScanOverrides.model_validate({"max_frames": 4, "aggregation": "median"})
    options = ScanOptions(device="cpu", **overrides.as_options())
    assert options.sampling == Sampling(max_frames=4) and options.aggregation == "median"
    assert ScanOptions.model_validate(json.loads(options.model_dump_json())) == options


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
            resolve_device("cuda")


# -- Decision: the one mapping between logits, the stored threshold and P(fake) --------------------------


def _calibration(threshold: float, temperature: float | None) -> Calibration:
    return Calibration(
        threshold=threshold, method="eer", achieved_tpr=1.0, achieved_fpr=0.0, level="video",
        temperature=temperature, dataset_fingerprint="x", date="2026-01-01", num_real=5, num_fake=5,
    )  # fmt: skip


def test_decision_applies_the_temperature_to_threshold_and_faces() -> None:
    decision = Decision.from_calibration(_calibration(1.0, 4.0))
    assert decision.temperature == 4.0
    assert decision.threshold == pytest.approx(1 / (1 + math.exp(-0.25)))
    assert decision.probabilities(torch.tensor([1.0, -8.0])) == pytest.approx(
        [1 / (1 + math.exp(-0.25)), 1 / (1 + math.exp(2.0))]
    )
    plain = Decision.from_calibration(None)
    assert (plain.threshold, plain.temperature) == (0.5, 1.0)
    # Far beyond the float range of exp: no overflow, the limits.
    assert fake_probabilities([1e4, -1e4]) == [1.0, 0.0]


# -- the import arrows of ARCHITECTURE.md ------------------------------------------------------------

ALLOWED_IMPORTS = {
    "cli": {"cli", "api", "worker", "trainer", "pipeline", "ralf"},
    "api": {"api", "worker", "pipeline", "ralf"},
    "worker": {"worker", "pipeline", "ralf"},
    "trainer": {"trainer", "pipeline", "ralf"},
    "pipeline": {"pipeline", "ralf"},
    "ralf": {"ralf"},
}
# The core's first-party imports: itself and the two torch-free ralf modules it builds on.
CORE_MAY_IMPORT = ("ralf.core", "ralf.config", "ralf.shipped")


def _first_party_imports(path: Path) -> set[str]:
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found |= {name for name in names if name.split(".")[0] in ALLOWED_IMPORTS}
    return found


def test_imports_follow_the_architecture() -> None:
    wrong = []
    for package, allowed in ALLOWED_IMPORTS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for name in _first_party_imports(path):
                in_core = path.is_relative_to(REPO / "ralf" / "core")
                if name.split(".")[0] not in allowed or (in_core and not name.startswith(CORE_MAY_IMPORT)):
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, wrong


# -- no import circle inside a package (module-level and lazy imports alike) ----------------------------


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The first-party modules `path` imports anywhere in its body (inside functions too): for
    `from a.b import c`, the module a.b.c when there is one, else a.b; relative imports resolved."""
    import ast

    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
                elif base in modules:
                    found.add(base)
    return found - {here}


def import_circles(package: str, root: Path = REPO) -> list[list[str]]:
    """Every strongly connected group of more than one module in `package`'s import graph."""
    paths = sorted((root / package).rglob("*.py"))
    modules = {_module_name(path, root) for path in paths}
    graph = {_module_name(path, root): _imported_modules(path, root, modules) for path in paths}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_import_circles_are_found(tmp_path: Path) -> None:
    # the checker itself: a circle closed by a lazy import inside a function counts, as does a relative one
    package = tmp_path / "probe"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from probe.b import B\nA = 1\n")
    (package / "b.py").write_text("B = 2\n\n\ndef later():\n    from probe import a\n    return a\n")
    (package / "c.py").write_text("from probe import a\n")
    (package / "sub" / "__init__.py").write_text("from .d import D\n")
    (package / "sub" / "d.py").write_text("from .. import c\nD = 1\n\n\ndef e():\n    from . import D\n")
    assert import_circles("probe", tmp_path) == [["probe.a", "probe.b"], ["probe.sub", "probe.sub.d"]]


@pytest.mark.parametrize("package", sorted(ALLOWED_IMPORTS))
def test_no_import_circle_inside_a_package(package: str) -> None:
    assert import_circles(package) == []
