"""docker-compose.yml and the image's entrypoint, checked without a Docker engine: Debian's
`docker-compose config` validates and resolves the file for both profiles, the README shows
the CPU profile's command lines, the entrypoint's `init` builds a GPU repository from the
tokenizer and (when present) the EditX weights, idempotently, with no GPU present, and `cpu`
builds the synthetic tokenizer + clone repository and hands it to tritonserver."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from conftest import ROOT

COMPOSE = shutil.which("docker-compose")
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
PORTS = [8000, 8001, 8002]
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="Debian's docker-compose is not "
                                "installed (build_scripts/setup_env.sh installs it)")


def compose_config(profile: str, env: dict[str, str] | None = None) -> dict:
    """The resolved compose file, as docker-compose validates and prints it."""
    run = subprocess.run([COMPOSE, "--profile", profile, "config"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, **(env or {})}, timeout=60)
    assert run.returncode == 0, run.stderr
    return yaml.safe_load(run.stdout)


def services_of(config: dict, profile: str) -> dict:
    return {name: s for name, s in config["services"].items() if profile in s.get("profiles", [])}


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form)."""
    text = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))


def readme_commands() -> list[str]:
    """Every line of the README's ```bash blocks (comments after `#` dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [line.split("#")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def published(service: dict) -> list[int]:
    return sorted(int(p["published"]) for p in service["ports"])


@pytest.mark.parametrize("profile", ["gpu", "cpu"])
def test_config_validates_and_each_profile_serves_on_the_triton_ports(profile):
    servers = {name: s for name, s in services_of(compose_config(profile), profile).items()
               if s["command"] != ["init"]}
    assert len(servers) == 1
    server = next(iter(servers.values()))
    assert published(server) == PORTS
    assert [int(p["target"]) for p in server["ports"]] == PORTS
    assert server["shm_size"] == "2gb"
    assert server["healthcheck"]["test"] == ["CMD", "python3", "/opt/step_audio_triton/docker/healthcheck.py",
                                             "--url", "localhost:8000"]
    assert server["image"] == "step-audio-triton:latest"
    assert server["build"]["dockerfile"] == "docker/Dockerfile"


def test_gpu_profile_reserves_gpus_and_waits_for_the_engine_build():
    gpu = services_of(compose_config("gpu", {"WEIGHTS_DIR": "/data/tokenizer", "GPUS": "0,1",
                                             "EDITX_DIR": "/data/editx"}), "gpu")
    assert sorted(gpu) == ["init", "tritonserver"]
    for service in gpu.values():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert "/data/tokenizer:/weights:ro" in service["volumes"]
        assert "/data/editx:/editx:ro" in service["volumes"]
        assert (service["environment"]["WEIGHTS"], service["environment"]["EDITX"]) == ("/weights", "/editx")
        assert service["environment"]["LLM_ENGINE"] == "python"
        assert "model_repository:/models:rw" in service["volumes"]
        assert service["environment"]["GPUS"] == "0,1"
    assert gpu["init"]["command"] == ["init"]
    assert gpu["tritonserver"]["command"] == ["serve"]
    assert gpu["tritonserver"]["depends_on"] == {
        "init": {"condition": "service_completed_successfully"}}


def test_cpu_profile_command_line_is_the_one_the_readme_shows():
    """The README must show how to start the CPU profile and what the container then runs."""
    cpu = services_of(compose_config("cpu"), "cpu")
    (name, service), = cpu.items()
    assert "deploy" not in service
    container_command = shlex.join(image_entrypoint() + service["command"])
    start = f"docker-compose --profile cpu up {name}"
    commands = readme_commands()
    assert start in commands, f"README.md shows no `{start}`"
    assert container_command in commands, f"README.md shows no `{container_command}`"


def test_entrypoint_rejects_unknown_commands_and_an_unbuilt_repository(tmp_path):
    usage = subprocess.run(["bash", ENTRYPOINT, "deploy"], capture_output=True, text=True)
    assert (usage.returncode, usage.stderr) == (2, "usage: entrypoint.sh init | serve | cpu\n")
    serve = subprocess.run(["bash", ENTRYPOINT, "serve"], capture_output=True, text=True,
                           env={**os.environ, "REPO": str(tmp_path)})
    assert serve.returncode == 1
    assert serve.stderr == (f"entrypoint: {tmp_path} holds no built repository: run the init "
                            "service first\n")


def _python3_first(tmp_path) -> dict[str, str]:
    """PATH whose `python3` is this interpreter (the image's python3 has the packages)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def read_config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_init_builds_the_gpu_repository_once(tmp_path, tiny_weights, tiny_editx):
    env = {**_python3_first(tmp_path), "WEIGHTS": str(tiny_weights), "EDITX": str(tiny_editx),
           "REPO": str(tmp_path / "repo"), "ENGINES": str(tmp_path / "engines"), "GPUS": "0,1",
           "GPU_ENGINE": "none", "MAX_BATCH_SIZE": "4", "INSTANCES": "vq02=2",
           "PLACEMENT": "vq02=0,vq06=1,llm=0,decoder=1"}
    first = subprocess.run(["bash", ENTRYPOINT, "init"], capture_output=True, text=True, env=env,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    config = read_config(tmp_path / "repo" / "vq02" / "config.pbtxt")
    assert config.max_batch_size == 4
    (group,) = config.instance_group
    assert (group.count, group.kind, list(group.gpus)) == (2, group.KIND_GPU, [0])
    for model, gpu in (("llm_stream", 0), ("token2wav", 1)):
        (group,) = read_config(tmp_path / "repo" / model / "config.pbtxt").instance_group
        assert (group.kind, list(group.gpus)) == (group.KIND_GPU, [gpu]), model
    assert read_config(tmp_path / "repo" / "clone" / "config.pbtxt").name == "clone"
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    second = subprocess.run(["bash", ENTRYPOINT, "init"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert second.returncode == 0, second.stderr
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_init_without_editx_weights_builds_the_tokenizer_only(tmp_path, tiny_weights):
    empty = tmp_path / "editx"  # what docker creates for an EDITX_DIR that does not exist
    empty.mkdir()
    env = {**_python3_first(tmp_path), "WEIGHTS": str(tiny_weights), "EDITX": str(empty),
           "REPO": str(tmp_path / "repo"), "ENGINES": str(tmp_path / "engines"),
           "GPU_ENGINE": "none"}
    run = subprocess.run(["bash", ENTRYPOINT, "init"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert (f"entrypoint: no EditX weights in {empty} (no config.json): tokenizer only, no clone "
            "models\n") in run.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [
        "audio_tokenizer", "preprocess", "token_merge", "vq02", "vq06"]


def test_cpu_builds_the_synthetic_clone_repository_and_serves_it(tmp_path, tiny_weights, tiny_editx):
    """`cpu` with the synthetic weights already in CPU_BUILD (the generators leave complete
    ones alone) and a stand-in `tritonserver` that records its arguments."""
    build_dir = tmp_path / "build"
    for source, name in ((tiny_weights, "tiny"), (tiny_editx, "tiny-editx")):
        shutil.copytree(source, build_dir / "weights" / name, ignore=shutil.ignore_patterns(".*lock"))
    env = _python3_first(tmp_path)
    argv_file = tmp_path / "tritonserver.argv"
    server = tmp_path / "bin" / "tritonserver"
    server.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(argv_file))}\n')
    server.chmod(0o755)
    run = subprocess.run(["bash", ENTRYPOINT, "cpu"], capture_output=True, text=True,
                         env={**env, "CPU_BUILD": str(build_dir)}, timeout=300)
    assert run.returncode == 0, run.stderr
    repo = build_dir / "model_repository"
    assert read_config(repo / "audio_tokenizer" / "config.pbtxt").platform == "ensemble"
    for model in ("vq02", "clone", "clone_stream", "llm_stream", "token2wav"):
        (group,) = read_config(repo / model / "config.pbtxt").instance_group
        assert group.kind == group.KIND_CPU, model
    argv = argv_file.read_text().splitlines()
    assert argv[:6] == [f"--model-repository={repo}", "--http-port=8000", "--grpc-port=8001",
                        "--metrics-port=8002", "--disable-auto-complete-config",
                        "--exit-timeout-secs=30"]
    assert argv[6:] == ["--model-control-mode=explicit", "--load-model=*"]
