"""User mistakes on the command line: one clear line on stderr, exit 2, never a traceback or a hang.

Each case runs `python -m llcuda_mpi ...` in a subprocess, as a user would.
"""

import pathlib
import shutil
import socket
import subprocess
import sys
import threading

import pytest


def cli(*argv, cwd=None, timeout=60):
    proc = subprocess.run([sys.executable, "-m", "llcuda_mpi", *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(result, command, match, rc=2):
    code, _, err = result
    assert "Traceback" not in err, err
    assert code == rc, (code, err)
    assert err.startswith(f"llcuda-mpi {command}: error: ") and match in err, err


@pytest.mark.parametrize("argv,match", [
    (("--set", "n_layer=-1"), "n_layer=-1: must be >= 1"),
    (("--set", "n_head=0"), "n_head=0: must be >= 1"),
    (("--set", "head_dim=0", "--set", "n_embd=7"), "head_dim 1 (n_embd // n_head"),
    (("--set", "n_head_kv=3"), "n_head_kv=3: must divide n_head"),
    (("--set", "arch=nope"), "arch='nope'"),
    (("--set", "norm_eps=nan"), "norm_eps=nan"),
    (("--set", "n_layer=100000"), "must be <= 4096"),
    (("--preset", "tiny-gemma3", "--set", "sliding_window=-1"), "sliding_window=-1"),
    (("--seed", "-1"), "seed -1: must be >= 0"),
])
def test_make_model_bad_fields(tmp_path, argv, match):
    out = tmp_path / "m.gguf"
    assert_user_error(cli("make-model", "--preset", "tiny-llama", "-o", out, *argv), "make-model", match)
    assert list(tmp_path.iterdir()) == []


def test_make_model_unwritable_output(tmp_path):
    assert_user_error(cli("make-model", "--preset", "tiny-llama", "-o", "/proc/x.gguf"), "make-model",
                      "/proc/x.gguf: No such file or directory")
    assert_user_error(cli("make-model", "--preset", "tiny-llama", "-o", tmp_path), "make-model",
                      f"{tmp_path}: Is a directory")


def test_report_truncated_file_fails_fast(tmp_path):
    from llcuda_mpi.results.example import write_example
    whole = write_example(tmp_path / "ok.h5")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(pathlib.Path(whole).read_bytes()[:3000])   # an interrupted copy: SWMR reads retried for minutes
    assert_user_error(cli("report", cut, timeout=30), "report", "cut.h5: truncated HDF5 file (3000 bytes")


@pytest.mark.parametrize("content,match", [
    (None, "no such file"),
    (b"hello\n", "not an HDF5 file"),
])
def test_report_not_results(tmp_path, content, match):
    path = tmp_path / "r.h5"
    if content is not None:
        path.write_bytes(content)
    assert_user_error(cli("report", path), "report", match)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from llcuda_mpi.model.make import make_model
    return make_model("tiny-llama", tmp_path_factory.mktemp("model") / "tiny.gguf")


def test_store_user_errors(tmp_path):
    store = ("store", "--store", tmp_path / "store")
    assert_user_error(cli(*store, "path", "nope:latest"), "store", "no model nope:latest in the store")
    assert_user_error(cli(*store, "add", tmp_path / "none.gguf"), "store", "no such file")
    assert_user_error(cli(*store, "--max-bytes", "abc", "ls"), "store", "not a byte count")
    assert_user_error(cli("store", "--store", "/proc/x", "ls"), "store", "cannot create the store at /proc/x")


def test_store_add_truncated_model_warns(tmp_path, tiny_gguf):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(pathlib.Path(tiny_gguf).read_bytes()[:1000])
    rc, out, err = cli("store", "--store", tmp_path / "store", "add", cut, "cut:1")
    assert rc == 0 and out.startswith("added cut:1 ") and "Traceback" not in err
    # the warning names the file given, not the store's temporary copy
    assert err.startswith(f"llcuda-mpi store: warning: the engine cannot load cut:1: {cut}: ") and ".partial" not in err


@pytest.fixture
def http_port():
    """A TCP port where an HTTP server (not our gateway) answers 400 to anything."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(30)

    def answer():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.recv(64)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    srv.close()
    thread.join(5)


def test_client_not_a_gateway(http_port):
    url = f"tcp://127.0.0.1:{http_port}"
    assert_user_error(cli("client", "--url", url, "hi"), "client", f"{url}: not a llcuda-mpi serve gateway")


def test_client_bad_url():
    assert_user_error(cli("client", "--url", "tcp://127.0.0.1:99999", "hi"), "client", "bad port")
    assert_user_error(cli("client", "--url", "tcp://127.0.0.1:1", "--ping"), "client", "tcp://127.0.0.1:1: ")


def test_no_command_or_a_misplaced_option():
    rc, out, err = cli()
    assert rc == 2 and out == "" and "llcuda-mpi: error: give a COMMAND (bench, " in err
    rc, _, err = cli("--max-tokens", "5", "generate")
    assert rc == 2 and "llcuda-mpi: error: unknown option '--max-tokens'" in err and "Traceback" not in err
    assert cli("--version")[0] == 0


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")
@pytest.mark.parametrize("job,argv", [
    ("bench", ["--backend", "synthetic", "--num-prompts", "2"]),
    ("kernels", ["--device", "cpu", "--types", "Q8_0", "--shapes", "256x256", "--batches", "1", "--reps", "1"]),
])
def test_job_unwritable_output_fails_before_running(tmp_path, job, argv):
    """Used to run the whole job, then die with a traceback at the rename (bench) or the write (kernels)."""
    for output, reason in ((tmp_path, "Is a directory"), ("/proc/x.h5", "No such file or directory")):
        proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", f"llcuda_mpi.jobs.{job}", *argv,
                               "--output", str(output)], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"llcuda-mpi {job}: error: cannot write " in proc.stderr and f"{output}: {reason}" in proc.stderr
        assert proc.stderr.count("error:") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,match", [
    (("--n-ctx", "-5"), "--n-ctx must be >= 0"),
    (("--temperature", "-1"), "--temperature must be >= 0"),
    (("--temperature", "nan"), "--temperature must be >= 0"),
    (("--top-p", "0"), "--top-p must be in (0, 1]"),
    (("--top-k", "-2"), "--top-k must be >= 0"),
    (("-n", "0"), "--max-tokens must be >= 1"),
    (("--cpu-threads", "0"), "--cpu-threads must be >= 1"),
    (("--model", "/nonexistent/m.gguf"), "/nonexistent/m.gguf"),
])
def test_generate_bad_arguments(argv, match):
    # checked before any model is opened or made: each fails in well under a second of work
    assert_user_error(cli("generate", "-p", "hi", *argv), "generate", match)


def test_inspect_reads_store_references(tmp_path, monkeypatch):
    from llcuda_mpi.model.make import make_tiny_model
    monkeypatch.setenv("LLCUDA_MPI_STORE", str(tmp_path / "store"))
    path = make_tiny_model("llama", tmp_path / "t.gguf", "F32", seed=1)
    rc, out, err = cli("store", "add", path, "tiny")
    assert rc == 0, err
    rc, out, err = cli("inspect", "store:tiny")
    assert rc == 0 and "llama" in out and "Traceback" not in err, (out, err)
    assert_user_error(cli("inspect", "store:nope"), "inspect", "no model nope:latest in the store")
