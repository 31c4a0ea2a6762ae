"""compose.yaml and the Dockerfile only use commands, flags and RALF_* variables that exist in the project."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from rq.cli.cli import main as rq_main
from rq.serializers import JSONSerializer, resolve_serializer
from rq.utils import import_worker_class

from cli.main import app
from ralf.core.settings import Settings, settings_env_names

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
_ENV_REFERENCE = re.compile(r"\$\$?\{?(RALF_[A-Z0-9_]+)")


def argv_of(command: list[str] | str) -> list[str]:
    """The program's argv, looking through `sh -c "exec ..."` wrappers."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2])
    return argv[1:] if argv and argv[0] == "exec" else argv


def check_ralf_cli(args: list[str]) -> None:
    group = typer.main.get_command(app)  # typer's own (vendored) click group
    name, *rest = args
    assert name in group.commands, f"ralf-cli has no command {name!r}"
    # Parsing (not invoking) raises on unknown options or bad values.
    group.commands[name].make_context(name, list(rest))


def check_rq_worker(args: list[str]) -> None:
    assert args[0] == "worker", args
    command = rq_main.commands["worker"]
    context = command.make_context("worker", [a.replace("$$", "$") for a in args[1:]])
    params = context.params
    assert tuple(params["queues"]) == tuple(Settings().queue_names), "worker must drain high, default, low in order"
    assert resolve_serializer(params["serializer"]) is JSONSerializer, "jobs must travel as JSON"
    assert params["url"] == '$RALF_REDIS_URL'
    import_worker_class(params["worker_class"])  # what `rq worker` itself does with it


def commands() -> list[tuple[str, list[str]]]:
    found = [(name, argv_of(service["command"])) for name, service in SERVICES.items() if "command" in service]
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    dockerfile_cmd = [line.removeprefix("CMD").strip() for line in lines if line.startswith("CMD")]
    found += [("Dockerfile", json.loads(cmd)) for cmd in dockerfile_cmd]
    return found


@pytest.mark.parametrize(("where", "argv"), commands(), ids=[w for w, _ in commands()])
def test_every_command_exists(where: str, argv: list[str]) -> None:
    program, *args = argv
    if program == "ralf-cli":
        check_ralf_cli(args)
    elif program == "rq":
        check_rq_worker(args)
    elif program == "redis-server":
        assert "--appendonly" in args and args[args.index("--appendonly") + 1] == "yes"
    else:
        pytest.fail(f"{where}: unexpected program {program!r}")


def test_both_documented_worker_commands_are_used() -> None:
    programs = {argv[0] for _, argv in commands()}
    assert {"ralf-cli", "rq", "redis-server"} <= programs


def test_every_ralf_variable_is_a_setting() -> None:
    text = (ROOT / "compose.yaml").read_text() + (ROOT / "Dockerfile").read_text()
    names = set(_ENV_REFERENCE.findall(text))
    for service in SERVICES.values():
        names |= {key for key in service.get("environment", {}) if key.startswith("RALF_")}
    assert names, "compose.yaml configures nothing?"
    unknown = names - settings_env_names()
    assert not unknown, f"not Settings fields: {sorted(unknown)}"


def mount_targets(service: dict) -> set[PurePosixPath]:
    """Where a service's volumes appear in its container (`source:target[:ro|rw]`; sources may hold
    `${VAR:-default}`)."""
    targets = set()
    for volume in service["volumes"]:
        parts = volume.rsplit(":", 2)
        targets.add(PurePosixPath(parts[-2] if parts[-1] in ("ro", "rw") else parts[-1]))
    return targets


@pytest.mark.parametrize("name", ["worker", "rq-worker"])
def test_worker_environment_works_with_what_compose_provides(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = SERVICES[name]
    for key in settings_env_names():
        monkeypatch.delenv(key, raising=False)
    for key, value in service["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    settings.scan_options()  # the options the workers scan with build from it
    assert urlsplit(settings.redis_url).hostname in SERVICES  # Redis by its compose service name
    files = [*settings.media_roots, settings.weights, settings.evidence_dir]
    mounts = mount_targets(service)
    for path in files:
        assert path is not None and any(PurePosixPath(path).is_relative_to(m) for m in mounts), path


def test_redis_keeps_its_data_on_a_volume() -> None:
    redis = SERVICES["redis"]
    args = argv_of(redis["command"])[1:]
    data_dir = args[args.index("--dir") + 1] if "--dir" in args else "/data"  # the redis image's workdir
    assert PurePosixPath(data_dir) in mount_targets(redis)


@pytest.mark.parametrize("name", ["worker", "rq-worker"])
def test_worker_service_is_a_scalable_gpu_service(name: str) -> None:
    service = SERVICES[name]
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert {PurePosixPath("/weights"), PurePosixPath("/media")} <= mount_targets(service)
    # --scale worker=N needs no fixed container name and no published host port.
    assert "container_name" not in service and "ports" not in service
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["worker", "rq-worker"])
def test_every_worker_exposes_its_metrics_port_to_the_scrape_config(name: str) -> None:
    service = SERVICES[name]
    port = int(service["environment"]["RALF_METRICS_PORT"])
    assert str(port) in [str(p) for p in service["expose"]]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [sd for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    assert any(name in sd["names"] and sd["port"] == port for sd in targets)
    prometheus = SERVICES["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    assert any(volume.startswith("./deploy/prometheus.yml:") for volume in prometheus["volumes"])


def test_the_api_service_serves_what_the_workers_read_and_is_health_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from api.uploads import upload_dir

    api, worker = SERVICES["api"], SERVICES["worker"]
    for key in settings_env_names():
        monkeypatch.delenv(key, raising=False)
    for key, value in api["environment"].items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    uploads = PurePosixPath(upload_dir(settings))
    # The uploads land on a volume the API writes and every worker mounts at the same place.
    writable = {PurePosixPath(v.split(":")[1]) for v in api["volumes"] if not v.endswith(":ro")}
    assert uploads in writable
    assert any(v.split(":")[0] == "uploads" and PurePosixPath(v.split(":")[1]) == uploads for v in worker["volumes"])
    assert api["environment"]["RALF_EVIDENCE_DIR"] == worker["environment"]["RALF_EVIDENCE_DIR"]
    assert urlsplit(settings.redis_url).hostname in SERVICES and settings.api_host == "0.0.0.0"
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{settings.api_port}/healthz" in probe
    published = api["ports"][0].rsplit(":", 1)[1]
    assert int(published) == settings.api_port and api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "deploy" not in api  # no GPU: the API never runs the model
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert any("api" in sd["names"] and sd["port"] == settings.api_port
               for job in scrape["scrape_configs"] for sd in job.get("dns_sd_configs", []))  # fmt: skip
