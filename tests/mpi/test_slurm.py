"""The slurm/*.sbatch scripts on a real Slurm.

`.ci/run` starts a one-node Slurm (.ci/slurm/start.sh: 6 CPUs, 4 fake GPUs as
gres, MpiDefault=none), exports SLURM_CONF and LLCUDA_REQUIRE_SLURM=1, then
runs pytest. Without a usable Slurm these tests skip, or FAIL when
LLCUDA_REQUIRE_SLURM=1. By hand on a throw-away root machine:

    bash .ci/slurm/start.sh && export SLURM_CONF=${TMPDIR:-/tmp}/llcuda-ci-slurm/etc/slurm.conf
    python3 -m pytest tests/mpi/test_slurm.py; bash .ci/slurm/stop.sh

A job passes only if `sbatch --wait` returns 0 AND the job's final state is
COMPLETED with exit code 0:0 (`sbatch --wait` can return 0 for a job that hit
its time limit or was cancelled). The scripts for stage and serve are tested
once they exist in slurm/.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLURM = ROOT / "slurm"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
JOB_TIMEOUT = 300        # seconds a test waits for one job


# ---------------------------------------------------------------- Slurm here?

def _slurm_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH"
    conf = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    if not os.path.exists(conf):
        return f"no Slurm config ({conf}; SLURM_CONF unset: start one with .ci/slurm/start.sh)"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s (slurmctld down?)"
    if p.returncode != 0:
        return f"sinfo failed: {p.stderr.strip() or p.returncode}"
    states = p.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no node is up (sinfo: {' '.join(states) or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    problem = _slurm_problem()
    if problem is None:
        return _config()
    if os.environ.get("LLCUDA_REQUIRE_SLURM") == "1":
        pytest.fail(f"LLCUDA_REQUIRE_SLURM=1 but Slurm is not usable: {problem}", pytrace=False)
    pytest.skip(f"no Slurm here: {problem}")


def _config() -> dict:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
    conf = dict(re.findall(r"^(\w+)\s+=\s+(.*?)\s*$", out, re.M))
    nodes = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=20).stdout
    m = re.search(r"gpu:(?:\w+:)?(\d+)", nodes)
    conf["gpus_per_node"] = int(m.group(1)) if m else 0
    return conf


# ---------------------------------------------------------------- one job, strictly judged

@dataclasses.dataclass
class Job:
    id: str
    rc: int                 # sbatch --wait's exit status
    state: str              # final JobState seen by scontrol
    exit_code: str          # "rc:signal"
    log: str

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.state == "COMPLETED" and self.exit_code == "0:0"

    def __str__(self):
        return f"job {self.id}: sbatch rc={self.rc} state={self.state} ExitCode={self.exit_code}\n{self.log}"


def _show(job_id: str) -> tuple[str, str]:
    p = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20)
    state = re.search(r"\bJobState=(\S+)", p.stdout)
    code = re.search(r"\bExitCode=(\S+)", p.stdout)
    state = state.group(1) if state else ""
    if state == "COMPLETING" and re.search(r"\bReason=TimeLimit\b", p.stdout):
        # its record may go the moment COMPLETING ends (MinJobAge counts from the end time)
        state = "COMPLETING_TIMEOUT"
    return state, (code.group(1) if code else "")


class Submission:
    """`sbatch --wait` in the background; a thread watches the job's state with scontrol until
    sbatch returned and the job reached a final state (or its record went)."""

    def __init__(self, tmp_path, script, *args, sbatch=(), env=None):
        self.out = tmp_path / f"{pathlib.Path(script).stem}-%j.out"
        cmd = ["sbatch", "--parsable", "--wait", f"--output={self.out}", *sbatch, str(script), *map(str, args)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline().strip()
        if not re.fullmatch(r"\d+(;.*)?", line):
            _, err = self.proc.communicate(timeout=60)
            raise AssertionError(f"sbatch {script} refused the job: {line} {err.strip()}")
        self.id = line.split(";")[0]
        self.log_path = pathlib.Path(str(self.out).replace("%j", self.id))
        self.state, self.exit_code, self.gone = "PENDING", "", False
        self.stop = threading.Event()
        self.watcher = threading.Thread(target=self._watch, name=f"watch-job-{self.id}", daemon=True)
        self.watcher.start()

    def _watch(self):
        while not self.stop.is_set():
            state, code = _show(self.id)
            self.gone = not state
            if state:               # once the record is gone (MinJobAge), the last state seen stands
                self.state, self.exit_code = state, code
            if self.proc.poll() is not None and (self.state in TERMINAL or self.gone):
                break
            self.stop.wait(0.3)
        if self.gone and self.state == "COMPLETING_TIMEOUT":
            self.state = "TIMEOUT"

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL or not self.watcher.is_alive()

    def wait_for(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.ended:
                raise AssertionError(f"job ended before {what}: {self.finish()}")
            time.sleep(0.3)
        raise AssertionError(f"no {what} after {timeout} s: {self.cancel_and_finish()}")

    def wait_log(self, text, timeout) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert text in self.log(), f"{text!r} not in the log of job {self.id}:\n{self.log()}"
        return self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def finish(self, timeout=JOB_TIMEOUT) -> Job:
        """Wait for sbatch --wait to return and for a final state (not COMPLETING)."""
        self.watcher.join(timeout)
        if self.watcher.is_alive():
            return self.cancel_and_finish()
        _, err = self.proc.communicate(timeout=60)       # closes the pipes
        return Job(self.id, self.proc.returncode, self.state, self.exit_code, self.log() + err)

    def cancel_and_finish(self) -> Job:
        subprocess.run(["scancel", self.id], timeout=20)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        self.watcher.join(30)
        self.stop.set()
        return Job(self.id, self.proc.returncode if self.proc.returncode is not None else -1,
                   self.state + " (cancelled by the test)", self.exit_code, self.log())


def run_job(tmp_path, script, *args, sbatch=(), env=None, timeout=JOB_TIMEOUT) -> Job:
    return Submission(tmp_path, script, *args, sbatch=sbatch, env=env).finish(timeout)


def needs_script(name: str) -> pathlib.Path:
    path = SLURM / name
    if not path.exists():
        pytest.skip(f"slurm/{name} does not exist yet")
    return path


@pytest.fixture(scope="module")
def serve_at_time_limit(slurm, tmp_path_factory):
    """A 2-rank serve job with `--time=2` that answered one request; checked by the last test."""
    sub, ready = start_serve(tmp_path_factory.mktemp("timelimit"), "--time=2", "--ntasks=2")
    ask_one(ready["url"])
    yield sub
    if not sub.ended:
        sub.cancel_and_finish()


def test_serve_sbatch_time_limit_job_started(serve_at_time_limit):
    """Starts the time-limit job early (see test_serve_sbatch_stops_gracefully_before_its_time_limit)."""
    assert serve_at_time_limit.state == "RUNNING"


# ---------------------------------------------------------------- launches: N ranks, right devices

def probe(tmp_path, launch=None, sbatch=(), env=None):
    env = dict(env or {})
    if launch is not None:
        env["LLCUDA_LAUNCH"] = launch
    job = run_job(tmp_path, ROOT / "tests/mpi/slurm_probe.sbatch", sbatch=sbatch, env=env, timeout=120)
    lines = [json.loads(line[6:]) for line in job.log.splitlines() if line.startswith("PROBE ")]
    return job, sorted(lines, key=lambda x: (x["rank"], x["env"].get("SLURM_PROCID", "")))


def assert_three_ranks(job, lines):
    assert job.ok, job
    assert [(x["rank"], x["size"]) for x in lines] == [(0, 3), (1, 3), (2, 3)], job
    assert all(x["mismatch"] is None and x["env"]["LLCUDA_EXPECT_RANKS"] == "3" for x in lines), job


LAUNCHES = {                          # launcher -> extra environment
    "srun --mpi=pmi2": {},
    "mpiexec": {},                    # Hydra reads the allocation: no -n needed
    "mpiexec -n 3": {},
    "srun (SLURM_MPI_TYPE=pmi2)": {"SLURM_MPI_TYPE": "pmi2"},   # what MpiDefault=pmi2 does
}


@pytest.mark.parametrize("name", LAUNCHES)
def test_launch_starts_one_job_of_n_ranks(slurm, tmp_path, name):
    """The launches that work with the mpich wheel: one COMM_WORLD of SLURM_NTASKS ranks,
    workers on distinct GPUs of the node (--gpus-per-node: every task sees all of them)."""
    gres = ["--gpus-per-node=4"] if slurm["gpus_per_node"] >= 4 else []
    job, lines = probe(tmp_path, name.split(" (")[0], sbatch=gres, env=LAUNCHES[name])
    assert_three_ranks(job, lines)
    assert [x["device"] for x in lines] == ["cpu", "cuda:0", "cuda:1"], job
    if name.startswith("mpiexec"):    # Hydra's local rank wins over the inherited SLURM_LOCALID=0
        assert [x["env"].get("MPI_LOCALRANKID") for x in lines] == ["0", "1", "2"], job


def test_bare_srun_follows_mpi_default(slurm, tmp_path):
    """Plain `srun` works where MpiDefault=pmi2; with none it starts singletons, which are caught."""
    job, lines = probe(tmp_path, "srun", env={"SLURM_MPI_TYPE": ""} if "SLURM_MPI_TYPE" in os.environ else None)
    if slurm.get("MpiDefault") == "pmi2":
        assert_three_ranks(job, lines)
    else:
        assert [x["size"] for x in lines] == [1, 1, 1], job
        assert all("singletons" in x["mismatch"] for x in lines), job


def test_srun_mpi_none_is_three_singletons(slurm, tmp_path):
    job, lines = probe(tmp_path, "srun --mpi=none")
    assert [(x["rank"], x["size"]) for x in lines] == [(0, 1)] * 3, job
    assert all("has 1 MPI ranks but the allocation has 3 tasks" in x["mismatch"] for x in lines), job


def test_gpus_per_task_gives_each_worker_ordinal_0_of_its_own_gpu(slurm, tmp_path):
    if slurm["gpus_per_node"] < 3:
        pytest.skip("the node has no 3 (fake) GPUs as gres")
    job, lines = probe(tmp_path, "srun --mpi=pmi2", sbatch=["--gpus-per-task=1"])
    assert_three_ranks(job, lines)
    visible = [x["env"]["CUDA_VISIBLE_DEVICES"] for x in lines]
    assert len(set(visible)) == 3 and all("," not in v for v in visible), job
    assert [x["device"] for x in lines] == ["cpu", "cuda:0", "cuda:0"], job
    assert [x["physical"] for x in lines[1:]] == visible[1:], job


# ---------------------------------------------------------------- bench.sbatch

def read_ok_results(path, n):
    from llcuda_mpi.results.reader import read_results
    res = read_results(path)
    assert res.complete and len(res) == n and list(res.status) == ["ok"] * n
    return res


@pytest.mark.parametrize("launch", [None, "mpiexec"])
def test_bench_sbatch_synthetic(slurm, tmp_path, launch):
    h5 = tmp_path / "r.h5"
    job = run_job(tmp_path, SLURM / "bench.sbatch", "--backend", "synthetic", "--num-prompts", 12,
                  "--max-tokens", 4, "--no-progress", "-o", h5,
                  env={"LLCUDA_LAUNCH": launch} if launch else None)
    assert job.ok, job
    assert f"results: {h5}" in job.log, job
    res = read_ok_results(h5, 12)
    assert sorted({int(r) for r in res.requests["rank"]}) == [1, 2]


def test_bench_sbatch_catches_singletons(slurm, tmp_path):
    job = run_job(tmp_path, SLURM / "bench.sbatch", "--backend", "synthetic", "--num-prompts", 3,
                  env={"LLCUDA_LAUNCH": "srun --mpi=none"})
    assert not job.ok and job.state == "FAILED", job
    assert "the job has 1 MPI ranks but the allocation has 3 tasks" in job.log, job


# ---------------------------------------------------------------- stage.sbatch

def test_stage_sbatch_then_bench_engine_from_the_store(slurm, tmp_path):
    """The cluster flow: stage.sbatch copies a model into the node store (verified), then one
    short bench.sbatch run of our engine (CPU kernels) loads it as store:NAME."""
    script = needs_script("stage.sbatch")
    from llcuda_mpi.model.make import make_tiny_model
    from llcuda_mpi.storage import Store, resolve_model
    model, store, h5 = tmp_path / "m.gguf", tmp_path / "store", tmp_path / "e.h5"
    make_tiny_model("llama", model)
    job = run_job(tmp_path, script, model, "--name", "tiny:ci", "--store", store, "--chunk-mib", 1,
                  sbatch=["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"])   # one node in CI
    assert job.ok, job
    staged = resolve_model("store:tiny:ci", store=Store(str(store)), hold=False)
    assert pathlib.Path(staged).read_bytes() == model.read_bytes()
    verify = subprocess.run(["python3", "-m", "llcuda_mpi.cli", "store", "--store", str(store), "verify"],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    job = run_job(tmp_path, SLURM / "bench.sbatch", "--backend", "engine", "--model", "store:tiny:ci",
                  "--device", "cpu", "--num-prompts", 4, "--max-tokens", 4, "--input-len", 8,
                  "--no-progress", "-o", h5, env={"LLCUDA_MPI_STORE": str(store)})
    assert job.ok, job
    read_ok_results(h5, 4)


# ---------------------------------------------------------------- serve.sbatch

def start_serve(tmp_path, *sbatch):
    script = needs_script("serve.sbatch")
    ready = tmp_path / "ready.json"
    sub = Submission(tmp_path, script, "--backend", "synthetic", "--port", 0, "--port-base", 0,
                     "--ready-file", ready, sbatch=sbatch)
    sub.wait_for(ready.exists, 180, f"{ready.name} from serve")
    return sub, json.loads(ready.read_text())


def ask_one(url):
    import httpx
    r = httpx.post(f"{url}/completion", json={"prompt": "hello", "n_predict": 4}, timeout=60)
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 4, r.text


def test_serve_sbatch_answers_then_drains_on_sigterm(slurm, tmp_path):
    """SIGTERM to the job's steps (`scancel --signal=TERM`, or `--signal=TERM@T` before a time
    limit): serve drains, every rank exits 0, the job COMPLETES."""
    sub, ready = start_serve(tmp_path, "--time=5")
    ask_one(ready["url"])
    subprocess.run(["scancel", "--signal=TERM", sub.id], check=True, timeout=20)
    job = sub.finish(120)
    assert job.ok, job
    assert "serve: stopped; 1 requests ok" in job.log and "Traceback" not in job.log, job


def test_serve_sbatch_scancel_is_a_graceful_stop(slurm, tmp_path):
    """Plain scancel (SIGTERM to the batch shell and steps at once, SIGKILL KillWait later):
    serve still logs its orderly stop, well before the SIGKILL."""
    sub, ready = start_serve(tmp_path, "--time=5")
    ask_one(ready["url"])
    subprocess.run(["scancel", sub.id], check=True, timeout=20)
    job = sub.finish(120)
    assert job.state == "CANCELLED", job
    # the job is CANCELLED at once; the steps' last lines follow (SIGKILL would cut them off)
    log = sub.wait_log("serve: stopped; 1 requests ok", 30)
    assert "Traceback" not in log, log



def test_serve_sbatch_stops_gracefully_before_its_time_limit(slurm, serve_at_time_limit):
    """`--time=2` with serve.sbatch's `--signal=TERM@60`: Slurm's warning SIGTERM comes 60-90 s
    in (limits are checked about every 30 s), serve drains and every rank exits 0, so the job
    COMPLETES before the limit. Submitted by the fixture near the start of this module, so the
    wait overlaps the other tests."""
    job = serve_at_time_limit.finish(240)
    assert job.ok, job
    assert "SIGTERM received" in job.log and "serve: stopped; 1 requests ok" in job.log, job
    assert "Traceback" not in job.log, job


# ---------------------------------------------------------------- scale.sbatch

def test_scale_sbatch_array_then_report_compare(slurm, tmp_path):
    """Job array 1,2: one element per worker count, each on the whole node; report --compare."""
    if slurm["gpus_per_node"] < 4:
        pytest.skip("scale.sbatch asks for 4 GPUs; the node has no 4 (fake) GPUs as gres")
    sub = Submission(tmp_path, SLURM / "scale.sbatch", "--backend", "synthetic", "--num-prompts", 16,
                     "--max-tokens", 4, "--no-progress", sbatch=["--array=1,2"],
                     env={"LLCUDA_SCALE_DIR": str(tmp_path)})
    job = sub.finish()
    files = [tmp_path / f"scale-{job.id}-w{w}.h5" for w in (1, 2)]
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("scale-*.out")))
    assert job.rc == 0 and all(f.exists() for f in files), f"{job}\n{logs}"
    for f in files:
        read_ok_results(f, 16)
    report = subprocess.run(["python3", "-m", "llcuda_mpi.cli", "report", "--compare", *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert all(f.name in report.stdout for f in files), report.stdout
